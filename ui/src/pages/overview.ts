import { Device, Series, Site, get, isAdmin, live, powerNow, qs } from "../api";
import { lineChart, LineChart } from "../chart";
import { ago, clear, fmtNum, fmtPower, h } from "../dom";

const WINDOW_MS = 3600_000;

export async function overviewPage(app: HTMLElement, params: URLSearchParams): Promise<() => void> {
  const [sites, all] = await Promise.all([get<Site[]>("/api/v1/sites"), get<Device[]>("/api/v1/devices")]);
  if (sites.length === 0) {
    clear(app, h("h1", {}, "Overview"), h("p", {}, "No site yet."));
    return () => undefined;
  }
  const site = sites.find((s) => s.id === params.get("site")) ?? sites[0];
  const devices = all.filter((d) => d.site === site.id);
  const byId = new Map(devices.map((d) => [d.id, d]));

  const picker = h(
    "select",
    { id: "site", "aria-label": "Site", onchange: (e: Event) => (location.hash = `#/?site=${encodeURIComponent((e.target as HTMLSelectElement).value)}`) },
    sites.map((s) => h("option", { value: s.id, selected: s.id === site.id }, s.name)),
  );
  const total = h("div", { class: "big", id: "total-power" });
  const energyToday = h("div", { class: "big", id: "energy-today" }, "…");
  const energyMonth = h("div", { class: "big", id: "energy-month" }, "…");
  const online = h("div", { class: "muted" });
  const chartEl = h("div", { class: "chart", id: "overview-chart" });
  const ranked = h("tbody");
  const offline = h("ul", { id: "offline" });
  const rejected = h("div", { id: "rejected", class: "table-wrap" }, h("p", { class: "muted" }, "…"));
  clear(
    app,
    h("div", { class: "row" }, h("h1", {}, "Overview"), sites.length > 1 ? picker : h("span", { class: "muted" }, site.name)),
    h(
      "section",
      { class: "cards" },
      h("div", { class: "card" }, h("div", { class: "muted" }, "Power now"), total, online),
      h("div", { class: "card" }, h("div", { class: "muted" }, "Energy today"), energyToday),
      h("div", { class: "card" }, h("div", { class: "muted" }, "Energy this month"), energyMonth),
      h("div", { class: "card" }, h("div", { class: "muted" }, "Devices"), h("div", { class: "big" }, String(devices.length))),
    ),
    h("section", { class: "card" }, h("h2", {}, "Last hour"), chartEl),
    h(
      "section",
      { class: "card" },
      h("h2", {}, "Devices by power now"),
      h(
        "div",
        { class: "table-wrap" },
        h("table", { id: "ranked" }, h("thead", {}, h("tr", {}, h("th", {}, "Device"), h("th", { class: "num" }, "Power"), h("th", {}, "Last seen"))), ranked),
      ),
    ),
    h("section", { class: "card" }, h("h2", {}, "Offline"), offline),
    isAdmin() ? h("section", { class: "card" }, h("h2", {}, "Recently rejected readings"), rejected) : null,
  );
  if (isAdmin()) void loadRejected(rejected);

  const sum = () => devices.reduce((acc, d) => acc + (powerNow(d) ?? 0), 0);
  const render = () => {
    total.textContent = fmtPower(sum());
    online.textContent = `${devices.filter((d) => d.availability?.online).length} of ${devices.length} online`;
    const sorted = [...devices].sort((a, b) => (powerNow(b) ?? -Infinity) - (powerNow(a) ?? -Infinity));
    clear(
      ranked,
      sorted.slice(0, 50).map((d) =>
        h(
          "tr",
          {},
          h("td", {}, h("a", { href: `#/device/${encodeURIComponent(d.id)}` }, d.name || d.id)),
          h("td", { class: "num" }, fmtPower(powerNow(d))),
          h("td", {}, ago(d.last_seen)),
        ),
      ),
    );
    const off = devices.filter((d) => !d.availability?.online);
    clear(
      offline,
      off.length === 0
        ? h("li", { class: "muted" }, "None")
        : off.map((d) => h("li", {}, h("a", { href: `#/device/${encodeURIComponent(d.id)}` }, d.name || d.id), ` — last seen ${ago(d.last_seen)}`)),
    );
  };
  render();

  // The chart samples the site total once a second from the live stream; it starts empty.
  const times: number[] = [];
  const values: number[] = [];
  let chart: LineChart | null = lineChart(chartEl, ["Total"], [[], []], { unit: "W" });
  const redraw = () => {
    const now = Date.now();
    while (times.length && times[0] < (now - WINDOW_MS) / 1000) {
      times.shift();
      values.shift();
    }
    chart?.plot.setData([times, values], false);
    chart?.plot.setScale("x", { min: (now - WINDOW_MS) / 1000, max: now / 1000 });
  };
  redraw();
  // The hour before the page opened, per minute, for sites small enough to ask per device.
  void history(devices).then((h) => {
    if (!h || !chart) return;
    const first = times[0] ?? Infinity;
    const older = h.filter(([t]) => t < first);
    times.unshift(...older.map(([t]) => t));
    values.unshift(...older.map(([, v]) => v));
    redraw();
  });
  let dirty = true;
  const tick = setInterval(() => {
    times.push(Date.now() / 1000);
    values.push(sum());
    redraw();
    if (dirty) {
      render();
      dirty = false;
    }
  }, 1000);
  void loadEnergy(site, devices, energyToday, energyMonth);
  const close = live(`site=${encodeURIComponent(site.id)}`, (r) => {
    const d = byId.get(r.device);
    if (!d) return;
    d.latest[r.channel] = { ts: new Date(r.ts).toISOString(), ...r.values };
    d.last_seen = new Date(r.ts).toISOString();
    d.availability = { ...d.availability, online: true };
    dirty = true;
  });
  return () => {
    close();
    clearInterval(tick);
    chart?.destroy();
    chart = null;
  };
}

