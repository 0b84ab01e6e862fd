// The map's worker: ids and attributes (parsed here: 1M ids are 16 MB of JSON), a uniform grid over
// the points for hover and lasso, and the colour buffer. See map-protocol.ts.
import type { ClassDef } from "../api";
import type { FromWorker, LegendEntry, ToWorker } from "./map-protocol";

let ids: string[] = [];
let loaded = false; // the ids and attributes have come
const attributes = new Map<string, unknown[]>();
let positions: Float32Array<ArrayBufferLike> = new Float32Array(0);
let colorBy = "class";
let classes: ClassDef[] = [];
let selection: Uint8Array | null = null;

// ---- A uniform grid over the points: cell -> the points in it (counting sort). ----
let G = 1;
let minX = 0, minY = 0, cellW = 1, cellH = 1;
let cellStart = new Uint32Array(2);
let order = new Uint32Array(0);

function buildIndex() {
  const n = positions.length / 2;
  G = Math.max(1, Math.min(1024, Math.ceil(Math.sqrt(n / 4))));
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (let i = 0; i < n; i++) {
    const x = positions[2 * i], y = positions[2 * i + 1];
    if (x < x0) x0 = x;
    if (x > x1) x1 = x;
    if (y < y0) y0 = y;
    if (y > y1) y1 = y;
  }
  if (!(x1 >= x0)) (x0 = 0), (x1 = 1), (y0 = 0), (y1 = 1);
  minX = x0;
  minY = y0;
  cellW = (x1 - x0) / G || 1;
  cellH = (y1 - y0) / G || 1;
  const cellOf = new Uint32Array(n);
  const counts = new Uint32Array(G * G + 1);
  for (let i = 0; i < n; i++) {
    const c = cell(positions[2 * i], positions[2 * i + 1]);
    cellOf[i] = c;
    counts[c + 1]++;
  }
  for (let c = 0; c < G * G; c++) counts[c + 1] += counts[c];
  cellStart = counts.slice();
  order = new Uint32Array(n);
  const fill = counts; // reused as the write cursor per cell
  for (let i = 0; i < n; i++) order[fill[cellOf[i]]++] = i;
}
const clampCell = (v: number) => Math.max(0, Math.min(G - 1, Math.floor(v)));
const cell = (x: number, y: number) => clampCell((y - minY) / cellH) * G + clampCell((x - minX) / cellW);

/** Point indices inside a polygon (data coordinates, flat [x0, y0, x1, y1, ...]), by even-odd rule. */
function inside(poly: number[]): Uint32Array {
  const m = poly.length / 2;
  let px0 = Infinity, py0 = Infinity, px1 = -Infinity, py1 = -Infinity;
  for (let j = 0; j < m; j++) {
    px0 = Math.min(px0, poly[2 * j]);
    px1 = Math.max(px1, poly[2 * j]);
    py0 = Math.min(py0, poly[2 * j + 1]);
    py1 = Math.max(py1, poly[2 * j + 1]);
  }
  const out: number[] = [];
  const cx0 = clampCell((px0 - minX) / cellW), cx1 = clampCell((px1 - minX) / cellW);
  const cy0 = clampCell((py0 - minY) / cellH), cy1 = clampCell((py1 - minY) / cellH);
  for (let cy = cy0; cy <= cy1; cy++) {
    for (let cx = cx0; cx <= cx1; cx++) {
      const c = cy * G + cx;
      for (let k = cellStart[c]; k < cellStart[c + 1]; k++) {
        const i = order[k];
        const x = positions[2 * i], y = positions[2 * i + 1];
        if (x < px0 || x > px1 || y < py0 || y > py1) continue;
        let inPoly = false;
        for (let a = 0, b = m - 1; a < m; b = a++) {
          const ya = poly[2 * a + 1], yb = poly[2 * b + 1];
          if (ya > y !== yb > y) {
            const xa = poly[2 * a], xb = poly[2 * b];
            if (x < ((xb - xa) * (y - ya)) / (yb - ya) + xa) inPoly = !inPoly;
          }
        }
        if (inPoly) out.push(i);
      }
    }
  }
  // In point order (the map's order, which is the ids' order), not cell order.
  return Uint32Array.from(out).sort();
}

