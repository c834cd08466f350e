import { Device, get, powerNow, qs } from "../api";
import { ago, clear, fmtPower, h } from "../dom";

const PERIODS: Record<string, number> = { "1h": 3600e3, "24h": 86400e3, "7d": 7 * 86400e3, "30d": 30 * 86400e3 };

interface Row {
  d: Device;
  avg: number | null;
  min: number | null;
  max: number | null;
}

type Key = "name" | "site" | "status" | "last_seen" | "power" | "avg" | "min" | "max";

export async function devicesPage(app: HTMLElement, params: URLSearchParams): Promise<() => void> {
  const period = PERIODS[params.get("period") ?? ""] ? params.get("period")! : "24h";
  let sortKey = (params.get("sort") as Key) ?? "name";
  let desc = params.get("desc") === "1";
  const devices = await get<Device[]>("/api/v1/devices");
  const rows: Row[] = devices.map((d) => ({ d, avg: null, min: null, max: null }));
  const to = Date.now();
  const from = to - PERIODS[period];
  let alive = true;

  const value = (r: Row, k: Key): string | number | null => {
    switch (k) {
      case "name":
        return (r.d.name || r.d.id).toLowerCase();
      case "site":
        return r.d.site;
      case "status":
        return r.d.availability?.online ? 1 : 0;
      case "last_seen":
        return r.d.last_seen ? Date.parse(r.d.last_seen) : null;
      case "power":
        return powerNow(r.d);
      default:
        return r[k];
    }
  };
  const body = h("tbody");
  const headers: [Key, string, boolean][] = [
    ["name", "Device", false],
    ["site", "Site", false],
    ["status", "Status", false],
    ["last_seen", "Last seen", false],
    ["power", "Power now", true],
    ["avg", `Avg ${period}`, true],
    ["min", `Min ${period}`, true],
    ["max", `Max ${period}`, true],
  ];
  const head = h("tr");
  const render = () => {
    clear(
      head,
      headers.map(([k, label, num]) =>
        h(
          "th",
          { class: num ? "num sortable" : "sortable", "data-key": k, "aria-sort": k === sortKey ? (desc ? "descending" : "ascending") : null },
          h("button", { class: "link", onclick: () => sortBy(k) }, label, k === sortKey ? (desc ? " ▼" : " ▲") : ""),
        ),
      ),
    );
    const sorted = [...rows].sort((a, b) => {
      const va = value(a, sortKey);
      const vb = value(b, sortKey);
      // Missing values go last whatever the direction.
      if (va === null) return vb === null ? 0 : 1;
      if (vb === null) return -1;
      const c = va < vb ? -1 : va > vb ? 1 : 0;
      return desc ? -c : c;
    });
    clear(
      body,
      sorted.map((r) =>
        h(
          "tr",
          { "data-device": r.d.id },
          h("td", {}, h("a", { href: `#/device/${encodeURIComponent(r.d.id)}` }, r.d.name || r.d.id)),
          h("td", {}, r.d.site),
          h("td", {}, h("span", { class: r.d.availability?.online ? "ok" : "bad" }, r.d.availability?.online ? "online" : "offline")),
          h("td", {}, ago(r.d.last_seen)),
          h("td", { class: "num" }, fmtPower(powerNow(r.d))),
          h("td", { class: "num" }, fmtPower(r.avg)),
          h("td", { class: "num" }, fmtPower(r.min)),
          h("td", { class: "num" }, fmtPower(r.max)),
        ),
      ),
    );
  };
  const sortBy = (k: Key) => {
    desc = k === sortKey ? !desc : false;
    sortKey = k;
    render();
  };
  const periodPicker = h(
    "select",
    {
      id: "period",
      "aria-label": "Period",
      onchange: (e: Event) => (location.hash = `#/devices?period=${(e.target as HTMLSelectElement).value}`),
    },
    Object.keys(PERIODS).map((p) => h("option", { value: p, selected: p === period }, p)),
  );
  const csv = h(
    "a",
    {
      id: "export",
      class: "button",
      href: `/api/v1/export?${qs({ format: "csv", from: new Date(from).toISOString(), to: new Date(to).toISOString() })}`,
      download: "wattline-export.csv",
    },
    "Export CSV",
  );
  clear(
    app,
    h("div", { class: "row" }, h("h1", {}, "Devices"), h("span", { class: "spacer" }), periodPicker, csv),
    h("div", { class: "table-wrap" }, h("table", { id: "devices" }, h("thead", {}, head), body)),
  );
  render();

  // Statistics per device, a few at a time so a large installation does not flood the server.
  const queue = [...rows];
  const worker = async () => {
    for (let r = queue.shift(); r && alive; r = queue.shift()) {
      try {
        const s = await get<{ channels: Record<string, { power?: { avg: number; min: number; max: number } }> }>(
          `/api/v1/devices/${encodeURIComponent(r.d.id)}/stats?${qs({ from, to })}`,
        );
        const p = Object.values(s.channels)
          .map((c) => c.power)
          .filter((p): p is { avg: number; min: number; max: number } => !!p);
        if (p.length) {
          // Channels add up (phases): sum their averages; extremes summed are an upper bound.
          r.avg = p.reduce((a, c) => a + c.avg, 0);
          r.min = p.reduce((a, c) => a + c.min, 0);
          r.max = p.reduce((a, c) => a + c.max, 0);
        }
      } catch {
        // A device deleted meanwhile keeps its dashes.
      }
    }
  };
  void Promise.all([worker(), worker(), worker(), worker()]).then(() => alive && render());
  return () => {
    alive = false;
  };
}
