// Private S3 images in an anonymous project: the browser signs s3:// URLs with keys loaded on the
// Settings page, loads them from the bucket, and the keys never reach milkglass (or anyone else).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { once } from "node:events";
import { createHash, createVerify, generateKeyPairSync } from "node:crypto";
import { readFileSync } from "node:fs";
import { launch, newPage, signIn, spawnUntil, startDemo, stop, ROOT } from "./harness.mjs";

const BUCKET = "ui-private-images";
let demo, browser, fixture, bucket, page;
const requests = [];

before(async () => {
  demo = await startDemo({ frames: 24 });
  // moto behind a signature-checking front, filled with the demo's PNGs.
  const s = await spawnUntil("python3", [join(ROOT, "tests/ui/s3fixture.py"), BUCKET, join(demo.dir, "demo/sample/shapes")], /^\{/, { stdin: "pipe", timeoutMs: 60_000 });
  fixture = s;
  bucket = JSON.parse(s.line);
  // An anonymous project: milkglass holds no raw data and never fetches any.
  await demo.api("/api/projects", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ name: "private", access_mode: "anonymous", classes: [{ id: 0, name: "shape", color: [230, 57, 70] }] }),
  });
  await demo.api("/api/projects/private/datasets", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ name: "cams" }) });
  const lines = bucket.keys.map((key, i) =>
    JSON.stringify({
      frame_id: `f${String(i).padStart(2, "0")}`,
      sensors: [{ sensor_id: "cam", kind: "image", url: `s3://${BUCKET}/${key}` }],
      labels: [{ label_id: `f${i}_0`, class: "shape", geometry: { kind: "box2d", top: 10, left: 10, width: 60, height: 40 } }],
    }),
  );
  await demo.api("/api/projects/private/datasets/cams/frames", { method: "POST", headers: { "content-type": "application/x-ndjson" }, body: lines.join("\n") + "\n" });
  browser = await launch();
  page = await newPage(browser);
  page.on("request", async (r) => {
    const entry = { url: r.url(), method: r.method(), body: r.postData() ?? "", headers: {} };
    requests.push(entry);
    entry.headers = await r.allHeaders().catch(() => r.headers());
  });
});

after(async () => {
  await browser?.close();
  if (fixture) {
    fixture.child.stdin.end();
    await stop(fixture.child);
  }
  await demo?.close();
});

const dataset = "/p/private/d/cams";

test("without credentials, s3:// tiles say what is missing", async () => {
  await signIn(page, demo.url, demo.tokens.admin, dataset);
  await page.waitForSelector(".tile .thumb-msg.warn");
  assert.match(await page.textContent(".tile .thumb-msg.warn"), /load AWS credentials on the Settings page/);
  assert.match(await page.textContent(".results-bar"), /holds no raw data and has never fetched any/);
});

test("credentials loaded on Settings sign the URLs in the browser and the images show", async () => {
  await page.click("a[href='/settings']");
  await page.fill("textarea[name=aws_credentials]", `[default]\naws_access_key_id = ${bucket.key_id}\naws_secret_access_key = ${bucket.secret}\n`);
  await page.fill("input[name=aws_region]", bucket.region);
  await page.fill("input[name=aws_endpoint]", bucket.endpoint);
  await page.click("form:has(textarea[name=aws_credentials]) button[type=submit]");
  await page.waitForSelector(".settings .state.ok");
  assert.match(await page.textContent(".settings .state.ok"), /loaded/);
  await page.goBack();
  await page.waitForURL(new RegExp(dataset));
  await page.waitForFunction(() => [...document.querySelectorAll(".tile img")].filter((i) => i.complete && i.naturalWidth > 0).length >= 6, null, { timeout: 20_000 });
  const title = await page.getAttribute(".tile img", "title");
  assert.match(title, /signed in your browser/);
  const src = await page.getAttribute(".tile img", "src");
  assert.ok(src.startsWith(`${bucket.endpoint}/${BUCKET}/images/`), src);
  assert.match(src, /X-Amz-Signature=[0-9a-f]{64}/);
  assert.ok((await page.locator(".tile svg rect").count()) > 0, "boxes over the images");
  // The frame view loads the full image the same way.
  await page.click(".tile[data-frame] >> nth=0");
  await page.waitForFunction(() => [...document.querySelectorAll(".frame-view img")].some((i) => i.complete && i.naturalWidth > 0));
  await page.keyboard.press("Escape");
  assert.deepEqual(page.errors, []);
});

