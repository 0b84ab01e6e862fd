// The map view: every frame (or label crop) as a point of the 2-D embedding map, drawn with WebGL2
// points (points-gl.ts); colour by class, agreement, label count or any metadata key, with a legend;
// pan (drag), zoom (wheel), hover for the id and thumbnail, lasso or box (Shift) selection resolved in
// a worker (map.worker.ts); the selection opens in the grid or goes to a segment.
import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import { api, enc, token, type FrameDetail, type Project } from "../api";
import { navigate, withQuery } from "../route";
import { resolveSources } from "../raw/resolve";
import { Empty, ErrorBox, fmt, isTyping } from "../ui";
import { primarySensor } from "../explorer/tile";
import { putList } from "../explorer/lists";
import { SegmentPicker } from "../explorer/segment-picker";
import type { ViewProps } from "../explorer/explorer";
import type { FromWorker, LegendEntry, ToWorker } from "./map-protocol";
import { PointsRenderer, type ViewTransform } from "./points-gl";

type Layout = "pca" | "umap";
type Space = "frames" | "labels";

/** How many points and where they lie: all the main thread keeps of them. */
interface Bounds {
  n: number;
  x0: number;
  y0: number;
  x1: number;
  y1: number;
}

function bounds(xy: Float32Array): Bounds {
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (let i = 0; i < xy.length; i += 2) {
    const x = xy[i], y = xy[i + 1];
    if (x < x0) x0 = x;
    if (x > x1) x1 = x;
    if (y < y0) y0 = y;
    if (y > y1) y1 = y;
  }
  return { n: xy.length / 2, x0, y0, x1, y1 };
}

/** The map's points: little-endian f32 pairs, as many as `x-milkglass-points` says. */
async function fetchPoints(url: string, signal: AbortSignal): Promise<Float32Array> {
  const r = await fetch(url, { headers: token.value ? { Authorization: `Bearer ${token.value}` } : {}, signal });
  if (!r.ok) {
    const body = await r.json().catch(() => null);
    throw new Error(body?.error?.message ?? `${r.status} ${r.statusText}`);
  }
  const buf = await r.arrayBuffer();
  const n = Number(r.headers.get("x-milkglass-points") ?? buf.byteLength / 8);
  if (n * 8 !== buf.byteLength) throw new Error(`the map answered ${buf.byteLength} bytes for ${n} points`);
  return new Float32Array(buf); // the platform is little-endian wherever WebGL2 runs
}

export function MapView({ base, meta, view }: ViewProps) {
  const q = new URLSearchParams(location.search);
  const space: Space = q.get("space") === "labels" ? "labels" : "frames";
  return <MapBody key={space} base={base} project={meta.project} space={space} inferenceSet={view.inferenceSet} hasSets={meta.sets.length > 0} />;
}

interface Selection {
  count: number;
  ids: string[];
  ms: number;
}

