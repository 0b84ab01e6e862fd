// The dataset explorer page: filters on the left, the count and the grid, the frame view on top.
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
import { apiQuery, hasFilter, readView } from "./view";

interface Meta {
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
  return <ExplorerBody base={base} meta={meta.data} />;
}

function ExplorerBody({ base, meta }: { base: string; meta: Meta }) {
  const v = readView();
  // No inference set in the URL means the first one; the URL stays short and the view the same.
  const view = { ...v, inferenceSet: v.inferenceSet ?? meta.sets[0]?.name ?? null };
  const query = apiQuery(view).toString();
  const epoch = credentialsEpoch.value;
  const pager = useMemo(() => new Pager(base, new URLSearchParams(query), meta.project), [base, query, epoch]);
  const classes = useMemo(() => classMap(meta.project.classes), [meta.project]);
  const total = pager.total.value;
  // What the grid lays out: the exact total, or (while it is counted) the frames known so far plus a page.
  const length = pager.length;
  const gridApi = useRef<GridApi | null>(null);
  const [cursor, setCursor] = useState(view.index ?? view.at);
  // The first page (with the count) is the one the URL scrolled to; fetch it before the grid exists.
  useEffect(() => {
    pager.want(view.at, view.at + 1, { now: true });
    setCursor(view.index ?? view.at);
    return () => pager.close();
  }, [pager]);

  // The denominator: every frame of the version shown, whatever the filter (without a filter, the
  // pager's own count is it).
  const version = view.filter.get("version");
  const filtered = hasFilter(view);
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
            {filtered && total != null && <span class="muted"> match the filters</span>}
          </span>
          <span class="muted">version {pager.version.value ?? version ?? meta.dataset.version}</span>
          <ModeBadge mode={mode} long={mode === "anonymous"} />
          <span class="spacer" />
          <span class="muted keys-hint">
            <kbd>j</kbd>/<kbd>k</kbd> move · <kbd>Enter</kbd> open · <kbd>?</kbd> keys
          </span>
        </div>
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
        />
      )}
    </div>
  );
}
