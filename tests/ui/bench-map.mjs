// Measures the map view in headless Chromium (SwiftShader WebGL2) at 1,000,000 points (not run by the
// suite):   node tests/ui/bench-map.mjs
// Reuses the 1M-frame dataset `million` that tests/ui/bench.mjs makes in BENCH_DIR (default
// /tmp/milkglass-bench; run bench.mjs first), and uploads 8-d frame embeddings once (clustered, so the
// map has structure). Reports: first map paint, pan/zoom frame times (p50/p95), and a lasso of about
// 100k points resolved to ids (time and long tasks).
// Environment: BENCH_FRAMES (how many points), MILKGLASS_BIN (the server), MILKGLASS_WEB_DIST=1 (the app
// as web/dist holds it now, not the copy a release binary embedded when it was built; see harness.mjs),
// BENCH_POINTS_DELAY_MS (hold the points back), BENCH_PROFILE=1 (a CPU profile of the first paint).
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { BIN, appServer, freePort, launch, newPage, signIn, spawnUntil, stop } from "./harness.mjs";

const DIR = process.env.BENCH_DIR ?? "/tmp/milkglass-bench";
const N = Number(process.env.BENCH_FRAMES ?? 1_000_000);
const CHUNK = 50_000;
const out = {};
const log = (...a) => console.error("#", ...a);
if (!existsSync(join(DIR, "demo-tokens.json"))) throw new Error(`no ${DIR}: run tests/ui/bench.mjs first (it makes the 1M-frame dataset)`);
const token = JSON.parse(readFileSync(join(DIR, "demo-tokens.json"), "utf8")).admin.token;
const [http, flight] = [await freePort(), await freePort()];
const { child } = await spawnUntil(BIN, ["serve", "--data-dir", DIR, "--http-addr", `127.0.0.1:${http}`, "--flight-addr", `127.0.0.1:${flight}`], /^milkglass serving/);
const url = `http://127.0.0.1:${http}`;
appServer(url); // MILKGLASS_WEB_DIST=1 serves the app from web/dist (see harness.mjs)
const api = async (path, init = {}) => {
  const r = await fetch(url + path, { ...init, headers: { Authorization: `Bearer ${token}`, ...(init.headers ?? {}) } });
  const t = await r.text();
  if (!r.ok) throw new Error(`${path}: ${r.status} ${t.slice(0, 300)}`);
  return t ? JSON.parse(t) : null;
};
const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? Math.round(s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]) : null;
};

