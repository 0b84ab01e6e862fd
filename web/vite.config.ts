import { defineConfig } from "vite";

// The server serves web/dist: index.html for every client-side route, hashed files under /static/
// with immutable caching. `/assets/` belongs to the server's signed-file route, so never put output there.
export default defineConfig({
  base: "/",
  oxc: { jsx: { runtime: "automatic", importSource: "preact" } },
  build: {
    outDir: "dist",
    assetsDir: "static",
    emptyOutDir: true,
    target: "es2022",
    // The CSP forbids inline scripts; a small asset inlined as a data: URL would be fine for images but
    // keep everything as files so the output is easy to reason about.
    assetsInlineLimit: 0,
  },
  server: {
    // `npm run dev` against a running milkglass (MILKGLASS_URL, default the demo's address).
    proxy: Object.fromEntries(
      ["/api", "/sample", "/assets", "/healthz"].map((p) => [p, process.env.MILKGLASS_URL ?? "http://127.0.0.1:7700"]),
    ),
  },
});
