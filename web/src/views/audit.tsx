// The audit log as its reader may see it (owners: every query on their tables; everyone: their own), with
// filters by table, user and decision, the hash chain's verdict (owners and admins), and an export of what
// the filters keep, as CSV or JSON.
import { useState } from "preact/hooks";
import { api } from "../api";
import { me } from "../session";
import { Empty, ErrorBox, Spinner, fmt, useAsync } from "../ui";

interface Entry {
  id: number;
  at: string;
  user: string;
  tables: string[];
  query: string;
  decision: string;
  reason: string | null;
  rows_returned: number | null;
  request_id: number | null;
}
interface Verdict {
  verified: boolean;
  entries: number;
  first_mismatch: number | null;
}

function download(name: string, type: string, text: string) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([text], { type }));
  a.download = name;
  a.click();
  URL.revokeObjectURL(a.href);
}

const csvCell = (v: unknown) => {
  const s = v == null ? "" : Array.isArray(v) ? v.join(";") : String(v);
  return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
};

export function Audit() {
  const log = useAsync((signal) => api<{ entries: Entry[] }>("/api/audit", { signal }), []);
  const canVerify = me.value?.role === "owner" || me.value?.role === "admin";
  const verdict = useAsync((signal) => (canVerify ? api<Verdict>("/api/audit/verify", { signal }) : Promise.resolve(null)), [canVerify]);
  const [table, setTable] = useState("");
  const [user, setUser] = useState("");
  const [decision, setDecision] = useState("");
  const entries = log.data?.entries ?? [];
  const distinct = (f: (e: Entry) => string[]) => [...new Set(entries.flatMap(f))].sort();
  const shown = entries.filter((e) => (!table || e.tables.includes(table)) && (!user || e.user === user) && (!decision || e.decision === decision));
  const columns: (keyof Entry)[] = ["id", "at", "user", "tables", "decision", "reason", "rows_returned", "request_id", "query"];

  return (
    <main class="audit">
      <h1>Audit log</h1>
      {canVerify && (
        <p class="chain" role="status">
          {verdict.error ? (
            <ErrorBox error={verdict.error} />
          ) : !verdict.data ? (
            "Verifying the hash chain…"
          ) : verdict.data.verified ? (
            <span class="verified">Hash chain verified: {fmt(verdict.data.entries)} entries, none altered.</span>
          ) : (
            <span class="broken">The hash chain is broken at entry {verdict.data.first_mismatch}: the log was altered.</span>
          )}
        </p>
      )}
      <div class="map-bar">
        <Filter name="table" label="Table" value={table} options={distinct((e) => e.tables)} onChange={setTable} />
        <Filter name="user" label="User" value={user} options={distinct((e) => [e.user])} onChange={setUser} />
        <Filter name="decision" label="Decision" value={decision} options={distinct((e) => [e.decision])} onChange={setDecision} />
        <span class="spacer" />
        <span class="count">{fmt(shown.length)} entries</span>
        <button type="button" name="export_csv" disabled={!shown.length} onClick={() => download("audit.csv", "text/csv", [columns.join(","), ...shown.map((e) => columns.map((c) => csvCell(e[c])).join(","))].join("\n"))}>
          Export CSV
        </button>
        <button type="button" name="export_json" disabled={!shown.length} onClick={() => download("audit.json", "application/json", JSON.stringify(shown, null, 2))}>
          Export JSON
        </button>
      </div>
      {log.error ? (
        <ErrorBox error={log.error} retry={log.reload} />
      ) : !log.data ? (
        <Spinner />
      ) : shown.length === 0 ? (
        <Empty>No entries{table || user || decision ? " match these filters" : " you may read yet"}.</Empty>
      ) : (
        <table class="result audit-log">
          <thead>
            <tr>
              <th>#</th><th>when</th><th>user</th><th>tables</th><th>decision</th><th>query</th><th>why</th>
            </tr>
          </thead>
          <tbody>
            {shown.map((e) => (
              <tr key={e.id} data-entry={e.id} data-decision={e.decision}>
                <td class="num">{e.id}</td>
                <td>{new Date(e.at).toLocaleString()}</td>
                <td>{e.user}</td>
                <td>{e.tables.join(", ")}</td>
                <td>
                  <span class={`decision decision-${e.decision}`}>{e.decision}</span>
                  {e.rows_returned != null && <span class="muted"> · {fmt(e.rows_returned)} rows</span>}
                </td>
                <td>
                  <code>{e.query}</code>
                </td>
                <td class="muted">{e.reason ?? ""}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </main>
  );
}

function Filter({ name, label, value, options, onChange }: { name: string; label: string; value: string; options: string[]; onChange: (v: string) => void }) {
  return (
    <label class="inline">
      {label}
      <select name={name} value={value} onChange={(e) => onChange(e.currentTarget.value)}>
        <option value="">any</option>
        {options.map((o) => (
          <option key={o}>{o}</option>
        ))}
      </select>
    </label>
  );
}
