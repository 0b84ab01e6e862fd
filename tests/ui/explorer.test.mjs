// Browser tests of the dataset explorer against a real `milkglass demo` server.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { launch, newPage, signIn, startDemo } from "./harness.mjs";

let demo, browser, page;
const DS = "/api/projects/shapes/datasets/shapes";

before(async () => {
  demo = await startDemo({ frames: 300 });
  browser = await launch();
  page = await newPage(browser);
});
after(async () => {
  await browser?.close();
  await demo?.close();
});

/** Tiles whose image decoded, and whether the first is non-blank (pixel variance over a canvas). */
async function imageStats() {
  return page.evaluate(async () => {
    const imgs = [...document.querySelectorAll(".tile img")];
    const decoded = imgs.filter((i) => i.complete && i.naturalWidth > 0);
    if (!decoded.length) return { total: imgs.length, decoded: 0, variance: 0 };
    // Same image again with CORS (the sample route allows any origin), so the canvas is not tainted.
    const img = new Image();
    img.crossOrigin = "anonymous";
    img.src = decoded[0].src;
    await img.decode();
    const c = document.createElement("canvas");
    c.width = img.naturalWidth;
    c.height = img.naturalHeight;
    const ctx = c.getContext("2d");
    ctx.drawImage(img, 0, 0);
    const d = ctx.getImageData(0, 0, c.width, c.height).data;
    let sum = 0, sq = 0, n = 0;
    for (let i = 0; i < d.length; i += 4) {
      const v = (d[i] + d[i + 1] + d[i + 2]) / 3;
      sum += v;
      sq += v * v;
      n++;
    }
    const mean = sum / n;
    return { total: imgs.length, decoded: decoded.length, variance: sq / n - mean * mean };
  });
}

const countText = () => page.textContent(".count");

test("sign in shows the user, the projects and the datasets with counts", async () => {
  await signIn(page, demo.url, demo.tokens.admin);
  assert.match(await page.textContent(".topbar .user"), /admin\s*\(admin\)/);
  await page.waitForSelector("text=shapes");
  const row = page.locator("table.datasets tbody tr").first();
  await page.waitForFunction(() => /300/.test(document.querySelector("table.datasets tbody tr")?.textContent ?? ""));
  assert.match(await row.textContent(), /shapes.*300/);
  assert.match(await row.textContent(), /detector_v1/);
  assert.match(await page.textContent(".project .badge"), /public/);
  assert.deepEqual(page.errors, []);
});

test("a wrong token is refused with the server's message", async () => {
  const p = await newPage(browser);
  await p.goto(demo.url + "/");
  await p.fill("input[name=token]", "mg_" + "0".repeat(64));
  await p.click("button[type=submit]");
  await p.waitForSelector(".signin [role=alert]");
  assert.ok((await p.textContent(".signin [role=alert]")).length > 5);
  await p.close();
});

test("the grid draws decoded, non-blank images with boxes over them", async () => {
  await page.click("a.ds-link");
  await page.waitForURL(/\/p\/shapes\/d\/shapes/);
  await page.waitForFunction(() => [...document.querySelectorAll(".tile img")].some((i) => i.complete && i.naturalWidth > 0));
  await page.waitForFunction(() => document.querySelectorAll(".tile svg rect").length > 0);
  await page.waitForFunction(() => /300 of 300 frames/.test(document.querySelector(".count")?.textContent ?? ""));
  const s = await imageStats();
  assert.ok(s.decoded >= 6, `decoded ${s.decoded} of ${s.total}`);
  assert.ok(s.variance > 20, `pixel variance ${s.variance}`);
  const tiles = await page.locator(".tile").count();
  assert.ok(tiles > 6 && tiles < 200, `${tiles} tiles`);
  // Solid ground truth and dashed inferences, in class colours.
  const rects = await page.evaluate(() => [...document.querySelectorAll(".tile svg rect")].map((r) => ({ dash: r.getAttribute("stroke-dasharray"), color: r.getAttribute("stroke") })));
  assert.ok(rects.some((r) => !r.dash) && rects.some((r) => r.dash), "both solid and dashed boxes");
  assert.ok(rects.some((r) => r.color === "rgb(230,57,70)"), "class colours from the project's class map");
  // Tooltips say where the pixels came from.
  assert.match(await page.getAttribute(".tile img", "title"), /public URL/);
  assert.deepEqual(page.errors, []);
});

