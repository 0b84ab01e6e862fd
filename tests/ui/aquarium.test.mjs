// A dataset uploaded by Aquarium's own client (aquariumlearning 1.0.7, unmodified) is explored in the
// web app like any other: its frames in the grid, their images loaded by the browser, a frame's labels
// and user metadata in the frame view.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { ROOT, launch, newPage, signIn, startDemo } from "./harness.mjs";

let demo, browser, page;

before(async () => {
  demo = await startDemo({ frames: 20 });
  browser = await launch();
  page = await newPage(browser);
});
after(async () => {
  await browser?.close();
  await demo?.close();
});

test("frames uploaded by the Aquarium client show in the explorer with their labels and metadata", async () => {
  const python = execFileSync(join(ROOT, "scripts/aquarium-venv.sh"), { encoding: "utf8" }).trim();
  // One of the demo's sample images (served on loopback, which only the browser loads), for every frame.
  const sample = await demo.api("/api/projects/shapes/datasets/shapes/frames/frame_0001");
  const image = sample.sensors[0].url;
  const out = execFileSync(
    python,
    [join(ROOT, "tests/python/aquarium_flow.py"), "small", `${demo.server}/api/v1`, demo.tokens.admin, "fleet", "cams", image],
    { encoding: "utf8", timeout: 300_000 },
  );
  assert.deepEqual(JSON.parse(out.trim().split("\n").at(-1)), { frame_ids: 40 });

  await signIn(page, demo.url, demo.tokens.admin, "/p/fleet/d/cams");
  await page.waitForSelector(".tile[data-frame]");
  await page.waitForFunction(() => /40/.test(document.querySelector(".count")?.textContent ?? ""));
  const first = await page.getAttribute(".tile[data-frame] >> nth=0", "data-frame");
  assert.equal(first, "frame_00000");
  await page.waitForFunction(() => [...document.querySelectorAll(".tile img")].some((i) => i.complete && i.naturalWidth > 0));
  await page.waitForFunction(() => document.querySelectorAll(".tile svg rect").length > 0);

  await page.click(".tile[data-frame] >> nth=0");
  await page.waitForSelector(".frame-view h2");
  assert.equal(await page.textContent(".frame-view h2"), "frame_00000");
  const labels = await page.textContent(".frame-view table.labels");
  assert.match(labels, /box 20,10 50×40/, "the box as the client sent it (left 20, top 10, 50 by 40)");
  assert.match(labels, /"occluded":true/, "its user attribute");
  assert.match(labels, /pedestrian/, "frame 0 is one of the flipped labels: a car labelled pedestrian");
  assert.match(await page.textContent(".frame-view"), /Metadata[\s\S]*city[\s\S]*paris/);
  assert.deepEqual(page.errors, []);
});
