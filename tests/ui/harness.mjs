// Test harness: starts the real milkglass binary (`milkglass demo`) on free ports with a temporary data
// directory, and a headless Chromium (Debian's chromium-headless-shell, driven by playwright-core).
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer as netServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
export const DIST = join(ROOT, "web/dist");
export const BIN = process.env.MILKGLASS_BIN ?? "/root/.cache/milkglass/target/debug/milkglass";
const require = (await import("node:module")).createRequire(join(ROOT, "web/package.json"));
const { chromium } = require("playwright-core");

export function freePort() {
  return new Promise((res, rej) => {
    const s = netServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

/** Spawn a process and wait for a stdout line matching `ready`; returns the child and that line. */
export function spawnUntil(cmd, args, ready, { env, timeoutMs = 120_000, stdin = "ignore" } = {}) {
  return new Promise((res, rej) => {
    const child = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: [stdin, "pipe", "pipe"] });
    let stderr = "";
    child.stderr.on("data", (d) => (stderr = (stderr + d).slice(-4000)));
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      rej(new Error(`${cmd} did not get ready in ${timeoutMs} ms: ${stderr}`));
    }, timeoutMs);
    child.once("exit", (code) => {
      clearTimeout(timer);
      rej(new Error(`${cmd} exited with ${code} before it was ready: ${stderr}`));
    });
    const lines = createInterface({ input: child.stdout });
    const onLine = (line) => {
      if (ready.test(line)) {
        clearTimeout(timer);
        child.removeAllListeners("exit");
        lines.off("line", onLine);
        res({ child, line, lines });
      }
    };
    lines.on("line", onLine);
  });
}

export function stop(child) {
  return new Promise((res) => {
    if (!child || child.exitCode !== null) return res();
    child.once("exit", () => res());
    child.kill("SIGTERM");
    setTimeout(() => child.kill("SIGKILL"), 5000).unref();
  });
}

/**
 * Start `milkglass demo` (sample project `shapes`, users admin/olivia/victor/sam) and return
 * { url, tokens, dir, api(path, init), close() }.
 */
export async function startDemo({ frames = 300, args = [] } = {}) {
  if (!existsSync(join(DIST, "index.html"))) throw new Error("web/dist is missing: run `npm --prefix web run build` first");
  if (!existsSync(BIN)) throw new Error(`no milkglass binary at ${BIN} (set MILKGLASS_BIN)`);
  const dir = mkdtempSync(join(tmpdir(), "milkglass-ui-"));
  const [http, flight] = [await freePort(), await freePort()];
  const { child } = await spawnUntil(
    BIN,
    ["demo", "--data-dir", join(dir, "demo"), "--http-addr", `127.0.0.1:${http}`, "--flight-addr", `127.0.0.1:${flight}`, "--frames", String(frames), ...args],
    /^milkglass serving/,
  );
  const server = `http://127.0.0.1:${http}`;
  appServer(server);
  const tokens = Object.fromEntries(
    Object.entries(JSON.parse(readFileSync(join(dir, "demo", "demo-tokens.json"), "utf8"))).map(([k, v]) => [k, v.token]),
  );
  // The server serves the app itself: web/dist, read from disk at each request in debug builds.
  const index = await fetch(`${server}/`);
  if (!(index.headers.get("content-type") ?? "").includes("text/html")) throw new Error(`${BIN} does not serve the web app at /`);
  const url = server;
  const api = async (path, init = {}, token = tokens.admin) => {
    const r = await fetch(url + path, { ...init, headers: { Authorization: `Bearer ${token}`, ...(init.headers ?? {}) } });
    const text = await r.text();
    if (!r.ok) throw new Error(`${init.method ?? "GET"} ${path}: ${r.status} ${text}`);
    return text ? JSON.parse(text) : null;
  };
  return {
    url,
    server,
    tokens,
    dir,
    api,
    async close() {
      await stop(child);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export function chromiumPath() {
  const candidates = [process.env.CHROMIUM_PATH, "/usr/bin/chromium-headless-shell", "/usr/lib/chromium/chromium-headless-shell", "/usr/bin/chromium"];
  const found = candidates.find((p) => p && existsSync(p));
  if (!found) throw new Error("no Chromium: apt-get install -y --no-install-recommends chromium-headless-shell (or set CHROMIUM_PATH)");
  return found;
}

export async function launch() {
  // WebGL2 (the map) runs on SwiftShader: there is no GPU on the test machines.
  return chromium.launch({ executablePath: chromiumPath(), args: ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"] });
}

const TYPES = { ".js": "text/javascript", ".css": "text/css", ".html": "text/html; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png", ".woff2": "font/woff2" };

/** The milkglass servers of this process (startDemo's, and the benchmarks' via appServer). */
const appOrigins = new Set();
export const appServer = (url) => appOrigins.add(new URL(url).origin);

/**
 * MILKGLASS_WEB_DIST=1 (or a directory): the browser gets the app's files (index.html for the app's
 * routes, /static/*) from web/dist (or that directory) instead of from the binary, with the binary's own
 * headers (CSP included). For a release binary, which embeds web/dist as it was when cargo built it:
 * the tests and benchmarks then run the app as built now, without rebuilding the server. Only the app's
 * files of the servers named by appServer are answered here; the API and other hosts go through.
 * Caveat: once a route exists Playwright pauses every request and continues the others, and the
 * signed bucket images of s3.test.mjs then fail (net::ERR_FAILED); run that file without it.
 */
async function serveDist(context, dist) {
  const own = (u) => appOrigins.has(u.origin) && !/^\/(api|sample|assets|healthz)(\/|$)/.test(u.pathname);
  await context.route(own, async (route) => {
    const req = route.request();
    const u = new URL(req.url());
    const file = u.pathname.startsWith("/static/") ? join(dist, u.pathname) : req.resourceType() === "document" ? join(dist, "index.html") : null;
    if (!file) return route.fallback();
    // The binary's headers for its index page (CSP, nosniff), with the file's type and caching.
    const real = await route.fetch({ url: `${u.origin}/` });
    const headers = { ...real.headers() };
    delete headers["content-length"];
    delete headers["content-encoding"];
    delete headers["transfer-encoding"];
    if (!existsSync(file) || !file.startsWith(dist + "/")) return route.fulfill({ status: 404, headers: { "content-type": "text/plain" }, body: "not in web/dist" });
    headers["content-type"] = TYPES[file.slice(file.lastIndexOf("."))] ?? "application/octet-stream";
    headers["cache-control"] = file.endsWith("index.html") ? "no-cache" : "public, max-age=31536000, immutable";
    return route.fulfill({ status: 200, headers, body: readFileSync(file) });
  });
}

/** A page that fails the test on console errors and CSP violations. */
export async function newPage(browser, { width = 1280, height = 800 } = {}) {
  const context = await browser.newContext({ viewport: { width, height } });
  const dist = process.env.MILKGLASS_WEB_DIST;
  if (dist) await serveDist(context, dist === "1" ? DIST : resolve(dist));
  const page = await context.newPage();
  page.errors = [];
  page.on("pageerror", (e) => page.errors.push(String(e)));
  page.on("console", (m) => {
    if (m.type() === "error" && /Content Security Policy|Uncaught/.test(m.text())) page.errors.push(m.text());
  });
  return page;
}

/** Sign in through the sign-in form. */
export async function signIn(page, url, token, path = "/") {
  await page.goto(url + path);
  await page.waitForURL(/\/signin/);
  await page.fill("input[name=token]", token);
  await page.click("button[type=submit]");
  await page.waitForSelector(".topbar .user");
}
