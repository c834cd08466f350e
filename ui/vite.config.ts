import { defineConfig } from "vite";

// The server embeds dist/ and serves it at /; `npm run dev` proxies the API to a local
// server so the pages can be worked on with hot reload.
export default defineConfig({
  base: "/",
  build: {
    outDir: "dist",
    assetsDir: "assets",
    // Everything from files: the server's CSP allows no inline script or style.
    assetsInlineLimit: 0,
    sourcemap: false,
  },
  server: {
    proxy: { "/api": process.env.WATTLINE_URL ?? "http://127.0.0.1:8080" },
  },
});
