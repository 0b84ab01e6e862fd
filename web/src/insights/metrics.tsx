// The metrics view: COCO mAP and per-class AP, PR curves (drawn as SVG here), and the confusion matrix
// at the chosen IoU and confidence (sliders refetch it) as a heat map with its background row and
// column; a click on a cell opens exactly that cell's frames in the grid. A classification dataset gets
// its own page: accuracy (and top-k), the classification report, the confusion matrix (cells open their
// frames) and the reliability curve with the expected calibration error.
import { useEffect, useState } from "preact/hooks";
import { api, enc } from "../api";
import { navigate, withQuery } from "../route";
import { Empty, ErrorBox, Spinner, fmt, useAsync } from "../ui";
import { putList } from "../explorer/lists";
import type { ViewProps } from "../explorer/explorer";

interface Cell {
  count: number;
  label_ids?: string[];
  inference_ids?: string[];
  frame_ids?: string[];
  /** Detection: how many frames the cell's objects are on, when the lists were cut. */
  frames?: number;
  /** False when the server cut the id lists (a cell of a million-frame dataset). */
  ids_complete?: boolean;
}
interface ClassMetrics {
  class: string;
  ap: number | null;
  ap50: number | null;
  recall_all_detections: number | null;
  pr_curve_iou50: (number | null)[];
  at_threshold: { true_positives: number; false_positives: number; false_negatives: number; precision: number | null; recall: number | null; f1: number | null };
}
interface ClassificationMetrics {
  task: "classification";
  examples: number;
  accuracy: number | null;
  top_k: { k: number; accuracy: number } | null;
  classes: { class: string; support: number; precision: number | null; recall: number | null; f1: number | null }[];
  confusion: { rows: string[]; columns: string[]; cells: Cell[][] };
  calibration: { ece: number; bins: { lower: number; upper: number; count: number; mean_confidence: number | null; accuracy: number | null }[] };
}
interface Metrics {
  task: "detection";
  map: number | null;
  map50: number | null;
  recall_thresholds: number[];
  classes: ClassMetrics[];
  confusion: { iou: number; confidence: number; rows: string[]; columns: string[]; cells: Cell[][] };
}

const pct = (v: number | null | undefined) => (v == null ? "—" : v.toFixed(3));

