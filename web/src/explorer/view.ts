// The explorer's view state, read from and written to the URL query string.
import { loc } from "../route";

/** Query parameters that are filters of the frame listing and go to the API as they are. */
export const FILTER_KEYS = ["class", "meta", "min_labels", "max_labels", "sensor_kind", "version"] as const;
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
  };
}

/** The API query of a view: its filter plus the inference set whose outputs come with each page. */
export function apiQuery(v: View): URLSearchParams {
  const q = new URLSearchParams(v.filter);
  if (v.inferenceSet) q.set("inference_set", v.inferenceSet);
  return q;
}

export const hasFilter = (v: View) => [...v.filter.keys()].some((k) => k !== "version");
