import { Device, Series, get, live, qs } from "../api";
import { align, lineChart, LineChart, width } from "../chart";
import { ago, clear, fmtNum, fmtTime, h } from "../dom";

const PRESETS: Record<string, number> = { "1h": 3600e3, "24h": 86400e3, "7d": 7 * 86400e3, "30d": 30 * 86400e3, "1y": 365 * 86400e3 };
const QUANTITY_ORDER = ["power", "voltage", "current", "power_factor", "energy", "frequency", "apparent_power", "reactive_power"];

export async function devicePage(app: HTMLElement, id: string, params: URLSearchParams): Promise<() => void> {
  const device = await get<Device>(`/api/v1/devices/${encodeURIComponent(id)}`);
  const latest: Record<string, Record<string, number | string>> = device.latest ?? {};
  const channels = () => Object.keys(latest).sort();
  let preset = PRESETS[params.get("range") ?? ""] ? params.get("range")! : "1h";
  let quantity = params.get("quantity") ?? "power";
  // The visible range; `follow` while it ends at "now" and slides with live readings.
  let to = Date.now();
  let from = to - PRESETS[preset];
  let follow = true;
  let chart: LineChart | null = null;
  let shown: string[] = [];
  let data: (number | null)[][] = [[]];
  let loadSeq = 0;

  const tier = h("span", { id: "tier", class: "badge" });
  const range = h("span", { id: "range", class: "muted" });
  const stats = h("div", { id: "stats" });
  const chartEl = h("div", { class: "chart", id: "device-chart" });
  const latestTable = h("table", { id: "latest" });
  const energyEl = h("div", { class: "chart", id: "energy-chart" });
  // One small chart per channel (phase or circuit), under the combined one.
  const phasesSection = h("section", { class: "card", id: "phases", hidden: true });
  const phaseGrid = h("div", { class: "phases" });
  let phaseCharts = new Map<string, { chart: LineChart; data: (number | null)[][] }>();
  let energyChart: LineChart | null = null;
  const quantityPicker = h("select", {
    id: "quantity",
    "aria-label": "Quantity",
    onchange: (e: Event) => {
      quantity = (e.target as HTMLSelectElement).value;
      void load();
    },
  });
  const presetButtons = Object.keys(PRESETS).map((p) =>
    h("button", { class: "preset", "data-preset": p, onclick: () => setPreset(p) }, p),
  );
  const status = h("span", { class: device.site ? "" : "muted" });
  clear(
    app,
    h("div", { class: "row" }, h("h1", {}, device.name || device.id), status),
    h(
      "p",
      { class: "muted" },
      `${device.id} · site ${device.site}${device.kind ? ` · ${device.kind}` : ""} · `,
      h("a", { href: `#/meter/${encodeURIComponent(device.id)}`, id: "meter-link" }, "meter view"),
    ),
    h(
      "section",
      { class: "card" },
      h(
        "div",
        { class: "row wrap" },
        h("div", { class: "presets" }, presetButtons),
        quantityPicker,
        h("button", { id: "pan-left", title: "Earlier", onclick: () => pan(-0.5) }, "←"),
        h("button", { id: "pan-right", title: "Later", onclick: () => pan(0.5) }, "→"),
        tier,
      ),
      range,
      chartEl,
      h("p", { class: "muted small" }, "Drag across the chart to zoom in; Shift + drag, or one finger, to pan; pinch to zoom."),
      stats,
    ),
    phasesSection,
    h("section", { class: "card" }, h("h2", {}, "Latest values"), h("div", { class: "table-wrap" }, latestTable)),
    h(
      "section",
      { class: "card" },
      h(
        "div",
        { class: "row" },
        h("h2", {}, "Energy"),
        h("span", { class: "spacer" }),
        ["hour", "day", "month"].map((i) => h("button", { class: "interval", "data-interval": i, onclick: () => void loadEnergy(i) }, `per ${i}`)),
      ),
      energyEl,
    ),
  );

  const renderLatest = () => {
    const qs_ = QUANTITY_ORDER.filter((q) => channels().some((c) => typeof latest[c][q] === "number"));
    const extra = Array.from(new Set(channels().flatMap((c) => Object.keys(latest[c])))).filter(
      (q) => q !== "ts" && !qs_.includes(q),
    );
    const cols = [...qs_, ...extra];
    clear(
      quantityPicker,
      (cols.length ? cols : ["power"]).map((q) => h("option", { value: q, selected: q === quantity }, q)),
    );
    clear(
      latestTable,
      h("thead", {}, h("tr", {}, h("th", {}, "Channel"), h("th", {}, "Time"), cols.map((q) => h("th", { class: "num" }, q)))),
      h(
        "tbody",
        {},
        channels().length === 0
          ? h("tr", {}, h("td", { colspan: cols.length + 2, class: "muted" }, "No readings yet"))
          : channels().map((c) =>
              h(
                "tr",
                { "data-channel": c },
                h("td", {}, c),
                h("td", {}, fmtTime(latest[c].ts as string)),
                cols.map((q) => h("td", { class: "num", "data-quantity": q }, fmtNum(latest[c][q] as number, 2))),
              ),
            ),
      ),
    );
    const lastSeen = channels()
      .map((c) => Date.parse(latest[c].ts as string))
      .filter(Number.isFinite)
      .sort()
      .pop();
    status.textContent = lastSeen ? `last reading ${ago(lastSeen)}` : "no readings yet";
  };

  const setPreset = (p: string) => {
    preset = p;
    to = Date.now();
    from = to - PRESETS[p];
    follow = true;
    void load();
  };
  const pan = (fraction: number) => {
    const span = to - from;
    to = Math.min(Date.now(), to + span * fraction);
    from = to - span;
    follow = to >= Date.now() - 1000;
    void load();
  };

  const draw = (labels: string[], unit: string) => {
    if (chart && labels.join() === shown.join()) {
      chart.plot.setData(data as never);
    } else {
      chart?.destroy();
      shown = labels;
      chart = lineChart(chartEl, labels, data as never, {
        unit,
        onRange: (min, max) => {
          // Panning past "now" stops there, keeping the span.
          const span = Math.max(1000, Math.round(max - min));
          to = Math.min(Math.round(max), Date.now());
          from = to - span;
          follow = to >= Date.now() - 1000;
          void load();
        },
      });
    }
    chart.plot.setScale("x", { min: from / 1000, max: to / 1000 });
    chartEl.dataset.points = String(data[0].length);
  };

  async function load(): Promise<void> {
    const seq = ++loadSeq;
    for (const b of presetButtons) b.classList.toggle("active", follow && b.dataset.preset === preset);
    const maxPoints = Math.max(100, Math.min(width(chartEl), 2000));
    const chans = channels().length ? channels() : [undefined];
    const results = await Promise.all(
      chans.map((c) =>
        get<Series>(
          `/api/v1/devices/${encodeURIComponent(id)}/series?${qs({ quantity, channel: c, from, to, max_points: maxPoints })}`,
        ),
      ),
    );
    if (seq !== loadSeq) return;
    const series = results.map((r) => ({ t: r.t, v: r.avg }));
    const labels = results.map((r, i) => r.channel ?? chans[i] ?? "value");
    // Phases add up to the device total; other quantities (voltage) do not.
    const additive = ["power", "apparent_power", "reactive_power", "current"].includes(quantity) && quantity !== "current";
    let aligned = align(series) as (number | null)[][];
    if (additive && series.length > 1) {
      const total = aligned[0].map((_, i) => {
        const vs = aligned.slice(1).map((col) => col[i]);
        return vs.every((v) => v !== null) ? vs.reduce((a, v) => a! + v!, 0) : null;
      });
      aligned = [...aligned, total];
      labels.push("total");
    }
    data = aligned;
    renderPhases(
      results.map((r, i) => ({ label: labels[i], t: r.t, v: r.avg })),
      results[0]?.unit ?? "",
    );
    tier.textContent = `tier: ${results[0]?.tier ?? "raw"}`;
    tier.dataset.tier = results[0]?.tier ?? "raw";
    range.textContent = `${fmtTime(from)} – ${fmtTime(to)}`;
    draw(labels, results[0]?.unit ?? "");
    void loadStats();
  }

  function renderPhases(series: { label: string; t: number[]; v: number[] }[], unit: string): void {
    for (const p of phaseCharts.values()) p.chart.destroy();
    phaseCharts = new Map();
    phasesSection.hidden = series.length < 2;
    if (series.length < 2) return;
    clear(phasesSection, h("h2", {}, `${quantity} per channel`), phaseGrid);
    clear(phaseGrid);
    for (const s of series) {
      const el = h("div", { class: "chart small-chart", "data-channel": s.label });
      phaseGrid.append(h("div", {}, h("div", { class: "muted small" }, s.label), el));
      const d: (number | null)[][] = [s.t.map((t) => t / 1000), s.v];
      const chart = lineChart(el, [s.label], d as never, { unit, height: 160 });
      chart.plot.setScale("x", { min: from / 1000, max: to / 1000 });
      phaseCharts.set(s.label, { chart, data: d });
    }
  }

  /** avg/min/max over the visible range: power, voltage and current (and the charted
   *  quantity, if another) for every channel. */
  async function loadStats(): Promise<void> {
    const s = await get<{ channels: Record<string, Record<string, { avg: number; min: number; max: number }>> }>(
      `/api/v1/devices/${encodeURIComponent(id)}/stats?${qs({ from, to })}`,
    );
    const shownQuantities = Array.from(new Set(["power", "voltage", "current", quantity]));
    const rows = Object.entries(s.channels).flatMap(([c, v]) =>
      shownQuantities
        .filter((q) => v[q])
        .map((q) =>
          h(
            "tr",
            { "data-channel": c, "data-quantity": q },
            h("td", {}, c),
            h("td", {}, q),
            h("td", { class: "num" }, fmtNum(v[q].avg, 1)),
            h("td", { class: "num" }, fmtNum(v[q].min, 1)),
            h("td", { class: "num" }, fmtNum(v[q].max, 1)),
          ),
        ),
    );
    clear(
      stats,
      rows.length === 0
        ? h("p", { class: "muted" }, "No readings in this range.")
        : h(
            "div",
            { class: "table-wrap" },
            h(
              "table",
              {},
              h("thead", {}, h("tr", {}, ["Channel", "Quantity"].map((t) => h("th", {}, t)), ["avg", "min", "max"].map((t) => h("th", { class: "num" }, t)))),
              h("tbody", {}, rows),
            ),
          ),
    );
  }

  async function loadEnergy(interval: string): Promise<void> {
    const span = interval === "hour" ? 48 * 3600e3 : interval === "day" ? 31 * 86400e3 : 366 * 86400e3;
    const now = Date.now();
    const e = await get<{ buckets: { t: number; import_kwh: number }[] }>(
      `/api/v1/devices/${encodeURIComponent(id)}/energy?${qs({ interval, from: now - span, to: now })}`,
    );
    energyChart?.destroy();
    energyChart = lineChart(energyEl, ["kWh"], [e.buckets.map((b) => b.t / 1000), e.buckets.map((b) => b.import_kwh)], {
      unit: "kWh",
      bars: true,
    });
    document.querySelectorAll<HTMLButtonElement>("button.interval").forEach((b) => b.classList.toggle("active", b.dataset.interval === interval));
  }

  renderLatest();
  await load();
  void loadEnergy("day");

  // Live: each reading updates the table at once and, while the chart follows "now" at the
  // raw tier, is appended to it; coarser tiers refetch at most every 10 s.
  let lastRefetch = Date.now();
  const close = live(
    `device=${encodeURIComponent(id)}`,
    (readings) => {
      let newChannel = false;
      let appended = false;
      let refetch = false;
      let lastValue: number | null = null;
      const cols = data.map((c) => [...c]);
      const phaseAdds = new Map<string, [number, number][]>();
      for (const r of readings) {
        newChannel ||= !(r.channel in latest);
        latest[r.channel] = { ...(latest[r.channel] ?? {}), ...r.values, ts: new Date(r.ts).toISOString() };
        if (!follow || newChannel) continue;
        const col = shown.indexOf(r.channel) + 1;
        const v = r.values[quantity];
        const lastT = cols[0].length ? (cols[0][cols[0].length - 1] as number) : -Infinity;
        // A late reading (older than the chart's end) is drawn by the next refetch, not
        // appended out of order.
        if (tier.dataset.tier === "raw" && col > 0 && typeof v === "number" && r.ts / 1000 > lastT) {
          cols.forEach((c, i) => c.push(i === 0 ? r.ts / 1000 : i === col ? v : null));
          phaseAdds.set(r.channel, [...(phaseAdds.get(r.channel) ?? []), [r.ts / 1000, v]]);
          to = Math.max(to, Date.now(), r.ts + 1);
          lastValue = v;
          appended = true;
        } else {
          refetch = true;
        }
      }
      renderLatest();
      if (newChannel) {
        void load();
        return;
      }
      if (appended) {
        data = cols;
        from = to - PRESETS[preset];
        draw(shown, "");
        chartEl.dataset.lastValue = String(lastValue);
        for (const [channel, adds] of phaseAdds) {
          const phase = phaseCharts.get(channel);
          if (!phase) continue;
          phase.data = [[...phase.data[0], ...adds.map(([t]) => t)], [...phase.data[1], ...adds.map(([, v]) => v)]];
          phase.chart.plot.setData(phase.data as never, false);
          phase.chart.plot.setScale("x", { min: from / 1000, max: to / 1000 });
          phase.chart.plot.root.parentElement!.dataset.lastValue = String(adds[adds.length - 1][1]);
        }
      } else if (refetch && Date.now() - lastRefetch > 10_000) {
        // Coarser tiers refetch at most every 10 s.
        lastRefetch = Date.now();
        to = Date.now();
        from = to - PRESETS[preset];
        void load();
      }
    },
    () => void load(),
  );
  return () => {
    close();
    chart?.destroy();
    energyChart?.destroy();
    for (const p of phaseCharts.values()) p.chart.destroy();
  };
}
