// uPlot wrappers: a time chart with one line per series, resized with its container.

import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";

const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2"];

export interface LineChart {
  plot: uPlot;
  destroy(): void;
}

export function width(el: HTMLElement): number {
  return Math.max(280, Math.floor(el.clientWidth || 600));
}

export function lineChart(
  el: HTMLElement,
  labels: string[],
  data: uPlot.AlignedData,
  opts: { unit?: string; onZoom?: (min: number, max: number) => void; bars?: boolean } = {},
): LineChart {
  const series: uPlot.Series[] = [
    {},
    ...labels.map((label, i) => ({
      label,
      stroke: COLORS[i % COLORS.length],
      fill: opts.bars ? COLORS[i % COLORS.length] + "99" : undefined,
      width: opts.bars ? 0 : 1.5,
      spanGaps: true,
      paths: opts.bars ? uPlot.paths.bars!({ size: [0.8, 40] }) : undefined,
      points: { show: false },
      value: (_u: uPlot, v: number | null) => (v === null ? "–" : `${v.toFixed(1)} ${opts.unit ?? ""}`),
    })),
  ];
  const plot = new uPlot(
    {
      width: width(el),
      height: el.clientWidth < 500 ? 200 : 280,
      series,
      scales: { x: { time: true } },
      axes: [{}, { size: 60, values: (_u, vals) => vals.map((v) => (v === null ? "" : compact(v))) }],
      cursor: { drag: { x: !!opts.onZoom, y: false } },
      legend: { live: true },
      hooks: opts.onZoom
        ? {
            setSelect: [
              (u) => {
                if (u.select.width < 5) return;
                const min = u.posToVal(u.select.left, "x");
                const max = u.posToVal(u.select.left + u.select.width, "x");
                u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
                opts.onZoom!(min * 1000, max * 1000);
              },
            ],
          }
        : {},
    },
    data,
    el,
  );
  const ro = new ResizeObserver(() => plot.setSize({ width: width(el), height: plot.height }));
  ro.observe(el);
  return {
    plot,
    destroy() {
      ro.disconnect();
      plot.destroy();
    },
  };
}

function compact(v: number): string {
  const a = Math.abs(v);
  if (a >= 1e6) return `${+(v / 1e6).toFixed(1)}M`;
  if (a >= 1e3) return `${+(v / 1e3).toFixed(1)}k`;
  return `${+v.toFixed(1)}`;
}

/** Several (t, v) series on one time axis: the union of their times, gaps as null. */
export function align(series: { t: number[]; v: number[] }[]): uPlot.AlignedData {
  const times = Array.from(new Set(series.flatMap((s) => s.t))).sort((a, b) => a - b);
  const index = new Map(times.map((t, i) => [t, i]));
  const cols = series.map((s) => {
    const col: (number | null)[] = new Array(times.length).fill(null);
    s.t.forEach((t, i) => (col[index.get(t)!] = s.v[i]));
    return col;
  });
  return [times.map((t) => t / 1000), ...cols] as uPlot.AlignedData;
}
