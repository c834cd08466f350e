// The meter view: what a customer who logs in to see one meter wants — its power now, what
// it used today and this month, its history, and its consumption adding up over a period.

import { Device, Series, get, live, qs } from "../api";
import { align, lineChart, LineChart, width } from "../chart";
import { clear, fmtNum, fmtPower, fmtTime, h } from "../dom";

interface Period {
  ms: number;
  interval: "hour" | "day" | "month";
}
const PERIODS: Record<string, Period> = {
  "24h": { ms: 86400e3, interval: "hour" },
  "7d": { ms: 7 * 86400e3, interval: "day" },
  "30d": { ms: 30 * 86400e3, interval: "day" },
  "1y": { ms: 365 * 86400e3, interval: "month" },
};

interface Energy {
  timezone: string;
  buckets: { t: number; start: string; import_kwh: number }[];
}

/** The channels that measure the whole meter: `total`/`main` beside phases, else all. */
function wholeChannels(channels: string[]): string[] {
  if (channels.length > 1) {
    const total = channels.find((c) => c === "total" || c === "main");
    if (total) return [total];
  }
  return channels;
}

export async function meterPage(app: HTMLElement, id: string, params: URLSearchParams): Promise<() => void> {
  const device = await get<Device>(`/api/v1/devices/${encodeURIComponent(id)}`);
  const power = new Map<string, number>();
  for (const [c, v] of Object.entries(device.latest ?? {})) if (typeof v.power === "number") power.set(c, v.power);
  const counted = () => wholeChannels([...power.keys()].sort());
  const powerNow = () => (power.size === 0 ? null : counted().reduce((a, c) => a + (power.get(c) ?? 0), 0));
  let period = PERIODS[params.get("period") ?? ""] ? params.get("period")! : "30d";
  let powerChart: LineChart | null = null;
  let barsChart: LineChart | null = null;
  let cumulativeChart: LineChart | null = null;
  let seq = 0;

  const powerEl = h("div", { class: "big", id: "meter-power" });
  const todayEl = h("div", { class: "big", id: "meter-today" }, "…");
  const monthEl = h("div", { class: "big", id: "meter-month" }, "…");
  const periodEl = h("div", { class: "big", id: "meter-period" }, "…");
  const periodLabel = h("div", { class: "muted" });
  const lastEl = h("div", { class: "muted", id: "meter-last" });
  const historyEl = h("div", { class: "chart", id: "meter-chart" });
  const barsEl = h("div", { class: "chart", id: "meter-bars" });
  const cumulativeEl = h("div", { class: "chart", id: "cumulative-chart" });
  const barsTitle = h("h2", { id: "bars-title" }, "Consumption");
  const buttons = Object.keys(PERIODS).map((p) =>
    h("button", { class: "preset", "data-period": p, onclick: () => void show(p) }, p),
  );
  clear(
    app,
    h("div", { class: "row" }, h("h1", {}, device.name || device.id), h("span", { class: "muted" }, "meter")),
    h(
      "section",
      { class: "cards" },
      h("div", { class: "card" }, h("div", { class: "muted" }, "Using now"), powerEl, lastEl),
      h("div", { class: "card" }, h("div", { class: "muted" }, "Today"), todayEl),
      h("div", { class: "card" }, h("div", { class: "muted" }, "This month"), monthEl),
      h("div", { class: "card" }, periodLabel, periodEl),
    ),
    h("section", { class: "card" }, h("div", { class: "row wrap" }, h("div", { class: "presets" }, buttons)), h("h2", {}, "Power"), historyEl, h("p", { class: "muted small" }, "Drag or pinch the chart to zoom; Shift + drag or one finger to pan.")),
    h("section", { class: "card" }, barsTitle, barsEl),
    h("section", { class: "card" }, h("h2", {}, "Cumulative consumption"), cumulativeEl),
    h("p", { class: "muted small" }, h("a", { href: `#/device/${encodeURIComponent(id)}` }, "All details of this meter")),
  );

  const renderNow = () => {
    powerEl.textContent = fmtPower(powerNow());
    const last = Object.values(device.latest ?? {})
      .map((v) => Date.parse(String(v.ts)))
      .filter(Number.isFinite)
      .sort()
      .pop();
    lastEl.textContent = last ? `as of ${fmtTime(last)}` : "no reading yet";
  };
  renderNow();

  /** kWh today and this month in the meter's zone, from its daily buckets. */
  const loadTotals = async () => {
    const e = await get<Energy>(`/api/v1/devices/${encodeURIComponent(id)}/energy?${qs({ interval: "day", from: Date.now() - 32 * 86400e3 })}`);
    // Bucket starts are local ("2026-11-22T00:00:00+01:00[…]"): compare local dates.
    const date = new Intl.DateTimeFormat("en-CA", { timeZone: e.timezone }).format(new Date());
    let today = 0;
    let month = 0;
    for (const b of e.buckets) {
      if (b.start.startsWith(date.slice(0, 7))) month += b.import_kwh;
      if (b.start.startsWith(date)) today += b.import_kwh;
    }
    todayEl.textContent = `${fmtNum(today, 2)} kWh`;
    monthEl.textContent = `${fmtNum(month, 1)} kWh`;
  };

  /** The meter's power over [from, to] at the tier that fits the chart: its counted channels
   *  added up where all of them have a value. Zooming or panning the chart comes back here. */
  async function loadPower(from: number, to: number, mine: number): Promise<void> {
    const channels = counted().length ? counted() : [undefined];
    const maxPoints = Math.max(100, Math.min(width(historyEl), 2000));
    const series = await Promise.all(
      channels.map((c) =>
        get<Series>(`/api/v1/devices/${encodeURIComponent(id)}/series?${qs({ channel: c, from, to, max_points: maxPoints })}`),
      ),
    );
    if (mine !== seq) return;
    const aligned = align(series.map((s) => ({ t: s.t, v: s.avg }))) as (number | null)[][];
    const sum = aligned[0].map((_, i) => {
      const vs = aligned.slice(1).map((col) => col[i]);
      return vs.every((v) => v !== null) ? vs.reduce((a, v) => a! + v!, 0) : null;
    });
    powerChart?.destroy();
    powerChart = lineChart(historyEl, ["Power"], [aligned[0], sum] as never, {
      unit: "W",
      onRange: (min, max) => {
        const end = Math.min(Math.round(max), Date.now());
        void loadPower(end - Math.max(1000, Math.round(max - min)), end, ++seq);
      },
    });
    powerChart.plot.setScale("x", { min: from / 1000, max: to / 1000 });
    historyEl.dataset.tier = series[0]?.tier ?? "raw";
  }

  async function show(p: string): Promise<void> {
    period = p;
    const mine = ++seq;
    const { ms, interval } = PERIODS[p];
    for (const b of buttons) b.classList.toggle("active", b.dataset.period === p);
    const to = Date.now();
    const from = to - ms;
    const [, energy] = await Promise.all([
      loadPower(from, to, mine),
      get<Energy>(`/api/v1/devices/${encodeURIComponent(id)}/energy?${qs({ interval, from, to })}`),
    ]);
    if (mine !== seq) return;
    const t = energy.buckets.map((b) => b.t / 1000);
    const kwh = energy.buckets.map((b) => b.import_kwh);
    // The running total at the end of each bucket: from zero at the first bucket's start to
    // the period's total now.
    let running = 0;
    const cumulative = [0, ...kwh.map((v) => (running += v))];
    const ends = t.length ? [t[0], ...t.slice(1), Math.min(Date.now(), to) / 1000] : [];
    barsChart?.destroy();
    barsChart = lineChart(barsEl, [`kWh per ${interval}`], [t, kwh], { unit: "kWh", bars: true });
    cumulativeChart?.destroy();
    cumulativeChart = lineChart(cumulativeEl, ["kWh"], [ends, t.length ? cumulative : []], { unit: "kWh" });
    barsTitle.textContent = `Consumption per ${interval}`;
    periodLabel.textContent = `Last ${p}`;
    periodEl.textContent = `${fmtNum(running, 2)} kWh`;
    cumulativeEl.dataset.total = running.toFixed(3);
  }

  await Promise.all([show(period), loadTotals()]);
  const totals = setInterval(() => void loadTotals().catch(() => undefined), 60_000);
  const close = live(`device=${encodeURIComponent(id)}`, (readings) => {
    for (const r of readings) {
      if (typeof r.values.power === "number") power.set(r.channel, r.values.power);
      device.latest = { ...(device.latest ?? {}), [r.channel]: { ...(device.latest?.[r.channel] ?? {}), ...r.values, ts: new Date(r.ts).toISOString() } };
    }
    renderNow();
  });
  return () => {
    close();
    clearInterval(totals);
    powerChart?.destroy();
    barsChart?.destroy();
    cumulativeChart?.destroy();
  };
}
