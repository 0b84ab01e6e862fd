// The issue queue's frame kinds that need no inference set: near-duplicate groups and outliers, ranked by
// the neighbour analytics of the frame embeddings (GET {ds}/insights/neighbors). One row per group or frame,
// with its images; keyboard triage as for label issues: j/k move, s puts the row's frames into a segment
// (a group: every member, to keep or drop together), Enter opens the first frame.
import { useEffect, useRef, useState } from "preact/hooks";
import { api, type Frame } from "../api";
import { navigate, withQuery } from "../route";
import { frameUrls, resolveSources, type Source } from "../raw/resolve";
import { Empty, ErrorBox, Spinner, fmt, useAsync } from "../ui";
import { primarySensor } from "../explorer/tile";
import { classMap } from "../explorer/overlay";
import type { ViewProps } from "../explorer/explorer";
import { Pager, QueueOverlays, useQueueKeys } from "./queue";

export const NEIGHBOR_KINDS = ["near_duplicates", "outliers"] as const;
export type NeighborKind = (typeof NEIGHBOR_KINDS)[number];
const PAGE = 50;
/** Members of a group shown as images; the rest are counted. */
const SHOWN_MEMBERS = 6;

interface NeighborItem {
  frame_id: string;
  score: number;
  group?: string[];
}
interface NeighborPage {
  total: number;
  version: number;
  items: NeighborItem[];
}

const members = (item: NeighborItem) => item.group ?? [item.frame_id];

export function NeighborQueue({ base, meta, view, kind, kindSelect }: ViewProps & { kind: NeighborKind; kindSelect: preact.ComponentChildren }) {
  const q = new URLSearchParams(location.search);
  const offset = Math.max(0, Number(q.get("offset") ?? 0) || 0);
  const [cursor, setCursor] = useState(0);
  const [openFrame, setOpenFrame] = useState<string | null>(null);
  const [picking, setPicking] = useState<string[] | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const list = useRef<HTMLDivElement>(null);
  const classes = classMap(meta.project.classes);

  const page = useAsync(
    async (signal) => {
      const p = new URLSearchParams({ space: "frames", kind, limit: String(PAGE), offset: String(offset) });
      const r = await api<NeighborPage>(`${base}/insights/neighbors?${p}`, { signal });
      const ids = [...new Set(r.items.flatMap((i) => members(i).slice(0, SHOWN_MEMBERS)))];
      const frames = new Map<string, Frame>();
      for (let i = 0; i < ids.length; i += 500) {
        const fq = new URLSearchParams({ limit: "500" });
        for (const id of ids.slice(i, i + 500)) fq.append("id", id);
        for (const f of (await api<{ frames: Frame[] }>(`${base}/frames?${fq}`, { signal })).frames) frames.set(f.frame_id, f);
      }
      const sources = await resolveSources(meta.project, [...frames.values()].flatMap((f) => frameUrls({ sensors: f.sensors })));
      return { ...r, frames, sources };
    },
    [base, kind, offset],
  );
  const items = page.data?.items ?? [];
  const at = Math.min(cursor, Math.max(0, items.length - 1));
  const current = items[at];

  useQueueKeys({
    paused: !!openFrame || !!picking,
    count: items.length,
    at,
    setCursor,
    pick: () => setPicking(members(current)),
    open: () => setOpenFrame(current.frame_id),
  });
  useEffect(() => {
    list.current?.querySelector(`[data-row="${at}"]`)?.scrollIntoView({ block: "nearest" });
  }, [at, items.length]);

  const setParam = (c: Record<string, string | null>) => navigate(withQuery(c), { replace: true });
  const noun = kind === "near_duplicates" ? "groups of near-duplicate frames" : "outlying frames";
  return (
    <div class="issues-view">
      <div class="map-bar">
        {kindSelect}
        <span class="spacer" />
        <span class="count" aria-live="polite">
          {page.data ? `${fmt(page.data.total)} ${noun}` : "loading…"}
        </span>
        <span class="muted keys-hint">
          <kbd>j</kbd>/<kbd>k</kbd> move · <kbd>s</kbd> segment · <kbd>Enter</kbd> open
        </span>
      </div>
      {notice && <div class="selection-bar" role="status">{notice}</div>}
      {page.error ? (
        <ErrorBox error={page.error} retry={page.reload} />
      ) : !page.data ? (
        <Spinner label="Comparing every frame with its neighbours…" />
      ) : items.length === 0 ? (
        <Empty>No {noun} in this version (frames without embeddings are not compared).</Empty>
      ) : (
        <div class="issue-list" ref={list} role="listbox" aria-label={noun} tabIndex={0}>
          {items.map((item, i) => (
            <div
              key={item.frame_id}
              class={"issue-row" + (i === at ? " active" : "")}
              role="option"
              aria-selected={i === at}
              data-row={i}
              data-frame={item.frame_id}
              data-members={members(item).join(" ")}
              onClick={() => setCursor(i)}
              onDblClick={() => setOpenFrame(item.frame_id)}
            >
              {members(item)
                .slice(0, SHOWN_MEMBERS)
                .map((id) => (
                  <Thumb key={id} frame={page.data!.frames.get(id)} id={id} sources={page.data!.sources} />
                ))}
              <div class="issue-text">
                <div>
                  <strong class="kind">{kind === "near_duplicates" ? "near duplicates" : "outlier"}</strong>{" "}
                  <span class="score">{kind === "near_duplicates" ? `${members(item).length} frames` : `score ${item.score.toFixed(2)}`}</span>
                </div>
                <div class="muted fid">
                  {members(item).slice(0, SHOWN_MEMBERS).join(" · ")}
                  {members(item).length > SHOWN_MEMBERS ? ` · and ${members(item).length - SHOWN_MEMBERS} more` : ""}
                </div>
              </div>
              <div class="issue-actions">
                <button type="button" onClick={(e) => (e.stopPropagation(), setPicking(members(item)))} title="add to a segment (s)">
                  Segment
                </button>
                <button type="button" onClick={(e) => (e.stopPropagation(), setOpenFrame(item.frame_id))} title="open the frame (Enter)">
                  Open
                </button>
              </div>
            </div>
          ))}
          <Pager offset={offset} size={PAGE} total={page.data.total} onOffset={(o) => setParam({ offset: o == null ? null : String(o) })}>
            {fmt(offset + 1)}–{fmt(offset + items.length)} of {fmt(page.data.total)}
          </Pager>
        </div>
      )}
      <QueueOverlays
        base={base}
        project={meta.project}
        inferenceSet={view.inferenceSet}
        classes={classes}
        frames={items.map((i) => i.frame_id)}
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

/** A frame's image, small and whole. */
function Thumb({ frame, id, sources }: { frame?: Frame; id: string; sources: Map<string, Source> }) {
  const sensor = frame ? primarySensor(frame) : undefined;
  const src = sensor ? sources.get(sensor.url)?.src : undefined;
  return (
    <div class="crop thumb" title={id}>
      {src ? <img src={src} alt={id} draggable={false} /> : <span class="crop-note">no image</span>}
    </div>
  );
}
