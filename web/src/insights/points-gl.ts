// A small WebGL2 scatter renderer: one `gl.POINTS` draw over a position buffer (f32 x, y) and a colour
// buffer (u8 RGBA). Without a GPU (SwiftShader) a million points take most of a second per frame, so
// while the view moves it draws an even subsample (every k-th point, by attribute stride: no copy),
// and the whole set once the view rests. It draws only when asked (`draw`), never in a loop.

export interface ViewTransform {
  /** Data coordinates at the canvas centre. */
  cx: number;
  cy: number;
  /** CSS pixels per data unit. */
  scale: number;
}

const VS = `#version 300 es
in vec2 a_pos;
in vec4 a_color;
uniform vec2 u_center;
uniform vec2 u_scale;
uniform float u_size;
out vec4 v_color;
void main() {
  gl_Position = vec4((a_pos - u_center) * u_scale, 0.0, 1.0);
  gl_PointSize = u_size;
  v_color = a_color;
}`;
const FS = `#version 300 es
precision mediump float;
in vec4 v_color;
uniform bool u_round;
out vec4 color;
void main() {
  if (u_round && length(gl_PointCoord - vec2(0.5)) > 0.5) discard;
  color = v_color;
}`;

/** Points drawn per frame while the view moves (about 140 ms on SwiftShader). */
export const INTERACTIVE_POINTS = 200_000;

export class PointsRenderer {
  readonly gl: WebGL2RenderingContext;
  private program: WebGLProgram;
  private posBuf: WebGLBuffer;
  private colBuf: WebGLBuffer;
  private vao: WebGLVertexArrayObject;
  private loc: { center: WebGLUniformLocation; scale: WebGLUniformLocation; size: WebGLUniformLocation; round: WebGLUniformLocation };
  private count = 0;
  private coloured = 0;
  private bound = ""; // the stride (and whether with colours) the VAO is set up with

  constructor(readonly canvas: HTMLCanvasElement) {
    // preserveDrawingBuffer: the picture stays readable (tests, screenshots) after it is composited.
    const gl = canvas.getContext("webgl2", { antialias: false, preserveDrawingBuffer: true, premultipliedAlpha: false });
    if (!gl) throw new Error("this browser has no WebGL2, which the map needs");
    this.gl = gl;
    const shader = (type: number, src: string) => {
      const s = gl.createShader(type)!;
      gl.shaderSource(s, src);
      gl.compileShader(s);
      if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(s) ?? "shader");
      return s;
    };
    const p = gl.createProgram()!;
    gl.attachShader(p, shader(gl.VERTEX_SHADER, VS));
    gl.attachShader(p, shader(gl.FRAGMENT_SHADER, FS));
    gl.bindAttribLocation(p, 0, "a_pos");
    gl.bindAttribLocation(p, 1, "a_color");
    gl.linkProgram(p);
    if (!gl.getProgramParameter(p, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(p) ?? "link");
    this.program = p;
    this.loc = {
      center: gl.getUniformLocation(p, "u_center")!,
      scale: gl.getUniformLocation(p, "u_scale")!,
      size: gl.getUniformLocation(p, "u_size")!,
      round: gl.getUniformLocation(p, "u_round")!,
    };
    this.posBuf = gl.createBuffer()!;
    this.colBuf = gl.createBuffer()!;
    this.vao = gl.createVertexArray()!;
    gl.enable(gl.BLEND);
    gl.blendFunc(gl.SRC_ALPHA, gl.ONE_MINUS_SRC_ALPHA);
  }

  setPositions(xy: Float32Array) {
    const gl = this.gl;
    gl.bindBuffer(gl.ARRAY_BUFFER, this.posBuf);
    gl.bufferData(gl.ARRAY_BUFFER, xy, gl.STATIC_DRAW);
    this.count = xy.length / 2;
    // Until colours for as many points come (from the worker), every point is drawn in one grey: a
    // constant attribute, not a buffer of a million copies of it.
    this.bound = "";
  }

  setColors(rgba: Uint8Array) {
    const gl = this.gl;
    gl.bindBuffer(gl.ARRAY_BUFFER, this.colBuf);
    gl.bufferData(gl.ARRAY_BUFFER, rgba, gl.DYNAMIC_DRAW);
    this.coloured = rgba.length / 4;
    this.bound = "";
  }

  private bind(step: number) {
    const coloured = this.coloured === this.count;
    const key = `${step}${coloured ? "c" : ""}`;
    if (this.bound === key) return;
    const gl = this.gl;
    gl.bindVertexArray(this.vao);
    gl.bindBuffer(gl.ARRAY_BUFFER, this.posBuf);
    gl.enableVertexAttribArray(0);
    gl.vertexAttribPointer(0, 2, gl.FLOAT, false, 8 * step, 0);
    if (coloured) {
      gl.bindBuffer(gl.ARRAY_BUFFER, this.colBuf);
      gl.enableVertexAttribArray(1);
      gl.vertexAttribPointer(1, 4, gl.UNSIGNED_BYTE, true, 4 * step, 0);
    } else {
      gl.disableVertexAttribArray(1);
      gl.vertexAttrib4f(1, 120 / 255, 120 / 255, 120 / 255, 120 / 255);
    }
    this.bound = key;
  }

  /** Draw the points under `view`; `moving` draws the subsample. Returns how many points were drawn. */
  draw(view: ViewTransform, { moving = false, size = 2 } = {}): number {
    const gl = this.gl;
    const dpr = devicePixelRatio || 1;
    const w = Math.max(1, Math.round(this.canvas.clientWidth * dpr));
    const h = Math.max(1, Math.round(this.canvas.clientHeight * dpr));
    if (this.canvas.width !== w || this.canvas.height !== h) {
      this.canvas.width = w;
      this.canvas.height = h;
    }
    gl.viewport(0, 0, w, h);
    gl.clearColor(1, 1, 1, 1);
    gl.clear(gl.COLOR_BUFFER_BIT);
    if (this.count === 0) return 0;
    // The vertex stride may be at most 255 bytes: a step of 31 points at most.
    const step = moving ? Math.min(31, Math.max(1, Math.ceil(this.count / INTERACTIVE_POINTS))) : 1;
    gl.useProgram(this.program);
    this.bind(step);
    gl.uniform2f(this.loc.center, view.cx, view.cy);
    gl.uniform2f(this.loc.scale, (2 * view.scale * dpr) / w, (2 * view.scale * dpr) / h);
    gl.uniform1f(this.loc.size, size * dpr);
    gl.uniform1i(this.loc.round, size >= 3 ? 1 : 0);
    const n = Math.floor(this.count / step);
    gl.drawArrays(gl.POINTS, 0, n);
    return n;
  }
}
