// Measures the explorer in headless Chromium against a 1,000,000-frame dataset (not run by `npm test`):
//   node tests/ui/bench.mjs            (or: npm --prefix web run bench)
// The data directory (BENCH_DIR, default /tmp/milkglass-bench) is kept between runs, so the upload of a
// million frames (a few minutes) happens once. Image URLs point at a small static server on
// BENCH_IMG_PORT (default 7799) serving the demo's PNGs, because `milkglass serve` has no /sample route.
import { existsSync, readFileSync, readdirSync, statSync } from "node:fs";
import { createServer } from "node:http";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { spawnSync } from "node:child_process";
import { BIN, DIST, appServer, freePort, launch, newPage, signIn, spawnUntil, stop } from "./harness.mjs";

const DIR = process.env.BENCH_DIR ?? "/tmp/milkglass-bench";
const IMG_PORT = Number(process.env.BENCH_IMG_PORT ?? 7799);
const N = Number(process.env.BENCH_FRAMES ?? 1_000_000);
const CHUNK = 50_000;
const out = {};
const log = (...a) => console.error("#", ...a);

// ---- Sizes of the built app (gzip -9 as a server would send it). ----
const gz = (f) => gzipSync(readFileSync(f), { level: 9 }).length;
const html = readFileSync(join(DIST, "index.html"), "utf8");
const initial = [...html.matchAll(/(?:src|href)="\/(static\/[^"]+\.(?:js|css))"/g)].map((m) => m[1]);
const files = readdirSync(join(DIST, "static")).map((f) => join(DIST, "static", f));
out.initial_js_gzip_kB = +(initial.filter((f) => f.endsWith(".js")).reduce((s, f) => s + gz(join(DIST, f)), 0) / 1024).toFixed(1);
out.initial_css_gzip_kB = +(initial.filter((f) => f.endsWith(".css")).reduce((s, f) => s + gz(join(DIST, f)), 0) / 1024).toFixed(1);
out.total_app_gzip_kB = +((files.reduce((s, f) => s + gz(f), 0) + gz(join(DIST, "index.html"))) / 1024).toFixed(1);
out.total_app_raw_kB = +(files.reduce((s, f) => s + statSync(f).size, 0) / 1024).toFixed(1);

// ---- Server and data. ----
if (!existsSync(join(DIR, "demo-tokens.json"))) {
  log(`creating ${DIR} with milkglass demo --no-serve`);
  const r = spawnSync(BIN, ["demo", "--no-serve", "--data-dir", DIR, "--frames", "300"], { stdio: "inherit" });
  if (r.status !== 0) throw new Error("demo failed");
}
const token = JSON.parse(readFileSync(join(DIR, "demo-tokens.json"), "utf8")).admin.token;
const images = createServer((req, res) => {
  const f = join(DIR, "sample/shapes", req.url.split("?")[0].replace(/^\/+/, "").replace(/[^\w.]/g, ""));
  if (!existsSync(f)) return res.writeHead(404).end();
  res.writeHead(200, { "content-type": "image/png", "cache-control": "public, max-age=3600" }).end(readFileSync(f));
});
await new Promise((r) => images.listen(IMG_PORT, "127.0.0.1", r));
const [http, flight] = [await freePort(), await freePort()];
const { child } = await spawnUntil(BIN, ["serve", "--data-dir", DIR, "--http-addr", `127.0.0.1:${http}`, "--flight-addr", `127.0.0.1:${flight}`], /^milkglass serving/);
const url = `http://127.0.0.1:${http}`;
appServer(url); // MILKGLASS_WEB_DIST=1 serves the app from web/dist (see harness.mjs)
const api = async (path, init = {}) => {
  const r = await fetch(url + path, { ...init, headers: { Authorization: `Bearer ${token}`, ...(init.headers ?? {}) } });
  const t = await r.text();
  if (!r.ok) throw new Error(`${path}: ${r.status} ${t}`);
  return t ? JSON.parse(t) : null;
};

