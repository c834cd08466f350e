import { DeviceNow, Site, SiteSummary, get, isAdmin, livePower, qs } from "../api";
import { lineChart, LineChart } from "../chart";
import { ago, clear, fmtNum, fmtPower, h } from "../dom";

const WINDOW_MS = 3600_000;
/** Devices listed by power; the server adds up all of them. */
const RANKED = 50;
/** Every online device's power comes with the summary, so live updates replace entries of a
 *  complete list; the server caps this. */
const ALL_ONLINE = 10_000;
/** Energy, offline devices and the rejected list are fetched again this often. */
const REFRESH_MS = 60_000;

export async function overviewPage(app: HTMLElement, params: URLSearchParams): Promise<() => void> {
  const sites = await get<Site[]>("/api/v1/sites");
  if (sites.length === 0) {
    clear(app, h("h1", {}, "Overview"), h("p", {}, "No site yet."));
    return () => undefined;
  }
  const site = sites.find((s) => s.id === params.get("site")) ?? sites[0];
  const summaryUrl = `/api/v1/sites/${encodeURIComponent(site.id)}/summary?${qs({ top: ALL_ONLINE })}`;
  let summary = await get<SiteSummary>(summaryUrl);
  // A customer with one meter gets the meter view rather than a site of one.
  if (!isAdmin() && sites.length === 1 && summary.devices === 1) {
    const only = summary.top[0] ?? summary.offline[0];
    if (only) {
      location.replace(`#/meter/${encodeURIComponent(only.id)}`);
      return () => undefined;
    }
  }

  // Online devices by id, with their power now; offline ones apart.
  let online = new Map<string, DeviceNow>();
  let offline = new Map<string, DeviceNow>();
  const adopt = (s: SiteSummary) => {
    summary = s;
    online = new Map(s.top.map((d) => [d.id, d]));
    offline = new Map(s.offline.map((d) => [d.id, d]));
  };
  adopt(summary);

  const picker = h(
    "select",
    { id: "site", "aria-label": "Site", onchange: (e: Event) => (location.hash = `#/?site=${encodeURIComponent((e.target as HTMLSelectElement).value)}`) },
    sites.map((s) => h("option", { value: s.id, selected: s.id === site.id }, s.name)),
  );
  const total = h("div", { class: "big", id: "total-power" });
  const energyToday = h("div", { class: "big", id: "energy-today" });
  const energyMonth = h("div", { class: "big", id: "energy-month" });
  const onlineText = h("div", { class: "muted" });
  const deviceCount = h("div", { class: "big", id: "device-count" });
  const chartEl = h("div", { class: "chart", id: "overview-chart" });
  const ranked = h("tbody");
  let rankBy: "power" | "energy" = params.get("rank") === "energy" ? "energy" : "power";
  const rankPicker = h(
    "select",
    {
      id: "rank-by",
      "aria-label": "Rank devices by",
      onchange: (e: Event) => {
        rankBy = (e.target as HTMLSelectElement).value as "power" | "energy";
        render();
      },
    },
    h("option", { value: "power", selected: rankBy === "power" }, "by power now"),
    h("option", { value: "energy", selected: rankBy === "energy" }, "by energy today"),
  );
  const rankedValue = h("th", { class: "num" });
  const offlineList = h("ul", { id: "offline" });
  const rejected = h("div", { id: "rejected", class: "table-wrap" }, h("p", { class: "muted" }, "…"));
  clear(
    app,
    h("div", { class: "row" }, h("h1", {}, "Overview"), sites.length > 1 ? picker : h("span", { class: "muted" }, site.name)),
    h(
      "section",
      { class: "cards" },
      h("div", { class: "card" }, h("div", { class: "muted" }, "Power now"), total, onlineText),
      h("div", { class: "card" }, h("div", { class: "muted" }, "Energy today"), energyToday),
      h("div", { class: "card" }, h("div", { class: "muted" }, "Energy this month"), energyMonth),
      h("div", { class: "card" }, h("div", { class: "muted" }, "Devices"), deviceCount),
    ),
    h("section", { class: "card" }, h("h2", {}, "Last hour"), chartEl),
    h(
      "section",
      { class: "card" },
      h("div", { class: "row" }, h("h2", {}, "Devices"), rankPicker),
      h(
        "div",
        { class: "table-wrap" },
        h("table", { id: "ranked" }, h("thead", {}, h("tr", {}, h("th", {}, "Device"), rankedValue, h("th", {}, "Last seen"))), ranked),
      ),
    ),
    h("section", { class: "card" }, h("h2", {}, "Offline"), offlineList),
    isAdmin() ? h("section", { class: "card" }, h("h2", {}, "Recently rejected readings"), rejected) : null,
  );
  if (isAdmin()) void loadRejected(rejected);

  const sum = () => {
    let w = 0;
    for (const d of online.values()) w += d.power_w ?? 0;
    return w;
  };
  const link = (d: DeviceNow) => h("a", { href: `#/device/${encodeURIComponent(d.id)}` }, d.name || d.id);
  const render = () => {
    total.textContent = fmtPower(sum());
    onlineText.textContent = `${online.size} of ${summary.devices} online`;
    deviceCount.textContent = String(summary.devices);
    energyToday.textContent = `${fmtNum(summary.energy_today_kwh, 2)} kWh`;
    energyMonth.textContent = `${fmtNum(summary.energy_month_kwh, 1)} kWh`;
    // By power: the online devices. By energy: every device, since one that went offline at
    // noon still used what it used this morning.
    const byEnergy = rankBy === "energy";
    rankedValue.textContent = byEnergy ? "Today" : "Power";
    const candidates = byEnergy ? [...online.values(), ...offline.values()] : [...online.values()];
    const key = (d: DeviceNow) => (byEnergy ? d.energy_today_kwh : (d.power_w ?? -Infinity));
    const sorted = candidates.sort((a, b) => key(b) - key(a));
    clear(
      ranked,
      sorted.length === 0
        ? h("tr", {}, h("td", { colspan: 3, class: "muted" }, byEnergy ? "No device" : "No device online"))
        : sorted.slice(0, RANKED).map((d) =>
            h(
              "tr",
              { "data-device": d.id },
              h("td", {}, link(d)),
              h("td", { class: "num" }, byEnergy ? `${fmtNum(d.energy_today_kwh, 2)} kWh` : fmtPower(d.power_w)),
              h("td", {}, ago(d.last_seen)),
            ),
          ),
    );
    const off = [...offline.values()];
    const more = summary.offline_count - summary.offline.length;
    clear(
      offlineList,
      off.length === 0
        ? h("li", { class: "muted" }, "None")
        : [
            ...off.map((d) => h("li", { "data-device": d.id }, link(d), ` — last seen ${ago(d.last_seen)}`)),
            more > 0 ? h("li", { class: "muted" }, `and ${more} more`) : null,
          ],
    );
  };
  render();

  // The chart: the server's per-minute history, then the live total once a second.
  const times: number[] = summary.history.t.map((t) => t / 1000);
  const values: number[] = [...summary.history.power_w];
  // Zooming or panning holds the chart still on that range (the data is all here) until
  // "Follow live" lets it slide with the clock again.
  let held: [number, number] | null = null;
  const followButton = h("button", { id: "follow-live", hidden: true, onclick: () => ((held = null), (followButton.hidden = true), redraw()) }, "Follow live");
  chartEl.before(h("div", { class: "row" }, followButton));
  let chart: LineChart | null = lineChart(chartEl, ["Total"], [[], []], {
    unit: "W",
    onRange: (min, max) => {
      held = [min / 1000, max / 1000];
      followButton.hidden = false;
      redraw();
    },
  });
  const redraw = () => {
    const now = Date.now();
    while (times.length && times[0] < (now - WINDOW_MS) / 1000) {
      times.shift();
      values.shift();
    }
    chart?.plot.setData([times, values], false);
    const [min, max] = held ?? [(now - WINDOW_MS) / 1000, now / 1000];
    chart?.plot.setScale("x", { min, max });
  };
  redraw();
  let dirty = false;
  const tick = setInterval(() => {
    times.push(Date.now() / 1000);
    values.push(sum());
    redraw();
    if (dirty) {
      render();
      dirty = false;
    }
  }, 1000);
  const refresh = setInterval(() => {
    void get<SiteSummary>(summaryUrl)
      .then((s) => {
        adopt(s);
        render();
      })
      .catch(() => undefined);
    if (isAdmin()) void loadRejected(rejected);
  }, REFRESH_MS);
  const close = livePower(site.id, (rows) => {
    for (const r of rows) {
      const known = online.get(r.device) ?? offline.get(r.device);
      offline.delete(r.device);
      online.set(r.device, {
        id: r.device,
        name: known?.name ?? r.device,
        power_w: r.power_w,
        last_seen: r.ts === null ? (known?.last_seen ?? null) : new Date(r.ts).toISOString(),
        online: true,
        energy_today_kwh: known?.energy_today_kwh ?? 0,
      });
    }
    dirty = true;
  });
  return () => {
    close();
    clearInterval(tick);
    clearInterval(refresh);
    chart?.destroy();
    chart = null;
  };
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
