// End-to-end tests of the dashboard in headless Chromium (playwright-core, the system's
// /usr/bin/chromium). Started by crates/wattline/tests/it/ui.rs against a fresh server that it
// has filled; run by hand with the same variables:
//
//   WATTLINE_URL=http://127.0.0.1:8080 WATTLINE_ADMIN_TOKEN=… E2E_PASSWORD=… node e2e/run.mjs
//
// The server holds site-a (owner-a@x.test; devices dev-a1 with channels L1/L2/L3 and a day
// of history, dev-a2) and site-b (owner-b@x.test; dev-b1), and an admin (admin@x.test). A
// failing step saves a screenshot
// in E2E_SCREENSHOTS (default ../target/e2e-screenshots).

import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const base = process.env.WATTLINE_URL;
const admin = process.env.WATTLINE_ADMIN_TOKEN;
const password = process.env.E2E_PASSWORD;
const shots = process.env.E2E_SCREENSHOTS ?? new URL("../../target/e2e-screenshots", import.meta.url).pathname;
const only = process.env.E2E_ONLY;
if (!base || !admin || !password) {
  console.error("WATTLINE_URL, WATTLINE_ADMIN_TOKEN and E2E_PASSWORD are required");
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});

let passed = 0;
let failed = 0;

function assert(cond, message) {
  if (!cond) throw new Error(message);
}

/** Serves the page under the policy the server's security headers set, whether or not this
 *  build sets them, so an inline script or style, eval or another origin fails the test. */
async function strictCsp(context) {
  await context.route(
    (url) => url.pathname === "/",
    async (route) => {
      const response = await route.fetch();
      await route.fulfill({
        response,
        headers: { ...response.headers(), "content-security-policy": "default-src 'self'; frame-ancestors 'none'" },
      });
    },
  );
}

/** Error responses a test provokes on purpose, per page. */
const expected = new Map();
function expectError(page, pattern) {
  expected.set(page, [...(expected.get(page) ?? []), pattern]);
}

/** Runs one test in a fresh browser context; on failure saves a screenshot of its page. */
async function test(name, viewport, fn, contextOptions = {}) {
  if (only && !name.includes(only)) return;
  const context = await browser.newContext({ viewport, baseURL: base, ...contextOptions });
  await strictCsp(context);
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  // Console errors for failed loads do not name the URL; the responses do.
  page.on("console", (m) => m.type() === "error" && !m.text().startsWith("Failed to load resource") && errors.push(m.text()));
  page.on("response", (r) => r.status() >= 400 && r.status() !== 401 && errors.push(`${r.status()} ${r.url()}`));
  page.setDefaultTimeout(10_000);
  const started = Date.now();
  try {
    await fn(page);
    // CSP violations and script errors show up here, whatever the test looked at; a refusal
    // the test provoked on purpose is declared with expectError.
    const allowed = expected.get(page) ?? [];
    const unexpected = errors.filter((e) => !allowed.some((re) => re.test(e)));
    assert(unexpected.length === 0, `errors in the page: ${unexpected.join(" | ")}`);
    passed++;
    console.log(`ok   ${name} (${Date.now() - started} ms)`);
  } catch (e) {
    failed++;
    mkdirSync(shots, { recursive: true });
    const file = join(shots, `${name.replace(/[^a-z0-9]+/gi, "-")}.png`);
    await page.screenshot({ path: file, fullPage: true }).catch(() => undefined);
    console.log(`FAIL ${name}: ${e.stack ?? e}\n     screenshot: ${file}`);
  } finally {
    await context.close();
  }
}

