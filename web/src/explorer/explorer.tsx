// The dataset page: tabs for its views (Grid | Map | Issues | Metrics | Segments, `?view=`), and the
// grid explorer itself: filters on the left, the count and the grid, the frame view on top. The other
// views are separate chunks, loaded when first opened, so the grid's first paint does not pay for them.
import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import { api, dsPath, type Dataset, type FramePage, type InferenceSet, type Project } from "../api";
import { navigate, withQuery } from "../route";
import { credentialsEpoch } from "../raw/credentials";
import { Empty, ErrorBox, ModeBadge, Spinner, fmt, isTyping, useAsync } from "../ui";
import { Filters } from "./filters";
import { Grid, type GridApi } from "./grid";
import { FrameView } from "./frame";
import { classMap } from "./overlay";
import { Pager } from "./pager";
import { apiQuery, eqFilter, hasFilter, readView, VIEWS, type View, type ViewName } from "./view";
import { getList, type FrameList } from "./lists";
import { SegmentPicker } from "./segment-picker";
import { removeFromSegment } from "../insights/segments-api";

export interface Meta {
  project: Project;
  dataset: Dataset;
  sets: InferenceSet[];
}

export function Explorer({ project, dataset }: { project: string; dataset: string }) {
  const base = dsPath(project, dataset);
  const meta = useAsync<Meta>(
    async (signal) => {
      // Not the dataset's status: it counts everything (half a second on a million frames).
      const [p, dataset, sets] = await Promise.all([
        api<Project>(`/api/projects/${encodeURIComponent(project)}`, { signal }),
        api<Dataset>(base, { signal }),
        api<{ inference_sets: InferenceSet[] }>(`${base}/inference_sets`, { signal }),
      ]);
      return { project: p, dataset, sets: sets.inference_sets };
    },
    [base],
  );
  if (meta.error) return <ErrorBox error={meta.error} retry={meta.reload} />;
  if (!meta.data) return <Spinner label="Loading dataset…" />;
  const v = readView();
  // No inference set in the URL means the first one; the URL stays short and the view the same.
  const view = { ...v, inferenceSet: v.inferenceSet ?? meta.data.sets[0]?.name ?? null };
  return (
    <div class="dataset-page">
      <Tabs current={view.view} />
      {view.view === "grid" ? <GridSource base={base} meta={meta.data} view={view} /> : <LazyView name={view.view} props={{ base, meta: meta.data, view }} />}
    </div>
  );
}

const TAB_TEXT: Record<ViewName, string> = { grid: "Grid", map: "Map", issues: "Issues", metrics: "Metrics", segments: "Segments" };

function Tabs({ current }: { current: ViewName }) {
  return (
    <nav class="tabs" aria-label="views">
      {VIEWS.map((name) => (
        <a key={name} href={withQuery({ view: name === "grid" ? null : name, frame: null, i: null })} class={name === current ? "current" : ""} aria-current={name === current ? "page" : undefined} data-view={name}>
          {TAB_TEXT[name]}
        </a>
      ))}
    </nav>
  );
}

export interface ViewProps {
  base: string;
  meta: Meta;
  view: View;
}
type Loaded = (p: ViewProps) => any;
// Each view is its own chunk (dynamic import), fetched the first time it is opened.
const LOADERS: Record<Exclude<ViewName, "grid">, () => Promise<Loaded>> = {
  map: () => import("../insights/map").then((m) => m.MapView),
  issues: () => import("../insights/issues").then((m) => m.IssuesView),
  metrics: () => import("../insights/metrics").then((m) => m.MetricsView),
  segments: () => import("../insights/segments").then((m) => m.SegmentsView),
};

function LazyView({ name, props }: { name: Exclude<ViewName, "grid">; props: ViewProps }) {
  const mod = useAsync(() => LOADERS[name](), [name]);
  if (mod.error) return <ErrorBox error={mod.error} retry={mod.reload} />;
  if (!mod.data) return <Spinner label={`Loading the ${TAB_TEXT[name].toLowerCase()} view…`} />;
  const ViewComponent = mod.data;
  return <ViewComponent {...props} />;
}