test("the confidence slider and toggles change what is drawn", async () => {
  const dashed = () => page.evaluate(() => document.querySelectorAll(".tile svg rect[stroke-dasharray]").length);
  const before = await dashed();
  await page.fill("input[name=conf]", "0.95");
  await page.waitForFunction((n) => document.querySelectorAll(".tile svg rect[stroke-dasharray]").length < n, before);
  assert.match(page.url(), /conf=0.95/);
  await page.uncheck("input[name=show_labels]");
  await page.waitForFunction(() => document.querySelectorAll(".tile svg rect:not([stroke-dasharray])").length === 0);
  await page.check("input[name=show_labels]");
  await page.fill("input[name=conf]", "0.5");
});

test("a class filter changes the frames shown and the count", async () => {
  const want = (await demo.api(`${DS}/frames?class=triangle&count=true&limit=1`)).total;
  assert.ok(want > 0 && want < 300);
  const firstBefore = await page.getAttribute(".tile[data-frame]", "data-frame");
  await page.selectOption("select[name=class]", "triangle");
  await page.waitForFunction((n) => document.querySelector(".count")?.textContent?.startsWith(`${n.toLocaleString("en-US")} of 300`), want);
  assert.match(page.url(), /class=triangle/);
  await page.waitForSelector(".tile[data-frame]");
  // Every tile shown has a triangle among its ground-truth labels.
  const frames = await page.evaluate(() => [...document.querySelectorAll(".tile[data-frame]")].map((t) => t.getAttribute("data-frame")));
  const listed = (await demo.api(`${DS}/frames?class=triangle&limit=1000`)).frames.map((f) => f.frame_id);
  for (const f of frames) assert.ok(listed.includes(f), `${f} has a triangle`);
  assert.ok(frames[0] !== firstBefore || listed[0] === firstBefore);
  // A metadata filter on top (split = val).
  await page.fill("input[name=meta_key]", "split");
  await page.fill("input[name=meta_value]", "val");
  await page.press("input[name=meta_value]", "Enter");
  const both = (await demo.api(`${DS}/frames?class=triangle&meta=split:eq:val&count=true&limit=1`)).total;
  await page.waitForFunction((n) => document.querySelector(".count")?.textContent?.startsWith(`${n} of 300`), both);
  assert.match(decodeURIComponent(page.url()), /meta=split:eq:val/);
  assert.match(await countText(), /match the filters/);
});

test("the frame view opens, its arrows move within the filter, Esc closes", async () => {
  const listed = (await demo.api(`${DS}/frames?class=triangle&meta=split:eq:val&limit=1000`)).frames.map((f) => f.frame_id);
  await page.click(".tile[data-frame] >> nth=0");
  await page.waitForSelector(".frame-view h2");
  assert.equal(await page.textContent(".frame-view h2"), listed[0]);
  await page.waitForFunction(() => [...document.querySelectorAll(".frame-view img")].some((i) => i.complete && i.naturalWidth > 0));
  await page.waitForSelector(".frame-view svg rect");
  assert.ok((await page.locator(".frame-view table.labels tbody tr").count()) > 0, "labels listed");
  assert.match(await page.textContent(".frame-view"), /Metadata[\s\S]*split/);
  await page.keyboard.press("ArrowRight");
  await page.waitForFunction((id) => document.querySelector(".frame-view h2")?.textContent === id, listed[1]);
  await page.click("button[aria-label='next frame']");
  await page.waitForFunction((id) => document.querySelector(".frame-view h2")?.textContent === id, listed[2]);
  await page.keyboard.press("ArrowLeft");
  await page.waitForFunction((id) => document.querySelector(".frame-view h2")?.textContent === id, listed[1]);
  assert.match(page.url(), new RegExp(`frame=${listed[1]}`));
});

