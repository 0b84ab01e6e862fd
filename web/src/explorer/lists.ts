// Frame lists handed from one view to the grid: a lasso on the map, a confusion-matrix cell, the
// results of a search. A list can be far longer than a URL should be (a lasso of 100,000 frames), so
// the URL holds a short key (`?list=KEY`) and the list itself stays in this tab's sessionStorage (a
// reload keeps it; a link shared with a colleague does not: save a segment for that).
export interface FrameList {
  /** Frame ids in display order (may repeat: one per crop when a search is over labels). */
  ids: string[];
  /** A caption per tile, aligned with ids (the distance of a neighbour). */
  notes?: string[];
  /** What the list is, for the results bar ("lasso on the map", "cell square → circle"). */
  title: string;
}

const PREFIX = "milkglass.list.";
const memory = new Map<string, FrameList>();

export function putList(list: FrameList): string {
  const key = Math.random().toString(36).slice(2, 10);
  memory.set(key, list);
  try {
    sessionStorage.setItem(PREFIX + key, JSON.stringify(list));
  } catch {
    // Over the storage quota (millions of ids): the list lives until the tab reloads.
  }
  return key;
}

export function getList(key: string): FrameList | null {
  const m = memory.get(key);
  if (m) return m;
  const s = sessionStorage.getItem(PREFIX + key);
  if (!s) return null;
  const list = JSON.parse(s) as FrameList;
  memory.set(key, list);
  return list;
}