function nearest(x: number, y: number, r: number): number {
  let best = -1, bestD = r * r;
  const cx0 = clampCell((x - r - minX) / cellW), cx1 = clampCell((x + r - minX) / cellW);
  const cy0 = clampCell((y - r - minY) / cellH), cy1 = clampCell((y + r - minY) / cellH);
  for (let cy = cy0; cy <= cy1; cy++)
    for (let cx = cx0; cx <= cx1; cx++) {
      const c = cy * G + cx;
      for (let k = cellStart[c]; k < cellStart[c + 1]; k++) {
        const i = order[k];
        const dx = positions[2 * i] - x, dy = positions[2 * i + 1] - y;
        const d = dx * dx + dy * dy;
        if (d <= bestD) (bestD = d), (best = i);
      }
    }
  return best;
}

// ---- Colours. ----
const GREY: [number, number, number] = [150, 150, 150];
const CATEGORICAL: [number, number, number][] = [
  [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
  [140, 86, 75], [227, 119, 194], [188, 189, 34], [23, 190, 207], [90, 90, 90],
];
// A perceptually ordered ramp (viridis stops): low values dark blue-purple, high values yellow.
const RAMP: [number, number, number][] = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
function ramp(t: number): [number, number, number] {
  const x = Math.max(0, Math.min(1, t)) * (RAMP.length - 1);
  const i = Math.min(RAMP.length - 2, Math.floor(x)), f = x - i;
  const a = RAMP[i], b = RAMP[i + 1];
  return [Math.round(a[0] + (b[0] - a[0]) * f), Math.round(a[1] + (b[1] - a[1]) * f), Math.round(a[2] + (b[2] - a[2]) * f)];
}

function colors(): { colors: Uint8Array; legend: LegendEntry[]; ramp: boolean; none: number } {
  const n = positions.length / 2;
  const out = new Uint8Array(n * 4);
  const values = attributes.get(colorBy) ?? [];
  const legend: LegendEntry[] = [];
  let none = 0;
  const put = (i: number, c: [number, number, number]) => {
    out[4 * i] = c[0];
    out[4 * i + 1] = c[1];
    out[4 * i + 2] = c[2];
    // Outside a selection, points fade (they stay for context).
    out[4 * i + 3] = selection && !selection[i] ? 40 : 255;
  };
  let numeric = true, any = false, lo = Infinity, hi = -Infinity;
  for (let i = 0; i < n; i++) {
    const v = values[i];
    if (v == null) continue;
    any = true;
    if (typeof v !== "number") numeric = false;
    else (lo = Math.min(lo, v)), (hi = Math.max(hi, v));
  }
  if (colorBy === "class" || !numeric || !any) {
    // Categories: the class map's colours for classes, a palette for the 9 commonest other values.
    const counts = new Map<string, number>();
    for (let i = 0; i < n; i++) {
      const v = values[i];
      if (v != null) counts.set(String(v), (counts.get(String(v)) ?? 0) + 1);
    }
    const palette = new Map<string, [number, number, number]>();
    if (colorBy === "class") for (const c of classes) palette.set(c.name, c.color);
    else [...counts.entries()].sort((a, b) => b[1] - a[1]).slice(0, 9).forEach(([k], j) => palette.set(k, CATEGORICAL[j]));
    let other = 0;
    for (let i = 0; i < n; i++) {
      const v = values[i];
      if (v == null) {
        none++;
        put(i, GREY);
        continue;
      }
      const c = palette.get(String(v));
      if (!c) other++;
      put(i, c ?? CATEGORICAL[9]);
    }
    for (const [k, c] of palette) if (counts.get(k)) legend.push({ label: k, color: c, count: counts.get(k)! });
    legend.sort((a, b) => b.count - a.count);
    if (other) legend.push({ label: "other", color: CATEGORICAL[9], count: other });
    return { colors: out, legend, ramp: false, none };
  }
  // Numbers: a ramp from the lowest to the highest value, the legend in five equal bins.
  const span = hi - lo || 1;
  const bins = 5;
  const binCounts = new Array(bins).fill(0);
  for (let i = 0; i < n; i++) {
    const v = values[i] as number | null;
    if (v == null) {
      none++;
      put(i, GREY);
      continue;
    }
    const t = (v - lo) / span;
    binCounts[Math.min(bins - 1, Math.floor(t * bins))]++;
    put(i, ramp(t));
  }
  const integer = [...values].every((v) => v == null || Number.isInteger(v));
  const f = (v: number) => (integer ? String(Math.round(v)) : v.toFixed(2));
  for (let b = 0; b < bins; b++) {
    const a = lo + (span * b) / bins, z = lo + (span * (b + 1)) / bins;
    legend.push({ label: hi === lo ? f(lo) : `${f(a)} – ${f(z)}`, color: ramp((b + 0.5) / bins), count: binCounts[b] });
    if (hi === lo) break;
  }
  return { colors: out, legend, ramp: true, none };
}

function sendColors() {
  // Not before the ids and attributes are in: until then the map draws its points in one grey.
  if (positions.length === 0 || !loaded) return;
  const c = colors();
  post({ type: "colors", ...c, by: colorBy }, [c.colors.buffer]);
}

const post = (m: FromWorker, transfer: Transferable[] = []) => (self as unknown as Worker).postMessage(m, transfer);

async function loadIds(url: string, token: string | null, wanted: string[]) {
  // Ask only for what is not here yet; a metadata key typed later costs one more request, not a reload.
  const need = wanted.filter((a) => !attributes.has(a));
  if (ids.length > 0 && need.length === 0) return { missing: [] as string[] };
  const headers = token ? { Authorization: `Bearer ${token}` } : undefined;
  const ask = async (attrs: string[]) => {
    const u = new URL(url, self.location.href);
    if (attrs.length) u.searchParams.set("attributes", attrs.join(","));
    else u.searchParams.delete("attributes");
    if (!attrs.includes("agreement")) u.searchParams.delete("inference_set");
    return fetch(u, { headers });
  };
  let r = await ask(need);
  const missing: string[] = [];
  if (r.status === 400 && need.includes("agreement")) {
    // A server without the agreement attribute: colour by the others.
    missing.push("agreement");
    r = await ask(need.filter((a) => a !== "agreement"));
  }
  if (!r.ok) {
    const body = await r.json().catch(() => null);
    throw new Error(body?.error?.message ?? `${r.status} ${r.statusText}`);
  }
  const data = (await r.json()) as { ids: string[]; attributes: Record<string, unknown[]> };
  ids = data.ids;
  for (const [k, v] of Object.entries(data.attributes ?? {})) attributes.set(k, v);
  loaded = true;
  return { missing };
}

self.onmessage = async (e: MessageEvent<ToWorker>) => {
  const m = e.data;
  try {
    switch (m.type) {
      case "ids": {
        const { missing } = await loadIds(m.url, m.token, m.attributes);
        post({ type: "ids", count: ids.length, attributes: [...attributes.keys()], missing });
        sendColors();
        break;
      }
      case "positions":
        positions = m.positions;
        selection = null;
        buildIndex();
        sendColors();
        break;
      case "color":
        colorBy = m.by;
        classes = m.classes;
        sendColors();
        break;
      case "hover": {
        const i = nearest(m.x, m.y, m.radius);
        const values: Record<string, unknown> = {};
        if (i >= 0) for (const [k, v] of attributes) values[k] = v[i];
        post({ type: "hover", seq: m.seq, index: i, id: i >= 0 ? (ids[i] ?? null) : null, values });
        break;
      }
      case "select": {
        const t0 = performance.now();
        const hit = inside(m.polygon);
        selection = new Uint8Array(positions.length / 2);
        const chosen = new Array<string>(hit.length);
        for (let k = 0; k < hit.length; k++) {
          selection[hit[k]] = 1;
          chosen[k] = ids[hit[k]];
        }
        post({ type: "selected", seq: m.seq, count: hit.length, ids: chosen, ms: performance.now() - t0 });
        sendColors();
        break;
      }
      case "clear":
        selection = null;
        sendColors();
        break;
    }
  } catch (err) {
    post({ type: "error", message: (err as Error).message, during: m.type });
  }
};
