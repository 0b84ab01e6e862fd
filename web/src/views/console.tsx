// The scientist's console: the tables the caller may query, each with its columns (sanitized ones marked)
// and its policy in words; a SQL editor whose answers show as a table, whose refusals show the guard's
// sentence and rule, and whose held queries wait for the owner's decision (collected when it comes, also
// after a reload: held requests are kept in this tab's storage); the caller's history of queries and
// decisions across sessions (their own audit entries); and the same query as a snippet for the Python SDK
// and for ADBC.
import { useEffect, useRef, useState } from "preact/hooks";
import { api, ApiError, enc, token } from "../api";
import { me } from "../session";
import { Empty, ErrorBox, HeadRow, Spinner, fmt, useAsync } from "../ui";
import type { AuditEntry } from "./audit";

export interface Policy {
  safe_zone?: { aggregation?: { min_agg_size?: number } | null };
  unsafe_handling?: "log" | "reject" | "review";
  sanitized_columns?: string[];
  dp?: { epsilon: number } | null;
}
interface Table {
  name: string;
  owner?: string;
  rows?: number;
  columns?: string[];
  policy: Policy;
  /** What the policy says, when it is not the table's own (a member's read of a dataset). */
  words?: string;
}
/** A dataset's table, as `GET /api/dataset_tables` lists it. */
interface DatasetTable {
  sql_name: string;
  rows: number;
  member: boolean;
  columns: { name: string; sanitized: boolean }[];
  policy?: Policy;
  /** The metadata key the minimums count; absent: frames. */
  unit?: string;
}
type Outcome =
  | { kind: "rows"; columns: string[]; rows: Record<string, unknown>[]; masked: string[]; flagged: boolean; note?: string }
  | { kind: "refused"; code: string; message: string }
  | { kind: "held"; request: number; message: string };
interface Ran {
  sql: string;
  at: string;
  outcome: Outcome;
}

const HELD_KEY = "milkglass.console.held";

/** The policy as a sentence an analyst can act on; `owner`: as its owner reads it ("your review"). */
export function policyInWords(p: Policy, unit = "rows", owner = false): string {
  const parts: string[] = [];
  const min = p.safe_zone?.aggregation?.min_agg_size;
  if (min) parts.push(`every result value must stand for at least ${min} ${unit}`);
  else parts.push("results are not checked for group sizes");
  const hidden = p.sanitized_columns ?? [];
  if (hidden.length) parts.push(`${hidden.join(", ")} ${hidden.length === 1 ? "is" : "are"} never shown`);
  const whose = owner ? "your" : "the owner's";
  const handling = { reject: "queries outside these rules are refused", review: `queries outside these rules wait for ${whose} review`, log: `queries outside these rules are answered and flagged to ${owner ? "you" : "the owner"}` };
  if (p.unsafe_handling) parts.push(handling[p.unsafe_handling]);
  if (p.dp) parts.push(`answers are differentially private (a budget of ε = ${p.dp.epsilon})`);
  return parts.join("; ") + ".";
}

async function run(sql: string): Promise<Outcome> {
  try {
    const r = await api<{ status?: string; request_id?: number; message?: string; columns?: string[]; rows?: Record<string, unknown>[]; masked_columns?: string[]; flagged?: boolean; privacy?: { note?: string } }>("/api/query", { method: "POST", json: { sql, wait_seconds: 0 } });
    if (r.status === "held" && r.request_id != null) return { kind: "held", request: r.request_id, message: r.message ?? "" };
    return { kind: "rows", columns: r.columns ?? [], rows: r.rows ?? [], masked: r.masked_columns ?? [], flagged: !!r.flagged, note: r.privacy?.note };
  } catch (e) {
    if (e instanceof ApiError) return { kind: "refused", code: e.code ?? String(e.status), message: e.message };
    throw e;
  }
}

/** A held request's state: still waiting (null), or its outcome. */
async function collect(request: number): Promise<Outcome | null> {
  const r = await fetch(`/api/query/requests/${request}`, { headers: { Authorization: `Bearer ${token.value}` } });
  if (r.status === 202) return null;
  const body = await r.json().catch(() => null);
  if (r.ok) return { kind: "rows", columns: body.columns ?? [], rows: body.rows ?? [], masked: body.masked_columns ?? [], flagged: !!body.flagged };
  return { kind: "refused", code: body?.error?.code ?? String(r.status), message: body?.error?.message ?? r.statusText };
}

