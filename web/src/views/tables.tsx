// The owner's desk: the tables they publish, each with its row count, columns (sanitized ones marked),
// readers and policy in words; publishing a CSV or Parquet file under a policy made with a form (the JSON it
// produces beside it, editable both ways); editing a table's policy and readers (one route,
// `PUT /api/tables/{table}/policy`); deleting one after a confirmation. The server checks the role; the
// page only says what a scientist may not do here.
import { useLayoutEffect, useRef, useState } from "preact/hooks";
import { api, ApiError, enc } from "../api";
import { me } from "../session";
import { Empty, ErrorBox, Spinner, plural, useAction, useAsync } from "../ui";
import { Columns, policyInWords, type Policy } from "./console";

interface Table {
  name: string;
  owner: string;
  policy: Policy & Record<string, unknown>;
  readers: string[] | null;
  rows: number;
  columns: string[];
  created_at: string;
  updated_at: string;
}

const DEFAULT_POLICY = { safe_zone: { aggregation: { min_agg_size: 10 } }, unsafe_handling: "review", sanitized_columns: [] as string[] };

/** The page for a role that may not use it: says so, and where to go instead. */
export function NotYours({ title, children }: { title: string; children: preact.ComponentChildren }) {
  return (
    <main class="desk">
      <h1>{title}</h1>
      <div class="state error not-yours" role="alert">
        {children} You are signed in as {me.value?.role ?? "nobody"}.
      </div>
    </main>
  );
}

export function Tables() {
  const role = me.value?.role;
  if (role !== "owner" && role !== "admin") {
    return (
      <NotYours title="Your tables">
        Only table owners and admins publish and manage tables. The tables you may query are in the <a href="/console">SQL console</a>.
      </NotYours>
    );
  }
  return <Desk />;
}

function Desk() {
  const list = useAsync((signal) => api<{ tables: Table[] }>("/api/tables", { signal }), []);
  const [notice, setNotice] = useState<string | null>(null);
  const admin = me.value?.role === "admin";
  // Owners also read tables published to them; the desk is for the ones they manage.
  const managed = (list.data?.tables ?? []).filter((t) => admin || t.owner === me.value?.name);
  const changed = (message: string) => {
    setNotice(message);
    list.reload();
  };
  return (
    <main class="desk tables-desk">
      <h1>Your tables</h1>
      <p class="notice" role="status" hidden={!notice}>
        {notice}
      </p>
      <section aria-labelledby="published-heading">
        <h2 id="published-heading">Published</h2>
        {list.error ? (
          <ErrorBox error={list.error} retry={list.reload} />
        ) : !list.data ? (
          <Spinner />
        ) : managed.length === 0 ? (
          <Empty>You have published no table yet. Publish one below.</Empty>
        ) : (
          <ul class="desk-list">
            {managed.map((t) => (
              <TableCard key={t.name} table={t} onChanged={changed} />
            ))}
          </ul>
        )}
      </section>
      <Publish onPublished={(t) => changed(`Published ${t.name}: ${plural(t.rows, "row")}.`)} />
    </main>
  );
}

function TableCard({ table: t, onChanged }: { table: Table; onChanged: (message: string) => void }) {
  const [mode, setMode] = useState<"view" | "edit" | "confirm">("view");
  const deletion = useAction();
  const confirmButton = useRef<HTMLButtonElement>(null);
  const deleteButton = useRef<HTMLButtonElement>(null);
  const wasConfirming = useRef(false);
  // A layout effect: focus moves in the same task as the DOM change, before anything else can act.
  useLayoutEffect(() => {
    // Focus follows the question: to the confirmation when it opens, back to "Delete…" when cancelled.
    if (mode === "confirm") confirmButton.current?.focus();
    else if (wasConfirming.current) deleteButton.current?.focus();
    wasConfirming.current = mode === "confirm";
  }, [mode]);
  const remove = () =>
    deletion.run(async () => {
      await api(`/api/tables/${enc(t.name)}`, { method: "DELETE" });
      onChanged(`Deleted ${t.name}.`);
    });
  const heading = `table-${t.name}`;
  return (
    <li class="card desk-table" data-table={t.name} aria-labelledby={heading}>
      <h3 id={heading}>
        {t.name} <span class="muted">· {plural(t.rows, "row")}{t.owner !== me.value?.name ? ` · owned by ${t.owner}` : ""}</span>
      </h3>
      <p class="policy">{policyInWords(t.policy, "rows", t.owner === me.value?.name)}</p>
      <Columns columns={t.columns} sanitized={t.policy.sanitized_columns ?? []} />
      <p class="readers">
        <span class="muted">Readers:</span> {t.readers?.length ? t.readers.join(", ") : "every scientist"}
      </p>
      {deletion.error != null && <ErrorBox error={deletion.error} />}
      {mode === "edit" ? (
        <EditTable table={t} onDone={(saved) => (setMode("view"), saved && onChanged(`Saved the policy and readers of ${t.name}.`))} />
      ) : mode === "confirm" ? (
        <div class="confirm" role="alertdialog" aria-labelledby={`${heading}-confirm`} onKeyDown={(e) => e.key === "Escape" && setMode("view")}>
          <p id={`${heading}-confirm`}>
            Delete {t.name}? Its data is removed, its pending review requests are closed, and its audit entries stay.
          </p>
          <div class="desk-actions">
            <button type="button" class="danger" name="confirm_delete" ref={confirmButton} disabled={deletion.busy} onClick={remove}>
              Delete {t.name}
            </button>
            <button type="button" name="cancel_delete" onClick={() => setMode("view")}>
              Cancel
            </button>
          </div>
        </div>
      ) : (
        <div class="desk-actions">
          <button type="button" name="edit" onClick={() => setMode("edit")}>
            Edit policy and readers
          </button>
          <button type="button" class="danger" name="delete" ref={deleteButton} onClick={() => setMode("confirm")}>
            Delete…
          </button>
        </div>
      )}
    </li>
  );
}