function MapBody({ base, project, space, inferenceSet, hasSets }: { base: string; project: Project; space: Space; inferenceSet: string | null; hasSets: boolean }) {
  const q = new URLSearchParams(location.search);
  const layout: Layout = q.get("layout") === "umap" ? "umap" : "pca";
  const colorBy = q.get("color") || "class";
  const canvas = useRef<HTMLCanvasElement>(null);
  const renderer = useRef<PointsRenderer | null>(null);
  const worker = useRef<Worker | null>(null);
  // What the main thread keeps of the points: how many and their bounds. The positions themselves go
  // to the GPU and then to the worker (transferred, not copied).
  const points = useRef<Bounds | null>(null);
  const tf = useRef<ViewTransform>({ cx: 0, cy: 0, scale: 1 });
  const fitScale = useRef(1);
  const [shownLayout, setShownLayout] = useState<Layout | null>(null);
  const shown = useRef<Layout | null>(null);
  const [count, setCount] = useState<number | null>(null);
  const [idsReady, setIdsReady] = useState(false);
  const [missing, setMissing] = useState<string[]>([]);
  const [legend, setLegend] = useState<{ entries: LegendEntry[]; none: number; ramp: boolean; by: string } | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [umapWait, setUmapWait] = useState<number | null>(null); // seconds waited for UMAP, null when not waiting
  const [tool, setTool] = useState<"pan" | "lasso">("pan");
  const [path, setPath] = useState<[number, number][] | null>(null);
  const [box, setBox] = useState(false);
  const [selection, setSelection] = useState<Selection | null>(null);
  const [hover, setHover] = useState<{ x: number; y: number; id: string; values: Record<string, unknown> } | null>(null);
  const [picking, setPicking] = useState(false);
  const [notice, setNotice] = useState<string | null>(null);
  const [metaKey, setMetaKey] = useState(colorBy.startsWith("meta.") ? colorBy.slice(5) : "");
  const seq = useRef(0);

  // ---- Drawing: on demand, one frame at a time; a subsample while the view moves. ----
  const raf = useRef(0);
  const idle = useRef(0);
  const movingFlag = useRef(false);
  const draws = useRef(0);
  const pointSize = () => {
    const n = points.current?.n ?? 0;
    const base = n <= 2_000 ? 6 : n <= 20_000 ? 4 : n <= 200_000 ? 2.5 : 1.5;
    return Math.min(12, base * Math.max(1, Math.sqrt(tf.current.scale / fitScale.current)));
  };
  const requestDraw = (moving: boolean) => {
    movingFlag.current = moving;
    if (!raf.current)
      raf.current = requestAnimationFrame(() => {
        raf.current = 0;
        const r = renderer.current;
        if (!r) return;
        const t0 = performance.now();
        r.draw(tf.current, { moving: movingFlag.current, size: pointSize() });
        draws.current++;
        const c = canvas.current!;
        // What the tests and the benchmark read: the transform, how many draws, how long the last took.
        c.dataset.cx = String(tf.current.cx);
        c.dataset.cy = String(tf.current.cy);
        c.dataset.scale = String(tf.current.scale);
        c.dataset.draws = String(draws.current);
        c.dataset.full = movingFlag.current ? "0" : "1";
        c.dataset.drawMs = (performance.now() - t0).toFixed(1);
      });
    clearTimeout(idle.current);
    if (moving) idle.current = window.setTimeout(() => requestDraw(false), 180);
  };

  const fit = (b: Bounds) => {
    const c = canvas.current!;
    const w = c.clientWidth || 800, h = c.clientHeight || 600;
    const scale = b.n ? 0.9 * Math.min(w / (b.x1 - b.x0 || 1), h / (b.y1 - b.y0 || 1)) : 1;
    tf.current = { cx: b.n ? (b.x0 + b.x1) / 2 : 0, cy: b.n ? (b.y0 + b.y1) / 2 : 0, scale };
    fitScale.current = scale;
  };

  // One short task: the positions go to the GPU (one buffer upload), their bounds are taken, and the
  // array itself is handed to the worker (which indexes it for hover and lasso). No copy, no per-point
  // objects; colours follow from the worker once the ids are in.
  const show = (xy: Float32Array, which: Layout) => {
    canvas.current!.dataset.pointsAt = performance.now().toFixed(0); // for the benchmark
    renderer.current!.setPositions(xy);
    points.current = bounds(xy);
    fit(points.current);
    setCount(xy.length / 2);
    setShownLayout(which);
    shown.current = which;
    setSelection(null);
    post({ type: "positions", positions: xy }, [xy.buffer]);
    requestDraw(false);
  };
  const post = (m: ToWorker, transfer: Transferable[] = []) => worker.current?.postMessage(m, transfer);

  // ---- The worker and the renderer live as long as the view. ----
  useEffect(() => {
    try {
      renderer.current = new PointsRenderer(canvas.current!);
    } catch (e) {
      setError(e);
      return;
    }
    const w = new Worker(new URL("./map.worker.ts", import.meta.url), { type: "module" });
    worker.current = w;
    w.onmessage = (e: MessageEvent<FromWorker>) => {
      const m = e.data;
      if (m.type === "colors") {
        if (points.current && m.colors.length === points.current.n * 4) {
          renderer.current?.setColors(m.colors);
          requestDraw(false);
        }
        setLegend({ entries: m.legend, none: m.none, ramp: m.ramp, by: m.by });
      } else if (m.type === "ids") {
        setIdsReady(true);
        setMissing(m.missing);
      } else if (m.type === "hover") {
        if (m.seq === seq.current && m.id) setHover((h) => (h ? { ...h, id: m.id!, values: m.values } : null));
        else if (m.seq === seq.current) setHover(null);
      } else if (m.type === "selected") {
        setSelection({ count: m.count, ids: m.ids, ms: m.ms });
        canvas.current!.dataset.selected = String(m.count);
        canvas.current!.dataset.selectMs = m.ms.toFixed(1);
      } else if (m.type === "error") setError(new Error(`${m.during}: ${m.message}`));
    };
    return () => {
      w.terminate();
      cancelAnimationFrame(raf.current);
      clearTimeout(idle.current);
      renderer.current = null;
    };
  }, []);

  // ---- Points: PCA at once; UMAP (seconds on big data) replaces it when it arrives. ----
  useEffect(() => {
    if (error) return;
    const ctl = new AbortController();
    const url = (l: Layout) => `${base}/insights/map?space=${space}&layout=${l}`;
    (async () => {
      if (!points.current) show(await fetchPoints(url("pca"), ctl.signal), "pca");
      if (layout === "umap" && shown.current !== "umap") {
        const t0 = performance.now();
        setUmapWait(0);
        const tick = window.setInterval(() => setUmapWait(Math.round((performance.now() - t0) / 1000)), 1000);
        try {
          show(await fetchPoints(url("umap"), ctl.signal), "umap");
        } finally {
          clearInterval(tick);
          setUmapWait(null);
        }
      } else if (layout === "pca" && shown.current === "umap") show(await fetchPoints(url("pca"), ctl.signal), "pca");
    })().catch((e) => e.name !== "AbortError" && setError(e));
    return () => ctl.abort();
  }, [base, space, layout]);

  // ---- Ids and attributes, then colours (all in the worker). ----
  const wanted = useMemo(() => {
    const a = ["class", "label_count"];
    if (hasSets && inferenceSet && space === "frames") a.push("agreement");
    if (colorBy.startsWith("meta.")) a.push(colorBy);
    return a;
  }, [hasSets, inferenceSet, space, colorBy]);
  // Asked for once the points are in: at a million frames the ids and attributes (about 19 MB of JSON)
  // would otherwise share the server and the browser's CPU with the points, which the first paint needs.
  const havePoints = count != null;
  useEffect(() => {
    if (!havePoints) return;
    const u = `${base}/insights/map/ids?space=${space}${inferenceSet ? `&inference_set=${enc(inferenceSet)}` : ""}`;
    post({ type: "ids", url: u, token: token.value, attributes: wanted });
  }, [havePoints, base, space, inferenceSet, wanted.join(",")]);
  useEffect(() => post({ type: "color", by: colorBy, classes: project.classes }), [colorBy, project]);

  // ---- Pointer input. ----
  const drag = useRef<{ mode: "pan" | "lasso" | "box"; x: number; y: number; cx: number; cy: number; pts: [number, number][] } | null>(null);
  const local = (e: { clientX: number; clientY: number }) => {
    const r = canvas.current!.getBoundingClientRect();
    return [e.clientX - r.left, e.clientY - r.top] as [number, number];
  };
  const toData = ([px, py]: [number, number]): [number, number] => {
    const c = canvas.current!;
    const t = tf.current;
    return [t.cx + (px - c.clientWidth / 2) / t.scale, t.cy - (py - c.clientHeight / 2) / t.scale];
  };
  const boxCorners = (a: [number, number], b: [number, number]): [number, number][] => [a, [b[0], a[1]], b, [a[0], b[1]]];

  const onPointerDown = (e: PointerEvent) => {
    if (e.button !== 0 || !points.current) return;
    const p = local(e);
    const mode = e.shiftKey ? "box" : tool;
    drag.current = { mode, x: p[0], y: p[1], cx: tf.current.cx, cy: tf.current.cy, pts: [p] };
    (e.currentTarget as HTMLElement).setPointerCapture(e.pointerId);
    setHover(null);
    if (mode !== "pan") {
      setBox(mode === "box");
      setPath([p]);
    }
  };
  const onPointerMove = (e: PointerEvent) => {
    const p = local(e);
    const d = drag.current;
    if (d?.mode === "pan") {
      tf.current = { ...tf.current, cx: d.cx - (p[0] - d.x) / tf.current.scale, cy: d.cy + (p[1] - d.y) / tf.current.scale };
      requestDraw(true);
    } else if (d) {
      if (d.mode === "box") d.pts = [d.pts[0], p];
      else d.pts.push(p);
      setPath(d.mode === "box" ? boxCorners(d.pts[0], p) : [...d.pts]);
    } else if (idsReady) {
      // Hover: the worker finds the nearest point within 8 px; only the newest answer counts.
      const [x, y] = toData(p);
      seq.current++;
      setHover((h) => ({ x: p[0], y: p[1], id: h?.id ?? "", values: h?.values ?? {} }));
      post({ type: "hover", x, y, radius: 8 / tf.current.scale, seq: seq.current });
    }
  };
  const onPointerUp = (e: PointerEvent) => {
    const d = drag.current;
    drag.current = null;
    if (!d) return;
    if (d.mode === "pan") return requestDraw(false);
    const pts = d.mode === "box" ? boxCorners(d.pts[0], d.pts[d.pts.length - 1] ?? local(e)) : d.pts;
    setPath(null);
    if (pts.length < 3 || !idsReady) return;
    const poly = pts.flatMap((p) => toData(p));
    canvas.current!.dataset.lasso = JSON.stringify(poly);
    post({ type: "select", polygon: poly, seq: ++seq.current });
  };
  const onWheel = (e: WheelEvent) => {
    e.preventDefault();
    const p = local(e);
    const [x, y] = toData(p);
    const s = Math.min(fitScale.current * 500, Math.max(fitScale.current / 4, tf.current.scale * Math.exp(-e.deltaY / 500)));
    const c = canvas.current!;
    // Zoom around the pointer: the data point under it stays under it.
    tf.current = { scale: s, cx: x - (p[0] - c.clientWidth / 2) / s, cy: y + (p[1] - c.clientHeight / 2) / s };
    requestDraw(true);
  };
  useEffect(() => {
    const c = canvas.current!;
    c.addEventListener("wheel", onWheel, { passive: false });
    const ro = new ResizeObserver(() => requestDraw(false));
    ro.observe(c);
    return () => {
      c.removeEventListener("wheel", onWheel);
      ro.disconnect();
    };
  }, []);

  // Keys: l lasso, p pan, Esc clears the selection, 0 fits the view.
  useEffect(() => {
    const h = (e: KeyboardEvent) => {
      if (isTyping(e.target) || e.altKey || e.ctrlKey || e.metaKey || picking) return;
      if (e.key === "l") setTool("lasso");
      else if (e.key === "p") setTool("pan");
      else if (e.key === "0" && points.current) {
        fit(points.current);
        requestDraw(false);
      } else if (e.key === "Escape") {
        setSelection(null);
        post({ type: "clear" });
      } else return;
      e.preventDefault();
    };
    addEventListener("keydown", h);
    return () => removeEventListener("keydown", h);
  }, [picking]);

  const setParam = (changes: Record<string, string | null>) => navigate(withQuery(changes), { replace: true });
  const legendTotal = legend ? legend.entries.reduce((s, e) => s + e.count, 0) + legend.none : 0;
  const noun = space === "frames" ? "frames" : "labels";
  return (
    <div class="map-view">
      <div class="map-bar">
        <label class="inline">
          Points
          <select name="space" value={space} onChange={(e) => setParam({ space: e.currentTarget.value === "frames" ? null : e.currentTarget.value })}>
            <option value="frames">frames</option>
            <option value="labels">labels (crops)</option>
          </select>
        </label>
        <label class="inline">
          Layout
          <select name="layout" value={layout} onChange={(e) => setParam({ layout: e.currentTarget.value === "pca" ? null : e.currentTarget.value })}>
            <option value="pca">PCA</option>
            <option value="umap">UMAP</option>
          </select>
        </label>
        <label class="inline">
          Colour by
          <select
            name="color"
            title={inferenceSet ? `agreement: share of a frame's labels matched by ${inferenceSet} at IoU ≥ 0.5` : undefined}
            value={colorBy.startsWith("meta.") ? "meta" : colorBy}
            onChange={(e) => {
              const v = e.currentTarget.value;
              setParam({ color: v === "class" ? null : v === "meta" ? (metaKey ? `meta.${metaKey}` : null) : v });
            }}
          >
            <option value="class">class</option>
            {space === "frames" && <option value="agreement" disabled={!inferenceSet || missing.includes("agreement")}>agreement</option>}
            <option value="label_count">label count</option>
            <option value="meta">metadata key…</option>
          </select>
        </label>
        <form
          class="inline"
          onSubmit={(e) => {
            e.preventDefault();
            if (metaKey.trim()) setParam({ color: `meta.${metaKey.trim()}` });
          }}
        >
          <input name="color_meta" placeholder="metadata key" value={metaKey} size={10} onInput={(e) => setMetaKey(e.currentTarget.value)} aria-label="colour by metadata key" />
        </form>
        <span class="tools" role="group" aria-label="tool">
          <button type="button" class={tool === "pan" ? "on" : ""} aria-pressed={tool === "pan"} onClick={() => setTool("pan")} title="drag to pan (p)">
            Pan
          </button>
          <button type="button" class={tool === "lasso" ? "on" : ""} aria-pressed={tool === "lasso"} name="lasso" onClick={() => setTool("lasso")} title="draw around points to select them (l)">
            Lasso
          </button>
        </span>
        <span class="muted">Shift-drag: box · wheel: zoom · <kbd>0</kbd> fit</span>
        <span class="spacer" />
        {umapWait != null && (
          <span class="muted" role="status">
            computing the UMAP layout… {umapWait} s (PCA shown meanwhile)
          </span>
        )}
        <span class="count">{count == null ? "loading points…" : `${fmt(count)} ${noun}${shownLayout ? ` · ${shownLayout.toUpperCase()}` : ""}`}</span>
      </div>
      {error != null && <ErrorBox error={error} />}
      <div class="map-main">
        <div class="map-stage">
          <canvas
            ref={canvas}
            class="map-canvas"
            data-points={count ?? undefined}
            aria-label={`map of ${count ?? 0} ${noun}; ${tool === "lasso" ? "drag to lasso" : "drag to pan"}, Shift-drag for a box, wheel to zoom`}
            style={{ cursor: tool === "lasso" ? "crosshair" : "grab" }}
            onPointerDown={onPointerDown}
            onPointerMove={onPointerMove}
            onPointerUp={onPointerUp}
            onPointerLeave={() => !drag.current && setHover(null)}
          />
          {path && (
            <svg class="map-lasso" aria-hidden="true">
              <polygon points={path.map((p) => p.join(",")).join(" ")} class={box ? "box" : ""} />
            </svg>
          )}
          {hover?.id && !drag.current && <HoverCard base={base} project={project} space={space} hover={hover} />}
          {count === 0 && <Empty>No embeddings in this dataset yet: upload frame embeddings (or run `embed`) to see the map.</Empty>}
          {count == null && !error && <div class="map-loading"><Waiting label="Loading the map…" /></div>}
        </div>
        <aside class="map-side" aria-label="legend">
          <h2>{legend?.by.startsWith("meta.") ? legend.by.slice(5) : (legend?.by ?? colorBy).replace("_", " ")}</h2>
          {!legend || !idsReady ? (
            <Waiting label="Loading ids…" />
          ) : (
            <ul class="legend map-legend">
              {legend.entries.map((e) => (
                <li key={e.label}>
                  <span class="swatch" style={{ background: `rgb(${e.color.join(",")})` }} />
                  <span class="grow">{e.label}</span>
                  <span class="num">{fmt(e.count)}</span>
                </li>
              ))}
              {legend.none > 0 && (
                <li>
                  <span class="swatch" style={{ background: "rgb(150,150,150)" }} />
                  <span class="grow muted">no value</span>
                  <span class="num">{fmt(legend.none)}</span>
                </li>
              )}
              <li class="total">
                <span class="grow">all</span>
                <span class="num">{fmt(legendTotal)}</span>
              </li>
            </ul>
          )}
          {missing.includes("agreement") && <p class="muted">This server does not answer agreement yet.</p>}
          {selection && (
            <div class="map-selection" role="status">
              <strong>
                {fmt(selection.count)} of {fmt(count ?? 0)} {noun} selected
              </strong>
              <span class="muted"> ({selection.ms.toFixed(0)} ms in the worker)</span>
              {space === "frames" && selection.count > 0 && (
                <div class="row wrap">
                  <button
                    type="button"
                    class="primary"
                    name="show_in_grid"
                    onClick={() => navigate(withQuery({ view: null, list: putList({ ids: selection.ids, title: `${fmt(selection.count)} frames selected on the map` }), at: null, frame: null, i: null, layout: null, color: null, space: null }))}
                  >
                    Show in grid
                  </button>
                  <button type="button" name="save_segment" onClick={() => setPicking(true)}>
                    Add to segment…
                  </button>
                </div>
              )}
              <button type="button" class="link" onClick={() => (setSelection(null), post({ type: "clear" }))}>
                clear selection (Esc)
              </button>
            </div>
          )}
          {notice && <p class="notice">{notice}</p>}
        </aside>
      </div>
      {picking && selection && (
        <SegmentPicker
          base={base}
          frameIds={selection.ids}
          onClose={() => setPicking(false)}
          onDone={(m) => {
            setPicking(false);
            setNotice(m);
          }}
        />
      )}
    </div>
  );
}

