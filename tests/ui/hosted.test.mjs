// A hosted project: raw files live in milkglass's store; the app resolves `hosted:KEY` URLs in one
// batched call per page and loads them through URLs milkglass signs. Also other sensor kinds: inline
// text and a point cloud (little-endian float32 xyzi `.bin`), and polygon masks.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { deflateSync } from "node:zlib";
import { launch, newPage, signIn, startDemo } from "./harness.mjs";

/** A greyscale PNG (for a class-id mask) without an image library. */
function grayPng(w, h, value) {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (buf) => {
    let c = 0xffffffff;
    for (const b of buf) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const td = Buffer.concat([Buffer.from(type), data]);
    const c = Buffer.alloc(4);
    c.writeUInt32BE(crc(td));
    return Buffer.concat([len, td, c]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr.set([8, 0, 0, 0, 0], 8); // 8-bit greyscale
  const rows = Buffer.alloc((w + 1) * h);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) rows[y * (w + 1) + 1 + x] = value(x, y);
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk("IHDR", ihdr), chunk("IDAT", deflateSync(rows)), chunk("IEND", Buffer.alloc(0))]);
}

let demo, browser, page;
const json = (body, method = "POST") => ({ method, headers: { "content-type": "application/json" }, body: JSON.stringify(body) });

before(async () => {
  demo = await startDemo({ frames: 12 });
  await demo.api("/api/projects", json({ name: "vault", access_mode: "hosted", classes: [{ id: 0, name: "thing", color: [29, 110, 214] }, { id: 3, name: "road", color: [240, 20, 200] }] }));
  await demo.api("/api/projects/vault/datasets", json({ name: "drive" }));
  // Upload files into the hosted store through PUT URLs milkglass signs.
  const keys = ["img/a.png", "img/b.png", "img/c.png", "lidar/a.bin", "masks/c.png"];
  const signed = await demo.api("/api/projects/vault/assets/sign", json({ keys, put: true }));
  const pts = new Float32Array(4 * 2000);
  for (let i = 0; i < 2000; i++) pts.set([Math.cos(i / 50) * (i / 100), Math.sin(i / 50) * (i / 100), i / 2000, 1], i * 4);
  const bodies = [0, 1, 2].map((i) => readFileSync(join(demo.dir, `demo/sample/shapes/frame_000${i}.png`))).concat([Buffer.from(pts.buffer), grayPng(256, 192, (x, y) => (y > 120 ? 3 : 0))]);
  for (const [i, u] of signed.urls.entries()) {
    const r = await fetch(u.put_url, { method: "PUT", body: bodies[i] });
    assert.equal(r.status, 201, await r.text());
  }
  const frames = [
    { frame_id: "a", sensors: [{ sensor_id: "cam", kind: "image", url: "hosted:img/a.png" }, { sensor_id: "lidar", kind: "point_cloud", url: "hosted:lidar/a.bin" }], labels: [{ label_id: "a0", class: "thing", geometry: { kind: "polygon_list", polygons: [[[10, 10], [120, 20], [60, 90]]] } }] },
    { frame_id: "b", sensors: [{ sensor_id: "cam", kind: "image", url: "hosted:img/b.png" }], labels: [{ label_id: "b0", class: "thing", geometry: { kind: "box2d", top: 5, left: 5, width: 50, height: 50 } }] },
    { frame_id: "c", sensors: [{ sensor_id: "cam", kind: "image", url: "hosted:img/c.png" }], labels: [{ label_id: "c0", geometry: { kind: "semantic_mask", url: "hosted:masks/c.png" } }] },
    { frame_id: "d", sensors: [{ sensor_id: "cam", kind: "image", url: "hosted:img/missing.png" }] },
    { frame_id: "t", sensors: [{ sensor_id: "note", kind: "text", url: "the quick brown fox jumps over the lazy dog" }] },
  ];
  await demo.api("/api/projects/vault/datasets/drive/frames", { method: "POST", headers: { "content-type": "application/x-ndjson" }, body: frames.map((f) => JSON.stringify(f)).join("\n") });
  browser = await launch();
  page = await newPage(browser);
});
after(async () => {
  await browser?.close();
  await demo?.close();
});