/** The grid shows the filter's frames, or a list: one handed over by another view, or a search's results. */
function GridSource({ base, meta, view }: { base: string; meta: Meta; view: View }) {
  const similar = view.similar;
  const filter = eqFilter(view.filter);
  const searched = useAsync<FrameList | null>(
    async (signal) => {
      if (!similar) return null;
      const body = similar.labelId ? { space: "labels", label_id: similar.labelId, k: similar.k, filter } : { space: "frames", frame_id: similar.frameId, k: similar.k, filter };
      const r = await api<{ neighbors: { frame_id: string; label_id?: string; distance: number }[] }>(`${base}/insights/similar`, { method: "POST", json: body, signal });
      return {
        ids: r.neighbors.map((n) => n.frame_id),
        notes: r.neighbors.map((n) => `d ${n.distance.toFixed(3)}`),
        title: `${r.neighbors.length} nearest to ${similar.labelId ? `crop ${similar.labelId}` : similar.frameId}${filter ? ` with ${Object.entries(filter).map(([k, v]) => `${k} = ${v}`).join(", ")}` : ""}`,
      };
    },
    [base, similar?.frameId, similar?.labelId, similar?.k, JSON.stringify(filter)],
  );
  if (similar) {
    if (searched.error) return <ErrorBox error={searched.error} retry={searched.reload} />;
    if (!searched.data) return <Spinner label="Searching similar frames…" />;
    return <ExplorerBody base={base} meta={meta} view={view} list={searched.data} />;
  }
  if (view.list) {
    const list = getList(view.list);
    if (!list) return <ErrorBox error="This frame list is gone (lists handed to the grid live in the tab that made them). Save a segment to share one." />;
    return <ExplorerBody base={base} meta={meta} view={view} list={list} />;
  }
  return <ExplorerBody base={base} meta={meta} view={view} list={null} />;
}

