// The landing page: the caller's projects, each with its datasets, their counts and inference sets.
import { api, dsPath, enc, type Dataset, type DatasetStatus, type InferenceSet, type Project } from "../api";
import { datasetUrl } from "../route";
import { Empty, ErrorBox, ModeBadge, Spinner, fmt, plural, useAsync } from "../ui";

export function Home({ only }: { only?: string }) {
  const projects = useAsync((signal) => api<{ projects: Project[] }>("/api/projects", { signal }), []);
  if (projects.error) return <ErrorBox error={projects.error} retry={projects.reload} />;
  if (!projects.data) return <Spinner label="Loading projects…" />;
  const list = projects.data.projects.filter((p) => !only || p.name === only);
  return (
    <main class="home">
      <h1>{only ? `Project ${only}` : "Projects"}</h1>
      {list.length === 0 && <Empty>{only ? `No project named ${only} that you can see.` : "You are not a member of any project yet."}</Empty>}
      {list.map((p) => (
        <ProjectCard key={p.name} p={p} />
      ))}
    </main>
  );
}

function ProjectCard({ p }: { p: Project }) {
  const datasets = useAsync((signal) => api<{ datasets: Dataset[] }>(`/api/projects/${enc(p.name)}/datasets`, { signal }), [p.name]);
  const desc = typeof p.metadata?.description === "string" ? p.metadata.description : null;
  return (
    <section class="card project" aria-labelledby={`p-${p.name}`}>
      <header>
        <h2 id={`p-${p.name}`}>{p.name}</h2>
        <ModeBadge mode={p.access_mode} />
        {desc && <span class="muted">{desc}</span>}
      </header>
      {p.access_mode === "anonymous" && (
        <p class="notice">Anonymous project: the server holds no raw data and never fetched any. Images load from your own URLs, in your browser.</p>
      )}
      <ul class="legend inline" aria-label="classes">
        {p.classes.map((c) => (
          <li key={c.id}>
            <span class="swatch" style={{ background: `rgb(${c.color.join(",")})` }} /> {c.name}
          </li>
        ))}
      </ul>
      {datasets.error ? (
        <ErrorBox error={datasets.error} retry={datasets.reload} />
      ) : !datasets.data ? (
        <Spinner label="Loading datasets…" />
      ) : datasets.data.datasets.length === 0 ? (
        <Empty>No datasets yet.</Empty>
      ) : (
        <table class="datasets">
          <thead>
            <tr>
              <th>Dataset</th>
              <th>Kind</th>
              <th class="num">Version</th>
              <th class="num">Frames</th>
              <th class="num">Labels</th>
              <th class="num">Inferences</th>
              <th class="num">Embeddings</th>
              <th>Inference sets</th>
            </tr>
          </thead>
          <tbody>
            {datasets.data.datasets.map((d) => (
              <DatasetRow key={d.name} p={p} d={d} />
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

function DatasetRow({ p, d }: { p: Project; d: Dataset }) {
  const base = dsPath(p.name, d.name);
  const info = useAsync(
    async (signal) => {
      const [status, sets] = await Promise.all([
        api<DatasetStatus>(`${base}/status`, { signal }),
        api<{ inference_sets: InferenceSet[] }>(`${base}/inference_sets`, { signal }),
      ]);
      return { status, sets: sets.inference_sets };
    },
    [base],
  );
  const s = info.data?.status;
  const n = (x?: number) => (x == null ? (info.error ? "?" : "…") : fmt(x));
  const running = s?.jobs.filter((j) => j.state === "running") ?? [];
  return (
    <tr>
      <td>
        <a href={datasetUrl(p.name, d.name)} class="ds-link">
          {d.name}
        </a>
        {running.length > 0 && <span class="muted"> · {plural(running.length, "job")} running</span>}
      </td>
      <td>{d.kind}</td>
      <td class="num">v{s?.dataset.version ?? d.version}</td>
      <td class="num">{n(s?.frames)}</td>
      <td class="num">{n(s?.labels)}</td>
      <td class="num">{n(s?.inferences)}</td>
      <td class="num" title="frame embeddings / label embeddings">
        {n(s?.frame_embeddings)} / {n(s?.label_embeddings)}
      </td>
      <td>{info.error ? <span class="warn">{(info.error as Error).message}</span> : info.data ? info.data.sets.map((x) => x.name).join(", ") || "none" : "…"}</td>
    </tr>
  );
}
