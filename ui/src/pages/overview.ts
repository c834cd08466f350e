import { Device, Site, get, live, powerNow } from "../api";
import { lineChart, LineChart } from "../chart";
import { ago, clear, fmtPower, h } from "../dom";

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
  const online = h("div", { class: "muted" });
  const chartEl = h("div", { class: "chart", id: "overview-chart" });
  const ranked = h("tbody");
  const offline = h("ul", { id: "offline" });
  clear(
    app,
    h("div", { class: "row" }, h("h1", {}, "Overview"), sites.length > 1 ? picker : h("span", { class: "muted" }, site.name)),
    h(
      "section",
      { class: "cards" },
      h("div", { class: "card" }, h("div", { class: "muted" }, "Power now"), total, online),
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
  );

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
  let dirty = true;
  const tick = setInterval(() => {
    const now = Date.now();
    times.push(now / 1000);
    values.push(sum());
    while (times.length && times[0] < (now - WINDOW_MS) / 1000) {
      times.shift();
      values.shift();
    }
    chart?.plot.setData([times, values]);
    if (dirty) {
      render();
      dirty = false;
    }
  }, 1000);
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
