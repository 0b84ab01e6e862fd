// Client-side routing: the URL path says which page, the query string holds the view state (filters,
// open frame, scroll position), so a copied link or a reload reproduces the view.
import { signal } from "@preact/signals";

export interface Loc {
  path: string;
  query: URLSearchParams;
}

const read = (): Loc => ({ path: location.pathname, query: new URLSearchParams(location.search) });
export const loc = signal<Loc>(read());

addEventListener("popstate", () => (loc.value = read()));

/** Go to a URL inside the app. `replace` for view-state changes that should not each be a history entry. */
export function navigate(url: string, { replace = false } = {}) {
  if (url === location.pathname + location.search) return;
  if (replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
  loc.value = read();
}

/** The current path with some query parameters set (string), repeated (array) or removed (null/""). */
export function withQuery(changes: Record<string, string | string[] | null | undefined>, base = loc.value): string {
  const q = new URLSearchParams(base.query);
  for (const [k, v] of Object.entries(changes)) {
    q.delete(k);
    if (Array.isArray(v)) v.forEach((x) => q.append(k, x));
    else if (v != null && v !== "") q.set(k, v);
  }
  const s = q.toString();
  return base.path + (s ? `?${s}` : "");
}

/** Plain left clicks on in-app links navigate without a page load; others (new tab...) behave as links. */
export function onLinkClick(e: MouseEvent) {
  if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  const a = (e.target as Element).closest?.("a");
  if (!a || a.target || a.origin !== location.origin || a.hasAttribute("download")) return;
  e.preventDefault();
  navigate(a.pathname + a.search);
}

export const datasetUrl = (p: string, d: string) => `/p/${encodeURIComponent(p)}/d/${encodeURIComponent(d)}`;
