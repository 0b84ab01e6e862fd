// The audit log as its reader may see it (owners: every query on their tables, including statements refused
// before planning that name them; everyone: their own), with filters by table, user, decision and time
// (from/to, in the browser's time zone), the hash chain's verdict (owners and admins), and an export of what
// the filters keep, as CSV or JSON.
import { useState } from "preact/hooks";
import { api } from "../api";
import { me } from "../session";
import { Empty, ErrorBox, HeadRow, Spinner, fmt, useAsync } from "../ui";

export interface AuditEntry {
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
  const log = useAsync((signal) => api<{ entries: AuditEntry[] }>("/api/audit", { signal }), []);
  const canVerify = me.value?.role === "owner" || me.value?.role === "admin";
  const verdict = useAsync((signal) => (canVerify ? api<Verdict>("/api/audit/verify", { signal }) : Promise.resolve(null)), [canVerify]);
  const [table, setTable] = useState("");
  const [user, setUser] = useState("");
  const [decision, setDecision] = useState("");
  const [from, setFrom] = useState("");
  const [to, setTo] = useState("");
  const entries = log.data?.entries ?? [];
  const distinct = (f: (e: AuditEntry) => string[]) => [...new Set(entries.flatMap(f))].sort();
  // datetime-local values are local times to the minute or second; "to" takes in all of its last minute or
  // second (entries are written to the millisecond); an empty bound is open.
  const after = from ? new Date(from).getTime() : -Infinity;
  const until = to ? new Date(to).getTime() + (to.length <= 16 ? 59_999 : 999) : Infinity;
  const inTime = (e: AuditEntry) => {
    const at = new Date(e.at).getTime();
    return at >= after && at <= until;
  };
  const shown = entries.filter((e) => (!table || e.tables.includes(table)) && (!user || e.user === user) && (!decision || e.decision === decision) && inTime(e));
  const filtered = !!(table || user || decision || from || to);
  const columns: (keyof AuditEntry)[] = ["id", "at", "user", "tables", "decision", "reason", "rows_returned", "request_id", "query"];

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
        <label class="inline">
          From
          <input type="datetime-local" name="from" step={1} value={from} onInput={(e) => setFrom(e.currentTarget.value)} />
        </label>
        <label class="inline">
          To
          <input type="datetime-local" name="to" step={1} value={to} onInput={(e) => setTo(e.currentTarget.value)} />
        </label>
        <span class="spacer" />
        <span class="count" role="status">{fmt(shown.length)} entries</span>
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
        <Empty>No entries{filtered ? " match these filters" : " you may read yet"}.</Empty>
      ) : (
        <table class="result audit-log">
          <HeadRow columns={["#", "when", "user", "tables", "decision", "query", "why"]} />
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