export function MetricsView({ base, meta, view }: ViewProps) {
  const q = new URLSearchParams(location.search);
  const set = view.inferenceSet;
  const iou = Number(q.get("iou") ?? 0.5) || 0.5;
  const conf = view.conf;
  const normalised = q.get("normalise") === "rows";
  // Sliders move the thumb at once and ask the server once they rest a moment.
  const [draft, setDraft] = useState({ iou, conf });
  useEffect(() => setDraft({ iou, conf }), [iou, conf]);
  useEffect(() => {
    if (draft.iou === iou && draft.conf === conf) return;
    const t = setTimeout(() => navigate(withQuery({ iou: draft.iou === 0.5 ? null : String(draft.iou), conf: draft.conf === 0.5 ? null : String(draft.conf) }), { replace: true }), 250);
    return () => clearTimeout(t);
  }, [draft.iou, draft.conf]);
  const m = useAsync(
    (signal) => (set ? api<Metrics | ClassificationMetrics>(`${base}/insights/metrics?inference_set=${enc(set)}&iou=${iou}&confidence=${conf}`, { signal }) : Promise.resolve(null)),
    [base, set, iou, conf],
  );
  const colour = (name: string) => meta.project.classes.find((c) => c.name === name)?.color ?? [110, 110, 110];
  if (!set) return <Empty>Metrics compare labels with an inference set; this dataset has none.</Empty>;
  const classification = m.data?.task === "classification" ? m.data : null;
  const detection = m.data?.task === "classification" ? null : (m.data as Metrics | null);
  return (
    <div class="metrics-view">
      <div class="map-bar">
        <label class="inline">
          Inference set
          <select name="inference_set" value={set} onChange={(e) => navigate(withQuery({ inference_set: e.currentTarget.value }), { replace: true })}>
            {meta.sets.map((s) => (
              <option key={s.name}>{s.name}</option>
            ))}
          </select>
        </label>
        {!classification && (<>
        <label class="inline">
          IoU ≥ <output>{draft.iou.toFixed(2)}</output>
          <input type="range" name="iou" min={0.05} max={0.95} step={0.05} value={draft.iou} onInput={(e) => setDraft((d) => ({ ...d, iou: Number(e.currentTarget.value) }))} />
        </label>
        <label class="inline">
          confidence ≥ <output>{draft.conf.toFixed(2)}</output>
          <input type="range" name="confidence" min={0} max={1} step={0.05} value={draft.conf} onInput={(e) => setDraft((d) => ({ ...d, conf: Number(e.currentTarget.value) }))} />
        </label>
        <label class="check inline">
          <input type="checkbox" name="normalise" checked={normalised} onChange={(e) => navigate(withQuery({ normalise: e.currentTarget.checked ? "rows" : null }), { replace: true })} />
          row-normalised
        </label>
        </>)}
        <span class="spacer" />
        {m.loading && m.data && <span class="muted" role="status">recomputing…</span>}
        {detection && (
          <span class="count">
            mAP {pct(detection.map)} · mAP@50 {pct(detection.map50)}
          </span>
        )}
        {classification && (
          <span class="count">
            accuracy {pct(classification.accuracy)}
            {classification.top_k ? ` · top-${classification.top_k.k} ${pct(classification.top_k.accuracy)}` : ""} · {fmt(classification.examples)} examples
          </span>
        )}
      </div>
      {m.error ? (
        <ErrorBox error={m.error} retry={m.reload} />
      ) : !m.data ? (
        <Spinner label="Evaluating…" />
      ) : classification ? (
        <ClassificationBody m={classification} normalised={normalised} colour={colour} />
      ) : m.data.task !== "detection" ? (
        <Empty>This server answered metrics of a kind the app does not know.</Empty>
      ) : (
        <div class="metrics-body">
          <section class="card">
            <h2>
              Confusion at IoU {detection!.confusion.iou} and confidence {detection!.confusion.confidence}
            </h2>
            <p class="muted">Rows: ground truth · columns: predictions · click a cell to see its frames.</p>
            <Confusion c={detection!.confusion} normalised={normalised} />
          </section>
          <section class="card">
            <h2>Precision–recall at IoU 0.5</h2>
            <PrCurves thresholds={detection!.recall_thresholds} classes={detection!.classes} colour={colour} />
          </section>
          <section class="card">
            <h2>Average precision</h2>
            <table class="ap-table">
              <thead>
                <tr>
                  <th>class</th><th class="num">AP</th><th class="num">AP50</th><th class="num">TP</th><th class="num">FP</th><th class="num">FN</th>
                  <th class="num">precision</th><th class="num">recall</th><th class="num">F1</th>
                </tr>
              </thead>
              <tbody>
                {detection!.classes.map((c) => (
                  <tr key={c.class}>
                    <td>
                      <span class="swatch" style={{ background: `rgb(${colour(c.class).join(",")})` }} /> {c.class}
                    </td>
                    <td class="num">{pct(c.ap)}</td>
                    <td class="num">{pct(c.ap50)}</td>
                    <td class="num">{fmt(c.at_threshold.true_positives)}</td>
                    <td class="num">{fmt(c.at_threshold.false_positives)}</td>
                    <td class="num">{fmt(c.at_threshold.false_negatives)}</td>
                    <td class="num">{pct(c.at_threshold.precision)}</td>
                    <td class="num">{pct(c.at_threshold.recall)}</td>
                    <td class="num">{pct(c.at_threshold.f1)}</td>
                  </tr>
                ))}
              </tbody>
              <tfoot>
                <tr>
                  <th>all (mean)</th>
                  <td class="num">{pct(detection!.map)}</td>
                  <td class="num">{pct(detection!.map50)}</td>
                  <td colSpan={6} />
                </tr>
              </tfoot>
            </table>
          </section>
        </div>
      )}
    </div>
  );
}

