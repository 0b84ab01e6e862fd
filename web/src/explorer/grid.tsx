// The virtualized frame grid. Only the rows on screen (plus a few above and below) exist as DOM nodes
// and only their pages are fetched. The scroll area's height comes from the filter's total; past the
// height browsers can lay out, scroll positions map proportionally onto rows instead of 1:1.
import { useCallback, useEffect, useLayoutEffect, useRef, useState } from "preact/hooks";
import type { Pager } from "./pager";
import { MemoTile, type OverlayOptions } from "./tile";

const MIN_TILE = 210;
const GAP = 8;
const CAPTION = 26;
const OVERSCAN = 2; // rows
const MAX_HEIGHT = 8_000_000; // px; Chrome lays out ~33M, Firefox ~17M: stay well below both
const BASE_ROWS = 64; // tiles are placed relative to a base row that moves in steps of this many rows

export interface GridApi {
  cols: number;
  scrollToIndex: (i: number) => void;
}

interface Props {
  pager: Pager;
  total: number;
  at: number;
  cursor: number;
  /** Frame ids selected with `x`. */
  selected: ReadonlySet<string>;
  opts: OverlayOptions;
  onOpen: (i: number) => void;
  onFirstVisible: (i: number) => void;
  apiRef: { current: GridApi | null };
}

export function Grid({ pager, total, at, cursor, selected, opts, onOpen, onFirstVisible, apiRef }: Props) {
  const ref = useRef<HTMLDivElement>(null);
  const [size, setSize] = useState({ w: 0, h: 0 });
  const [scrollTop, setScrollTop] = useState(0);
  pager.tick.value; // re-render when pages arrive

  useLayoutEffect(() => {
    const el = ref.current!;
    const ro = new ResizeObserver(() => setSize({ w: el.clientWidth, h: el.clientHeight }));
    ro.observe(el);
    setSize({ w: el.clientWidth, h: el.clientHeight });
    return () => ro.disconnect();
  }, []);

  const inner = Math.max(0, size.w - 2 * GAP);
  const cols = Math.max(1, Math.floor((inner + GAP) / (MIN_TILE + GAP)));
  const tileW = Math.floor((inner - GAP * (cols - 1)) / cols);
  const tileH = Math.round(tileW * 0.75) + CAPTION;
  const rowH = tileH + GAP;
  const rows = Math.ceil(total / cols);
  const contentH = rows * rowH + GAP;
  const spacerH = Math.min(contentH, MAX_HEIGHT);
  const viewRows = size.h / rowH;
  const maxScroll = Math.max(1, spacerH - size.h);
  const scaled = contentH > MAX_HEIGHT;
  const scrollFor = (row: number) => Math.min(maxScroll, scaled ? (row / Math.max(1, rows - viewRows)) * maxScroll : row * rowH);
  // Until the position from the URL is applied, lay out as if it were (so the first fetch is the right page).
  const restored = useRef(false);
  const top = restored.current ? scrollTop : scrollFor(Math.floor(Math.min(at, total - 1) / cols));
  // Fractional row at the top of the viewport.
  const firstRowF = scaled ? (Math.min(top, maxScroll) / maxScroll) * Math.max(0, rows - viewRows) : top / rowH;
  const rowTop = (row: number) => (scaled ? top + (row - firstRowF) * rowH : row * rowH) + GAP;

  const first = Math.max(0, Math.floor(firstRowF) - OVERSCAN);
  const last = Math.min(rows - 1, Math.ceil(firstRowF + viewRows) + OVERSCAN);
  const from = first * cols;
  const to = Math.min(total, (last + 1) * cols);

  // Fetch what is on screen (and the overscan). The first page is fetched at once, later ones once
  // scrolling pauses, so dragging the scrollbar over 100,000 rows does not send 800 requests.
  const firstFetch = useRef(true);
  useEffect(() => {
    if (size.w === 0) return;
    // One screen more below what is laid out: the next page is usually there before it is needed.
    pager.want(from, Math.min(total, to + cols * Math.ceil(viewRows)), { now: firstFetch.current });
    firstFetch.current = false;
  }, [pager, from, to, size.w]);

  // When the layout changes under the viewer (the exact count replaces the provisional length, the
  // window is resized), keep the same frame at the top: scroll positions map to rows differently now.
  const anchor = useRef(0);
  useLayoutEffect(() => {
    if (!restored.current) return;
    const el = ref.current!;
    const want = scrollFor(Math.floor(anchor.current / cols));
    if (Math.abs(el.scrollTop - want) > 1) {
      el.scrollTop = want;
      setScrollTop(el.scrollTop);
    }
  }, [total, cols]);
  useEffect(() => {
    anchor.current = Math.floor(firstRowF + 0.01) * cols;
  });

  // Apply the scroll position the URL asked for, once the layout is known.
  useLayoutEffect(() => {
    if (restored.current || size.w === 0) return;
    restored.current = true;
    ref.current!.scrollTop = top;
    setScrollTop(ref.current!.scrollTop);
  }, [size.w]);

  // Report the first fully visible frame (for the URL), after scrolling settles.
  useEffect(() => {
    if (!restored.current) return;
    const t = setTimeout(() => onFirstVisible(Math.min(total - 1, Math.ceil(firstRowF - 0.01) * cols)), 250);
    return () => clearTimeout(t);
  }, [Math.ceil(firstRowF - 0.01), cols]);

  apiRef.current = {
    cols,
    scrollToIndex(i: number) {
      const el = ref.current!;
      const row = Math.floor(i / cols);
      if (row < firstRowF + 0.01) el.scrollTop = scrollFor(row);
      else if (row + 1 > firstRowF + viewRows) el.scrollTop = scrollFor(Math.max(0, row + 1 - viewRows)) + (scaled ? 1 : 0);
    },
  };

  // Tiles sit in one layer placed at a base row; within it their positions only change when the base
  // moves. So a scroll frame restyles one element (the layer) and re-renders only the tiles that
  // appear, even in proportional mode where every row moves with every pixel scrolled.
  const base = Math.floor(first / BASE_ROWS) * BASE_ROWS;
  const layerTop = rowTop(base);
  const openRef = useRef(onOpen);
  openRef.current = onOpen;
  const open = useCallback((i: number) => openRef.current(i), []);
  const source = useCallback((url: string, i: number) => pager.source(url, i), [pager]);
  const tiles = [];
  for (let i = from; i < to; i++) {
    const row = Math.floor(i / cols);
    const f = pager.frame(i);
    tiles.push(
      <MemoTile
        key={i}
        index={i}
        frame={f}
        source={source}
        opts={opts}
        active={i === cursor}
        selected={!!f && selected.has(f.frame_id)}
        note={pager.note(i)}
        onOpen={open}
        x={GAP + (i % cols) * (tileW + GAP)}
        y={(row - base) * rowH}
        w={tileW}
        h={tileH}
      />,
    );
  }

  return (
    <div
      class="grid-scroll"
      ref={ref}
      tabIndex={0}
      role="listbox"
      aria-label="frames: arrow keys or j and k move, Enter opens"
      aria-activedescendant={cursor >= from && cursor < to ? `tile-${cursor}` : undefined}
      onScroll={(e) => {
        const t = (e.currentTarget as HTMLDivElement).scrollTop;
        requestAnimationFrame(() => setScrollTop(t));
      }}
    >
      <div class="grid-spacer" style={{ height: `${spacerH}px` }}>
        <div class="grid-layer" style={{ transform: `translateY(${layerTop}px)` }}>
          {tiles}
        </div>
      </div>
    </div>
  );
}
