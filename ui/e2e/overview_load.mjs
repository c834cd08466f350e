// Benchmark (not a test): how long the overview takes to load in headless Chromium, from
// navigation to a filled page (total power, energy, the ranked table and the drawn chart).
// Run by bench/run_live_bench.py against a server it has filled; by hand:
//
//   WATTLINE_URL=http://127.0.0.1:8080 BENCH_EMAIL=… BENCH_PASSWORD=… node e2e/overview_load.mjs
//
// Each run uses a fresh browser context: no cache, a new login. Prints one JSON line.

import { chromium } from "playwright-core";

const base = process.env.WATTLINE_URL;
const email = process.env.BENCH_EMAIL;
const password = process.env.BENCH_PASSWORD;
const runs = Number(process.env.BENCH_RUNS ?? 5);
if (!base || !email || !password) {
  console.error("WATTLINE_URL, BENCH_EMAIL and BENCH_PASSWORD are required");
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});

const ready = async (page) => {
  await page.waitForFunction(
    () =>
      /W$/.test(document.querySelector("#total-power")?.textContent ?? "") &&
      /kWh$/.test(document.querySelector("#energy-today")?.textContent ?? "") &&
      document.querySelectorAll("#ranked tbody tr[data-device]").length > 0 &&
      document.querySelector("#overview-chart canvas") !== null,
    null,
    { timeout: 30_000, polling: "raf" },
  );
};

const results = [];
for (let i = 0; i < runs; i++) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, baseURL: base });
  // Log in through the API so the measured navigation is the overview alone.
  const login = await context.request.post("/api/v1/auth/login", { data: { email, password } });
  if (!login.ok()) throw new Error(`login: ${login.status()} ${await login.text()}`);
  const page = await context.newPage();
  let apiBytes = 0;
  page.on("response", async (r) => {
    if (r.url().includes("/api/v1/sites")) apiBytes += (await r.body().catch(() => Buffer.alloc(0))).length;
  });
  const t0 = Date.now();
  await page.goto("/#/");
  await ready(page);
  const ms = Date.now() - t0;
  const summaryMs = await page.evaluate(
    () => performance.getEntriesByType("resource").find((e) => e.name.includes("/summary"))?.duration ?? null,
  );
  const rows = await page.$$eval("#ranked tbody tr", (r) => r.length);
  results.push({ ms, summary_ms: summaryMs, ranked_rows: rows, api_bytes: apiBytes });
  await context.close();
}
await browser.close();
const sorted = results.map((r) => r.ms).sort((a, b) => a - b);
console.log(JSON.stringify({ median_ms: sorted[Math.floor(sorted.length / 2)], runs: results }));