function ExplorerBody({ base, meta, view, list }: { base: string; meta: Meta; view: View; list: FrameList | null }) {
  // A list shows its own frames: of the filters only the version (and the overlays' inference set) apply.
  const listQuery = new URLSearchParams();
  if (view.filter.get("version")) listQuery.set("version", view.filter.get("version")!);
  if (view.inferenceSet) listQuery.set("inference_set", view.inferenceSet);
  const query = (list ? listQuery : apiQuery(view)).toString();
  const epoch = credentialsEpoch.value;
  const pager = useMemo(() => new Pager(base, new URLSearchParams(query), meta.project, list), [base, query, epoch, list]);
  const classes = useMemo(() => classMap(meta.project.classes), [meta.project]);
  const total = pager.total.value;
  // What the grid lays out: the exact total, or (while it is counted) the frames known so far plus a page.
  const length = pager.length;
  const gridApi = useRef<GridApi | null>(null);
  const [cursor, setCursor] = useState(view.index ?? view.at);
  // Frames picked with `x` (or a click on a tile's caption with Shift): for adding to a segment.
  const [selected, setSelected] = useState<ReadonlySet<string>>(new Set());
  const [picking, setPicking] = useState(false);
  const [notice, setNotice] = useState<string | null>(null);
  const toggle = (i: number) => {
    const f = pager.frame(i);
    if (!f) return;
    setSelected((s) => {
      const n = new Set(s);
      if (n.has(f.frame_id)) n.delete(f.frame_id);
      else n.add(f.frame_id);
      return n;
    });
  };
  const segment = view.filter.get("segment");
  // The first page (with the count) is the one the URL scrolled to; fetch it before the grid exists.
  useEffect(() => {
    pager.want(view.at, view.at + 1, { now: true });
    setCursor(view.index ?? view.at);
    return () => pager.close();
  }, [pager]);

  // The denominator: every frame of the version shown, whatever the filter (without a filter, the
  // pager's own count is it).
  const version = view.filter.get("version");
  // A list or a segment is a subset too: its denominator is every frame of the version.
  const filtered = hasFilter(view) || !!list;
  const all = useAsync(
    async (signal) =>
      filtered ? ((await api<FramePage>(`${base}/frames?limit=1&count=true${version ? `&version=${encodeURIComponent(version)}` : ""}`, { signal })).total ?? null) : null,
    [base, version, filtered],
  );

  // One object per setting, so that tiles (which re-render only when a prop changes) see a change.
  const opts = useMemo(
    () => ({ showLabels: view.showLabels, showInferences: view.showInferences, conf: view.conf, classes }),
    [view.showLabels, view.showInferences, view.conf, classes],
  );

  const open = async (i: number) => {
    setCursor(i);
    const f = await pager.get(i);
    if (f) navigate(withQuery({ frame: f.frame_id, i: String(i) }));
  };
  const move = async (delta: -1 | 1) => {
    if (view.index == null) {
      // Opened from a link without its position: the next frame is the one after it in id order.
      if (delta < 0 || !view.frame) return;
      const q = apiQuery(view);
      q.set("after", view.frame);
      q.set("limit", "1");
      const page = await api<FramePage>(`${base}/frames?${q}`);
      if (page.frames[0]) navigate(withQuery({ frame: page.frames[0].frame_id }), { replace: true });
      return;
    }
    const i = view.index + delta;
    if (i < 0 || (length != null && i >= length)) return;
    const f = await pager.get(i);
    if (!f) return;
    setCursor(i);
    gridApi.current?.scrollToIndex(i);
    navigate(withQuery({ frame: f.frame_id, i: String(i) }), { replace: true });
  };
  const close = () => navigate(withQuery({ frame: null, i: null }));

  // Keys: j/k and arrows move, Enter opens, Esc closes (the `?` list is global, in main.tsx).
  const keys = useRef<((e: KeyboardEvent) => void) | null>(null);
  keys.current = (e: KeyboardEvent) => {
    if (e.altKey || e.ctrlKey || e.metaKey) return;
    const t = e.target as HTMLElement;
    if (isTyping(t) && e.key !== "Escape") return;
    if (picking) return;
    if (view.frame) {
      if (e.key === "Escape") close();
      else if (e.key === "ArrowRight" || e.key === "j" || e.key === "ArrowDown") move(1);
      else if (e.key === "ArrowLeft" || e.key === "k" || e.key === "ArrowUp") move(-1);
      else return;
      e.preventDefault();
      return;
    }
    if (!length) return;
    const cols = gridApi.current?.cols ?? 1;
    const step: Record<string, number> = { ArrowRight: 1, j: 1, ArrowLeft: -1, k: -1, ArrowDown: cols, ArrowUp: -cols, PageDown: cols * 4, PageUp: -cols * 4 };
    if (e.key in step) {
      const i = Math.max(0, Math.min(length - 1, cursor + step[e.key]));
      setCursor(i);
      gridApi.current?.scrollToIndex(i);
    } else if (e.key === "Home" || e.key === "End") {
      const i = e.key === "Home" ? 0 : length - 1;
      setCursor(i);
      gridApi.current?.scrollToIndex(i);
    } else if (e.key === "Enter" && !t.closest("button, a")) open(cursor);
    else if (e.key === "x") toggle(cursor);
    else if (e.key === "s" && selected.size > 0) setPicking(true);
    else if (e.key === "Escape" && selected.size > 0) setSelected(new Set());
    else return;
    e.preventDefault();
  };
  useEffect(() => {
    const h = (e: KeyboardEvent) => keys.current!(e);
    addEventListener("keydown", h);
    return () => removeEventListener("keydown", h);
  }, []);

  const metaKeys = useMemo(() => {
    const s = new Set<string>();
    for (let i = view.at; i < view.at + 50; i++) for (const k of Object.keys(pager.frame(i)?.metadata ?? {})) s.add(k);
    return [...s].sort();
  }, [pager, pager.tick.value > 0]);

  const denominator = filtered ? (all.data ?? null) : total;
  const extent = pager.extent.value;
  const mode = meta.project.access_mode;
  return (
    <div class="explorer">
      <Filters view={view} classes={meta.project.classes} inferenceSets={meta.sets} latestVersion={meta.dataset.version} metaKeys={metaKeys} />
      <main class="results" aria-label="frames">
        <div class="results-bar">
          <span class="count" aria-live="polite">
            {total != null
              ? `${fmt(total)} of ${denominator == null ? "…" : fmt(denominator)} frames`
              : extent
                ? `${fmt(extent.end)}${extent.more ? "+" : ""} of ${denominator == null ? "…" : fmt(denominator)} frames (counting…)`
                : "counting…"}
            {hasFilter(view) && !list && total != null && <span class="muted"> match the filters</span>}
          </span>
          {list && (
            <span class="list-title">
              {list.title}{" "}
              <button type="button" class="link" onClick={() => navigate(withQuery({ list: null, similar: null, similar_label: null, k: null, at: null }))}>
                show all frames
              </button>
            </span>
          )}
          {segment && <span class="list-title">segment {segment}</span>}
          <span class="muted">version {pager.version.value ?? version ?? meta.dataset.version}</span>
          <ModeBadge mode={mode} long={mode === "anonymous"} />
          <span class="spacer" />
          <span class="muted keys-hint">
            <kbd>j</kbd>/<kbd>k</kbd> move · <kbd>x</kbd> select · <kbd>Enter</kbd> open · <kbd>?</kbd> keys
          </span>
        </div>
        {(selected.size > 0 || notice) && (
          <div class="selection-bar" role="status">
            {selected.size > 0 && (
              <>
                <strong>{fmt(selected.size)} selected</strong>
                <button type="button" onClick={() => setPicking(true)} title="add to a segment (s)">
                  Add to segment…
                </button>
                {segment && (
                  <button
                    type="button"
                    onClick={async () => {
                      try {
                        const seg = await removeFromSegment(base, segment, [...selected]);
                        setNotice(`${fmt(selected.size)} removed from ${segment} (${fmt(seg.items.length)} left)`);
                        setSelected(new Set());
                        pager.reload();
                        navigate(withQuery({ at: null }), { replace: true });
                      } catch (e) {
                        setNotice((e as Error).message);
                      }
                    }}
                  >
                    Remove from {segment}
                  </button>
                )}
                <button type="button" class="link" onClick={() => setSelected(new Set())}>
                  clear
                </button>
              </>
            )}
            {notice && <span class="muted">{notice}</span>}
          </div>
        )}
        {pager.error.value && length == null ? (
          <ErrorBox error={pager.error.value} retry={() => pager.reload()} />
        ) : length == null || (total == null && view.at > 0) ? (
          // A link deep into the frames waits for the count, so that its position maps to the right row.
          <Spinner label="Loading frames…" />
        ) : length === 0 ? (
          <Empty>
            No frames {hasFilter(view) ? "match these filters" : "in this dataset version"}.{" "}
            {hasFilter(view) && (
              <button type="button" class="link" onClick={() => navigate(withQuery({ class: null, meta: null, min_labels: null, max_labels: null, sensor_kind: null }))}>
                Clear filters
              </button>
            )}
          </Empty>
        ) : (
          <>
            {pager.error.value && <ErrorBox error={pager.error.value} retry={() => pager.reload()} />}
            <Grid
              key={query}
              pager={pager}
              total={length}
              at={view.at}
              cursor={cursor}
              selected={selected}
              opts={opts}
              onOpen={open}
              onFirstVisible={(i) => navigate(withQuery({ at: i > 0 ? String(i) : null }), { replace: true })}
              apiRef={gridApi}
            />
          </>
        )}
      </main>
      {view.frame && (
        <FrameView
          base={base}
          project={meta.project}
          frameId={view.frame}
          index={view.index}
          total={total}
          version={version}
          inferenceSet={view.inferenceSet}
          opts={opts}
          onMove={move}
          onClose={close}
          onSimilar={(q) => navigate(withQuery({ view: null, frame: null, i: null, at: null, list: null, similar: q.frameId ?? null, similar_label: q.labelId ?? null }))}
        />
      )}
      {picking && (
        <SegmentPicker
          base={base}
          frameIds={[...selected]}
          onClose={() => setPicking(false)}
          onDone={(msg) => {
            setPicking(false);
            setNotice(msg);
            setSelected(new Set());
          }}
        />
      )}
    </div>
  );
}
