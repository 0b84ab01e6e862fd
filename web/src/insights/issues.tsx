// The issues view: the label-error queue of one inference set, one row per issue with a crop of the
// label and a crop of the disagreeing inference side by side. Keyboard triage: j/k or arrows move,
// n marks "not an issue" (it leaves the queue at once; the server remembers it), s adds the frame to a
// segment, Enter opens the frame view. Near duplicates and outliers are in neighbor-queue.tsx.
import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import { api, ApiError, enc, type Frame, type FrameDetail, type FramePage, type Label } from "../api";
import { navigate, withQuery } from "../route";
import { frameUrls, resolveSources, type Source } from "../raw/resolve";
import { Empty, ErrorBox, Spinner, fmt, useAsync } from "../ui";
import { classMap, colorOf, type ClassMap } from "../explorer/overlay";
import { primarySensor } from "../explorer/tile";
import type { ViewProps } from "../explorer/explorer";
import { NEIGHBOR_KINDS, NeighborQueue, type NeighborKind } from "./neighbor-queue";
import { Pager, QueueOverlays, useQueueKeys } from "./queue";

export const ISSUE_KINDS = ["missing_label", "class_confusion", "bad_localization", "duplicate_label", "spurious_label"] as const;
const PAGE = 100;

export interface Issue {
  kind: (typeof ISSUE_KINDS)[number];
  score: number;
  frame_id: string;
  label_id: string | null;
  label_class: string | null;
  inference_id: string | null;
  other_label_id: string | null;
  suggested_class: string | null;
  iou: number | null;
}
interface IssuePage {
  inference_set: string;
  version: number;
  used_embeddings: boolean;
  total: number;
  issues: Issue[];
}

const issueKey = (i: Issue) => `${i.kind}|${i.label_id ?? ""}|${i.inference_id ?? ""}|${i.other_label_id ?? ""}`;

/** Frames with their labels and the set's inferences, one request for a page of issues. */
async function framesOf(base: string, ids: string[], set: string, signal: AbortSignal): Promise<Map<string, Frame>> {
  const out = new Map<string, Frame>();
  if (ids.length === 0) return out;
  const q = new URLSearchParams({ limit: String(ids.length), labels: "true", inference_set: set });
  for (const id of ids) q.append("id", id);
  try {
    for (const f of (await api<FramePage>(`${base}/frames?${q}`, { signal })).frames) out.set(f.frame_id, f);
  } catch (e) {
    if (!(e instanceof ApiError && e.field === "id")) throw e;
    // A server without `id=` on the listing: one request per frame.
    await Promise.all(
      ids.map(async (id) => {
        const f = await api<FrameDetail>(`${base}/frames/${enc(id)}`, { signal });
        out.set(id, { ...f, inferences: f.inferences[set] ?? [] });
      }),
    );
  }
  return out;
}

/** The queue of every kind: label issues against an inference set, or the frames' near-duplicates and outliers. */
export function IssuesView(props: ViewProps) {
  const kind = new URLSearchParams(location.search).get("kind") ?? "";
  if ((NEIGHBOR_KINDS as readonly string[]).includes(kind)) {
    // Keyed by kind: another kind is another queue (no rows of the last one shown under the new name).
    return <NeighborQueue key={kind} {...props} kind={kind as NeighborKind} kindSelect={<KindSelect kind={kind} />} />;
  }
  return <LabelIssuesView {...props} />;
}

/** The queue's kind: the label-issue kinds, then the kinds of frames found by their neighbours. */
function KindSelect({ kind, onPick }: { kind: string; onPick?: () => void }) {
  const pick = (value: string) => {
    onPick?.();
    navigate(withQuery({ kind: value || null, offset: null }), { replace: true });
  };
  return (
    <label class="inline">
      Kind
      <select name="kind" value={kind} onChange={(e) => pick(e.currentTarget.value)}>
        <option value="">all label issues</option>
        <optgroup label="label issues">
          {ISSUE_KINDS.map((k) => (
            <option key={k} value={k}>
              {k.replace("_", " ")}
            </option>
          ))}
        </optgroup>
        <optgroup label="frames">
          <option value="near_duplicates">near duplicates</option>
          <option value="outliers">outliers</option>
        </optgroup>
      </select>
    </label>
  );
}

