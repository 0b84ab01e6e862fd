// Labels drawn over an image as SVG in the image's own pixel coordinates: the viewBox is the image's
// natural size and preserveAspectRatio matches the <img>'s object-fit: contain, so the browser does the
// "displayed size over natural size" scaling for every shape. Ground truth solid, inferences dashed.
import { useEffect, useState } from "preact/hooks";
import type { ClassDef, Label } from "../api";
import type { Source } from "../raw/resolve";

export type ClassMap = Map<number | string, ClassDef>;

export function classMap(classes: ClassDef[]): ClassMap {
  const m: ClassMap = new Map();
  for (const c of classes) {
    m.set(c.id, c);
    m.set(c.name, c);
  }
  return m;
}

export const rgb = (c?: [number, number, number]) => (c ? `rgb(${c[0]},${c[1]},${c[2]})` : "rgb(128,128,128)");
export const colorOf = (l: Label, classes: ClassMap) => rgb((classes.get(l.class_id ?? "") ?? classes.get(l.class ?? ""))?.color);

interface Props {
  width: number;
  height: number;
  labels: Label[];
  inferences: Label[];
  classes: ClassMap;
  /** Mask images by their URL (already resolved with the frame's page). */
  sourceOf?: (url: string) => Source | undefined;
  highlight?: string | null;
  /** Hover titles on shapes (the frame view); grid tiles skip them: half the overlay's DOM nodes. */
  titles?: boolean;
}

export function Overlay({ width, height, labels, inferences, classes, sourceOf, highlight, titles = false }: Props) {
  return (
    <svg class="overlay" viewBox={`0 0 ${width} ${height}`} preserveAspectRatio="xMidYMid meet" aria-hidden="true">
      {labels.map((l) => (
        <Shape key={"l" + l.label_id} l={l} color={colorOf(l, classes)} dashed={false} classes={classes} sourceOf={sourceOf} width={width} height={height} hi={highlight === l.label_id} titles={titles} />
      ))}
      {inferences.map((l) => (
        <Shape key={"i" + l.label_id} l={l} color={colorOf(l, classes)} dashed classes={classes} sourceOf={sourceOf} width={width} height={height} hi={highlight === l.label_id} titles={titles} />
      ))}
    </svg>
  );
}

function Shape({ l, color, dashed, classes, sourceOf, width, height, hi, titles }: { l: Label; color: string; dashed: boolean; classes: ClassMap; sourceOf?: Props["sourceOf"]; width: number; height: number; hi: boolean; titles: boolean }) {
  const stroke = { stroke: color, "stroke-width": hi ? 4 : 2, "vector-effect": "non-scaling-stroke", "stroke-dasharray": dashed ? "6 4" : undefined, fill: "none" } as const;
  const g = l.geometry;
  const title = titles && <title>{`${dashed ? "inference" : "label"} ${l.class ?? ""}${l.confidence != null ? ` ${l.confidence.toFixed(2)}` : ""}`}</title>;
  switch (g.kind) {
    case "box2d":
      return <rect x={g.left} y={g.top} width={g.width} height={g.height} {...stroke} data-kind={dashed ? "inference" : "label"}>{title}</rect>;
    case "polygon_list":
      return (
        <g data-kind={dashed ? "inference" : "label"}>
          {g.polygons.map((p, i) => (
            <polygon key={i} points={p.map(([x, y]) => `${x},${y}`).join(" ")} {...stroke} fill={color} fill-opacity={0.25} />
          ))}
          {title}
        </g>
      );
    case "line_segment":
      return <line x1={g.x1} y1={g.y1} x2={g.x2} y2={g.y2} {...stroke}>{title}</line>;
    case "keypoints":
      return (
        <g>
          {g.keypoints.map((k) => (
            <circle key={k.name} cx={k.x} cy={k.y} r={Math.max(2, width / 150)} fill={color}>
              <title>{k.name}</title>
            </circle>
          ))}
        </g>
      );
    case "semantic_mask":
    case "instance_mask": {
      const src = sourceOf?.(g.url);
      return src?.src ? <MaskImage src={src.src} label={l} classes={classes} width={width} height={height} /> : null;
    }
    default:
      return null;
  }
}

// Masks are usually single-channel PNGs of class ids (semantic) or instance ids (instance), which look
// black as they are. Colour them with the class map on a canvas; that needs the pixels, so CORS. Without
// CORS, show the mask as it is, half transparent.
const maskCache = new Map<string, Promise<string>>();

function colourMask(src: string, label: Label, classes: ClassMap): Promise<string> {
  const key = src + "\n" + label.label_id;
  let p = maskCache.get(key);
  if (!p) {
    p = new Promise<string>((resolve, reject) => {
      const img = new Image();
      img.crossOrigin = "anonymous";
      img.onerror = () => reject(new Error("mask did not load with CORS"));
      img.onload = () => {
        try {
          const c = document.createElement("canvas");
          c.width = img.naturalWidth;
          c.height = img.naturalHeight;
          const ctx = c.getContext("2d")!;
          ctx.drawImage(img, 0, 0);
          const d = ctx.getImageData(0, 0, c.width, c.height);
          const g = label.geometry as { kind: string; instances?: { id: number; class: string }[] };
          const byInstance = new Map((g.instances ?? []).map((i) => [i.id, classes.get(i.class)?.color]));
          const fixed = label.class != null ? (classes.get(label.class_id ?? "") ?? classes.get(label.class))?.color : undefined;
          for (let i = 0; i < d.data.length; i += 4) {
            const v = d.data[i];
            const colour = v === 0 ? undefined : g.kind === "instance_mask" ? byInstance.get(v) : (fixed ?? classes.get(v)?.color);
            if (colour) {
              d.data[i] = colour[0];
              d.data[i + 1] = colour[1];
              d.data[i + 2] = colour[2];
              d.data[i + 3] = 110;
            } else d.data[i + 3] = 0;
          }
          ctx.putImageData(d, 0, 0);
          c.toBlob((b) => (b ? resolve(URL.createObjectURL(b)) : reject(new Error("no blob"))));
        } catch (e) {
          reject(e);
        }
      };
      img.src = src;
    });
    maskCache.set(key, p);
  }
  return p;
}

function MaskImage({ src, label, classes, width, height }: { src: string; label: Label; classes: ClassMap; width: number; height: number }) {
  const [coloured, setColoured] = useState<string | null | false>(null);
  useEffect(() => {
    let live = true;
    colourMask(src, label, classes).then(
      (u) => live && setColoured(u),
      () => live && setColoured(false),
    );
    return () => void (live = false);
  }, [src, label.label_id]);
  if (coloured === null) return null;
  return <image href={coloured || src} x={0} y={0} width={width} height={height} opacity={coloured ? 1 : 0.45} preserveAspectRatio="none" data-kind="mask" />;
}
