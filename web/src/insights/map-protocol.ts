// Messages between the map view (main thread) and its worker (map.worker.ts). The worker holds what
// is big (every id, every attribute, a grid index over the points) so that parsing a million ids,
// colouring, hovering and lasso selection never run on the main thread.
import type { ClassDef } from "../api";

export interface LegendEntry {
  label: string;
  color: [number, number, number];
  count: number;
}

export type ToWorker =
  | { type: "ids"; url: string; token: string | null; attributes: string[] }
  | { type: "positions"; positions: Float32Array<ArrayBufferLike> }
  | { type: "color"; by: string; classes: ClassDef[] }
  | { type: "hover"; x: number; y: number; radius: number; seq: number }
  | { type: "select"; polygon: number[]; seq: number }
  | { type: "clear" };

export type FromWorker =
  | { type: "ids"; count: number; attributes: string[]; missing: string[] }
  | { type: "error"; message: string; during: string }
  | { type: "colors"; colors: Uint8Array; legend: LegendEntry[]; by: string; ramp: boolean; none: number }
  | { type: "hover"; seq: number; index: number; id: string | null; values: Record<string, unknown> }
  | { type: "selected"; seq: number; count: number; ids: string[]; ms: number };