function LabelIssuesView({ base, meta, view }: ViewProps) {
  const q = new URLSearchParams(location.search);
  const set = view.inferenceSet;
  const kind = q.get("kind") ?? "";
  const cls = q.get("issue_class") ?? "";
  const minScore = Number(q.get("min_score") ?? 0) || 0;
  const offset = Math.max(0, Number(q.get("offset") ?? 0) || 0);
  const classes = useMemo(() => classMap(meta.project.classes), [meta.project]);
  const [dismissed, setDismissed] = useState<Set<string>>(new Set());
  const [cursor, setCursor] = useState(0);
  const [openFrame, setOpenFrame] = useState<string | null>(null);
  const [picking, setPicking] = useState<string[] | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const list = useRef<HTMLDivElement>(null);

  const page = useAsync(
    async (signal) => {
      if (!set) return null;
      const p = new URLSearchParams({ inference_set: set, limit: String(PAGE), offset: String(offset) });
      if (kind) p.set("kind", kind);
      const r = await api<IssuePage>(`${base}/insights/label_errors?${p}`, { signal });
      const frames = await framesOf(base, [...new Set(r.issues.map((i) => i.frame_id))], set, signal);
      const sources = await resolveSources(meta.project, [...frames.values()].flatMap((f) => frameUrls({ sensors: f.sensors })));
      return { ...r, frames, sources };
    },
    [base, set, kind, offset],
  );
  useEffect(() => setDismissed(new Set()), [page.data]);

  const shown = (page.data?.issues ?? []).filter((i) => !dismissed.has(issueKey(i)) && i.score >= minScore && (!cls || i.label_class === cls || i.suggested_class === cls));
  const at = Math.min(cursor, Math.max(0, shown.length - 1));
  const current = shown[at];

  const dismiss = async (issue: Issue) => {
    const k = issueKey(issue);
    setDismissed((d) => new Set(d).add(k)); // at once; put back if the server refuses
    try {
      await api(`${base}/insights/label_errors/dismiss`, {
        method: "POST",
        json: { kind: issue.kind, ...(issue.label_id ? { label_id: issue.label_id } : {}), ...(issue.inference_id ? { inference_id: issue.inference_id } : {}) },
      });
      setNotice(`${issue.kind.replace("_", " ")} on ${issue.frame_id} marked "not an issue"`);
    } catch (e) {
      setDismissed((d) => {
        const n = new Set(d);
        n.delete(k);
        return n;
      });
      setNotice(`Could not dismiss: ${(e as Error).message}`);
    }
  };

  useQueueKeys({
    paused: !!openFrame || !!picking,
    count: shown.length,
    at,
    setCursor,
    pick: () => setPicking([current.frame_id]),
    open: () => setOpenFrame(current.frame_id),
    more: (e) => e.key === "n" && !!current && (dismiss(current), true),
  });
  useEffect(() => {
    list.current?.querySelector(`[data-row="${at}"]`)?.scrollIntoView({ block: "nearest" });
  }, [at, shown.length]);

  const setParam = (c: Record<string, string | null>) => navigate(withQuery(c), { replace: true });
  if (!set) {
    return (
      <div class="issues-view">
        <div class="map-bar">
          <KindSelect kind={kind} />
        </div>
        <Empty>Label issues compare labels with an inference set; this dataset has none. Near duplicates and outliers need none.</Empty>
      </div>
    );
  }
  const total = page.data?.total;
  return (
    <div class="issues-view">
      <div class="map-bar">
        <label class="inline">
          Inference set
          <select name="inference_set" value={set} onChange={(e) => setParam({ inference_set: e.currentTarget.value, offset: null })}>
            {meta.sets.map((s) => (
              <option key={s.name}>{s.name}</option>
            ))}
          </select>
        </label>
        <KindSelect kind={kind} onPick={() => setCursor(0)} />
        <label class="inline">
          Class
          <select name="issue_class" value={cls} onChange={(e) => (setCursor(0), setParam({ issue_class: e.currentTarget.value || null }))}>
            <option value="">any</option>
            {meta.project.classes.map((c) => (
              <option key={c.id}>{c.name}</option>
            ))}
          </select>
        </label>
        <label class="inline">
          Score ≥ <output>{minScore.toFixed(2)}</output>
          <input type="range" name="min_score" min={0} max={1} step={0.05} value={minScore} onInput={(e) => setParam({ min_score: e.currentTarget.value === "0" ? null : e.currentTarget.value })} />
        </label>
        <span class="spacer" />
        <span class="count" aria-live="polite">
          {total == null ? "loading…" : `${fmt(shown.length)} shown · ${fmt(Math.max(0, total - dismissed.size))} issues in the queue`}
        </span>
        <span class="muted keys-hint">
          <kbd>j</kbd>/<kbd>k</kbd> move · <kbd>n</kbd> not an issue · <kbd>s</kbd> segment · <kbd>Enter</kbd> open
        </span>
      </div>
      {notice && <div class="selection-bar" role="status">{notice}</div>}
      {page.error ? (
        <ErrorBox error={page.error} retry={page.reload} />
      ) : !page.data ? (
        <Spinner label="Ranking label errors…" />
      ) : shown.length === 0 ? (
        <Empty>No issues {kind || cls || minScore ? "match these filters" : "left in this queue"}.</Empty>
      ) : (
        <div class="issue-list" ref={list} role="listbox" aria-label="issues" tabIndex={0}>
          {shown.map((issue, i) => (
            <IssueRow
              key={issueKey(issue)}
              index={i}
              issue={issue}
              active={i === at}
              frame={page.data!.frames.get(issue.frame_id)}
              sources={page.data!.sources}
              classes={classes}
              onClick={() => setCursor(i)}
              onOpen={() => setOpenFrame(issue.frame_id)}
              onDismiss={() => dismiss(issue)}
            />
          ))}
          <Pager offset={offset} size={PAGE} total={page.data.total} onOffset={(o) => setParam({ offset: o == null ? null : String(o) })}>
            issues {fmt(offset + 1)}–{fmt(offset + page.data.issues.length)} of {fmt(page.data.total)}
            {page.data.used_embeddings ? " · crop embeddings used" : ""}
          </Pager>
        </div>
      )}
      <QueueOverlays
        base={base}
        project={meta.project}
        inferenceSet={set}
        classes={classes}
        frames={shown.map((i) => i.frame_id)}
        at={at}
        setCursor={setCursor}
        openFrame={openFrame}
        setOpenFrame={setOpenFrame}
        picking={picking}
        setPicking={setPicking}
        onNotice={setNotice}
      />
    </div>
  );
}