test("the keys never reach milkglass, and no other host is contacted", async () => {
  const milkglass = new URL(demo.url).host;
  const server = new URL(demo.server).host;
  const s3 = new URL(bucket.endpoint).host;
  assert.ok(requests.length > 10);
  for (const r of requests) {
    const host = new URL(r.url).host;
    assert.ok([milkglass, server, s3].includes(host), `request to ${host}: ${r.url}`);
    const all = r.url + "\n" + JSON.stringify(r.headers) + "\n" + r.body;
    assert.ok(!all.includes(bucket.secret), `the secret key was sent to ${host}`);
    if (host !== s3) assert.ok(!all.includes(bucket.key_id), `the key id was sent to ${host}: ${r.url}`);
  }
  assert.ok(requests.some((r) => new URL(r.url).host === s3), "images came from the bucket");
  // The bucket front checked every signature (a bad one is a 403) and saw no Authorization header.
  fixture.child.stdin.write("seen\n");
  const [line] = await once(fixture.lines, "line");
  const seen = JSON.parse(line);
  assert.ok(seen.length >= 6);
  for (const r of seen) assert.ok(!JSON.stringify(r).includes(bucket.secret));
});

test("Forget credentials removes them from the browser", async () => {
  await page.click("a[href='/settings']");
  await page.click("button:has-text('Forget credentials')");
  await page.waitForSelector("text=Credentials forgotten");
  const stored = await page.evaluate(() => JSON.stringify({ ...sessionStorage }));
  assert.ok(!stored.includes(bucket.secret) && !stored.includes(bucket.key_id));
  await page.goBack();
  await page.waitForSelector(".tile .thumb-msg.warn");
});

test("a GCS service-account key signs gs:// URLs (V4, RSA) in the browser", async () => {
  const { privateKey, publicKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const pem = privateKey.export({ type: "pkcs8", format: "pem" });
  await demo.api("/api/projects/private/datasets", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ name: "gcs" }) });
  const frames = [0, 1, 2].map((i) => JSON.stringify({ frame_id: `g${i}`, sensors: [{ kind: "image", url: `gs://ui-gcs-bucket/cams/frame(${i}).png` }] }));
  await demo.api("/api/projects/private/datasets/gcs/frames", { method: "POST", headers: { "content-type": "application/x-ndjson" }, body: frames.join("\n") });
  // Stand in for storage.googleapis.com: check each V4 signature with the public key, answer a PNG.
  const png = readFileSync(join(demo.dir, "demo/sample/shapes/frame_0000.png"));
  const verified = [];
  await page.route("https://storage.googleapis.com/**", (route) => {
    const u = new URL(route.request().url());
    const q = u.search.slice(1).split("&").filter((p) => !p.startsWith("X-Goog-Signature=")).join("&");
    const canonical = ["GET", u.pathname, q, "host:storage.googleapis.com", "", "host", "UNSIGNED-PAYLOAD"].join("\n");
    const date = u.searchParams.get("X-Goog-Date");
    const toSign = ["GOOG4-RSA-SHA256", date, `${date.slice(0, 8)}/auto/storage/goog4_request`, createHash("sha256").update(canonical).digest("hex")].join("\n");
    const ok = createVerify("RSA-SHA256").update(toSign).verify(publicKey, Buffer.from(u.searchParams.get("X-Goog-Signature"), "hex"));
    verified.push(ok);
    return ok ? route.fulfill({ status: 200, contentType: "image/png", body: png }) : route.fulfill({ status: 403, body: "bad signature" });
  });
  await page.click("a[href='/settings']");
  await page.fill("textarea[name=gcs_key]", JSON.stringify({ type: "service_account", client_email: "reader@proj.iam.gserviceaccount.com", private_key: pem }));
  await page.click("form:has(textarea[name=gcs_key]) button[type=submit]");
  await page.waitForSelector("text=GCS key of reader@proj.iam.gserviceaccount.com loaded");
  // Imported as non-extractable: the page itself cannot read the private key back.
  const extractable = await page.evaluate(
    () => new Promise((res) => {
      const open = indexedDB.open("milkglass", 1);
      open.onsuccess = () => {
        const req = open.result.transaction("keys").objectStore("keys").get("gcs");
        req.onsuccess = () => res(req.result.key.extractable);
      };
    }),
  );
  assert.equal(extractable, false);
  await page.goto(demo.url + "/p/private/d/gcs");
  await page.waitForFunction(() => [...document.querySelectorAll(".tile img")].filter((i) => i.complete && i.naturalWidth > 0).length === 3);
  const src = await page.getAttribute(".tile img", "src");
  assert.ok(src.startsWith("https://storage.googleapis.com/ui-gcs-bucket/cams/frame%280%29.png?X-Goog-Algorithm=GOOG4-RSA-SHA256&"), src);
  assert.match(await page.getAttribute(".tile img", "title"), /GCS object, URL signed in your browser/);
  assert.ok(verified.length >= 3 && verified.every(Boolean), `signatures verified: ${verified}`);
  assert.ok(!requests.some((r) => r.body.includes("PRIVATE KEY") || r.url.includes("PRIVATE")), "the key was never sent");
  await page.click("a[href='/settings']");
  await page.click("button:has-text('Forget credentials')");
  await page.waitForSelector("text=Credentials forgotten");
  const left = await page.evaluate(
    () => new Promise((res) => {
      const open = indexedDB.open("milkglass", 1);
      open.onsuccess = () => {
        const req = open.result.transaction("keys").objectStore("keys").get("gcs");
        req.onsuccess = () => res(req.result ?? null);
      };
    }),
  );
  assert.equal(left, null);
});
