// The frame view: a dialog over the grid with the image large, every label and inference, the
// metadata, and previous/next within the current filter (arrow keys; Esc closes).
import { useEffect, useRef, useState } from "preact/hooks";
import { api, enc, type FrameDetail, type Label, type Project, type Sensor } from "../api";
import { frameUrls, resolveSources, type Source } from "../raw/resolve";
import { ErrorBox, Spinner, fmt, useAsync } from "../ui";
import { Overlay, colorOf, type ClassMap } from "./overlay";
import { hostOf, onSensor, type OverlayOptions } from "./tile";
import { drawTopDown, parsePointCloud } from "./pointcloud";

interface Props {
  base: string;
  project: Project;
  frameId: string;
  index: number | null;
  total: number | null;
  version: string | null;
  inferenceSet: string | null;
  opts: OverlayOptions;
  onMove: (delta: -1 | 1) => void;
  onClose: () => void;
  /** "Find similar": frames like this one, or crops like one of its labels. */
  onSimilar?: (q: { frameId?: string; labelId?: string }) => void;
}

export function FrameView({ base, project, frameId, index, total, version, inferenceSet, opts, onMove, onClose, onSimilar }: Props) {
  const dialog = useRef<HTMLDivElement>(null);
  const [hover, setHover] = useState<string | null>(null);
  const detail = useAsync(
    async (signal) => {
      const q = version ? `?version=${enc(version)}` : "";
      const f = await api<FrameDetail>(`${base}/frames/${enc(frameId)}${q}`, { signal });
      const all = { ...f, inferences: Object.values(f.inferences).flat() };
      return { frame: f, sources: await resolveSources(project, frameUrls(all)) };
    },
    [base, frameId, version],
  );

  useEffect(() => {
    const prev = document.activeElement as HTMLElement | null;
    dialog.current?.focus();
    return () => prev?.focus?.();
  }, []);

  const hasPrev = index != null && index > 0;
  const hasNext = index == null || total == null || index + 1 < total;

  return (
    <div class="backdrop" onClick={(e) => e.target === e.currentTarget && onClose()}>
      <div class="frame-view" role="dialog" aria-modal="true" aria-label={`frame ${frameId}`} tabIndex={-1} ref={dialog}>
        <header class="fv-head">
          <button type="button" onClick={() => onMove(-1)} disabled={!hasPrev} aria-label="previous frame" title="previous (← or k)">
            ←
          </button>
          <button type="button" onClick={() => onMove(1)} disabled={!hasNext} aria-label="next frame" title="next (→ or j)">
            →
          </button>
          <h2 class="fid">{frameId}</h2>
          {index != null && <span class="muted">{total != null ? `${fmt(index + 1)} of ${fmt(total)} in this filter` : `#${fmt(index + 1)}`}</span>}
          <span class="spacer" />
          {onSimilar && (
            <button type="button" name="find_similar" onClick={() => onSimilar({ frameId })} disabled={detail.data ? !detail.data.frame.has_embedding : true} title={detail.data && !detail.data.frame.has_embedding ? "this frame has no embedding" : "the 50 nearest frames by embedding, in the grid"}>
              Find similar
            </button>
          )}
          <button type="button" onClick={onClose} aria-label="close" title="close (Esc)">
            ✕
          </button>
        </header>
        {detail.error ? (
          <ErrorBox error={detail.error} retry={detail.reload} />
        ) : !detail.data ? (
          <Spinner label="Loading frame…" />
        ) : (
          <FrameBody
            f={detail.data.frame}
            sources={detail.data.sources}
            inferenceSet={inferenceSet}
            opts={opts}
            hover={hover}
            setHover={setHover}
            onSimilarCrop={onSimilar ? (labelId) => onSimilar({ labelId }) : undefined}
          />
        )}
      </div>
    </div>
  );
}

