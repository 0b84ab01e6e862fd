// The owner's review inbox: queries held for review on the owner's tables, each with who asked, when, the
// SQL, the tables, the guard's reason and what the answer would reveal (its rows, smallest group and
// columns, as far as the guard computed them before holding it); approve, or reject with a reason the scientist sees. The top
// bar's badge counts what waits (`usePendingReviews`).
import { useEffect, useState } from "preact/hooks";
import { signal } from "@preact/signals";
import { api } from "../api";
import { me } from "../session";
import { Empty, ErrorBox, Spinner, fmt, plural, useAction, useAsync } from "../ui";

export interface ReviewRequest {
  id: number;
  user: string;
  query: string;
  tables: string[];
  reason: string;
  state: "pending" | "approved" | "rejected";
  decided_by: string | null;
  decision_reason: string | null;
  created_at: string;
  /** What the answer would reveal; absent on requests held before the server kept it. */
  reveals?: { columns: string[]; rows: number | null; smallest_group: number | null } | null;
}

/** Requests waiting for the signed-in user's decision (not their own), for the top bar's badge. */
export const pendingReviews = signal<number | null>(null);

async function waiting(signal?: AbortSignal): Promise<ReviewRequest[]> {
  const r = await api<{ requests: ReviewRequest[] }>("/api/reviews?state=pending", { signal });
  return r.requests.filter((q) => q.user !== me.value?.name);
}

/** Keeps `pendingReviews` current for owners and admins (a scientist decides nothing). */
export function usePendingReviews() {
  const role = me.value?.role;
  useEffect(() => {
    if (role !== "owner" && role !== "admin") return;
    const update = () => waiting().then((r) => (pendingReviews.value = r.length), () => undefined);
    update();
    const t = setInterval(update, 10_000);
    return () => clearInterval(t);
  }, [role]);
}

export function Reviews() {
  const role = me.value?.role;
  if (role !== "owner" && role !== "admin") {
    return (
      <main class="reviews">
        <h1>Review inbox</h1>
        <Empty>Only table owners and admins review queries; you are signed in as {role ?? "nobody"}. Your own held queries wait in the SQL console.</Empty>
      </main>
    );
  }
  return <Inbox />;
}

function Inbox() {
  const list = useAsync((signal) => waiting(signal), []);
  const [reasons, setReasons] = useState<Record<number, string>>({});
  const [decided, setDecided] = useState<Record<number, string>>({});
  const { run, error } = useAction();
  useEffect(() => {
    if (list.data) pendingReviews.value = list.data.filter((r) => !decided[r.id]).length;
  }, [list.data, decided]);

  const decide = (r: ReviewRequest, approve: boolean) =>
    run(async () => {
      if (approve) await api(`/api/reviews/${r.id}/approve`, { method: "POST", json: {} });
      else await api(`/api/reviews/${r.id}/reject`, { method: "POST", json: { reason: reasons[r.id]?.trim() || "rejected by the owner" } });
      setDecided((d) => ({ ...d, [r.id]: approve ? "approved" : "rejected" }));
    });

  return (
    <main class="reviews">
      <h1>Review inbox</h1>
      <p class="muted">Queries outside a table's safe zone, held until you decide. Approving releases the answer once, with sanitized columns still empty.</p>
      {error != null && <ErrorBox error={error} />}
      {list.error ? (
        <ErrorBox error={list.error} retry={list.reload} />
      ) : !list.data ? (
        <Spinner />
      ) : list.data.length === 0 ? (
        <Empty>Nothing waits for your review.</Empty>
      ) : (
        <ul class="review-list">
          {list.data.map((r) => (
            <li key={r.id} class="card review" data-request={r.id} data-state={decided[r.id] ?? "pending"}>
              <div class="review-head">
                <strong>{r.user}</strong> <span class="muted">asked {new Date(r.created_at).toLocaleString()} · request {fmt(r.id)} · {r.tables.join(", ")}</span>
              </div>
              <pre class="snippet">{r.query}</pre>
              <p class="review-reason">
                <span class="muted">Held because:</span> {r.reason}
              </p>
              {r.reveals && <Reveals reveals={r.reveals} />}
              {decided[r.id] ? (
                <p class="decided" role="status">
                  {decided[r.id] === "approved" ? "Approved: the answer is released to " + r.user + "." : "Rejected."}
                </p>
              ) : (
                <div class="review-actions">
                  <button type="button" class="primary" name="approve" onClick={() => decide(r, true)}>
                    Approve
                  </button>
                  <input name="reason" aria-label={`reason for rejecting request ${r.id} (shown to ${r.user})`} placeholder="reason for a rejection (shown to the scientist)" value={reasons[r.id] ?? ""} onInput={(e) => setReasons((x) => ({ ...x, [r.id]: e.currentTarget.value }))} />
                  <button type="button" name="reject" onClick={() => decide(r, false)}>
                    Reject
                  </button>
                </div>
              )}
            </li>
          ))}
        </ul>
      )}
    </main>
  );
}

/** What approving would release, as the guard knew it when it held the query. */
function Reveals({ reveals }: { reveals: NonNullable<ReviewRequest["reveals"]> }) {
  const notRun = "not run yet: the plan alone puts it outside the safe zone";
  return (
    <dl class="review-reveals" aria-label="what the answer would reveal">
      <div>
        <dt>Rows</dt>
        <dd data-reveal="rows">{reveals.rows == null ? notRun : fmt(reveals.rows)}</dd>
      </div>
      {reveals.rows != null && (
        <div>
          <dt>Smallest group</dt>
          <dd data-reveal="smallest_group">{reveals.smallest_group == null ? "not counted" : plural(reveals.smallest_group, "row")}</dd>
        </div>
      )}
      <div>
        <dt>Columns</dt>
        <dd data-reveal="columns">{reveals.columns.join(", ")}</dd>
      </div>
    </dl>
  );
}