function ClassificationBody({ m, normalised, colour }: { m: ClassificationMetrics; normalised: boolean; colour: (n: string) => [number, number, number] }) {
  return (
    <div class="metrics-body">
      <section class="card">
        <h2>Confusion</h2>
        <p class="muted">Rows: labels · columns: the model's top class · click a cell to see its frames.</p>
        <Confusion c={m.confusion} normalised={normalised} />
      </section>
      <section class="card">
        <h2>Reliability</h2>
        <Reliability bins={m.calibration.bins} />
        <p class="muted">
          Expected calibration error <b class="ece">{m.calibration.ece.toFixed(3)}</b>: the bins' |accuracy − confidence|, weighted by their examples.
        </p>
      </section>
      <section class="card">
        <h2>Classification report</h2>
        <table class="ap-table report">
          <thead>
            <tr>
              <th>class</th><th class="num">support</th><th class="num">precision</th><th class="num">recall</th><th class="num">F1</th>
            </tr>
          </thead>
          <tbody>
            {m.classes.map((c) => (
              <tr key={c.class} data-class={c.class}>
                <td>
                  <span class="swatch" style={{ background: `rgb(${colour(c.class).join(",")})` }} /> {c.class}
                </td>
                <td class="num">{fmt(c.support)}</td>
                <td class="num">{pct(c.precision)}</td>
                <td class="num">{pct(c.recall)}</td>
                <td class="num">{pct(c.f1)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </section>
    </div>
  );
}

/** Accuracy against mean confidence per confidence bin; the diagonal is perfect calibration. */
function Reliability({ bins }: { bins: ClassificationMetrics["calibration"]["bins"] }) {
  const W = 300, H = 240, P = 36;
  const x = (v: number) => P + v * (W - P - 10);
  const y = (v: number) => H - P - v * (H - P - 10);
  const most = Math.max(1, ...bins.map((b) => b.count));
  return (
    <svg viewBox={`0 0 ${W} ${H}`} width={W} height={H} role="img" aria-label="reliability curve">
      <line x1={x(0)} y1={y(0)} x2={x(1)} y2={y(0)} class="axis" />
      <line x1={x(0)} y1={y(0)} x2={x(0)} y2={y(1)} class="axis" />
      <line x1={x(0)} y1={y(0)} x2={x(1)} y2={y(1)} class="gridline" />
      {bins.map((b) => (
        <rect key={b.lower} x={x(b.lower) + 1} width={Math.max(1, x(b.upper) - x(b.lower) - 2)} y={y(0) - (b.count / most) * 30} height={(b.count / most) * 30} class="bin-count" data-count={b.count} />
      ))}
      <polyline
        fill="none"
        stroke="var(--accent)"
        stroke-width={2}
        points={bins
          .filter((b) => b.count > 0 && b.mean_confidence != null && b.accuracy != null)
          .map((b) => `${x(b.mean_confidence!).toFixed(1)},${y(b.accuracy!).toFixed(1)}`)
          .join(" ")}
      />
      {[0, 0.5, 1].map((t) => (
        <g key={t}>
          <text x={x(t)} y={H - P + 14} text-anchor="middle">{t}</text>
          <text x={P - 6} y={y(t) + 4} text-anchor="end">{t}</text>
        </g>
      ))}
      <text x={(W + P) / 2} y={H - 4} text-anchor="middle">confidence</text>
      <text x={10} y={H / 2} transform={`rotate(-90 10 ${H / 2})`} text-anchor="middle">accuracy</text>
    </svg>
  );
}

function Confusion({ c, normalised }: { c: { rows: string[]; columns: string[]; cells: Cell[][] }; normalised: boolean }) {
  const rowSums = c.cells.map((r) => r.reduce((s, x) => s + x.count, 0));
  // Hits (the diagonal) and confusions are shaded on their own scales: otherwise the diagonal's counts
  // wash every confusion out to the same pale pink.
  const value = (i: number, j: number) => (normalised ? c.cells[i][j].count / (rowSums[i] || 1) : c.cells[i][j].count);
  const isDiag = (i: number, j: number) => c.columns[j] === c.rows[i];
  let maxDiag = 0, maxOff = 0;
  c.cells.forEach((r, i) => r.forEach((_, j) => (isDiag(i, j) ? (maxDiag = Math.max(maxDiag, value(i, j))) : (maxOff = Math.max(maxOff, value(i, j))))));
  const open = (row: string, col: string, cell: Cell) => {
    if (!cell.frame_ids) return alert("This server does not list the frames behind a cell yet.");
    const ids = [...new Set(cell.frame_ids)];
    const of = cell.ids_complete === false ? `the first ${fmt(ids.length)} of ${fmt(cell.frames ?? cell.count)}` : fmt(ids.length);
    navigate(withQuery({ view: null, list: putList({ ids, title: `${of} frames of cell ${row} → ${col}` }), at: null, frame: null, i: null }));
  };
  return (
    <table class="confusion" role="grid">
      <thead>
        <tr>
          <th class="corner">truth ↓ / predicted →</th>
          {c.columns.map((col) => (
            <th key={col} scope="col">{col}</th>
          ))}
          <th scope="col" class="muted">all</th>
        </tr>
      </thead>
      <tbody>
        {c.rows.map((row, i) => (
          <tr key={row}>
            <th scope="row">{row}</th>
            {c.cells[i].map((cell, j) => {
              const v = value(i, j);
              const diagonal = isDiag(i, j);
              const t = v / ((diagonal ? maxDiag : maxOff) || 1);
              return (
                <td key={j}>
                  <button
                    type="button"
                    class={"cell" + (diagonal ? " diag" : "")}
                    data-row={row}
                    data-col={c.columns[j]}
                    disabled={cell.count === 0}
                    style={{ background: `rgba(${diagonal ? "28,107,53" : "164,22,26"},${(0.08 + 0.8 * t).toFixed(3)})`, color: t > 0.55 ? "#fff" : undefined }}
                    title={`${row} labelled, ${c.columns[j]} predicted: ${fmt(cell.count)} of ${fmt(rowSums[i])} (${((cell.count / (rowSums[i] || 1)) * 100).toFixed(1)}%)`}
                    onClick={() => open(row, c.columns[j], cell)}
                  >
                    {normalised ? `${(v * 100).toFixed(0)}%` : fmt(cell.count)}
                  </button>
                </td>
              );
            })}
            <td class="num muted">{fmt(rowSums[i])}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

function PrCurves({ thresholds, classes, colour }: { thresholds: number[]; classes: ClassMetrics[]; colour: (n: string) => [number, number, number] }) {
  const W = 420, H = 280, P = 36;
  const x = (r: number) => P + r * (W - P - 10);
  const y = (p: number) => H - P + -p * (H - P - 10);
  const [hidden, setHidden] = useState<Set<string>>(new Set());
  return (
    <div class="pr">
      <svg viewBox={`0 0 ${W} ${H}`} width={W} height={H} role="img" aria-label="precision-recall curves per class">
        <line x1={x(0)} y1={y(0)} x2={x(1)} y2={y(0)} class="axis" />
        <line x1={x(0)} y1={y(0)} x2={x(0)} y2={y(1)} class="axis" />
        {[0, 0.25, 0.5, 0.75, 1].map((t) => (
          <g key={t}>
            <line x1={x(t)} y1={y(0)} x2={x(t)} y2={y(1)} class="gridline" />
            <line x1={x(0)} y1={y(t)} x2={x(1)} y2={y(t)} class="gridline" />
            <text x={x(t)} y={H - P + 14} text-anchor="middle">{t}</text>
            <text x={P - 6} y={y(t) + 4} text-anchor="end">{t}</text>
          </g>
        ))}
        <text x={(W + P) / 2} y={H - 4} text-anchor="middle">recall</text>
        <text x={10} y={H / 2} transform={`rotate(-90 10 ${H / 2})`} text-anchor="middle">precision</text>
        {classes
          .filter((c) => !hidden.has(c.class))
          .map((c) => {
            const pts = c.pr_curve_iou50.map((p, i) => (p == null ? null : `${x(thresholds[i]).toFixed(1)},${y(p).toFixed(1)}`)).filter(Boolean);
            return <polyline key={c.class} points={pts.join(" ")} fill="none" stroke={`rgb(${colour(c.class).join(",")})`} stroke-width={2} data-class={c.class} />;
          })}
      </svg>
      <ul class="legend">
        {classes.map((c) => (
          <li key={c.class}>
            <label class="check">
              <input type="checkbox" checked={!hidden.has(c.class)} onChange={() => setHidden((h) => { const n = new Set(h); n.has(c.class) ? n.delete(c.class) : n.add(c.class); return n; })} />
              <span class="swatch" style={{ background: `rgb(${colour(c.class).join(",")})` }} /> {c.class} <span class="muted">AP50 {pct(c.ap50)}</span>
            </label>
          </li>
        ))}
      </ul>
    </div>
  );
}
