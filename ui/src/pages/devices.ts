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

  // Every device's figures for the period, added up on the server in one request.
  void get<{ devices: { device: string; power: { avg: number; min: number; max: number } | null }[] }>(
    `/api/v1/device-stats?${qs({ from, to })}`,
  )
    .then((stats) => {
      const byId = new Map(rows.map((r) => [r.d.id, r]));
      for (const s of stats.devices) {
        const r = byId.get(s.device);
        if (r && s.power) Object.assign(r, s.power);
      }
      if (alive) render();
    })
    .catch(() => undefined);
  return () => {
    alive = false;
  };
}