export function Console() {
  const tables = useAsync(async (signal) => {
    const own = await api<{ tables: Table[] }>("/api/tables", { signal });
    const datasets = await api<{ tables: DatasetTable[] }>("/api/dataset_tables", { signal }).catch(() => ({ tables: [] as DatasetTable[] }));
    const ofDatasets: Table[] = datasets.tables.map((t) => ({
      name: t.sql_name,
      rows: t.rows,
      columns: t.columns.map((c) => c.name),
      policy: t.policy ?? { sanitized_columns: t.columns.filter((c) => c.sanitized).map((c) => c.name) },
      words: t.member ? "Your project's dataset: every query is answered, and audited." : policyInWords(t.policy ?? {}, t.unit ? `distinct ${t.unit} values` : "frames"),
    }));
    return [...own.tables, ...ofDatasets];
  }, []);
  const [sql, setSql] = useState("");
  const [busy, setBusy] = useState(false);
  const [history, setHistory] = useState<Ran[]>(() => JSON.parse(sessionStorage.getItem(HELD_KEY) ?? "[]"));
  const [error, setError] = useState<unknown>(null);
  const editor = useRef<HTMLTextAreaElement>(null);
  // The caller's own audit entries: every query they ran and every decision on it, in any session.
  const [ran, setRan] = useState(0);
  const past = useAsync(async (signal) => (await api<{ entries: AuditEntry[] }>(`/api/audit?user=${enc(me.value?.name ?? "")}`, { signal })).entries.reverse(), [ran]);

  // Held queries are kept in this tab's storage and collected when the owner decides.
  useEffect(() => {
    sessionStorage.setItem(HELD_KEY, JSON.stringify(history.filter((h) => h.outcome.kind === "held")));
    const waiting = history.filter((h) => h.outcome.kind === "held");
    if (!waiting.length) return;
    const t = setInterval(async () => {
      for (const h of waiting) {
        const outcome = h.outcome.kind === "held" ? await collect(h.outcome.request).catch(() => null) : null;
        if (outcome) {
          setHistory((all) => all.map((x) => (x === h ? { ...x, outcome } : x)));
          setRan((n) => n + 1);
        }
      }
    }, 1500);
    return () => clearInterval(t);
  }, [history]);

  const submit = async () => {
    const text = sql.trim();
    if (!text || busy) return;
    setBusy(true);
    setError(null);
    try {
      const outcome = await run(text);
      setHistory((h) => [{ sql: text, at: new Date().toLocaleTimeString(), outcome }, ...h]);
      setRan((n) => n + 1);
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };
  const latest = history[0];
  return (
    <div class="console">
      <aside class="console-tables" aria-label="tables you may query">
        <h2>Tables</h2>
        {tables.error ? (
          <ErrorBox error={tables.error} retry={tables.reload} />
        ) : !tables.data ? (
          <Spinner />
        ) : tables.data.length === 0 ? (
          <Empty>No table is published to you yet.</Empty>
        ) : (
          tables.data.map((t) => (
            <section key={t.name} class="card console-table" data-table={t.name}>
              <h3>
                <button type="button" class="link" onClick={() => (setSql(`SELECT COUNT(*) AS n FROM ${t.name}`), editor.current?.focus())}>
                  {t.name}
                </button>
                {t.rows != null && <span class="muted"> · {fmt(t.rows)} rows</span>}
              </h3>
              <p class="policy">{t.words ?? policyInWords(t.policy)}</p>
              {t.columns && <Columns columns={t.columns} sanitized={t.policy.sanitized_columns ?? []} />}
            </section>
          ))
        )}
      </aside>
      <main class="console-main">
        <form
          onSubmit={(e) => {
            e.preventDefault();
            submit();
          }}
        >
          <label for="sql">SQL</label>
          <textarea
            id="sql"
            name="sql"
            ref={editor}
            rows={5}
            spellcheck={false}
            value={sql}
            placeholder="SELECT Pclass, AVG(Survived) AS survived FROM titanic GROUP BY Pclass ORDER BY Pclass"
            onInput={(e) => setSql(e.currentTarget.value)}
            onKeyDown={(e) => {
              if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) (e.preventDefault(), submit());
            }}
          />
          <div class="console-actions">
            <button type="submit" class="primary" name="run" disabled={busy || !sql.trim()}>
              {busy ? "Running…" : "Run"}
            </button>
            <span class="muted">Ctrl+Enter runs. Every query is checked by the owner's policy and written to the audit log.</span>
          </div>
        </form>
        {error != null && <ErrorBox error={error} />}
        {latest && <Result ran={latest} />}
        {latest && <Snippets sql={latest.sql} />}
        {history.length > 1 && (
          <section class="card" aria-labelledby="session-heading">
            <h2 id="session-heading">This session</h2>
            <ol class="console-history">
              {history.slice(1).map((h, i) => (
                <li key={i}>
                  <code>{h.sql}</code> <span class="muted">{h.at} · {h.outcome.kind === "rows" ? `${fmt(h.outcome.rows.length)} rows` : h.outcome.kind}</span>
                </li>
              ))}
            </ol>
          </section>
        )}
        <History past={past} onUse={(text) => (setSql(text), editor.current?.focus())} />
      </main>
    </div>
  );
}