/** Comma-separated readers; none: every scientist (`null`). */
const readersOf = (text: string) => {
  const names = text.split(",").map((r) => r.trim()).filter(Boolean);
  return names.length ? names : null;
};

function EditTable({ table, onDone }: { table: Table; onDone: (saved: boolean) => void }) {
  const [policy, setPolicy] = useState(JSON.stringify(table.policy, null, 2));
  const [readers, setReaders] = useState(table.readers?.join(", ") ?? "");
  const { run, error, busy } = useAction();
  const save = (e: Event) => {
    e.preventDefault();
    run(async () => {
      const parsed = parsePolicy(policy);
      if (parsed.error) throw new ApiError(`the policy is not valid JSON: ${parsed.error}`, 400, "invalid", "policy");
      await api(`/api/tables/${enc(table.name)}/policy`, { method: "PUT", json: { policy: parsed.policy, readers: readersOf(readers) } });
      onDone(true);
    });
  };
  return (
    <form class="edit-table" aria-label={`edit the policy and readers of ${table.name}`} onSubmit={save}>
      <PolicyEditor id={`edit-${table.name}`} columns={table.columns} text={policy} onText={setPolicy} />
      <ReadersField id={`edit-${table.name}-readers`} value={readers} onInput={setReaders} />
      {error != null && <ErrorBox error={error} />}
      <div class="desk-actions">
        <button type="submit" class="primary" name="save" disabled={busy}>
          {busy ? "Saving…" : "Save"}
        </button>
        <button type="button" name="cancel" onClick={() => onDone(false)}>
          Cancel
        </button>
      </div>
    </form>
  );
}

function ReadersField({ id, value, onInput }: { id: string; value: string; onInput: (v: string) => void }) {
  return (
    <label for={id}>
      Readers (comma-separated scientists; empty: every scientist)
      <input id={id} name="readers" value={value} placeholder="sam, victor" onInput={(e) => onInput(e.currentTarget.value)} />
    </label>
  );
}

function parsePolicy(text: string): { policy?: Record<string, any>; error?: string } {
  try {
    const policy = JSON.parse(text);
    if (!policy || typeof policy !== "object" || Array.isArray(policy)) return { error: "the policy must be a JSON object" };
    return { policy };
  } catch (e) {
    return { error: (e as Error).message };
  }
}

const HANDLINGS: [string, string][] = [
  ["reject", "are refused, naming the rule"],
  ["review", "wait for your review"],
  ["log", "are answered, and flagged to you"],
];

/**
 * The policy as a form (minimum aggregation, sanitized columns, handling) beside the JSON it makes. Both
 * edit the same text: a form change rewrites the JSON, valid JSON typed in sets the form. Fields the form
 * has no control for (`savable`, `dp`, a custom safe zone) stay as the JSON says.
 */
