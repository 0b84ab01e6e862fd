// The one place that talks to the milkglass API: adds the bearer token, turns error bodies into ApiError.
import { signal } from "@preact/signals";

const TOKEN_KEY = "milkglass.token";

// Single sign-on hands the session token over in the URL fragment (which browsers never send to a
// server): keep it in the tab, then take it out of the address bar and the history.
const handedOver = new URLSearchParams(location.hash.slice(1)).get("session");
if (handedOver) {
  sessionStorage.setItem(TOKEN_KEY, handedOver);
  history.replaceState(history.state, "", location.pathname + location.search);
}

/** The bearer token. Kept in sessionStorage only: it goes away with the tab. */
export const token = signal<string | null>(sessionStorage.getItem(TOKEN_KEY));

export function setToken(t: string | null) {
  if (t) sessionStorage.setItem(TOKEN_KEY, t);
  else sessionStorage.removeItem(TOKEN_KEY);
  token.value = t;
}

export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly code: string,
    readonly field?: string,
  ) {
    super(message);
  }
}

/** `fetch` a JSON API route. Throws ApiError with the server's message on any failure. */
export async function api<T>(path: string, init: RequestInit & { json?: unknown } = {}): Promise<T> {
  const headers = new Headers(init.headers);
  if (token.value) headers.set("Authorization", `Bearer ${token.value}`);
  let body = init.body;
  if (init.json !== undefined) {
    headers.set("Content-Type", "application/json");
    body = JSON.stringify(init.json);
  }
  let res: Response;
  try {
    res = await fetch(path, { ...init, headers, body });
  } catch (e) {
    if ((e as Error).name === "AbortError") throw e;
    throw new ApiError(`cannot reach the milkglass server (${(e as Error).message})`, 0, "network");
  }
  if (res.status === 204) return undefined as T;
  const text = await res.text();
  let data: any = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    // Not JSON: fall through with the raw text as the message.
  }
  if (!res.ok) {
    const err = data?.error;
    const message = err?.message ?? (text.trim() || `${res.status} ${res.statusText}`);
    if (res.status === 401 && token.value) setToken(null); // a revoked or unknown token: sign in again
    throw new ApiError(message, res.status, err?.code ?? String(res.status), err?.field);
  }
  return data as T;
}

export const enc = encodeURIComponent;
export const dsPath = (project: string, dataset: string) => `/api/projects/${enc(project)}/datasets/${enc(dataset)}`;

// ---- Shapes of the API's answers (only the fields the app reads). ----

export interface ClassDef {
  id: number;
  name: string;
  color: [number, number, number];
  category?: string;
}
export type AccessMode = "public" | "hosted" | "mirrored" | "anonymous";
export interface Project {
  name: string;
  access_mode: AccessMode;
  classes: ClassDef[];
  metadata: Record<string, unknown>;
}
export interface Dataset {
  project: string;
  name: string;
  kind: string;
  version: number;
  metadata: Record<string, unknown>;
}
export interface DatasetStatus {
  dataset: Dataset;
  frames: number;
  labels: number;
  inferences: number;
  frame_embeddings: number;
  label_embeddings: number;
  uploads: { id: number; kind: string; state: string; records: number; error: string | null }[];
  jobs: { id: number; kind: string; state: string; progress: number; total: number; message: string | null }[];
}
export interface InferenceSet {
  name: string;
  metadata: Record<string, unknown>;
}
export interface Sensor {
  sensor_id: string;
  kind: "image" | "image_overlay" | "point_cloud" | "text" | "audio" | "video";
  url: string;
  width?: number;
  height?: number;
}
export type Geometry =
  | { kind: "box2d"; top: number; left: number; width: number; height: number }
  | { kind: "polygon_list"; polygons: [number, number][][] }
  | { kind: "line_segment"; x1: number; y1: number; x2: number; y2: number }
  | { kind: "keypoints"; keypoints: { x: number; y: number; name: string }[] }
  | { kind: "semantic_mask"; url: string }
  | { kind: "instance_mask"; url: string; instances: { id: number; class: string }[] }
  | { kind: "classification" | "classification3d" | "cuboid3d" | "text_token"; [k: string]: unknown };
export interface Label {
  label_id: string;
  frame_id: string;
  class: string | null;
  class_id: number | null;
  sensor_id?: string;
  geometry: Geometry;
  attributes?: unknown;
  iscrowd: boolean;
  confidence?: number;
  has_embedding: boolean;
}
export interface Frame {
  frame_id: string;
  timestamp: string | null;
  sensors: Sensor[];
  metadata: Record<string, unknown>;
  geo?: { lat: number; lon: number };
  label_count: number;
  has_embedding: boolean;
  version: number;
  labels?: Label[];
  inferences?: Label[];
}
export interface FramePage {
  frames: Frame[];
  next: string | null;
  version: number;
  total?: number;
}
export interface FrameDetail extends Omit<Frame, "inferences"> {
  labels: Label[];
  inferences: Record<string, Label[]>;
}
