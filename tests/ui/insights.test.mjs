// Browser tests of the dataset page's insight views (map, metrics, issues, segments, find similar)
// against a real `milkglass demo` server.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { launch, newPage, signIn, startDemo } from "./harness.mjs";

let demo, browser, page;
const DS = "/api/projects/shapes/datasets/shapes";
const APP = "/p/shapes/d/shapes";

before(async () => {
  demo = await startDemo({ frames: 300 });
  browser = await launch();
  page = await newPage(browser);
  await signIn(page, demo.url, demo.tokens.admin);
});
after(async () => {
  await browser?.close();
  await demo?.close();
});

const json = (body) => ({ method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
/** Frame ids of the grid's tiles, in screen order. */
const tileIds = () => page.evaluate(() => [...document.querySelectorAll(".tile[data-frame]")].map((t) => t.getAttribute("data-frame")));
const waitCount = (n) => page.waitForFunction((n) => document.querySelector(".count")?.textContent?.startsWith(`${n.toLocaleString("en-US")} of 300`), n);

function insidePolygon(x, y, poly) {
  let inside = false;
  for (let a = 0, b = poly.length - 1; a < poly.length; b = a++) {
    const [xa, ya] = poly[a], [xb, yb] = poly[b];
    if (ya > y !== yb > y && x < ((xb - xa) * (y - ya)) / (yb - ya) + xa) inside = !inside;
  }
  return inside;
}

test("the map draws its points, and a lasso makes a segment of exactly the lassoed frames", async () => {
  await page.goto(`${demo.url}${APP}?view=map`);
  await page.waitForSelector("canvas.map-canvas[data-draws][data-points='300']");
  await page.waitForSelector(".map-legend li.total");
  assert.match(await page.textContent(".map-legend"), /all\s*300/);
  // Non-blank: the WebGL canvas (preserveDrawingBuffer) copied to a 2-D canvas, non-white pixels counted.
  const painted = await page.evaluate(() => {
    const src = document.querySelector("canvas.map-canvas");
    const c = document.createElement("canvas");
    c.width = src.width;
    c.height = src.height;
    const ctx = c.getContext("2d");
    ctx.drawImage(src, 0, 0);
    const d = ctx.getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 0; i < d.length; i += 4) if (d[i] < 240 || d[i + 1] < 240 || d[i + 2] < 240) n++;
    return n;
  });
  assert.ok(painted > 300, `${painted} painted pixels`);

  // Lasso an octagon around the canvas centre.
  await page.click("button[name=lasso]");
  const box = await page.locator("canvas.map-canvas").boundingBox();
  const view = await page.evaluate(() => ({ ...document.querySelector("canvas.map-canvas").dataset }));
  const [cx, cy] = [Math.round(box.x + box.width / 2), Math.round(box.y + box.height / 2)];
  const screen = Array.from({ length: 8 }, (_, k) => [Math.round(cx + 190 * Math.cos((k * Math.PI) / 4)), Math.round(cy + 150 * Math.sin((k * Math.PI) / 4))]);
  await page.mouse.move(...screen[0]);
  await page.mouse.down();
  for (const p of [...screen.slice(1), screen[0]]) await page.mouse.move(...p, { steps: 4 });
  await page.mouse.up();
  await page.waitForSelector(".map-selection");

  // The expected frames, from the API's own map and ids and the same screen-to-map transform.
  const r = await fetch(`${demo.url}${DS}/insights/map?space=frames&layout=pca`, { headers: { Authorization: `Bearer ${demo.tokens.admin}` } });
  const xy = new Float32Array(await r.arrayBuffer());
  const { ids } = await demo.api(`${DS}/insights/map/ids?space=frames`);
  const toData = ([px, py]) => [Number(view.cx) + (px - box.x - box.width / 2) / Number(view.scale), Number(view.cy) - (py - box.y - box.height / 2) / Number(view.scale)];
  const poly = screen.map(toData);
  const expected = ids.filter((_, i) => insidePolygon(xy[2 * i], xy[2 * i + 1], poly));
  assert.ok(expected.length > 5 && expected.length < 300, `${expected.length} frames in the lasso`);
  assert.match(await page.textContent(".map-selection"), new RegExp(`${expected.length} of 300 frames selected`));

  await page.click("button[name=save_segment]");
  await page.fill("input[name=segment_name]", "lassoed");
  await page.press("input[name=segment_name]", "Enter");
  await page.waitForSelector(".map-side .notice");
  const seg = await demo.api(`${DS}/segments/lassoed`);
  assert.equal(seg.item_kind, "frames");
  assert.deepEqual([...seg.items].sort(), [...expected].sort());

  // The same selection in the grid.
  await page.click("button[name=show_in_grid]");
  await waitCount(expected.length);
  assert.deepEqual(page.errors, []);
});

test("a confusion-matrix cell opens exactly its frames in the grid", async () => {
  await page.goto(`${demo.url}${APP}?view=metrics`);
  await page.waitForSelector("button.cell[data-row=square][data-col=circle]");
  const m = await demo.api(`${DS}/insights/metrics?inference_set=detector_v1&iou=0.5&confidence=0.5`);
  const [r, c] = [m.confusion.rows.indexOf("square"), m.confusion.columns.indexOf("circle")];
  const want = [...new Set(m.confusion.cells[r][c].frame_ids)];
  assert.ok(want.length > 0);
  await page.click("button.cell[data-row=square][data-col=circle]");
  await page.waitForURL(/list=/);
  await waitCount(want.length);
  await page.waitForFunction((n) => document.querySelectorAll(".tile[data-frame]").length === n, want.length);
  assert.deepEqual(await tileIds(), want);
  // Row-normalised on toggle, and the sliders refetch the matrix.
  await page.goto(`${demo.url}${APP}?view=metrics`);
  await page.check("input[name=normalise]");
  await page.waitForFunction(() => /%/.test(document.querySelector("button.cell")?.textContent ?? ""));
  await page.fill("input[name=confidence]", "0.9");
  await page.waitForFunction(() => /confidence 0.9/.test(document.querySelector(".metrics-body h2")?.textContent ?? ""));
  assert.deepEqual(page.errors, []);
});

test("issue triage: n marks an issue not an issue, and it stays gone after a reload", async () => {
  await page.goto(`${demo.url}${APP}?view=issues`);
  await page.waitForSelector(".issue-row .crop img");
  const second = await page.getAttribute(".issue-row[data-row='1']", "data-issue");
  await page.keyboard.press("j");
  await page.waitForSelector(".issue-row[data-row='1'].active");
  await page.keyboard.press("n");
  await page.waitForFunction((k) => !document.querySelector(`.issue-row[data-issue="${k}"]`), second);
  await page.waitForSelector("[role=status]:has-text('not an issue')");
  await page.reload();
  await page.waitForSelector(".issue-row");
  assert.equal(await page.locator(`.issue-row[data-issue="${second}"]`).count(), 0);
  const [kind, label, inference] = second.split("|");
  const r = await demo.api(`${DS}/insights/label_errors?inference_set=detector_v1&limit=1000&kind=${kind}`);
  assert.ok(!r.issues.some((i) => (i.label_id ?? "") === label && (i.inference_id ?? "") === inference), "the API no longer lists it");
  // Enter opens the frame view on the current issue's frame.
  const frame = await page.getAttribute(".issue-row.active", "data-frame");
  await page.keyboard.press("Enter");
  await page.waitForSelector(`.frame-view[aria-label="frame ${frame}"]`);
  await page.keyboard.press("Escape");
  assert.deepEqual(page.errors, []);
});

test("segments: open in the grid shows exactly its frames; rename and state change persist; x selects into one", async () => {
  const items = ["frame_0012", "frame_0003", "frame_0150", "frame_0099", "frame_0201"];
  await demo.api(`${DS}/segments`, json({ name: "picked", item_kind: "frames", items }));
  await page.goto(`${demo.url}${APP}?view=segments`);
  await page.click("tr[data-segment=picked] button[name=open_in_grid]");
  await page.waitForURL(/segment=picked/);
  await waitCount(items.length);
  await page.waitForFunction((n) => document.querySelectorAll(".tile[data-frame]").length === n, items.length);
  assert.deepEqual(await tileIds(), [...items].sort());

  // x toggles the selection in the grid, s adds it to a segment.
  await page.goto(`${demo.url}${APP}`);
  await page.waitForSelector(".tile[data-frame]");
  await page.focus(".grid-scroll");
  await page.keyboard.press("x");
  await page.keyboard.press("j");
  await page.keyboard.press("x");
  await page.waitForSelector(".selection-bar:has-text('2 selected')");
  await page.keyboard.press("s");
  await page.click("button[data-segment=picked]");
  await page.waitForSelector(".selection-bar:has-text('added to picked')");
  const added = await demo.api(`${DS}/segments/picked`);
  assert.deepEqual(added.items.length, items.length + 2);

  await page.goto(`${demo.url}${APP}?view=segments`);
  await page.fill("tr[data-segment=picked] input[name=segment_name]", "reviewed");
  await page.press("tr[data-segment=picked] input[name=segment_name]", "Enter");
  await page.waitForSelector("tr[data-segment=reviewed]");
  await page.selectOption("tr[data-segment=reviewed] select[name=state]", "in_review");
  await page.waitForSelector("[role=status]:has-text('in review')");
  const seg = await demo.api(`${DS}/segments/reviewed`);
  assert.equal(seg.state, "in_review");
  await assert.rejects(demo.api(`${DS}/segments/picked`), /404/);
  await page.reload();
  assert.equal(await page.inputValue("tr[data-segment=reviewed] select[name=state]"), "in_review");
  assert.deepEqual(page.errors, []);
});

test("find similar from the frame view shows the API's neighbours in order, with distances", async () => {
  await page.goto(`${demo.url}${APP}?frame=frame_0007`);
  await page.waitForSelector(".frame-view button[name=find_similar]:not([disabled])");
  await page.click("button[name=find_similar]");
  await page.waitForURL(/similar=frame_0007/);
  await waitCount(50);
  const r = await demo.api(`${DS}/insights/similar`, json({ frame_id: "frame_0007", k: 50, space: "frames" }));
  await page.waitForFunction(() => document.querySelectorAll(".tile[data-frame] .note").length >= 8);
  const shown = await tileIds();
  assert.ok(shown.length >= 8);
  assert.deepEqual(shown, r.neighbors.slice(0, shown.length).map((n) => n.frame_id));
  assert.equal(await page.textContent(".tile[data-frame] .note"), `d ${r.neighbors[0].distance.toFixed(3)}`);
  assert.deepEqual(page.errors, []);
});

test("the issue queue ranks near-duplicate groups and outliers, and s puts a whole group into a segment", async () => {
  // A dataset of three embedding clusters, with one frame copied twice and three frames far from every cluster.
  const image = (await demo.api(`${DS}/frames/frame_0001`)).sensors[0].url;
  await demo.api("/api/projects/shapes/datasets", json({ name: "pool" }));
  let seed = 7;
  const rand = () => ((seed = (seed * 16807) % 2147483647) / 2147483647) * 2 - 1;
  const vector = (axis) => Array.from({ length: 8 }, (_, d) => (d === axis ? 1 : 0) + 0.3 * rand());
  const frames = [];
  for (let i = 0; i < 90; i++) frames.push({ frame_id: `p${String(i).padStart(3, "0")}`, embedding: vector(i % 3) });
  frames.push({ frame_id: "copy_a", embedding: frames[5].embedding }, { frame_id: "copy_b", embedding: frames[5].embedding });
  for (const [i, axis] of [[0, 5], [1, 6], [2, 7]]) frames.push({ frame_id: `odd_${i}`, embedding: vector(axis).map((v, d) => (d === axis ? -3 : v)) });
  const lines = frames.map((f) => JSON.stringify({ ...f, sensors: [{ sensor_id: "cam", kind: "image", url: image }] })).join("\n");
  await demo.api("/api/projects/shapes/datasets/pool/frames", { method: "POST", headers: { "content-type": "application/x-ndjson" }, body: lines });

  const POOL = "/api/projects/shapes/datasets/pool";
  const dups = await demo.api(`${POOL}/insights/neighbors?space=frames&kind=near_duplicates`);
  assert.deepEqual([...dups.items[0].group].sort(), ["copy_a", "copy_b", "p005"], "the planted copies are the first group");
  await page.goto(`${demo.url}/p/shapes/d/pool?view=issues&kind=near_duplicates`);
  await page.waitForSelector(".issue-row[data-row='0'] .crop img");
  const shown = await page.evaluate(() => [...document.querySelectorAll(".issue-row")].map((r) => r.getAttribute("data-members")));
  assert.deepEqual(shown, dups.items.map((i) => i.group.join(" ")), "the API's groups, in its order");
  await page.waitForFunction(() => [...document.querySelectorAll(".issue-row[data-row='0'] .crop img")].every((i) => i.complete && i.naturalWidth > 0));
  await page.keyboard.press("s");
  await page.fill("input[name=segment_name]", "copies");
  await page.press("input[name=segment_name]", "Enter");
  await page.waitForSelector(".selection-bar:has-text('copies')");
  const segment = await demo.api(`${POOL}/segments/copies`);
  assert.deepEqual([...segment.items].sort(), ["copy_a", "copy_b", "p005"]);

  // Outliers: the three frames far from every cluster lead, in the API's order.
  const outliers = await demo.api(`${POOL}/insights/neighbors?space=frames&kind=outliers`);
  assert.deepEqual(outliers.items.slice(0, 3).map((i) => i.frame_id).sort(), ["odd_0", "odd_1", "odd_2"]);
  await page.selectOption("select[name=kind]", "outliers");
  await page.waitForSelector(".issue-row[data-frame] .kind:has-text('outlier')");
  const ranked = await page.evaluate(() => [...document.querySelectorAll(".issue-row")].map((r) => r.getAttribute("data-frame")));
  assert.deepEqual(ranked, outliers.items.map((i) => i.frame_id));
  await page.keyboard.press("Enter");
  await page.waitForSelector(`.frame-view[aria-label="frame ${ranked[0]}"]`);
  await page.keyboard.press("Escape");
  // Back to the label issues from the same control.
  await page.selectOption("select[name=kind]", "");
  await page.waitForSelector(".issues-view :text('inference set')");
  assert.deepEqual(page.errors, []);
});

test("a classification dataset's metrics: accuracy, report, reliability, and a confusion cell opens exactly its frames", async () => {
  await demo.api("/api/projects", json({ name: "digits", classes: [{ id: 0, name: "zero" }, { id: 1, name: "one" }, { id: 2, name: "two" }] }));
  await demo.api("/api/projects/digits/datasets", json({ name: "d" }));
  const image = (await demo.api(`${DS}/frames/frame_0001`)).sensors[0].url;
  const names = ["zero", "one", "two"];
  // 60 frames; the model is right except on every seventh, where it says the next class.
  const frames = [], inferences = [];
  for (let i = 0; i < 60; i++) {
    const id = `d${String(i).padStart(2, "0")}`, truth = names[i % 3];
    const said = i % 7 === 0 ? names[(i + 1) % 3] : truth;
    frames.push({ frame_id: id, sensors: [{ sensor_id: "cam", kind: "image", url: image }], labels: [{ label_id: `${id}_l`, class: truth, geometry: { kind: "classification" } }] });
    inferences.push({ label_id: `${id}_p`, frame_id: id, class: said, confidence: 0.55 + (i % 9) / 20, geometry: { kind: "classification" } });
  }
  const ndjson = (rows) => ({ method: "POST", headers: { "content-type": "application/x-ndjson" }, body: rows.map((r) => JSON.stringify(r)).join("\n") });
  const D = "/api/projects/digits/datasets/d";
  await demo.api(`${D}/frames`, ndjson(frames));
  await demo.api(`${D}/inference_sets`, json({ name: "net" }));
  await demo.api(`${D}/inference_sets/net/inferences`, ndjson(inferences));
  const m = await demo.api(`${D}/insights/metrics?inference_set=net`);
  assert.equal(m.task, "classification");

  await page.goto(`${demo.url}/p/digits/d/d?view=metrics`);
  await page.waitForSelector("table.report tbody tr");
  assert.match(await page.textContent(".map-bar .count"), new RegExp(`accuracy ${m.accuracy.toFixed(3)}`));
  const report = await page.evaluate(() => [...document.querySelectorAll("table.report tbody tr")].map((r) => [...r.querySelectorAll("td")].map((td) => td.textContent.trim())));
  assert.deepEqual(report, m.classes.map((c) => [c.class, String(c.support), c.precision.toFixed(3), c.recall.toFixed(3), c.f1.toFixed(3)]));
  assert.equal(await page.locator("svg[aria-label='reliability curve'] rect.bin-count").count(), m.calibration.bins.length);
  assert.match(await page.textContent(".ece"), new RegExp(m.calibration.ece.toFixed(3)));
  // The cell "zero labelled, one predicted" opens exactly its frames.
  const [r, c] = [m.confusion.rows.indexOf("zero"), m.confusion.columns.indexOf("one")];
  const want = [...new Set(m.confusion.cells[r][c].frame_ids)];
  assert.ok(want.length > 0, "the model confuses some zeros for ones");
  await page.click("button.cell[data-row=zero][data-col=one]");
  await page.waitForURL(/list=/);
  await page.waitForFunction((n) => document.querySelectorAll(".tile[data-frame]").length === n, want.length);
  assert.deepEqual(await tileIds(), want);
  assert.deepEqual(page.errors, []);
});
