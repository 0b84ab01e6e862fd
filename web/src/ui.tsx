// Small shared pieces: number formatting, badges, loading/error/empty states, a data hook.
import { useEffect, useLayoutEffect, useRef, useState } from "preact/hooks";
import type { ComponentChildren } from "preact";
import { ApiError, type AccessMode } from "./api";

export const fmt = (n: number) => n.toLocaleString("en-US");
export const plural = (n: number, one: string, many = one + "s") => `${fmt(n)} ${n === 1 ? one : many}`;

const MODE_TEXT: Record<AccessMode, string> = {
  public: "Raw files are at URLs the browser loads directly.",
  hosted: "Raw files live in milkglass's store; the browser loads them through URLs milkglass signs.",
  mirrored: "milkglass keeps a mirror copy of every raw file and signs URLs to it.",
  anonymous: "Anonymous: milkglass holds no raw data and has never fetched any. Your browser loads every file itself.",
};

export function ModeBadge({ mode, long = false }: { mode: AccessMode; long?: boolean }) {
  return (
    <span class={`badge mode-${mode}`} title={MODE_TEXT[mode]}>
      {mode}
      {long && <span class="badge-text"> · {MODE_TEXT[mode]}</span>}
    </span>
  );
}

export function Spinner({ label = "Loading…" }: { label?: string }) {
  return (
    <div class="state loading" role="status">
      <span class="spinner" aria-hidden="true" />
      {label}
    </div>
  );
}

export function ErrorBox({ error, retry }: { error: unknown; retry?: () => void }) {
  const msg = error instanceof Error ? error.message : String(error);
  return (
    <div class="state error" role="alert">
      <strong>Error:</strong> {msg}
      {error instanceof ApiError && error.field && (
        <>
          {" "}
          (<code class="field">{error.field}</code>)
        </>
      )}
      {retry && (
        <button type="button" onClick={retry}>
          Retry
        </button>
      )}
    </div>
  );
}

export function Empty({ children }: { children: ComponentChildren }) {
  return <div class="state empty">{children}</div>;
}

/** A table's header row; `""` names a column of actions, for screen readers only. */
export function HeadRow({ columns }: { columns: string[] }) {
  return (
    <thead>
      <tr>
        {columns.map((c, i) => (
          <th key={i} scope="col">
            {c || <span class="visually-hidden">actions</span>}
          </th>
        ))}
      </tr>
    </thead>
  );
}

export type Async<T> = { data?: T; error?: unknown; loading: boolean; reload: () => void };

/** Run `load` when `deps` change; the answer of an outdated run is dropped. */
export function useAsync<T>(load: (signal: AbortSignal) => Promise<T>, deps: unknown[]): Async<T> {
  const [state, setState] = useState<{ data?: T; error?: unknown; loading: boolean }>({ loading: true });
  const [n, setN] = useState(0);
  useEffect(() => {
    const ctl = new AbortController();
    setState((s) => ({ data: s.data, loading: true }));
    load(ctl.signal).then(
      (data) => !ctl.signal.aborted && setState({ data, loading: false }),
      (error) => !ctl.signal.aborted && setState({ error, loading: false }),
    );
    return () => ctl.abort();
  }, [...deps, n]);
  return { ...state, reload: () => setN((x) => x + 1) };
}

/**
 * A user's action (a save, a deletion, a decision): `run` clears the last error, runs `work`, and keeps its
 * error to show; `busy` while it runs. Resolves to whether the work succeeded.
 */
export function useAction() {
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const run = async (work: () => Promise<unknown>): Promise<boolean> => {
    setError(null);
    setBusy(true);
    try {
      await work();
      return true;
    } catch (e) {
      setError(e);
      return false;
    } finally {
      setBusy(false);
    }
  };
  return { run, error, busy };
}

/** Whether a key press goes to a field that takes typing (then shortcuts stay out of the way). */
export function isTyping(target: EventTarget | null): boolean {
  const t = target as HTMLElement | null;
  if (!t?.closest) return false;
  if (t.closest("textarea, select, [contenteditable]")) return true;
  const input = t.closest("input") as HTMLInputElement | null;
  return !!input && !["checkbox", "radio", "range", "button", "submit"].includes(input.type);
}

/** A destructive action that asks once more before it runs (Escape cancels). */
export function Confirmed({ label, name, onConfirm }: { label: string; name: string; onConfirm: () => void }) {
  const [asking, setAsking] = useState(false);
  const sure = useRef<HTMLButtonElement>(null);
  useLayoutEffect(() => {
    if (asking) sure.current?.focus();
  }, [asking]);
  if (!asking) {
    return (
      <button type="button" class="danger" name={name} onClick={() => setAsking(true)}>
        {label}…
      </button>
    );
  }
  return (
    <span role="group" aria-label={`${label}?`} onKeyDown={(e) => e.key === "Escape" && setAsking(false)}>
      <button type="button" class="danger" name={`confirm_${name}`} ref={sure} onClick={() => (setAsking(false), onConfirm())}>
        {label}: sure
      </button>{" "}
      <button type="button" name="cancel" onClick={() => setAsking(false)}>
        Cancel
      </button>
    </span>
  );
}