function PolicyEditor({ id, columns, text, onText }: { id: string; columns: string[] | null; text: string; onText: (t: string) => void }) {
  const parsed = parsePolicy(text);
  const p = parsed.policy ?? {};
  const zone = p.safe_zone;
  const plain = zone && typeof zone === "object" && "aggregation" in zone && Object.keys(zone).length === 1;
  const sanitized: string[] = Array.isArray(p.sanitized_columns) ? p.sanitized_columns : [];
  const update = (change: (next: Record<string, any>) => void) => {
    const next = structuredClone(p);
    change(next);
    onText(JSON.stringify(next, null, 2));
  };
  const errorId = `${id}-json-error`;
  return (
    <div class="policy-editor">
      <fieldset disabled={!parsed.policy} aria-describedby={`${id}-words`}>
        <legend>Policy</legend>
        <label for={`${id}-min`}>
          Minimum aggregation: rows of the table every result row must stand for
          <input
            id={`${id}-min`}
            type="number"
            name="min_agg_size"
            min={1}
            required={!!plain}
            disabled={!plain}
            value={plain ? zone.aggregation?.min_agg_size ?? "" : ""}
            onInput={(e) => {
              const n = e.currentTarget.valueAsNumber;
              if (Number.isFinite(n)) update((next) => (next.safe_zone = { aggregation: { min_agg_size: n } }));
            }}
          />
        </label>
        {!plain && parsed.policy && <p class="muted">The safe zone is a rule of its own; change it in the JSON.</p>}
        <fieldset class="checks">
          <legend>Sanitized columns (never shown)</legend>
          {columns?.length ? (
            columns.map((c) => (
              <label key={c} class="check">
                <input
                  type="checkbox"
                  name="sanitized"
                  value={c}
                  checked={sanitized.includes(c)}
                  onChange={(e) => {
                    const on = e.currentTarget.checked;
                    update((next) => (next.sanitized_columns = on ? [...sanitized.filter((s) => s !== c), c] : sanitized.filter((s) => s !== c)));
                  }}
                />
                {c}
              </label>
            ))
          ) : (
            <p class="muted">{columns ? "This file's columns cannot be read in the browser (Parquet): name them in the JSON." : "Choose a file to pick from its columns."}</p>
          )}
        </fieldset>
        <fieldset>
          <legend>Queries outside these rules</legend>
          {HANDLINGS.map(([value, words]) => (
            <label key={value} class="check">
              <input type="radio" name={`${id}-handling`} value={value} checked={(p.unsafe_handling ?? "reject") === value} onChange={() => update((next) => (next.unsafe_handling = value))} />
              {words}
            </label>
          ))}
        </fieldset>
        <p id={`${id}-words`} class="policy muted" aria-live="polite">
          In words: {parsed.policy ? policyInWords(p as Policy, "rows", true) : "—"}
        </p>
      </fieldset>
      <div>
        <label for={`${id}-json`}>Policy JSON (editable)</label>
        <textarea
          id={`${id}-json`}
          name="policy_json"
          spellcheck={false}
          value={text}
          aria-invalid={!!parsed.error}
          aria-describedby={parsed.error ? errorId : undefined}
          onInput={(e) => onText(e.currentTarget.value)}
        />
        {parsed.error && (
          <p id={errorId} class="json-error">
            Not valid JSON: {parsed.error}. The form waits until it is.
          </p>
        )}
      </div>
    </div>
  );
}

/** A CSV's header, read from the file's first line; `[]` for a file whose columns the browser cannot read. */
async function headerOf(file: File): Promise<string[]> {
  if (!/\.csv$/i.test(file.name) && file.type !== "text/csv") return [];
  const head = await file.slice(0, 64 * 1024).text();
  const line = head.split(/\r?\n/, 1)[0] ?? "";
  return line.split(",").map((c) => c.trim().replace(/^"(.*)"$/, "$1")).filter(Boolean);
}

function Publish({ onPublished }: { onPublished: (t: Table) => void }) {
  const [name, setName] = useState("");
  const [file, setFile] = useState<File | null>(null);
  const [columns, setColumns] = useState<string[] | null>(null);
  const [policy, setPolicy] = useState(JSON.stringify(DEFAULT_POLICY, null, 2));
  const [readers, setReaders] = useState("");
  const { run, error, busy } = useAction();
  const fileInput = useRef<HTMLInputElement>(null);

  const pick = async (f: File | null) => {
    setFile(f);
    setColumns(f ? await headerOf(f) : null);
    if (f && !name) setName(f.name.replace(/\.[^.]*$/, "").replace(/[^A-Za-z0-9_.-]/g, "_"));
  };
  const submit = (e: Event) => {
    e.preventDefault();
    if (!file) return;
    run(async () => {
      const form = new FormData();
      form.set("name", name.trim());
      form.set("policy", policy);
      const who = readersOf(readers);
      if (who) form.set("readers", who.join(","));
      form.set("file", file, file.name);
      const table = await api<Table>("/api/tables", { method: "POST", body: form });
      setName("");
      setReaders("");
      setPolicy(JSON.stringify(DEFAULT_POLICY, null, 2));
      await pick(null);
      if (fileInput.current) fileInput.current.value = "";
      onPublished(table);
    });
  };
  return (
    <section class="card publish" aria-labelledby="publish-heading">
      <h2 id="publish-heading">Publish a table</h2>
      <form name="publish" onSubmit={submit}>
        <div class="row">
          <label for="publish-file" class="grow">
            File (CSV or Parquet)
            <input id="publish-file" ref={fileInput} type="file" name="file" accept=".csv,.parquet,text/csv" required onChange={(e) => pick(e.currentTarget.files?.[0] ?? null)} />
          </label>
          <label for="publish-name" class="grow">
            Table name
            <input id="publish-name" name="name" required value={name} pattern="[A-Za-z0-9_\-][A-Za-z0-9_.\-]*" onInput={(e) => setName(e.currentTarget.value)} />
          </label>
        </div>
        <PolicyEditor id="publish" columns={columns} text={policy} onText={setPolicy} />
        <ReadersField id="publish-readers" value={readers} onInput={setReaders} />
        {error != null && <ErrorBox error={error} />}
        <button type="submit" class="primary" name="publish" disabled={busy || !file}>
          {busy ? "Publishing…" : "Publish"}
        </button>
      </form>
    </section>
  );
}
