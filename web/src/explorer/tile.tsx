// One grid tile: the frame's image drawn by the browser, its labels and inferences over it, a caption.
import { Component } from "preact";
import { useState } from "preact/hooks";
import type { Frame, Label, Sensor } from "../api";
import type { Source } from "../raw/resolve";
import { Overlay, type ClassMap } from "./overlay";
import { plural } from "../ui";

export function primarySensor(f: Frame): Sensor | undefined {
  return f.sensors.find((s) => s.kind === "image") ?? f.sensors.find((s) => s.kind === "image_overlay") ?? f.sensors[0];
}

/** Which of a frame's labels belong on a sensor: those naming it, and those naming no sensor. */
export const onSensor = (labels: Label[] | undefined, s: Sensor | undefined) =>
  (labels ?? []).filter((l) => !l.sensor_id || !s || l.sensor_id === s.sensor_id);

export interface OverlayOptions {
  showLabels: boolean;
  showInferences: boolean;
  conf: number;
  classes: ClassMap;
}

interface Props {
  frame: Frame | undefined;
  index: number;
  /** Position and size in the grid's tile layer, px. */
  x: number;
  y: number;
  w: number;
  h: number;
  active: boolean;
  /** In the grid's selection (`x`). */
  selected: boolean;
  /** A caption from the frame list (a neighbour's distance). */
  note?: string;
  source: (url: string, index: number) => Source | undefined;
  opts: OverlayOptions;
  onOpen: (i: number) => void;
}

/** A tile re-renders only when one of its props changes: scrolling re-renders the grid on every frame,
 * and diffing a hundred unchanged tiles each time is what would make frames drop. */
export class MemoTile extends Component<Props> {
  shouldComponentUpdate(next: Props) {
    for (const k in next) if (next[k as keyof Props] !== this.props[k as keyof Props]) return true;
    return false;
  }
  render() {
    return <Tile {...this.props} />;
  }
}

function Tile({ frame, index, x, y, w, h, active, selected, note, source: sourceAt, opts, onOpen }: Props) {
  const style = { transform: `translate(${x}px, ${y}px)`, width: `${w}px`, height: `${h}px` };
  const source = (url: string) => sourceAt(url, index);
  if (!frame) {
    return <div class={"tile placeholder" + (active ? " active" : "")} style={style} id={`tile-${index}`} role="option" aria-selected={false} aria-busy="true" />;
  }
  const s = primarySensor(frame);
  return (
    <div
      class={"tile" + (active ? " active" : "") + (selected ? " selected" : "")}
      style={style}
      id={`tile-${index}`}
      role="option"
      aria-selected={active}
      data-selected={selected ? "true" : undefined}
      aria-label={`${frame.frame_id}, ${plural(frame.label_count, "label")}`}
      data-frame={frame.frame_id}
      onClick={() => onOpen(index)}
    >
      <div class="thumb">
        <SensorThumb key={frame.frame_id} frame={frame} sensor={s} source={s ? source(s.url) : undefined} sourceOf={source} opts={opts} />
      </div>
      <div class="caption">
        <span class="fid" title={frame.frame_id}>
          {frame.frame_id}
        </span>
        {note != null ? (
          <span class="note" title="distance">{note}</span>
        ) : (
          <span class="muted">{plural(frame.label_count, "label")}</span>
        )}
        {selected && <span class="sel-mark" aria-label="selected">✓</span>}
      </div>
    </div>
  );
}

function SensorThumb({ frame, sensor, source, sourceOf, opts }: { frame: Frame; sensor?: Sensor; source?: Source; sourceOf: (u: string) => Source | undefined; opts: OverlayOptions }) {
  const [size, setSize] = useState<[number, number] | null>(sensor?.width && sensor.height ? [sensor.width, sensor.height] : null);
  const [failed, setFailed] = useState(false);
  if (!sensor) return <div class="thumb-msg">no sensors</div>;
  if (sensor.kind === "text") {
    const isUrl = /^https?:\/\//.test(sensor.url);
    return <div class="thumb-text" title={isUrl ? "text at " + sensor.url : "text"}>{isUrl ? `text: ${sensor.url}` : sensor.url.slice(0, 400)}</div>;
  }
  if (sensor.kind !== "image" && sensor.kind !== "image_overlay") {
    return <div class="thumb-msg" title={sensor.url}>{sensor.kind.replace("_", " ")}: open to view</div>;
  }
  if (!source) return <div class="thumb-msg" aria-busy="true" />;
  if (!source.src) return <div class="thumb-msg warn" title={source.title}>{source.reason}</div>;
  if (failed) return <div class="thumb-msg warn" title={source.title}>image did not load from {hostOf(source.src)}</div>;
  const labels = opts.showLabels ? onSensor(frame.labels, sensor) : [];
  const inferences = opts.showInferences ? onSensor(frame.inferences, sensor).filter((l) => (l.confidence ?? 1) >= opts.conf) : [];
  return (
    <>
      <img
        src={source.src}
        alt={frame.frame_id}
        title={source.title}
        decoding="async"
        draggable={false}
        onLoad={(e) => {
          const img = e.currentTarget as HTMLImageElement;
          if (!size || size[0] !== img.naturalWidth || size[1] !== img.naturalHeight) setSize([img.naturalWidth, img.naturalHeight]);
        }}
        onError={() => setFailed(true)}
      />
      {size && (labels.length > 0 || inferences.length > 0) && (
        <Overlay width={size[0]} height={size[1]} labels={labels} inferences={inferences} classes={opts.classes} sourceOf={sourceOf} />
      )}
    </>
  );
}

export function hostOf(url: string) {
  try {
    return new URL(url, location.href).host;
  } catch {
    return url.slice(0, 60);
  }
}