function FrameBody({ f, sources, inferenceSet, opts, hover, setHover, onSimilarCrop }: { f: FrameDetail; sources: Map<string, Source>; inferenceSet: string | null; opts: OverlayOptions; hover: string | null; setHover: (id: string | null) => void; onSimilarCrop?: (labelId: string) => void }) {
  const chosen = inferenceSet ? (f.inferences[inferenceSet] ?? []) : [];
  const sourceOf = (u: string) => sources.get(u);
  return (
    <div class="fv-body">
      <div class="fv-media">
        {f.sensors.length === 0 && <div class="state empty">This frame has no sensors.</div>}
        {f.sensors.map((s) => (
          <figure key={s.sensor_id} class="fv-sensor">
            <figcaption>
              {s.sensor_id} <span class="muted">({s.kind})</span>
            </figcaption>
            <SensorView
              sensor={s}
              source={sources.get(s.url)}
              labels={opts.showLabels ? onSensor(f.labels, s) : []}
              inferences={opts.showInferences ? onSensor(chosen, s).filter((l) => (l.confidence ?? 1) >= opts.conf) : []}
              classes={opts.classes}
              sourceOf={sourceOf}
              hover={hover}
            />
          </figure>
        ))}
      </div>
      <aside class="fv-side">
        <LabelTable title={`Labels (${f.labels.length})`} labels={f.labels} classes={opts.classes} setHover={setHover} onSimilar={onSimilarCrop} />
        {Object.keys(f.inferences).length === 0 && <p class="muted">No inferences on this frame.</p>}
        {Object.entries(f.inferences).map(([set, ls]) => (
          <LabelTable key={set} title={`Inferences: ${set} (${ls.length})${set === inferenceSet ? " · drawn" : ""}`} labels={ls} classes={opts.classes} setHover={setHover} />
        ))}
        <h3>Metadata</h3>
        {Object.keys(f.metadata).length === 0 ? (
          <p class="muted">none</p>
        ) : (
          <table class="kv">
            <tbody>
              {Object.entries(f.metadata).map(([k, v]) => (
                <tr key={k}>
                  <th scope="row">{k}</th>
                  <td>{typeof v === "object" ? JSON.stringify(v) : String(v)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
        <h3>Frame</h3>
        <table class="kv">
          <tbody>
            <tr><th scope="row">timestamp</th><td>{f.timestamp ?? "—"}</td></tr>
            <tr><th scope="row">version</th><td>{f.version}</td></tr>
            <tr><th scope="row">embedding</th><td>{f.has_embedding ? "yes" : "no"}</td></tr>
            {f.geo && <tr><th scope="row">geo</th><td>{f.geo.lat}, {f.geo.lon}</td></tr>}
            {f.sensors.map((s) => (
              <tr key={s.sensor_id}>
                <th scope="row">{s.sensor_id}</th>
                <td class="url" title={sources.get(s.url)?.title}>{s.kind === "text" && !/^https?:/.test(s.url) ? "(inline text)" : s.url}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </aside>
    </div>
  );
}

function describe(l: Label): string {
  const g = l.geometry as any;
  switch (g.kind) {
    case "box2d":
      return `box ${Math.round(g.left)},${Math.round(g.top)} ${Math.round(g.width)}×${Math.round(g.height)}`;
    case "polygon_list":
      return `${g.polygons.length} polygon${g.polygons.length === 1 ? "" : "s"}`;
    case "keypoints":
      return `${g.keypoints.length} keypoints`;
    default:
      return g.kind.replace(/_/g, " ");
  }
}

function LabelTable({ title, labels, classes, setHover, onSimilar }: { title: string; labels: Label[]; classes: ClassMap; setHover: (id: string | null) => void; onSimilar?: (labelId: string) => void }) {
  return (
    <>
      <h3>{title}</h3>
      {labels.length === 0 ? (
        <p class="muted">none</p>
      ) : (
        <table class="labels">
          <thead>
            <tr><th>class</th><th>conf.</th><th>shape</th><th>attributes</th></tr>
          </thead>
          <tbody>
            {labels.map((l) => (
              <tr key={l.label_id} onMouseEnter={() => setHover(l.label_id)} onMouseLeave={() => setHover(null)} title={l.label_id}>
                <td>
                  <span class="swatch" style={{ background: colorOf(l, classes) }} /> {l.class ?? "—"}
                  {l.iscrowd && <span class="muted"> crowd</span>}
                </td>
                <td class="num">{l.confidence != null ? l.confidence.toFixed(2) : ""}</td>
                <td>{describe(l)}</td>
                <td class="attrs">
                  {l.attributes != null ? JSON.stringify(l.attributes) : ""}
                  {onSimilar && l.has_embedding && (
                    <button type="button" class="link" onClick={() => onSimilar(l.label_id)} title="crops like this one, in the grid">
                      similar
                    </button>
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </>
  );
}

interface SensorProps {
  sensor: Sensor;
  source?: Source;
  labels: Label[];
  inferences: Label[];
  classes: ClassMap;
  sourceOf: (u: string) => Source | undefined;
  hover: string | null;
}

function SensorView(p: SensorProps) {
  const { sensor, source } = p;
  if (sensor.kind === "text") return <TextView sensor={sensor} />;
  if (!source) return <Spinner />;
  if (!source.src) return <div class="state warn" title={source.title}>Cannot show {sensor.url}: {source.reason}</div>;
  switch (sensor.kind) {
    case "image":
    case "image_overlay":
      return <BigImage key={source.src} {...p} src={source.src} />;
    case "point_cloud":
      return <PointCloudView src={source.src} source={source} />;
    case "audio":
      return <audio controls src={source.src} title={source.title} />;
    case "video":
      return <video controls src={source.src} title={source.title} class="fv-video" />;
  }
}

function BigImage({ sensor, source, labels, inferences, classes, sourceOf, hover, src }: SensorProps & { src: string }) {
  const [size, setSize] = useState<[number, number] | null>(null);
  const [error, setError] = useState<string | null>(null);
  // Zoom (wheel, around the pointer) and pan (drag); double-click resets. Image and overlay share
  // one transform, so boxes stay on their pixels; strokes do not scale.
  const [z, setZ] = useState({ s: 1, x: 0, y: 0 });
  const drag = useRef<{ x: number; y: number } | null>(null);
  if (error) return <div class="state warn" role="alert">The image did not load: {error}</div>;
  return (
    <div
      class="fv-image"
      onWheel={(e) => {
        e.preventDefault();
        const r = (e.currentTarget as HTMLElement).getBoundingClientRect();
        const px = e.clientX - r.left, py = e.clientY - r.top;
        setZ((o) => {
          const s = Math.min(20, Math.max(1, o.s * Math.exp(-e.deltaY / 400)));
          if (s === 1) return { s: 1, x: 0, y: 0 };
          return { s, x: px - ((px - o.x) * s) / o.s, y: py - ((py - o.y) * s) / o.s };
        });
      }}
      onPointerDown={(e) => {
        if (z.s === 1) return;
        drag.current = { x: e.clientX - z.x, y: e.clientY - z.y };
        (e.currentTarget as HTMLElement).setPointerCapture(e.pointerId);
      }}
      onPointerMove={(e) => drag.current && setZ((o) => ({ ...o, x: e.clientX - drag.current!.x, y: e.clientY - drag.current!.y }))}
      onPointerUp={() => (drag.current = null)}
      onDblClick={() => setZ({ s: 1, x: 0, y: 0 })}
      title={z.s > 1 ? "drag to pan, double-click to reset" : "scroll to zoom"}
    >
      <div class="fv-zoom" style={{ transform: `translate(${z.x}px, ${z.y}px) scale(${z.s})` }}>
        <img
          src={src}
          alt={sensor.sensor_id}
          title={source!.title}
          draggable={false}
          onLoad={(e) => {
            const img = e.currentTarget as HTMLImageElement;
            setSize([img.naturalWidth, img.naturalHeight]);
          }}
          onError={() => whyNot(src, source!).then(setError)}
        />
        {size && <Overlay width={size[0]} height={size[1]} labels={labels} inferences={inferences} classes={classes} sourceOf={sourceOf} highlight={hover} titles />}
      </div>
    </div>
  );
}

/** After an <img> failed: ask once more with fetch, which can see the status when CORS allows. */
async function whyNot(src: string, source: Source): Promise<string> {
  const where = `${hostOf(src)} (${source.via === "public" ? "public URL" : source.via === "s3" || source.via === "gs" ? "signed in your browser" : "signed by milkglass"})`;
  try {
    const r = await fetch(src, { headers: { Range: "bytes=0-1023" } });
    if (!r.ok) {
      const hint = r.status === 403 ? (source.via === "s3" || source.via === "gs" ? ": the bucket refused the signature (check the keys, region and endpoint on Settings)" : ": forbidden, or the signature expired (reload)") : r.status === 404 ? ": no such file" : "";
      return `${where} answered ${r.status} ${r.statusText}${hint}.`;
    }
    return `${where} answered with ${r.headers.get("content-type") ?? "an unknown type"}, which the browser could not decode as an image.`;
  } catch {
    return `${where} could not be reached, or it does not allow this page to read the answer (CORS); the browser's console has details.`;
  }
}

function TextView({ sensor }: { sensor: Sensor }) {
  const isUrl = /^https?:\/\//.test(sensor.url);
  const text = useAsync(async (signal) => {
    if (!isUrl) return sensor.url;
    const r = await fetch(sensor.url, { signal });
    if (!r.ok) throw new Error(`${hostOf(sensor.url)} answered ${r.status} ${r.statusText}`);
    return r.text();
  }, [sensor.url]);
  if (text.error) return <div class="state warn">Could not fetch the text at {sensor.url}: {(text.error as Error).message}</div>;
  if (text.data == null) return <Spinner label="Loading text…" />;
  return <pre class="fv-text" title={isUrl ? `fetched from ${sensor.url}` : "text stored in the frame"}>{text.data}</pre>;
}

function PointCloudView({ src, source }: { src: string; source: Source }) {
  const canvas = useRef<HTMLCanvasElement>(null);
  const pts = useAsync(async (signal) => {
    const r = await fetch(src, { signal });
    if (!r.ok) throw new Error(`${hostOf(src)} answered ${r.status} ${r.statusText}`);
    return parsePointCloud(source.url, await r.arrayBuffer(), r.headers.get("content-type") ?? "");
  }, [src]);
  useEffect(() => {
    if (pts.data && canvas.current) drawTopDown(canvas.current, pts.data);
  }, [pts.data]);
  if (pts.error) return <div class="state warn">Could not show the point cloud: {(pts.error as Error).message}</div>;
  if (!pts.data) return <Spinner label="Loading points…" />;
  return (
    <div>
      <canvas ref={canvas} width={640} height={480} class="fv-points" title={`${source.title}\ntop-down view, coloured by height`} />
      <div class="muted">{fmt(pts.data.count)} points, seen from above, coloured by height</div>
    </div>
  );
}