/** A table's columns, the sanitized ones crossed out (the policy in words says so for a screen reader). */
export function Columns({ columns, sanitized }: { columns: string[]; sanitized: string[] }) {
  return (
    <ul class="columns" aria-label="columns">
      {columns.map((c) => (
        <li key={c} class={sanitized.includes(c) ? "sanitized" : ""} title={sanitized.includes(c) ? "sanitized: never shown" : undefined}>
          {c}
        </li>
      ))}
    </ul>
  );
}

const HISTORY_SHOWN = 50;

/** The caller's queries and the decisions on them, newest first, from the audit log. */
function History({ past, onUse }: { past: ReturnType<typeof useAsync<AuditEntry[]>>; onUse: (sql: string) => void }) {
  return (
    <section class="card console-past" aria-labelledby="past-heading">
      <h2 id="past-heading">Your history</h2>
      {past.error ? (
        <ErrorBox error={past.error} retry={past.reload} />
      ) : !past.data ? (
        <Spinner />
      ) : past.data.length === 0 ? (
        <p class="muted">No queries yet. Every query you run, and every decision on it, is listed here, across sessions.</p>
      ) : (
        <table class="result">
          <HeadRow columns={["when", "query", "decision", ""]} />
          <tbody>
            {past.data.slice(0, HISTORY_SHOWN).map((e) => (
              <tr key={e.id} data-entry={e.id} data-decision={e.decision}>
                <td>{new Date(e.at).toLocaleString()}</td>
                <td>
                  <code>{e.query}</code>
                </td>
                <td>
                  <span class={`decision decision-${e.decision}`}>{e.decision}</span>
                  {e.rows_returned != null && e.rows_returned > 0 && <span class="muted"> · {fmt(e.rows_returned)} rows</span>}
                  {e.reason && <div class="muted">{e.reason}</div>}
                </td>
                <td>
                  <button type="button" class="link" aria-label={`edit again: ${e.query}`} onClick={() => onUse(e.query)}>
                    Edit again
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

function Result({ ran }: { ran: Ran }) {
  const o = ran.outcome;
  if (o.kind === "refused") {
    return (
      <div class="state error console-refused" role="alert" data-code={o.code}>
        <strong>{o.code === "refused" ? "Refused by the policy" : o.code === "rejected" ? "Rejected by the owner" : "Not answered"}:</strong> {o.message}
      </div>
    );
  }
  if (o.kind === "held") {
    return (
      <div class="state loading console-held" role="status" data-request={o.request}>
        <span class="spinner" aria-hidden="true" />
        Waiting for the owner's review (request {o.request}): {o.message} The answer appears here when they decide.
      </div>
    );
  }
  return (
    <section class="card console-result">
      <p class="muted">
        {fmt(o.rows.length)} rows{o.flagged ? " · flagged to the owner" : ""}
        {o.masked.length ? ` · ${o.masked.join(", ")} hidden (sanitized)` : ""}
        {o.note ? ` · ${o.note}` : ""}
      </p>
      <table class="result">
        <thead>
          <tr>
            {o.columns.map((c) => (
              <th key={c} scope="col">{c}</th>
            ))}
          </tr>
        </thead>
        <tbody>
          {o.rows.map((r, i) => (
            <tr key={i}>
              {o.columns.map((c) => (
                <td key={c} class={typeof r[c] === "number" ? "num" : ""}>
                  {r[c] == null ? <span class="muted">—</span> : String(r[c])}
                </td>
              ))}
            </tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}

/** The same query from Python: the milkglass SDK, and any ADBC Flight SQL client. */
function Snippets({ sql }: { sql: string }) {
  const server = location.origin;
  const sdk = `import milkglass\nclient = milkglass.connect("${server}", token="mg_...")\ndf = client.sql(${JSON.stringify(sql)})  # a Polars DataFrame`;
  const adbc = `import adbc_driver_flightsql.dbapi as flight\n# the Flight SQL address is in ${server}/api/info\nwith flight.connect("grpc://HOST:PORT", db_kwargs={"adbc.flight.sql.authorization_header": "Bearer mg_..."}) as conn:\n    df = conn.cursor().execute(${JSON.stringify(sql)}).fetch_df()`;
  return (
    <details class="card snippets">
      <summary>The same query from Python</summary>
      <h3>milkglass SDK</h3>
      <pre class="snippet" data-kind="sdk">{sdk}</pre>
      <h3>ADBC (Flight SQL)</h3>
      <pre class="snippet" data-kind="adbc">{adbc}</pre>
    </details>
  );
}