try {
  const DS = "/api/projects/shapes/datasets/million";
  const have = await api(`${DS}/status`).catch(() => null);
  if (!have) await api("/api/projects/shapes/datasets", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ name: "million" }) });
  if ((have?.frames ?? 0) < N) {
    const classes = ["circle", "square", "triangle", "cross"];
    const t0 = performance.now();
    for (let start = have?.frames ?? 0; start < N; start += CHUNK) {
      let body = "";
      for (let i = start; i < Math.min(N, start + CHUNK); i++) {
        const f = {
          frame_id: `f${String(i).padStart(7, "0")}`,
          sensors: [{ kind: "image", url: `http://127.0.0.1:${IMG_PORT}/frame_${String(i % 300).padStart(4, "0")}.png`, width: 256, height: 192 }],
          metadata: { split: i % 5 === 0 ? "val" : "train", n: i },
        };
        if (i % 4 === 0) f.labels = [{ label_id: `l${i}`, class: classes[(i / 4) % 4], geometry: { kind: "box2d", top: 40, left: 60, width: 90, height: 70 } }];
        body += JSON.stringify(f) + "\n";
      }
      await api(`${DS}/frames`, { method: "POST", headers: { "content-type": "application/x-ndjson" }, body });
      log(`uploaded ${Math.min(N, start + CHUNK)} frames, ${((performance.now() - t0) / 1000).toFixed(0)} s`);
    }
    out.upload_1M_s = +((performance.now() - t0) / 1000).toFixed(1);
  }
  out.frames = (await api(`${DS}/status`)).frames;

  // ---- The browser. ----
  const browser = await launch();
  const page = await newPage(browser, { width: 1280, height: 800 });
  await page.addInitScript(() => {
    window.__long = [];
    new PerformanceObserver((l) => window.__long.push(...l.getEntries().map((e) => ({ at: e.startTime, ms: e.duration })))).observe({ type: "longtask", buffered: true });
  });
  const paintedTiles = (min) =>
    page.waitForFunction(
      (n) => [...document.querySelectorAll(".tile img")].filter((i) => i.complete && i.naturalWidth > 0).length >= n && document.querySelectorAll(".tile.placeholder").length === 0,
      min,
      { timeout: 60_000, polling: "raf" },
    );

  await signIn(page, url, token);
  await page.waitForSelector("a.ds-link:has-text('million')");
  await page.waitForFunction(() => /1,000,000/.test(document.querySelector("table.datasets")?.textContent ?? ""), null, { timeout: 60_000 });
  let t = performance.now();
  await page.click("a.ds-link:has-text('million')");
  await page.waitForSelector(".tile[data-frame]", { timeout: 60_000 });
  out.first_tiles_ms = Math.round(performance.now() - t);
  await paintedTiles(12);
  out.first_grid_paint_ms = Math.round(performance.now() - t);
  out.count_text = await page.textContent(".count");

  // Scroll 50 screens, one at a time, as a user paging down would.
  await page.evaluate(() => (window.__long = []));
  let maxTiles = 0;
  let maxNodes = 0;
  t = performance.now();
  for (let i = 0; i < 50; i++) {
    await page.evaluate((i) => {
      const g = document.querySelector(".grid-scroll");
      (window.__steps ??= []).push([i, Math.round(performance.now())]);
      g.scrollTop += g.clientHeight;
    }, i);
    await page.waitForTimeout(120);
    const n = await page.evaluate(() => [document.querySelectorAll(".tile").length, document.getElementsByTagName("*").length]);
    maxTiles = Math.max(maxTiles, n[0]);
    maxNodes = Math.max(maxNodes, n[1]);
  }
  await paintedTiles(12);
  out.scroll_50_pages_ms = Math.round(performance.now() - t);
  out.scroll_max_tile_nodes = maxTiles;
  out.scroll_max_dom_nodes = maxNodes;
  const longs = await page.evaluate(() => window.__long);
  out.scroll_long_tasks = longs.length;
  out.scroll_longest_task_ms = Math.round(Math.max(0, ...longs.map((l) => l.ms)));
  if (process.env.BENCH_DEBUG) log(JSON.stringify({ longs, steps: await page.evaluate(() => window.__steps) }));

  // Jump to the middle and to the end (dragging the scrollbar).
  for (const [name, frac] of [["jump_middle_ms", 0.5], ["jump_end_ms", 1]]) {
    t = performance.now();
    await page.evaluate((f) => {
      const g = document.querySelector(".grid-scroll");
      g.scrollTop = (g.scrollHeight - g.clientHeight) * f;
    }, frac);
    await page.waitForTimeout(50);
    await paintedTiles(8);
    out[name] = Math.round(performance.now() - t);
  }
  out.frame_at_end = await page.getAttribute(".tile[data-frame]:last-of-type", "data-frame");

  // Filter changes: time from the change to a repainted grid (new tiles with decoded images), and to
  // the exact count (the server counts a filter over a million frames in about a second).
  for (const [name, act] of [
    ["filter_class", () => page.selectOption("select[name=class]", "circle")],
    ["filter_meta", async () => {
      await page.fill("input[name=meta_key]", "split");
      await page.fill("input[name=meta_value]", "val");
      await page.press("input[name=meta_value]", "Enter");
    }],
  ]) {
    await page.evaluate(() => {
      window.__long = [];
      document.querySelectorAll(".tile").forEach((t) => (t.dataset.old = "1"));
    });
    const before = await page.textContent(".count");
    t = performance.now();
    await act();
    await page.waitForFunction(
      () => [...document.querySelectorAll(".tile:not([data-old]) img")].filter((i) => i.complete && i.naturalWidth > 0).length >= 8,
      null,
      { timeout: 60_000, polling: "raf" },
    );
    out[`${name}_repaint_ms`] = Math.round(performance.now() - t);
    await page.waitForFunction((b) => { const c = document.querySelector(".count")?.textContent; return c && c !== b && !/counting/.test(c); }, before, { timeout: 60_000, polling: "raf" });
    out[`${name}_count_ms`] = Math.round(performance.now() - t);
    out[`${name}_count`] = await page.textContent(".count");
    out[`${name}_longest_task_ms`] = Math.round(Math.max(0, ...(await page.evaluate(() => window.__long)).map((l) => l.ms)));
  }

  // A cold load of a shared link deep into the dataset (app boot included).
  const p2 = await newPage(browser, { width: 1280, height: 800 });
  await signIn(p2, url, token);
  t = performance.now();
  await p2.goto(`${url}/p/shapes/d/million?at=654321`);
  await p2.waitForFunction(() => [...document.querySelectorAll(".tile img")].filter((i) => i.complete && i.naturalWidth > 0).length >= 8, null, { timeout: 60_000, polling: "raf" });
  out.cold_deep_link_ms = Math.round(performance.now() - t);
  out.deep_link_first_frame = await p2.getAttribute(".tile[data-frame]", "data-frame");
  out.errors = [...page.errors, ...p2.errors];
  await browser.close();
} finally {
  await stop(child);
  images.close();
}
console.log(JSON.stringify(out, null, 2));
