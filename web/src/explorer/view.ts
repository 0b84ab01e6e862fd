// The explorer's view state, read from and written to the URL query string.
import { loc } from "../route";

/** Query parameters that are filters of the frame listing and go to the API as they are. */
export const FILTER_KEYS = ["class", "meta", "min_labels", "max_labels", "sensor_kind", "version", "segment"] as const;
/** The views of a dataset page (`?view=`); the grid is the default and the only one in the first bundle. */
export const VIEWS = ["grid", "map", "issues", "metrics", "segments"] as const;
export type ViewName = (typeof VIEWS)[number];
export const META_OPS = ["eq", "ne", "lt", "le", "gt", "ge", "contains", "exists"] as const;
export const SENSOR_KINDS = ["image", "image_overlay", "point_cloud", "text", "audio", "video"] as const;

export interface View {
  /** class, meta, min_labels, max_labels, sensor_kind, version: the API's own parameters. */
  filter: URLSearchParams;
  inferenceSet: string | null;
  conf: number;
  showLabels: boolean;
  showInferences: boolean;
  frame: string | null;
  index: number | null;
  at: number;
  view: ViewName;
  /** A frame list handed over by another view (a lasso, a confusion cell), by its key in lists.ts. */
  list: string | null;
  /** Frames (or crops, by label id) similar to this one, nearest first, instead of the filter. */
  similar: { frameId?: string; labelId?: string; k: number } | null;
}

export function readView(q: URLSearchParams = loc.value.query): View {
  const filter = new URLSearchParams();
  for (const k of FILTER_KEYS) for (const v of q.getAll(k)) if (v !== "") filter.append(k, v);
  const num = (k: string) => {
    const v = q.get(k);
    return v != null && v !== "" && Number.isFinite(Number(v)) ? Number(v) : null;
  };
  return {
    filter,
    inferenceSet: q.get("inference_set") || null,
    conf: Math.min(1, Math.max(0, num("conf") ?? 0.5)),
    showLabels: q.get("labels") !== "0",
    showInferences: q.get("inferences") !== "0",
    frame: q.get("frame"),
    index: num("i"),
    at: Math.max(0, Math.floor(num("at") ?? 0)),
    view: (VIEWS as readonly string[]).includes(q.get("view") ?? "") ? (q.get("view") as ViewName) : "grid",
    list: q.get("list") || null,
    similar:
      q.get("similar") || q.get("similar_label")
        ? { frameId: q.get("similar") || undefined, labelId: q.get("similar_label") || undefined, k: Math.min(1000, Math.max(1, Math.floor(num("k") ?? 50))) }
        : null,
  };
}

/** The API query of a view: its filter plus the inference set whose outputs come with each page. */
export function apiQuery(v: View): URLSearchParams {
  const q = new URLSearchParams(v.filter);
  if (v.inferenceSet) q.set("inference_set", v.inferenceSet);
  return q;
}

export const hasFilter = (v: View) => [...v.filter.keys()].some((k) => k !== "version");

/** `meta=KEY:eq:VALUE` conditions as the equality filter of a similarity search (`{"KEY": value}`). */
export function eqFilter(filter: URLSearchParams): Record<string, unknown> | undefined {
  const out: Record<string, unknown> = {};
  for (const m of filter.getAll("meta")) {
    const [key, op, ...rest] = m.split(":");
    if (op !== "eq" || !key) continue;
    const v = rest.join(":");
    out[key] = v === "true" ? true : v === "false" ? false : v !== "" && Number.isFinite(Number(v)) ? Number(v) : v;
  }
  return Object.keys(out).length ? out : undefined;
}