try {
  const DS = "/api/projects/shapes/datasets/million";
  const status = await api(`${DS}/status`);
  out.frames = status.frames;
  if (status.frame_embeddings < N) {
    // Ten clusters in 8-d, with a deterministic generator (the same map every run).
    let seed = 42;
    const rnd = () => ((seed = (seed * 1664525 + 1013904223) >>> 0) / 2 ** 32);
    const gauss = () => Math.sqrt(-2 * Math.log(rnd() + 1e-12)) * Math.cos(2 * Math.PI * rnd());
    const centres = Array.from({ length: 10 }, () => Array.from({ length: 8 }, () => gauss() * 4));
    const t0 = performance.now();
    for (let start = 0; start < N; start += CHUNK) {
      let body = "";
      for (let i = start; i < Math.min(N, start + CHUNK); i++) {
        const c = centres[i % 10];
        body += JSON.stringify({ frame_id: `f${String(i).padStart(7, "0")}`, embedding: c.map((v) => +(v + gauss()).toFixed(4)) }) + "\n";
      }
      await api(`${DS}/embeddings`, { method: "POST", headers: { "content-type": "application/x-ndjson" }, body });
      log(`embeddings ${Math.min(N, start + CHUNK)}, ${((performance.now() - t0) / 1000).toFixed(0)} s`);
    }
    out.upload_embeddings_s = +((performance.now() - t0) / 1000).toFixed(1);
  }
  out.points = N;
  let t;

  const browser = await launch();
  const page = await newPage(browser, { width: 1280, height: 800 });
  await page.addInitScript(() => {
    window.__long = [];
    new PerformanceObserver((l) => window.__long.push(...l.getEntries().map((e) => ({ at: e.startTime, ms: e.duration })))).observe({ type: "longtask", buffered: true });
  });
  // BENCH_POINTS_DELAY_MS: the map's points held back that long (as a debug server's first PCA of 1M
  // vectors does, 55-80 s here), to check that a long wait does not make the first draw slow.
  const delay = Number(process.env.BENCH_POINTS_DELAY_MS ?? 0);
  if (delay) await page.route((u) => u.pathname.endsWith("/insights/map"), (r) => setTimeout(() => r.continue(), delay));
  await signIn(page, url, token);
  await page.goto(`${url}/p/shapes/d/million`);
  await page.waitForSelector(".tabs a[data-view=map]");
  // BENCH_PROFILE=1: a V8 CPU profile of the first paint, its top functions by self time on stderr.
  const cdp = process.env.BENCH_PROFILE ? await page.context().newCDPSession(page) : null;
  if (cdp) {
    await cdp.send("Profiler.enable");
    await cdp.send("Profiler.setSamplingInterval", { interval: 1000 });
    await cdp.send("Profiler.start");
  }
  // First paint: from the click on the Map tab to the first complete frame of every point on screen.
  t = performance.now();
  await page.click(".tabs a[data-view=map]");
  await page.waitForSelector(`canvas.map-canvas[data-points='${out.points}'][data-draws]`, { timeout: 900_000 });
  if (cdp) {
    await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
    const { profile } = await cdp.send("Profiler.stop");
    const self = new Map();
    const dt = profile.timeDeltas ?? [];
    const byId = new Map(profile.nodes.map((n) => [n.id, n]));
    (profile.samples ?? []).forEach((id, i) => {
      const f = byId.get(id).callFrame;
      const key = `${f.functionName || "(anonymous)"} ${f.url.split("/").pop()}:${f.lineNumber + 1}`;
      self.set(key, (self.get(key) ?? 0) + (dt[i] ?? 0) / 1000);
    });
    for (const [k, ms] of [...self].sort((a, b) => b[1] - a[1]).slice(0, 20)) log(`profile ${ms.toFixed(0).padStart(7)} ms  ${k}`);
  }
  // The browser's own share: from the points' arrival (the canvas learns the count) to that frame.
  await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
  out.paint_after_points_arrived_ms = await page.evaluate(() => Math.round(performance.now() - Number(document.querySelector("canvas.map-canvas").dataset.pointsAt)));
  await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
  out.first_map_paint_ms = Math.round(performance.now() - t);
  // Which build of the app ran (its hashed map chunk): the binary's own, or web/dist's with MILKGLASS_WEB_DIST=1.
  out.map_chunk = await page.evaluate(() => performance.getEntriesByType("resource").map((r) => r.name.split("/").pop()).find((n) => /^map-.*\.js$/.test(n)));
  await page.waitForSelector(".map-legend li.total", { timeout: 900_000 });
  out.coloured_with_legend_ms = Math.round(performance.now() - t);
  await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
  out.first_map_longest_task_ms = Math.round(Math.max(0, ...(await page.evaluate(() => window.__long)).map((l) => l.ms)));
  // The server's side alone, now that it has computed the layout once: the PCA points again.
  t = performance.now();
  const pts = await fetch(`${url}${DS}/insights/map?space=frames&layout=pca`, { headers: { Authorization: `Bearer ${token}` } });
  const xy = new Float32Array(await pts.arrayBuffer());
  out.server_map_pca_again_ms = Math.round(performance.now() - t);

  // Pan and zoom: frame intervals (rAF to rAF) while input keeps coming.
  const box = await page.locator("canvas.map-canvas").boundingBox();
  const [cx, cy] = [box.x + box.width / 2, box.y + box.height / 2];
  await page.evaluate(() => {
    window.__frames = [];
    window.__recording = true;
    const loop = (ts) => {
      window.__frames.push(ts);
      if (window.__recording) requestAnimationFrame(loop);
    };
    requestAnimationFrame(loop);
  });
  await page.mouse.move(cx, cy);
  await page.mouse.down();
  for (let i = 0; i < 25; i++) await page.mouse.move(cx + 8 * i, cy + 3 * i);
  await page.mouse.up();
  for (let i = 0; i < 25; i++) {
    await page.mouse.wheel(0, i < 12 ? -120 : 120);
    await page.waitForTimeout(30);
  }
  const frames = await page.evaluate(() => {
    window.__recording = false;
    return window.__frames;
  });
  const intervals = frames.slice(1).map((f, i) => f - frames[i]);
  out.pan_zoom_frames = intervals.length;
  out.pan_zoom_frame_p50_ms = pct(intervals, 50);
  out.pan_zoom_frame_p95_ms = pct(intervals, 95);
  out.pan_zoom_frame_max_ms = pct(intervals, 100);

  // A full redraw once the view rests (every point).
  await page.waitForTimeout(400);
  await page.keyboard.press("0");
  await page.waitForTimeout(1500);
  out.full_draw_call_ms = Number(await page.getAttribute("canvas.map-canvas", "data-draw-ms"));

  // Lasso about 100k points: a circle around the fullest spot, its radius found here from the same
  // map coordinates the page uses.
  const view = await page.evaluate(() => ({ ...document.querySelector("canvas.map-canvas").dataset }));
  const toScreen = (i) => [box.width / 2 + (xy[2 * i] - Number(view.cx)) * Number(view.scale), box.height / 2 - (xy[2 * i + 1] - Number(view.cy)) * Number(view.scale)];
  const centre = toScreen(0);
  const d2 = new Float64Array(out.points);
  for (let i = 0; i < out.points; i++) {
    const [x, y] = toScreen(i);
    d2[i] = (x - centre[0]) ** 2 + (y - centre[1]) ** 2;
  }
  const sorted = Float64Array.from(d2).sort();
  const R = Math.sqrt(sorted[Math.min(sorted.length - 1, 100_000)]);
  out.lasso_radius_px = Math.round(R);
  await page.click("button[name=lasso]");
  await page.evaluate(() => (window.__long = []));
  const [sx, sy] = [box.x + centre[0], box.y + centre[1]];
  await page.mouse.move(sx + R, sy);
  await page.mouse.down();
  for (let k = 1; k <= 48; k++) await page.mouse.move(sx + R * Math.cos((k * Math.PI) / 24), sy + R * Math.sin((k * Math.PI) / 24));
  const before = Number((await page.getAttribute("canvas.map-canvas", "data-select-ms")) ?? -1);
  t = performance.now();
  await page.mouse.up();
  await page.waitForSelector(".map-selection", { timeout: 60_000 });
  out.lasso_resolved_ms = Math.round(performance.now() - t);
  out.lasso_selected = Number(await page.getAttribute("canvas.map-canvas", "data-selected"));
  out.lasso_worker_ms = Number(await page.getAttribute("canvas.map-canvas", "data-select-ms"));
  await page.waitForTimeout(1500); // the recoloured full frame
  const longs = await page.evaluate(() => window.__long);
  out.lasso_long_tasks = longs.length;
  out.lasso_longest_task_ms = Math.round(Math.max(0, ...longs.map((l) => l.ms)));
  void before;
  await page.screenshot({ path: "/tmp/milkglass-bench-map.png" });
  out.errors = page.errors;
  await browser.close();
} finally {
  await stop(child);
}
console.log(JSON.stringify(out, null, 2));