function IssueRow({ index, issue, active, frame, sources, classes, onClick, onOpen, onDismiss }: { index: number; issue: Issue; active: boolean; frame?: Frame; sources: Map<string, Source>; classes: ClassMap; onClick: () => void; onOpen: () => void; onDismiss: () => void }) {
  const find = (id: string | null, from?: Label[]) => (id ? from?.find((l) => l.label_id === id) : undefined);
  const label = find(issue.label_id, frame?.labels);
  const inference = find(issue.inference_id, frame?.inferences);
  const other = find(issue.other_label_id, frame?.labels);
  const sensor = frame ? primarySensor(frame) : undefined;
  const src = sensor ? sources.get(sensor.url)?.src : undefined;
  const size: [number, number] | null = sensor?.width && sensor.height ? [sensor.width, sensor.height] : null;
  // The region both crops show: around the label and its counterpart together, so they compare 1:1.
  const shapes = [label, inference, other].filter(Boolean) as Label[];
  return (
    <div class={"issue-row" + (active ? " active" : "")} role="option" aria-selected={active} data-row={index} data-issue={issueKey(issue)} data-frame={issue.frame_id} onClick={onClick} onDblClick={onOpen}>
      <Crop src={src} size={size} shapes={shapes} show={label} dashed={false} classes={classes} empty="no label" />
      <Crop src={src} size={size} shapes={shapes} show={other ?? inference} dashed={!other} classes={classes} empty={issue.kind === "spurious_label" ? "no inference" : "—"} />
      <div class="issue-text">
        <div>
          <strong class="kind">{issue.kind.replace("_", " ")}</strong> <span class="score">score {issue.score.toFixed(3)}</span>
        </div>
        <div>
          {issue.label_class && <>label <b>{issue.label_class}</b></>}
          {issue.suggested_class && <> → suggested <b>{issue.suggested_class}</b></>}
          {issue.iou != null && <span class="muted"> · IoU {issue.iou.toFixed(2)}</span>}
        </div>
        <div class="muted fid">
          {issue.frame_id}
          {issue.label_id ? ` · ${issue.label_id}` : ""}
          {issue.inference_id ? ` · ${issue.inference_id}` : ""}
          {issue.other_label_id ? ` · duplicates ${issue.other_label_id}` : ""}
        </div>
      </div>
      <div class="issue-actions">
        <button type="button" onClick={(e) => (e.stopPropagation(), onDismiss())} title="not an issue (n)">
          Not an issue
        </button>
        <button type="button" onClick={(e) => (e.stopPropagation(), onOpen())} title="open the frame (Enter)">
          Open
        </button>
      </div>
    </div>
  );
}

