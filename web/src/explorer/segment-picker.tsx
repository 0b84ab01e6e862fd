// "Add to segment": pick one of the dataset's frame segments or name a new one. Used by the grid's
// selection (`s` or the button), the map's lasso and the issue queue (`s`).
import { useEffect, useRef, useState } from "preact/hooks";
import { ErrorBox, Spinner, fmt, useAsync } from "../ui";
import { addToSegment, listSegments } from "../insights/segments-api";

interface Props {
  base: string;
  frameIds: string[];
  onDone: (message: string) => void;
  onClose: () => void;
}

export function SegmentPicker({ base, frameIds, onDone, onClose }: Props) {
  const segs = useAsync((signal) => listSegments(base, signal), [base]);
  const [name, setName] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const input = useRef<HTMLInputElement>(null);
  useEffect(() => input.current?.focus(), []);

  const save = async (target: string) => {
    if (!target.trim()) return;
    setBusy(true);
    setError(null);
    try {
      const r = await addToSegment(base, target.trim(), frameIds);
      onDone(`${fmt(r.added)} frame${r.added === 1 ? "" : "s"} added to ${r.segment.name} (${fmt(r.segment.items.length)} in all)`);
    } catch (e) {
      setError(e);
      setBusy(false);
    }
  };
  const frameSegments = (segs.data ?? []).filter((s) => s.item_kind === "frames");
  return (
    <div class="backdrop" onClick={(e) => e.target === e.currentTarget && onClose()}>
      <div
        class="dialog picker"
        role="dialog"
        aria-modal="true"
        aria-labelledby="picker-h"
        onKeyDown={(e) => {
          e.stopPropagation(); // the page's shortcuts stay out of the dialog
          if (e.key === "Escape") onClose();
        }}
      >
        <h2 id="picker-h">Add {fmt(frameIds.length)} frame{frameIds.length === 1 ? "" : "s"} to a segment</h2>
        <form
          onSubmit={(e) => {
            e.preventDefault();
            save(name);
          }}
        >
          <label>
            New segment
            <input ref={input} name="segment_name" value={name} placeholder="name, e.g. night-misses" onInput={(e) => setName(e.currentTarget.value)} disabled={busy} />
          </label>
          <button type="submit" class="primary" disabled={busy || !name.trim()}>
            Create and add
          </button>
        </form>
        {segs.error ? <ErrorBox error={segs.error} retry={segs.reload} /> : !segs.data ? <Spinner /> : null}
        {frameSegments.length > 0 && (
          <>
            <h3>Or add to</h3>
            <ul class="picker-list">
              {frameSegments.map((s) => (
                <li key={s.name}>
                  <button type="button" disabled={busy} onClick={() => save(s.name)} data-segment={s.name}>
                    {s.name} <span class="muted">({fmt(s.items.length)} frames, {s.state.replace("_", " ")})</span>
                  </button>
                </li>
              ))}
            </ul>
          </>
        )}
        {error != null && <ErrorBox error={error} />}
        <button type="button" onClick={onClose}>
          Cancel
        </button>
      </div>
    </div>
  );
}
