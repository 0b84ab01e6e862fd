// The grid's data: pages of frames fetched by offset, only for the rows on screen, one request per page
// (frames with their labels and the chosen inference set's outputs), then one resolve call for the
// page's raw-file URLs. A pager belongs to one filter; a filter change makes a new pager.
//
// The count of a filter (`count=true`) can cost the server a second on a million frames while a page
// costs milliseconds, so the count is its own request: the grid paints from the first page with a
// provisional length and takes the exact total when it arrives. The count is asked after the first
// page has come, so that the page never waits behind it.
import { signal } from "@preact/signals";
import { api, ApiError, type Frame, type FramePage, type Project } from "../api";
import { frameUrls, resolveSources, type Source } from "../raw/resolve";
import type { FrameList } from "./lists";

export const PAGE = 120;
const KEEP_PAGES = 40; // about 4,800 frames in memory at most

interface Page {
  frames: Frame[];
  sources: Map<string, Source>;
}

export class Pager {
  /** Frames matching the filter: exact, from the count or from reaching the last page. */
  readonly total = signal<number | null>(null);
  /** Until then, how many frames are known to match at least, and whether more follow. */
  readonly extent = signal<{ end: number; more: boolean } | null>(null);
  readonly error = signal<ApiError | Error | null>(null);
  /** Bumped when a page arrives, so the grid re-renders. */
  readonly tick = signal(0);
  /** The dataset version the server read. */
  readonly version = signal<number | null>(null);
  private pages = new Map<number, Page>();
  private inflight = new Map<number, AbortController>();
  private wanted = new Set<number>();
  private timer = 0;
  private counter: AbortController | null = null;

  constructor(
    readonly base: string,
    /** The filter as API query parameters (class, meta, min_labels, ..., version, inference_set). */
    readonly filter: URLSearchParams,
    readonly project: Project,
    /** An explicit list of frames to show in its own order (a lasso, a search) instead of the filter's. */
    readonly list: FrameList | null = null,
  ) {
    if (list) this.total.value = list.ids.length;
  }

  /** The caption a list gives the frame at `i` (a neighbour's distance). */
  note(i: number): string | undefined {
    return this.list?.notes?.[i];
  }

  /** The length the grid lays out: the exact total, or what is known plus a page. */
  get length(): number | null {
    const t = this.total.value;
    if (t != null) return t;
    const e = this.extent.value;
    return e ? e.end + (e.more ? PAGE : 0) : null;
  }

  frame(i: number): Frame | undefined {
    return this.pages.get(Math.floor(i / PAGE))?.frames[i % PAGE];
  }
  source(url: string, i: number): Source | undefined {
    return this.pages.get(Math.floor(i / PAGE))?.sources.get(url);
  }

  /** Make sure the frames `from..to` (exclusive) are fetched, soon: requests wait for scrolling to pause a moment. */
  want(from: number, to: number, { now = false } = {}) {
    const first = Math.floor(Math.max(0, from) / PAGE);
    const last = Math.floor(Math.max(0, to - 1) / PAGE);
    this.wanted = new Set();
    for (let p = first; p <= last; p++) this.wanted.add(p);
    // A page no longer wanted is not worth the server's time: cancel it.
    for (const [p, ctl] of this.inflight) if (!this.wanted.has(p)) ctl.abort();
    clearTimeout(this.timer);
    if (now) this.fetchWanted();
    else this.timer = window.setTimeout(() => this.fetchWanted(), 60);
  }

  /** A frame by index, fetching its page if needed (for previous/next in the frame view). */
  async get(i: number): Promise<Frame | undefined> {
    const p = Math.floor(i / PAGE);
    if (!this.pages.has(p)) await this.load(p);
    return this.frame(i);
  }

  /** Stop whatever is in flight (the filter changed). */
  close() {
    clearTimeout(this.timer);
    this.counter?.abort();
    for (const ctl of this.inflight.values()) ctl.abort();
  }

  private async count() {
    const ctl = (this.counter = new AbortController());
    try {
      const q = new URLSearchParams(this.filter);
      q.delete("inference_set"); // outputs do not change the count
      q.set("limit", "1");
      q.set("count", "true");
      const r = await api<FramePage>(`${this.base}/frames?${q}`, { signal: ctl.signal });
      if (r.total != null) this.total.value = r.total;
    } catch (e) {
      if ((e as Error).name !== "AbortError") this.error.value = e as Error;
      this.counter = null; // asked again with the next want()
    }
  }

  private fetchWanted() {
    for (const p of this.wanted) if (!this.pages.has(p) && !this.inflight.has(p)) this.load(p).catch(() => undefined);
  }

  private async load(p: number) {
    const existing = this.inflight.get(p);
    const ctl = existing ?? new AbortController();
    if (!existing) this.inflight.set(p, ctl);
    try {
      const q = new URLSearchParams(this.filter);
      q.set("limit", String(PAGE));
      q.set("labels", "true");
      const ids = this.list?.ids.slice(p * PAGE, (p + 1) * PAGE);
      if (ids) for (const id of new Set(ids)) q.append("id", id);
      else q.set("offset", String(p * PAGE));
      const page = await api<FramePage>(`${this.base}/frames?${q}`, { signal: ctl.signal });
      if (ids) {
        // The listing answers in frame-id order; the list's order (nearest first...) is the one shown.
        // A listed frame the server no longer has (deleted since) shows as a frame without sensors.
        const byId = new Map(page.frames.map((f) => [f.frame_id, f]));
        page.frames = ids.map((id) => byId.get(id) ?? { frame_id: id, timestamp: null, sensors: [], metadata: {}, label_count: 0, has_embedding: false, version: page.version });
        page.next = (p + 1) * PAGE < this.list!.ids.length ? "more" : null;
      }
      this.version.value = page.version;
      const end = p * PAGE + page.frames.length;
      // The last page tells the exact total before the count does.
      if (!page.next && (page.frames.length > 0 || p === 0)) this.total.value = end;
      const e = this.extent.peek();
      if (!e || end > e.end) this.extent.value = { end, more: !!page.next };
      const sources = await resolveSources(this.project, page.frames.flatMap(frameUrls));
      this.pages.set(p, { frames: page.frames, sources });
      this.evict();
      this.error.value = null;
      this.tick.value++;
      // Count only once the first page is in: a count queued before it on the server would delay it.
      if (!this.counter && this.total.peek() == null) this.count();
    } catch (e) {
      if ((e as Error).name !== "AbortError") this.error.value = e as Error;
      throw e;
    } finally {
      if (this.inflight.get(p) === ctl) this.inflight.delete(p);
    }
  }

  /** Keep memory bounded at a million frames: drop the pages farthest from what is wanted. */
  private evict() {
    if (this.pages.size <= KEEP_PAGES) return;
    const centre = [...this.wanted][0] ?? 0;
    const far = [...this.pages.keys()].sort((a, b) => Math.abs(b - centre) - Math.abs(a - centre));
    for (const p of far.slice(0, this.pages.size - KEEP_PAGES)) this.pages.delete(p);
  }

  /** Forget everything and fetch again (the retry button). */
  reload() {
    this.pages.clear();
    this.error.value = null;
    this.tick.value++;
    this.fetchWanted();
  }
}
