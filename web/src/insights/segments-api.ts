// Segments: named, saved sets of frames or labels (`{ds}/segments`). Shared by the grid's selection
// bar, the map's lasso, the issue queue and the segments view.
import { api, enc } from "../api";

export type SegmentState = "open" | "in_review" | "resolved";
export interface Segment {
  name: string;
  description: string | null;
  state: SegmentState;
  item_kind: "frames" | "labels";
  items: string[];
  created_at: string;
  updated_at: string;
}

export const listSegments = async (base: string, signal?: AbortSignal) => (await api<{ segments: Segment[] }>(`${base}/segments`, { signal })).segments;

export const createSegment = (base: string, name: string, items: string[], description?: string) =>
  api<Segment>(`${base}/segments`, { method: "POST", json: { name, item_kind: "frames", items, ...(description ? { description } : {}) } });

export const patchSegment = (base: string, name: string, change: Partial<Pick<Segment, "name" | "description" | "state" | "items">>) =>
  api<Segment>(`${base}/segments/${enc(name)}`, { method: "PATCH", json: change });

/** Add frames to a segment (created when it does not exist); answers how many were new. */
export async function addToSegment(base: string, name: string, frameIds: string[]): Promise<{ segment: Segment; added: number }> {
  const existing = await api<Segment>(`${base}/segments/${enc(name)}`).catch((e) => {
    if (e.status === 404) return null;
    throw e;
  });
  if (!existing) return { segment: await createSegment(base, name, [...new Set(frameIds)]), added: new Set(frameIds).size };
  const have = new Set(existing.items);
  const add = [...new Set(frameIds)].filter((id) => !have.has(id));
  if (add.length === 0) return { segment: existing, added: 0 };
  return { segment: await patchSegment(base, name, { items: [...existing.items, ...add] }), added: add.length };
}

export async function removeFromSegment(base: string, name: string, frameIds: string[]): Promise<Segment> {
  const existing = await api<Segment>(`${base}/segments/${enc(name)}`);
  const drop = new Set(frameIds);
  return patchSegment(base, name, { items: existing.items.filter((id) => !drop.has(id)) });
}
