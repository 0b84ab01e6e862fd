// What the issue queue's views share (label issues in issues.tsx, near duplicates and outliers in
// neighbor-queue.tsx): the keyboard triage common to both, the pager, and the overlays a row opens
// (the frame view, moving through the queue's rows, and the segment picker).
import { useEffect, useRef } from "preact/hooks";
import type { ComponentChildren } from "preact";
import type { Project } from "../api";
import { isTyping } from "../ui";
import type { ClassMap } from "../explorer/overlay";
import { FrameView } from "../explorer/frame";
import { SegmentPicker } from "../explorer/segment-picker";

/** The queue's cursor keys: j/k (or arrows) move, s picks the row's frames for a segment, Enter opens;
 * `more` handles a view's own keys (true when it took the key). Nothing while a dialog is open or a
 * field takes typing. */
export function useQueueKeys(k: { paused: boolean; count: number; at: number; setCursor: (i: number) => void; pick: () => void; open: () => void; more?: (e: KeyboardEvent) => boolean }) {
  const keys = useRef<(e: KeyboardEvent) => void>(() => undefined);
  keys.current = (e: KeyboardEvent) => {
    if (k.paused || isTyping(e.target) || e.altKey || e.ctrlKey || e.metaKey) return;
    if (e.key === "j" || e.key === "ArrowDown") k.setCursor(Math.min(k.count - 1, k.at + 1));
    else if (e.key === "k" || e.key === "ArrowUp") k.setCursor(Math.max(0, k.at - 1));
    else if (k.count > 0 && e.key === "s") k.pick();
    else if (k.count > 0 && e.key === "Enter" && !(e.target as HTMLElement).closest("button, a")) k.open();
    else if (!k.more?.(e)) return;
    e.preventDefault();
  };
  useEffect(() => {
    const h = (e: KeyboardEvent) => keys.current(e);
    addEventListener("keydown", h);
    return () => removeEventListener("keydown", h);
  }, []);
}

/** Previous and next pages of `size` rows; `children` says which rows these are. */
export function Pager({ offset, size, total, onOffset, children }: { offset: number; size: number; total: number; onOffset: (o: number | null) => void; children: ComponentChildren }) {
  return (
    <div class="pager-row">
      <button type="button" disabled={offset === 0} onClick={() => onOffset(offset > size ? offset - size : null)}>
        ← previous {size}
      </button>
      <span class="muted">{children}</span>
      <button type="button" disabled={offset + size >= total} onClick={() => onOffset(offset + size)}>
        next {size} →
      </button>
    </div>
  );
}

/** The frame view over the queue's rows (its arrows move the cursor), and the segment picker. */
export function QueueOverlays(o: {
  base: string;
  project: Project;
  inferenceSet: string | null;
  classes: ClassMap;
  frames: string[];
  at: number;
  setCursor: (i: number) => void;
  openFrame: string | null;
  setOpenFrame: (id: string | null) => void;
  picking: string[] | null;
  setPicking: (ids: string[] | null) => void;
  onNotice: (m: string) => void;
}) {
  return (
    <>
      {o.openFrame && (
        <FrameView
          base={o.base}
          project={o.project}
          frameId={o.openFrame}
          index={null}
          total={null}
          version={null}
          inferenceSet={o.inferenceSet}
          opts={{ showLabels: true, showInferences: true, conf: 0, classes: o.classes }}
          onMove={(d) => {
            const i = Math.max(0, Math.min(o.frames.length - 1, o.at + d));
            o.setCursor(i);
            o.setOpenFrame(o.frames[i] ?? null);
          }}
          onClose={() => o.setOpenFrame(null)}
        />
      )}
      {o.openFrame && <EscCloses onClose={() => o.setOpenFrame(null)} />}
      {o.picking && (
        <SegmentPicker
          base={o.base}
          frameIds={o.picking}
          onClose={() => o.setPicking(null)}
          onDone={(m) => {
            o.setPicking(null);
            o.onNotice(m);
          }}
        />
      )}
    </>
  );
}

/** Esc closes a frame view opened from a queue (the grid's own key handler is not mounted there). */
function EscCloses({ onClose }: { onClose: () => void }) {
  useEffect(() => {
    const h = (e: KeyboardEvent) => e.key === "Escape" && onClose();
    addEventListener("keydown", h);
    return () => removeEventListener("keydown", h);
  }, []);
  return null;
}