test("hosted images load through URLs signed by milkglass, resolved in one call per page", async () => {
  const resolves = [];
  page.on("request", (r) => r.url().includes("/assets/resolve") && resolves.push(r.postDataJSON()));
  await signIn(page, demo.url, demo.tokens.admin, "/p/vault/d/drive");
  await page.waitForFunction(() => [...document.querySelectorAll(".tile img")].filter((i) => i.complete && i.naturalWidth > 0).length === 3);
  assert.equal(resolves.length, 1, "one resolve request for the page");
  assert.equal(resolves[0].urls.length, 6, "every hosted URL of the page in it (sensors and masks)");
  assert.match(await page.getAttribute(".tile[data-frame=b] img", "title"), /signed by milkglass/);
  assert.match(await page.getAttribute(".tile[data-frame=b] img", "src"), /\/assets\/vault\/img\/b\.png\?/);
  assert.ok(await page.locator(".tile[data-frame=a] svg polygon").count(), "polygon drawn");
  assert.match(await page.textContent(".tile[data-frame=t]"), /quick brown fox/);
  // The class-id mask is coloured with the class map (road, id 3) on a canvas: its pixels are readable
  // because the signed asset route allows CORS.
  await page.waitForSelector(".tile[data-frame=c] svg image[data-kind=mask]");
  const mask = await page.evaluate(async () => {
    const href = document.querySelector(".tile[data-frame=c] svg image").getAttribute("href");
    const img = new Image();
    img.src = href;
    await img.decode();
    const c = document.createElement("canvas");
    [c.width, c.height] = [img.naturalWidth, img.naturalHeight];
    const ctx = c.getContext("2d");
    ctx.drawImage(img, 0, 0);
    return { blob: href.startsWith("blob:"), top: [...ctx.getImageData(10, 10, 1, 1).data], bottom: [...ctx.getImageData(10, 150, 1, 1).data] };
  });
  assert.ok(mask.blob, "coloured on a canvas");
  assert.equal(mask.top[3], 0, "background is transparent");
  // (alpha is premultiplied inside the canvas, so allow rounding)
  [240, 20, 200].forEach((v, i) => assert.ok(Math.abs(mask.bottom[i] - v) <= 3, `road colour: ${mask.bottom}`));
  // A key that is not in the store: the tile says why instead of showing a broken image.
  await page.waitForSelector(".tile[data-frame=d] .thumb-msg.warn");
  assert.ok(!(await page.locator(".tile[data-frame=d] img").count()));
  assert.match(await page.textContent(".results-bar"), /hosted/);
});

test("the frame view draws a point cloud from above and shows text", async () => {
  await page.click(".tile[data-frame=a]");
  await page.waitForSelector(".frame-view canvas.fv-points");
  assert.match(await page.textContent(".frame-view"), /2,000 points/);
  // The points are drawn in a frame after the canvas appears: wait for the drawing, then count.
  const litPixels = () => {
    const c = document.querySelector(".frame-view canvas.fv-points");
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 0; i < d.length; i += 4) if (d[i + 1] > 60) n++;
    return n;
  };
  let lit = await page.evaluate(litPixels);
  for (const until = Date.now() + 10_000; lit <= 500 && Date.now() < until; lit = await page.evaluate(litPixels)) await page.waitForTimeout(100);
  assert.ok(lit > 500, `${lit} lit pixels`);
  await page.keyboard.press("Escape");
  await page.click(".tile[data-frame=t]");
  await page.waitForSelector(".frame-view pre.fv-text");
  assert.match(await page.textContent(".frame-view pre.fv-text"), /lazy dog/);
  await page.keyboard.press("Escape");
  await page.click(".tile[data-frame=d]");
  await page.waitForSelector(".frame-view .state.warn");
  assert.match(await page.textContent(".frame-view .state.warn"), /did not load|Cannot show/);
  assert.deepEqual(page.errors, []);
});