async function login(page, email) {
  await page.goto("/");
  await page.waitForURL(/#\/login/);
  await page.fill("#email", email);
  await page.fill("#password", password);
  await page.click("#login-form button[type=submit]");
  await page.waitForSelector("#logout");
}

async function writeReading(reading) {
  const r = await fetch(`${base}/api/v1/readings`, {
    method: "POST",
    headers: { Authorization: `Token ${admin}`, "Content-Type": "application/json" },
    body: JSON.stringify(reading),
  });
  assert(r.ok, `writing a reading: ${r.status} ${await r.text()}`);
}

const desktop = { width: 1280, height: 900 };
const phone = { width: 360, height: 740 };

await test("login and logout", desktop, async (page) => {
  await page.goto("/");
  await page.waitForURL(/#\/login/);
  await page.fill("#email", "owner-a@x.test");
  await page.fill("#password", "wrong password");
  await page.click("#login-form button[type=submit]");
  await page.waitForSelector("#login-form .error:not(:empty)");
  await login(page, "owner-a@x.test");
  await page.waitForSelector("h1:text('Overview')");
  await page.click("#logout");
  await page.waitForURL(/#\/login/);
  // The session is gone on the server too: a page that needs one sends us back.
  await page.goto("/#/devices");
  await page.waitForURL(/#\/login/);
  const me = await page.request.get("/api/v1/auth/me");
  assert(me.status() === 401, `after logout /auth/me gives ${me.status()}`);
});

await test("an owner sees only their site", desktop, async (page) => {
  await login(page, "owner-a@x.test");
  await page.goto("/#/devices");
  await page.waitForSelector("#devices tbody tr");
  const ids = await page.$$eval("#devices tbody tr", (rows) => rows.map((r) => r.dataset.device).sort());
  assert(JSON.stringify(ids) === JSON.stringify(["dev-a1", "dev-a2"]), `devices shown: ${ids}`);
  const other = await page.request.get("/api/v1/devices/dev-b1");
  assert(other.status() === 404, `another site's device: ${other.status()}`);
});

await test("a reading appears on the device page within 2 s", desktop, async (page) => {
  await login(page, "owner-a@x.test");
  await page.goto("/#/device/dev-a1");
  await page.waitForSelector("#latest tr[data-channel=L1]");
  await page.waitForSelector("#tier[data-tier]");
  // The stream is open once the page has rendered; give EventSource its connection.
  await page.waitForTimeout(500);
  const t = Date.now();
  await writeReading({ device: "dev-a1", channel: "L1", ts: Date.now(), power: 4321.5, voltage: 229.5 });
  await page.waitForSelector("#latest tr[data-channel=L1] td[data-quantity=power]:text('4321.50')", { timeout: 2000 });
  await page.waitForSelector("#device-chart[data-last-value='4321.5']", { timeout: 2000 - (Date.now() - t) });
  // The three-phase device also has a chart per phase; L1's moved too.
  await page.waitForSelector("#phases .small-chart[data-channel=L1][data-last-value='4321.5']", { timeout: 2000 - (Date.now() - t) });
  const phases = await page.$$eval("#phases .small-chart", (els) => els.map((e) => e.dataset.channel).join());
  assert(phases === "L1,L2,L3", `per-phase charts: ${phases}`);
  const cell = await page.textContent("#latest tr[data-channel=L1] td[data-quantity=voltage]");
  assert(cell === "229.50", `voltage cell: ${cell}`);
});

await test("history presets and zoom fetch coarser and finer tiers", desktop, async (page) => {
  await login(page, "owner-a@x.test");
  await page.goto("/#/device/dev-a1");
  await page.waitForSelector("#tier[data-tier]");
  const tier = () => page.getAttribute("#tier", "data-tier");
  const first = await tier();
  assert(first === "raw", `1h starts at ${first}`);
  // avg/min/max of power, voltage and current for the visible range, per phase.
  await page.waitForSelector("#stats tr[data-channel=L2][data-quantity=voltage]");
  const volts = await page.$$eval("#stats tr[data-channel=L2][data-quantity=voltage] td.num", (tds) => tds.map((t) => t.textContent).join());
  assert(volts === "230.0,230.0,230.0", `L2 voltage avg,min,max: ${volts}`);
  assert((await page.$("#stats tr[data-channel=L3][data-quantity=power]")) !== null, "L3 power statistics");
  const seen = [];
  page.on("request", (r) => r.url().includes("/series?") && seen.push(r.url()));
  await page.click("button[data-preset='30d']");
  await page.waitForFunction(() => document.querySelector("#tier")?.dataset.tier === "1h");
  assert(seen.some((u) => u.includes("max_points=")), "series asked with max_points");
  // Drag across a sliver of the chart: a few hours, which the minute tier or raw covers.
  const over = await page.locator("#device-chart .u-over").boundingBox();
  const y = over.y + over.height / 2;
  await page.mouse.move(over.x + over.width * 0.985, y);
  await page.mouse.down();
  await page.mouse.move(over.x + over.width * 0.995, y, { steps: 5 });
  await page.mouse.up();
  await page.waitForFunction(() => ["raw", "1m"].includes(document.querySelector("#tier")?.dataset.tier));
  await page.click("button[data-preset='7d']");
  await page.waitForFunction(() => ["1h", "1m"].includes(document.querySelector("#tier")?.dataset.tier));
});

await test("devices table sorts and exports", desktop, async (page) => {
  await login(page, "owner-a@x.test");
  await page.goto("/#/devices");
  await page.waitForSelector("#devices tbody tr");
  const order = () => page.$$eval("#devices tbody tr", (rows) => rows.map((r) => r.dataset.device));
  await page.click("th[data-key=power] button");
  const asc = await order();
  await page.click("th[data-key=power] button");
  const desc = await order();
  // dev-a1 draws kilowatts, dev-a2 a few watts.
  assert(asc.join() === "dev-a2,dev-a1", `ascending: ${asc}`);
  assert(desc.join() === "dev-a1,dev-a2", `descending: ${desc}`);
  // The period's figures come from one server request: dev-a1's three phases add up to
  // about 3.9 kW on average.
  await page.waitForFunction(() => /kW$/.test(document.querySelector("#devices tr[data-device='dev-a1'] td:nth-child(6)")?.textContent ?? ""));
  const avg = parseFloat(await page.textContent("#devices tr[data-device='dev-a1'] td:nth-child(6)"));
  assert(avg > 3.8 && avg < 4.0, `dev-a1 averages ${avg} kW`);
  const href = await page.getAttribute("#export", "href");
  assert(href.includes("format=csv"), href);
  const csv = await page.request.get(href);
  assert(csv.status() === 200, `export: ${csv.status()}`);
  const text = await csv.text();
  assert(text.startsWith("device,channel,ts"), text.slice(0, 80));
  assert(text.includes("dev-a1") && !text.includes("dev-b1"), "export holds only the owner's devices");
});

await test("an admin sees rejected readings, creates a device and sees its credentials once", desktop, async (page) => {
  const bad = await fetch(`${base}/api/v1/readings`, {
    method: "POST",
    headers: { Authorization: `Token ${admin}`, "Content-Type": "application/json" },
    body: JSON.stringify({ device: "ghost-meter", power: 1 }),
  });
  assert(bad.status === 404, `a reading for an unknown device: ${bad.status}`);
  await login(page, "admin@x.test");
  // Admins see it on the overview.
  await page.waitForSelector("#rejected:has-text('ghost-meter')");
  await page.click("#nav-admin");
  await page.waitForSelector("#new-device");
  await page.fill("#new-device-id", "dev-new");
  await page.fill("#new-device-name", "New meter");
  await page.selectOption("#new-device-site", "site-a");
  await page.click("#new-device button[type=submit]");
  const token = await page.textContent("#credentials code[data-secret='HTTP token']");
  assert(/^wld_[0-9a-f]{48}$/.test(token), `token shown: ${token}`);
  const mqtt = await page.textContent("#credentials code[data-secret='MQTT password']");
  assert(mqtt && mqtt.length >= 16, `MQTT password shown: ${mqtt}`);
  // The token works: the new device writes with it.
  const w = await fetch(`${base}/api/v1/readings`, {
    method: "POST",
    headers: { Authorization: `Token ${token}`, "Content-Type": "application/json" },
    body: JSON.stringify({ device: "dev-new", power: 12 }),
  });
  assert(w.ok, `writing with the shown token: ${w.status}`);
  // Once: after a reload the device is listed and no secret is on the page.
  await page.reload();
  await page.waitForSelector("#admin-devices tr[data-device='dev-new']");
  assert((await page.$("#credentials")) === null, "credentials shown again after reload");
  assert(!(await page.content()).includes(token), "the token is on the page again");
  // An owner's sites are changed in place.
  const row = page.locator("#users tr[data-user='owner-b@x.test']");
  await row.locator("select").selectOption(["site-a", "site-b"]);
  await row.locator("button:text('Save sites')").click();
  await page.waitForSelector("#admin-result:has-text('saved')");
  const users = await (await fetch(`${base}/api/v1/users`, { headers: { Authorization: `Token ${admin}` } })).json();
  const b = users.find((u) => u.email === "owner-b@x.test");
  assert(JSON.stringify([...b.sites].sort()) === '["site-a","site-b"]', `owner-b's sites: ${b.sites}`);
  // A site's zone is changed in place, and a bad one is refused with the server's reason.
  const site = page.locator("#admin-sites tr[data-site='site-b']");
  expectError(page, /^400 .*\/api\/v1\/sites\/site-b$/);
  await site.locator("input[aria-label^='Time zone']").fill("Mars/Olympus");
  await site.locator("button:text('Save zone')").click();
  await page.waitForSelector("#admin-result .error");
  await site.locator("input[aria-label^='Time zone']").fill("Asia/Tokyo");
  await site.locator("button:text('Save zone')").click();
  await page.waitForSelector("#admin-result:has-text('Asia/Tokyo')");
  const siteB = await (await fetch(`${base}/api/v1/sites/site-b`, { headers: { Authorization: `Token ${admin}` } })).json();
  assert(siteB.timezone === "Asia/Tokyo", `site-b's zone: ${siteB.timezone}`);
});

await test("overview at 360 px has no horizontal scroll", phone, async (page) => {
  await login(page, "owner-a@x.test");
  await page.waitForSelector("#ranked tbody tr");
  await page.waitForSelector("#overview-chart .u-over");
  await page.waitForSelector("#energy-today:has-text('kWh')");
  const [scroll, inner] = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
  assert(scroll <= inner, `page is ${scroll} px wide in a ${inner} px window`);
  await page.goto("/#/device/dev-a1");
  await page.waitForSelector("#device-chart .u-over");
  const [s2, i2] = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
  assert(s2 <= i2, `device page is ${s2} px wide in a ${i2} px window`);
});

await test("the overview's total follows a new reading within 2 s", desktop, async (page) => {
  await login(page, "owner-a@x.test");
  await page.waitForSelector("#ranked tbody tr[data-device]");
  // The live stream opens once the page has rendered.
  await page.waitForTimeout(500);
  await writeReading({ device: "dev-a2", ts: Date.now(), power: 7777 });
  const summary = await (await page.request.get("/api/v1/sites/site-a/summary")).json();
  const expected = `${(summary.power_w / 1000).toFixed(2)} kW`;
  await page.waitForSelector(`#total-power:text('${expected}')`, { timeout: 2500 });
  const first = await page.getAttribute("#ranked tbody tr:first-child", "data-device");
  assert(first === "dev-a2", `the biggest consumer is listed first, not ${first}`);
  // Zooming the last-hour chart holds it on the chosen range until "Follow live".
  const over = await page.locator("#overview-chart .u-over").boundingBox();
  await page.mouse.move(over.x + over.width * 0.2, over.y + over.height / 2);
  await page.mouse.down();
  await page.mouse.move(over.x + over.width * 0.5, over.y + over.height / 2, { steps: 4 });
  await page.mouse.up();
  await page.waitForSelector("#follow-live:visible");
  await page.click("#follow-live");
  await page.waitForSelector("#follow-live", { state: "hidden" });
  // By energy today, dev-a1 (three phases since midnight) leads; dev-a2 has no counter.
  await page.selectOption("#rank-by", "energy");
  const byEnergy = await page.getAttribute("#ranked tbody tr:first-child", "data-device");
  assert(byEnergy === "dev-a1", `by energy today, ${byEnergy} is first`);
  const kwh = await page.textContent("#ranked tbody tr:first-child td:nth-child(2)");
  assert(/^\d+\.\d\d kWh$/.test(kwh) && parseFloat(kwh) > 0, `dev-a1 today: ${kwh}`);
});

await test("shift-drag pans the history and keeps its span", desktop, async (page) => {
  await login(page, "owner-a@x.test");
  await page.goto("/#/device/dev-a1?range=24h");
  await page.waitForSelector("#device-chart .u-over");
  await page.waitForSelector("#tier[data-tier]");
  const asked = [];
  page.on("request", (r) => r.url().includes("/series?") && asked.push(new URL(r.url()).searchParams));
  const over = await page.locator("#device-chart .u-over").boundingBox();
  const y = over.y + over.height / 2;
  await page.keyboard.down("Shift");
  await page.mouse.move(over.x + over.width * 0.3, y);
  await page.mouse.down();
  await page.mouse.move(over.x + over.width * 0.7, y, { steps: 8 });
  await page.mouse.up();
  await page.keyboard.up("Shift");
  // Dragging 40 % to the right shows what was 40 % of a day earlier.
  await page.waitForFunction(() => !document.querySelector("button[data-preset='24h']")?.classList.contains("active"));
  const last = () => asked[asked.length - 1];
  const deadline = Date.now() + 3000;
  while (!(asked.length && Number(last().get("to")) < Date.now() - 8 * 3600e3) && Date.now() < deadline) await page.waitForTimeout(100);
  assert(asked.length > 0, "panning fetched nothing");
  const from = Number(last().get("from"));
  const to = Number(last().get("to"));
  const hoursBack = (Date.now() - to) / 3600e3;
  assert(hoursBack > 8 && hoursBack < 11, `the range now ends ${hoursBack.toFixed(1)} h ago`);
  assert(Math.abs(to - from - 86400e3) < 60e3, `the span changed to ${(to - from) / 3600e3} h`);
});

await test("a pinch on a phone zooms the history into a finer tier", phone, async (page) => {
  await login(page, "owner-a@x.test");
  await page.goto("/#/device/dev-a1?range=24h");
  await page.waitForSelector("#device-chart .u-over");
  await page.waitForFunction(() => document.querySelector("#tier")?.dataset.tier === "1h");
  const over = await page.locator("#device-chart .u-over").boundingBox();
  const y = over.y + over.height / 2;
  const cx = over.x + over.width / 2;
  const cdp = await page.context().newCDPSession(page);
  const touch = (type, spread) =>
    cdp.send("Input.dispatchTouchEvent", {
      type,
      touchPoints: spread === null ? [] : [{ x: cx - spread, y, id: 1 }, { x: cx + spread, y, id: 2 }],
    });
  await touch("touchStart", 15);
  for (let spread = 25; spread <= 120; spread += 15) await touch("touchMove", spread);
  await touch("touchEnd", null);
  // Fingers eight times further apart: a day becomes about three hours, which raw covers.
  await page.waitForFunction(() => ["raw", "1m"].includes(document.querySelector("#tier")?.dataset.tier));
  const [s, i] = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
  assert(s <= i, `device page is ${s} px wide in a ${i} px window`);
}, { hasTouch: true, isMobile: true });

await test("a customer lands on their meter: history, cumulative kWh, live power", phone, async (page) => {
  await login(page, "customer@x.test");
  await page.waitForURL(/#\/meter\/dev-c1/);
  await page.waitForSelector("#cumulative-chart[data-total] .u-over");
  await page.waitForSelector("#meter-chart .u-over");
  const total = Number(await page.getAttribute("#cumulative-chart", "data-total"));
  const stats = await (await page.request.get(`/api/v1/devices/dev-c1/stats?from=${Date.now() - 40 * 86400e3}`)).json();
  assert(total > 200 && Math.abs(total - stats.energy_import_kwh) < 0.001, `cumulative ${total} kWh, the meter used ${stats.energy_import_kwh}`);
  const period = await page.textContent("#meter-period");
  assert(period === `${total.toFixed(2)} kWh`, `period total shows ${period}`);
  const today = await page.textContent("#meter-today");
  assert(/^\d+\.\d\d kWh$/.test(today) && parseFloat(today) > 0, `today: ${today}`);
  assert((await page.request.get("/api/v1/devices/dev-a1")).status() === 404, "a customer reads another meter");
  const [s, i] = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
  assert(s <= i, `meter page is ${s} px wide in a ${i} px window`);
  await page.waitForTimeout(500);
  await writeReading({ device: "dev-c1", ts: Date.now(), power: 1234 });
  await page.waitForSelector("#meter-power:text('1.23 kW')", { timeout: 2000 });
  // Zooming the power chart into a day and a half fetches hours instead of days.
  const tierBefore = await page.getAttribute("#meter-chart", "data-tier");
  assert(tierBefore === "1d", `30 days on a phone come per ${tierBefore}`);
  const over = await page.locator("#meter-chart .u-over").boundingBox();
  await page.mouse.move(over.x + over.width * 0.9, over.y + over.height / 2);
  await page.mouse.down();
  await page.mouse.move(over.x + over.width * 0.95, over.y + over.height / 2, { steps: 4 });
  await page.mouse.up();
  await page.waitForFunction(() => document.querySelector("#meter-chart")?.dataset.tier === "1h");
  // Other periods bucket the same meter differently.
  await page.click("button[data-period='24h']");
  await page.waitForSelector("#bars-title:text('per hour')");
});

// Documentation screenshots (scripts/screenshots.sh): each page as its usual visitor sees it.
const docs = process.env.E2E_DOCS_SCREENSHOTS;
if (docs && failed === 0) {
  mkdirSync(docs, { recursive: true });
  const pages = [
    [null, "login", "#/login", "#login-form"],
    ["owner-a@x.test", "overview", "#/", "#overview-chart .u-over"],
    ["owner-a@x.test", "devices", "#/devices", "#devices tbody tr"],
    ["owner-a@x.test", "device", "#/device/dev-a1?range=24h", "#device-chart .u-over"],
    ["owner-a@x.test", "account", "#/account", "h1"],
    ["admin@x.test", "admin", "#/admin", "#admin-devices tr[data-device]"],
    ["customer@x.test", "meter", "#/meter/dev-c1", "#cumulative-chart .u-over"],
  ];
  for (const [label, viewport] of [["desktop", desktop], ["phone", phone]]) {
    for (const who of [null, "owner-a@x.test", "admin@x.test", "customer@x.test"]) {
      const context = await browser.newContext({ viewport, baseURL: base });
      const page = await context.newPage();
      if (who) await login(page, who);
      for (const [, name, hash, ready] of pages.filter(([w]) => w === who)) {
        await page.goto(`/${hash}`);
        await page.waitForSelector(ready);
        await page.waitForTimeout(1500);
        await page.screenshot({ path: join(docs, `${name}-${label}.png`), fullPage: label === "desktop" });
      }
      await context.close();
    }
  }
  console.log(`screenshots written to ${docs}`);
}

await browser.close();
console.log(`e2e: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 && passed > 0 ? 0 : 1);
