// The segments view: the dataset's saved sets of frames or labels. Open one in the grid, rename it,
// move it through open → in review → resolved, edit its description, export it, delete it, or collect
// similar frames from another dataset of the project (an unlabeled pool) into a new segment there.
import { useState } from "preact/hooks";
import { api, enc, token, type Dataset } from "../api";
import { datasetUrl, navigate, withQuery } from "../route";
import { Empty, ErrorBox, Spinner, fmt, useAsync } from "../ui";
import type { ViewProps } from "../explorer/explorer";
import { listSegments, patchSegment, type Segment, type SegmentState } from "./segments-api";

const STATES: SegmentState[] = ["open", "in_review", "resolved"];

export function SegmentsView({ base, meta }: ViewProps) {
  const segs = useAsync((signal) => listSegments(base, signal), [base]);
  const others = useAsync(async (signal) => (await api<{ datasets: Dataset[] }>(`/api/projects/${enc(meta.project.name)}/datasets`, { signal })).datasets.filter((d) => d.name !== meta.dataset.name), [meta.project.name]);
  const [notice, setNotice] = useState<string | null>(null);
  const [error, setError] = useState<unknown>(null);
  const act = async (what: () => Promise<unknown>, done: string) => {
    setError(null);
    try {
      await what();
      setNotice(done);
      segs.reload();
    } catch (e) {
      setError(e);
    }
  };
  if (segs.error) return <ErrorBox error={segs.error} retry={segs.reload} />;
  if (!segs.data) return <Spinner label="Loading segments…" />;
  return (
    <div class="segments-view">
      <div class="map-bar">
        <span class="count">
          {fmt(segs.data.length)} segment{segs.data.length === 1 ? "" : "s"}
        </span>
        <span class="muted">Make one from a grid selection (x, then s), a lasso on the map, or the issue queue (s).</span>
      </div>
      {notice && <div class="selection-bar" role="status">{notice}</div>}
      {error != null && <ErrorBox error={error} />}
      {segs.data.length === 0 ? (
        <Empty>No segments in this dataset yet.</Empty>
      ) : (
        <table class="segments">
          <thead>
            <tr>
              <th>name</th><th>state</th><th class="num">items</th><th>description</th><th>updated</th><th>actions</th>
            </tr>
          </thead>
          <tbody>
            {segs.data.map((s) => (
              <SegmentRow key={s.name + s.updated_at} s={s} base={base} others={others.data ?? []} project={meta.project.name} act={act} />
            ))}
          </tbody>
        </table>
      )}
    </div>
  );
}

function SegmentRow({ s, base, others, project, act }: { s: Segment; base: string; others: Dataset[]; project: string; act: (w: () => Promise<unknown>, done: string) => void }) {
  const [name, setName] = useState(s.name);
  const [desc, setDesc] = useState(s.description ?? "");
  const [collecting, setCollecting] = useState(false);
  return (
    <tr data-segment={s.name}>
      <td>
        <form
          onSubmit={(e) => {
            e.preventDefault();
            if (name.trim() && name !== s.name) act(() => patchSegment(base, s.name, { name: name.trim() }), `renamed ${s.name} to ${name.trim()}`);
          }}
        >
          <input name="segment_name" value={name} aria-label="segment name" onInput={(e) => setName(e.currentTarget.value)} onBlur={(e) => e.currentTarget.form?.requestSubmit()} size={16} />
        </form>
        <span class="muted">{s.item_kind}</span>
      </td>
      <td>
        <select name="state" value={s.state} aria-label="state" onChange={(e) => act(() => patchSegment(base, s.name, { state: e.currentTarget.value as SegmentState }), `${s.name} is ${e.currentTarget.value.replace("_", " ")}`)}>
          {STATES.map((st) => (
            <option key={st} value={st}>
              {st.replace("_", " ")}
            </option>
          ))}
        </select>
      </td>
      <td class="num">{fmt(s.items.length)}</td>
      <td>
        <input
          name="description"
          value={desc}
          placeholder="what this is"
          aria-label="description"
          onInput={(e) => setDesc(e.currentTarget.value)}
          onChange={() => desc !== (s.description ?? "") && act(() => patchSegment(base, s.name, { description: desc }), `description of ${s.name} saved`)}
        />
      </td>
      <td class="muted">{s.updated_at.slice(0, 16).replace("T", " ")}</td>
      <td class="seg-actions">
        {s.item_kind === "frames" && (
          <button type="button" name="open_in_grid" onClick={() => navigate(withQuery({ view: null, segment: s.name, at: null, list: null, similar: null, frame: null, i: null }))}>
            Open in grid
          </button>
        )}
        <button type="button" onClick={() => download(base, s.name, "jsonl")}>JSONL</button>
        <button type="button" onClick={() => download(base, s.name, "csv")}>CSV</button>
        {s.item_kind === "frames" && others.length > 0 && (
          <button type="button" onClick={() => setCollecting((c) => !c)} aria-expanded={collecting}>
            Collect similar…
          </button>
        )}
        <button type="button" class="danger" name="delete" onClick={() => confirm(`Delete segment ${s.name}? Its frames stay.`) && act(() => api(`${base}/segments/${enc(s.name)}`, { method: "DELETE" }), `deleted ${s.name}`)}>
          Delete
        </button>
        {collecting && <Collect base={base} s={s} others={others} project={project} />}
      </td>
    </tr>
  );
}

function Collect({ base, s, others, project }: { base: string; s: Segment; others: Dataset[]; project: string }) {
  const [from, setFrom] = useState(others[0]?.name ?? "");
  const [name, setName] = useState(`${s.name}-similar`);
  const [k, setK] = useState(5);
  const [state, setState] = useState<{ busy?: boolean; done?: Segment; error?: unknown }>({});
  return (
    <form
      class="collect"
      onSubmit={async (e) => {
        e.preventDefault();
        setState({ busy: true });
        try {
          const done = await api<Segment>(`${base}/segments/${enc(s.name)}/collect`, { method: "POST", json: { from_dataset: from, name, k } });
          setState({ done });
        } catch (error) {
          setState({ error });
        }
      }}
    >
      <label class="inline">
        from
        <select value={from} onChange={(e) => setFrom(e.currentTarget.value)} name="from_dataset">
          {others.map((d) => (
            <option key={d.name}>{d.name}</option>
          ))}
        </select>
      </label>
      <label class="inline">
        k <input type="number" min={1} max={100} value={k} onInput={(e) => setK(Number(e.currentTarget.value) || 1)} name="k" size={3} />
      </label>
      <label class="inline">
        as <input value={name} onInput={(e) => setName(e.currentTarget.value)} name="collect_name" size={14} />
      </label>
      <button type="submit" disabled={state.busy}>
        Collect
      </button>
      {state.done && (
        <span class="ok">
          {fmt(state.done.items.length)} frames saved as <a href={`${datasetUrl(project, from)}?segment=${enc(state.done.name)}`}>{state.done.name} in {from}</a>
        </span>
      )}
      {state.error != null && <ErrorBox error={state.error} />}
    </form>
  );
}

/** Export through fetch (the token is a header, not a cookie), then save the answer as a file. */
async function download(base: string, name: string, format: "jsonl" | "csv") {
  const r = await fetch(`${base}/segments/${enc(name)}/export?format=${format}`, { headers: { Authorization: `Bearer ${token.value}` } });
  if (!r.ok) return alert(`Export failed: ${r.status} ${await r.text()}`);
  const url = URL.createObjectURL(await r.blob());
  const a = document.createElement("a");
  a.href = url;
  a.download = `${name}.${format}`;
  a.click();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