/** Most devices whose energy the overview sums in the browser (one request each). */
const ENERGY_DEVICES = 200;

/** kWh today and this month in the site's zone: per-device daily buckets, summed. */
async function loadEnergy(site: Site, devices: Device[], today: HTMLElement, month: HTMLElement): Promise<void> {
  if (devices.length > ENERGY_DEVICES) {
    today.textContent = month.textContent = "–";
    today.title = month.title = `not summed for more than ${ENERGY_DEVICES} devices`;
    return;
  }
  // Bucket starts are local to the site ("2026-11-22T00:00:00+01:00[…]"): compare dates there.
  const date = new Intl.DateTimeFormat("en-CA", { timeZone: site.timezone }).format(new Date());
  const monthPrefix = date.slice(0, 7);
  let day = 0;
  let sum = 0;
  const queue = [...devices];
  const worker = async () => {
    for (let d = queue.shift(); d; d = queue.shift()) {
      const e = await get<{ buckets: { start: string; import_kwh: number }[] }>(
        `/api/v1/devices/${encodeURIComponent(d.id)}/energy?${qs({ interval: "day", from: Date.now() - 32 * 86400e3 })}`,
      ).catch(() => ({ buckets: [] }));
      for (const b of e.buckets) {
        if (b.start.startsWith(monthPrefix)) sum += b.import_kwh;
        if (b.start.startsWith(date)) day += b.import_kwh;
      }
    }
  };
  await Promise.all([worker(), worker(), worker(), worker()]);
  today.textContent = `${fmtNum(day, 2)} kWh`;
  month.textContent = `${fmtNum(sum, 1)} kWh`;
}

const HISTORY_DEVICES = 50;

/** The site's total power per minute over the last hour, summed from each device's channels;
 *  `null` for sites with more devices than it is reasonable to ask one by one. */
async function history(devices: Device[]): Promise<[number, number][] | null> {
  if (devices.length > HISTORY_DEVICES) return null;
  const from = Date.now() - WINDOW_MS;
  const minutes = new Map<number, number>();
  const queue = devices.flatMap((d) => {
    const chans = Object.keys(d.latest);
    const total = chans.find((c) => c === "total" || c === "main");
    return (total ? [total] : chans).map((c) => [d.id, c] as const);
  });
  const worker = async () => {
    for (let q = queue.shift(); q; q = queue.shift()) {
      const s = await get<Series>(
        `/api/v1/devices/${encodeURIComponent(q[0])}/series?${qs({ channel: q[1], from, max_points: 120 })}`,
      ).catch(() => null);
      if (!s) continue;
      // Raw or rolled up, each series counts once per minute: its mean over that minute.
      const own = new Map<number, [number, number]>();
      s.t.forEach((t, i) => {
        const m = Math.floor(t / 60_000) * 60;
        const [sum, n] = own.get(m) ?? [0, 0];
        own.set(m, [sum + s.avg[i], n + 1]);
      });
      for (const [m, [sum, n]] of own) minutes.set(m, (minutes.get(m) ?? 0) + sum / n);
    }
  };
  await Promise.all([worker(), worker(), worker(), worker()]);
  return [...minutes.entries()].sort((a, b) => a[0] - b[0]);
}

interface Rejected {
  ts: string;
  transport: string;
  actor: string;
  code: string;
  message: string;
}

async function loadRejected(el: HTMLElement): Promise<void> {
  const r = await get<{ rejected: Rejected[] }>("/api/v1/rejected-readings").catch(() => ({ rejected: [] as Rejected[] }));
  const list = r.rejected.slice(0, 20);
  clear(
    el,
    list.length === 0
      ? h("p", { class: "muted" }, "None since the server started.")
      : h(
          "table",
          {},
          h("thead", {}, h("tr", {}, h("th", {}, "When"), h("th", {}, "From"), h("th", {}, "Code"), h("th", {}, "Message"))),
          h("tbody", {}, list.map((e) => h("tr", {}, h("td", {}, ago(e.ts)), h("td", {}, `${e.actor} (${e.transport})`), h("td", {}, e.code), h("td", {}, e.message)))),
        ),
  );
}