/**
 * A loading line that counts seconds instead of spinning. In headless Chromium on SwiftShader (no GPU:
 * the tests and benchmarks) a CSS spinner has the display compositor record 60 frames a second that are
 * not submitted to the GPU queue until something waits on it; the map's first WebGL draw is that
 * something, and it ran all of them in one main-thread task: 12-17 s after a 55-80 s wait for a
 * million points (a debug server's first PCA). One repaint a second leaves nothing to speak of.
 */
function Waiting({ label }: { label: string }) {
  const [s, setS] = useState(0);
  useEffect(() => {
    const t0 = performance.now();
    const tick = window.setInterval(() => setS(Math.floor((performance.now() - t0) / 1000)), 1000);
    return () => clearInterval(tick);
  }, []);
  return (
    <div class="state loading" role="status">
      {label}
      {s > 0 && <span class="muted"> {s} s</span>}
    </div>
  );
}

const frameCache = new Map<string, Promise<string | null>>();
/** The thumbnail URL of a frame: its primary image, resolved as the grid would. */
function thumbnail(base: string, project: Project, frameId: string): Promise<string | null> {
  if (!frameCache.has(frameId))
    frameCache.set(
      frameId,
      api<FrameDetail>(`${base}/frames/${enc(frameId)}`).then(async (f) => {
        const s = primarySensor(f as any);
        if (!s || (s.kind !== "image" && s.kind !== "image_overlay")) return null;
        return (await resolveSources(project, [s.url])).get(s.url)?.src ?? null;
      }),
    );
  return frameCache.get(frameId)!;
}

function HoverCard({ base, project, space, hover }: { base: string; project: Project; space: Space; hover: { x: number; y: number; id: string; values: Record<string, unknown> } }) {
  const [src, setSrc] = useState<string | null>(null);
  useEffect(() => {
    setSrc(null);
    if (space !== "frames") return;
    let live = true;
    // A short wait, so sweeping the pointer over the map does not fetch every frame on the way.
    const t = setTimeout(() => thumbnail(base, project, hover.id).then((s) => live && setSrc(s), () => undefined), 120);
    return () => {
      live = false;
      clearTimeout(t);
    };
  }, [hover.id]);
  const entries = Object.entries(hover.values).filter(([, v]) => v != null);
  return (
    <div class="map-hover" style={{ left: `${hover.x + 14}px`, top: `${hover.y + 14}px` }} role="tooltip">
      <div class="fid">{hover.id}</div>
      {space === "frames" && <div class="map-thumb">{src ? <img src={src} alt={hover.id} /> : <span class="muted">…</span>}</div>}
      {entries.map(([k, v]) => (
        <div key={k} class="muted">
          {k.replace("meta.", "")}: {typeof v === "number" && !Number.isInteger(v) ? v.toFixed(2) : String(v)}
        </div>
      ))}
    </div>
  );
}