const CROP = 112;
/** The frame's image scaled and clipped to a small square around the shapes, with one shape drawn. */
function Crop({ src, size, shapes, show, dashed, classes, empty }: { src?: string | null; size: [number, number] | null; shapes: Label[]; show?: Label; dashed: boolean; classes: ClassMap; empty: string }) {
  const [natural, setNatural] = useState<[number, number] | null>(size);
  const boxes = shapes.map((l) => l.geometry).filter((g): g is Extract<Label["geometry"], { kind: "box2d" }> => g.kind === "box2d");
  if (!src || boxes.length === 0) return <div class="crop empty-crop">{src ? "no box" : "no image"}</div>;
  const x0 = Math.min(...boxes.map((b) => b.left)), y0 = Math.min(...boxes.map((b) => b.top));
  const x1 = Math.max(...boxes.map((b) => b.left + b.width)), y1 = Math.max(...boxes.map((b) => b.top + b.height));
  const margin = Math.max(8, 0.25 * Math.max(x1 - x0, y1 - y0));
  const side = Math.max(x1 - x0, y1 - y0) + 2 * margin;
  const rx = (x0 + x1) / 2 - side / 2, ry = (y0 + y1) / 2 - side / 2;
  const k = CROP / side;
  const g = show?.geometry.kind === "box2d" ? show.geometry : null;
  return (
    <div class="crop" title={show ? `${dashed ? "inference" : "label"} ${show.class ?? ""}${show.confidence != null ? ` ${show.confidence.toFixed(2)}` : ""}` : empty}>
      <img
        src={src}
        alt=""
        draggable={false}
        style={natural ? { left: `${-rx * k}px`, top: `${-ry * k}px`, width: `${natural[0] * k}px`, height: `${natural[1] * k}px` } : { visibility: "hidden" }}
        onLoad={(e) => !natural && setNatural([(e.currentTarget as HTMLImageElement).naturalWidth, (e.currentTarget as HTMLImageElement).naturalHeight])}
      />
      <svg viewBox={`${rx} ${ry} ${side} ${side}`} aria-hidden="true">
        {g && show && <rect x={g.left} y={g.top} width={g.width} height={g.height} fill="none" stroke={colorOf(show, classes)} stroke-width={2} vector-effect="non-scaling-stroke" stroke-dasharray={dashed ? "5 3" : undefined} />}
      </svg>
      {!show && <span class="crop-note">{empty}</span>}
      {show && <span class="crop-note">{dashed ? "inference" : "label"}: {show.class}</span>}
    </div>
  );
}
