// Point cloud files the frame view can draw, read into typed arrays (a million points is 12 MB, not a
// million JS arrays): a JSON array of [x, y, z], `.bin` little-endian float32 x y z intensity
// quadruples (KITTI's layout; plain xyz triples when the size only fits those) or ASCII `.pcd`.
export interface Points {
  xyz: Float32Array; // x0 y0 z0 x1 y1 z1 ...
  count: number;
}

export function parsePointCloud(url: string, buf: ArrayBuffer, contentType = ""): Points {
  const path = url.split("?")[0].toLowerCase();
  const head = new TextDecoder().decode(buf.slice(0, 64)).trimStart();
  if (path.endsWith(".json") || contentType.includes("json") || head.startsWith("[")) {
    const arr = JSON.parse(new TextDecoder().decode(buf)) as number[][];
    if (!Array.isArray(arr)) throw new Error("the JSON is not an array of [x, y, z]");
    const xyz = new Float32Array(arr.length * 3);
    arr.forEach((p, i) => xyz.set([p[0], p[1], p[2] ?? 0], i * 3));
    return { xyz, count: arr.length };
  }
  if (path.endsWith(".pcd") || head.startsWith("#") || head.startsWith("VERSION") || head.startsWith("FIELDS")) return parsePcd(buf);
  const stride = buf.byteLength % 16 === 0 ? 4 : buf.byteLength % 12 === 0 ? 3 : 0;
  if (!stride) throw new Error(`a .bin point cloud of ${buf.byteLength} bytes is neither float32 xyz nor xyzi`);
  const f = new Float32Array(buf, 0, buf.byteLength / 4);
  const count = f.length / stride;
  const xyz = new Float32Array(count * 3);
  for (let i = 0; i < count; i++) {
    xyz[i * 3] = f[i * stride];
    xyz[i * 3 + 1] = f[i * stride + 1];
    xyz[i * 3 + 2] = f[i * stride + 2];
  }
  return { xyz, count };
}

function parsePcd(buf: ArrayBuffer): Points {
  const text = new TextDecoder().decode(buf);
  const lines = text.split(/\r?\n/);
  let fields: string[] = [];
  let start = -1;
  for (let i = 0; i < lines.length; i++) {
    const [k, ...rest] = lines[i].trim().split(/\s+/);
    if (k === "FIELDS") fields = rest;
    if (k === "DATA") {
      if (rest[0] !== "ascii") throw new Error(`only ASCII .pcd files are supported (this one is ${rest[0]})`);
      start = i + 1;
      break;
    }
  }
  if (start < 0) throw new Error("not a .pcd file: no DATA line");
  const [ix, iy, iz] = ["x", "y", "z"].map((n) => fields.indexOf(n));
  if (ix < 0 || iy < 0) throw new Error("the .pcd file has no x and y fields");
  const out: number[] = [];
  for (let i = start; i < lines.length; i++) {
    const v = lines[i].trim().split(/\s+/);
    if (v.length < fields.length) continue;
    out.push(+v[ix], +v[iy], iz >= 0 ? +v[iz] : 0);
  }
  return { xyz: Float32Array.from(out), count: out.length / 3 };
}

/** Draw points from above (x right, y up) into a canvas, coloured by height. */
export function drawTopDown(canvas: HTMLCanvasElement, p: Points) {
  const w = canvas.width;
  const h = canvas.height;
  const ctx = canvas.getContext("2d")!;
  let [x0, x1, y0, y1, z0, z1] = [Infinity, -Infinity, Infinity, -Infinity, Infinity, -Infinity];
  for (let i = 0; i < p.count; i++) {
    const x = p.xyz[i * 3], y = p.xyz[i * 3 + 1], z = p.xyz[i * 3 + 2];
    if (!Number.isFinite(x) || !Number.isFinite(y)) continue;
    x0 = Math.min(x0, x); x1 = Math.max(x1, x);
    y0 = Math.min(y0, y); y1 = Math.max(y1, y);
    z0 = Math.min(z0, z); z1 = Math.max(z1, z);
  }
  const scale = Math.min((w - 8) / (x1 - x0 || 1), (h - 8) / (y1 - y0 || 1));
  const img = ctx.createImageData(w, h);
  const d = img.data;
  for (let i = 0; i < d.length; i += 4) { d[i] = 20; d[i + 1] = 22; d[i + 2] = 28; d[i + 3] = 255; }
  for (let i = 0; i < p.count; i++) {
    const px = Math.round(4 + (p.xyz[i * 3] - x0) * scale);
    const py = Math.round(h - 4 - (p.xyz[i * 3 + 1] - y0) * scale);
    if (px < 0 || py < 0 || px >= w || py >= h) continue;
    const t = (p.xyz[i * 3 + 2] - z0) / (z1 - z0 || 1);
    const o = (py * w + px) * 4;
    d[o] = 60 + 195 * t; d[o + 1] = 200 - 80 * t; d[o + 2] = 255 - 200 * t;
  }
  ctx.putImageData(img, 0, 0);
}