test("a reload reproduces the view from the URL", async () => {
  const url = page.url();
  const id = await page.textContent(".frame-view h2");
  await page.reload();
  await page.waitForSelector(".frame-view h2");
  assert.equal(await page.textContent(".frame-view h2"), id);
  assert.equal(page.url(), url);
  assert.equal(await page.inputValue("select[name=class]"), "triangle");
  await page.waitForFunction(() => / of 300 frames/.test(document.querySelector(".count")?.textContent ?? ""));
  await page.keyboard.press("Escape");
  await page.waitForFunction(() => !document.querySelector(".frame-view"));
  assert.doesNotMatch(page.url(), /frame=/);
  // The same link in a fresh tab (signed in) shows the same filtered grid.
  const p2 = await newPage(browser);
  await signIn(p2, demo.url, demo.tokens.victor, new URL(url).pathname + new URL(url).search);
  await p2.waitForSelector(".frame-view h2");
  assert.equal(await p2.textContent(".frame-view h2"), id);
  await p2.close();
});

test("the scroll position is in the URL and survives a reload", async () => {
  await page.evaluate(() => (document.querySelector(".grid-scroll").scrollTop = 2000));
  await page.waitForURL(/[?&]at=\d+/);
  const at = Number(new URL(page.url()).searchParams.get("at"));
  assert.ok(at > 0);
  const firstVisible = () =>
    page.evaluate(() => {
      const g = document.querySelector(".grid-scroll").getBoundingClientRect();
      const t = [...document.querySelectorAll(".tile[data-frame]")].find((t) => t.getBoundingClientRect().top >= g.top - 1);
      return t?.getAttribute("data-frame");
    });
  await page.waitForSelector(".tile[data-frame]");
  const before = await firstVisible();
  await page.reload();
  await page.waitForSelector(".tile[data-frame]");
  await page.waitForFunction((id) => !!document.querySelector(`.tile[data-frame="${id}"]`), before);
  assert.equal(await firstVisible(), before);
  assert.equal(Number(new URL(page.url()).searchParams.get("at")), at);
});

test("keyboard: j/k move the cursor, Enter opens, ? lists the keys", async () => {
  await page.selectOption("select[name=class]", "");
  const val = (await demo.api(`${DS}/frames?meta=split:eq:val&count=true&limit=1`)).total;
  await page.waitForFunction((n) => document.querySelector(".count")?.textContent?.startsWith(`${n} of 300`), val);
  await page.click(".results-bar");
  await page.keyboard.press("j");
  await page.keyboard.press("j");
  await page.keyboard.press("Enter");
  await page.waitForSelector(".frame-view h2");
  const listed = (await demo.api(`${DS}/frames?meta=split:eq:val&limit=3`)).frames.map((f) => f.frame_id);
  assert.equal(await page.textContent(".frame-view h2"), listed[2]);
  await page.keyboard.press("Escape");
  await page.keyboard.press("?");
  await page.waitForSelector(".help");
  assert.match(await page.textContent(".help"), /open the frame/);
  await page.keyboard.press("Escape");
  await page.waitForFunction(() => !document.querySelector(".help"));
});

test("an empty filter says so", async () => {
  await page.fill("input[name=min_labels]", "99");
  await page.press("input[name=min_labels]", "Enter");
  await page.waitForSelector(".state.empty");
  assert.match(await page.textContent(".state.empty"), /No frames match/);
  assert.match(await countText(), /^0 of 300/);
  assert.deepEqual(page.errors, []);
});
