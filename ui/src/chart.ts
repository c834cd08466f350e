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
  opts: {
    unit?: string;
    /** Called with the new visible range (ms) when the user zooms or pans. */
    onRange?: (min: number, max: number) => void;
    bars?: boolean;
    /** Pixels; by default 280, or 200 on narrow screens. */
    height?: number;
  } = {},
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
      height: opts.height ?? (el.clientWidth < 500 ? 200 : 280),
      series,
      scales: { x: { time: true } },
      axes: [{}, { size: 60, values: (_u, vals) => vals.map((v) => (v === null ? "" : compact(v))) }],
      cursor: { drag: { x: !!opts.onRange, y: false } },
      legend: { live: true },
      hooks: opts.onRange
        ? {
            setSelect: [
              (u) => {
                if (u.select.width < 5) return;
                const min = u.posToVal(u.select.left, "x");
                const max = u.posToVal(u.select.left + u.select.width, "x");
                u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
                opts.onRange!(min * 1000, max * 1000);
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
  const unbind = opts.onRange ? gestures(plot, opts.onRange) : () => undefined;
  return {
    plot,
    destroy() {
      unbind();
      ro.disconnect();
      plot.destroy();
    },
  };
}

/**
 * Panning and pinching: Shift + drag with a mouse, one finger across the chart or two fingers
 * apart and together on a touch screen. The chart moves while the gesture lasts; `onRange` is
 * called once when it ends, so the page fetches the tier that fits the new range only then.
 * Vertical finger moves still scroll the page (`touch-action: pan-y`).
 */
function gestures(u: uPlot, onRange: (min: number, max: number) => void): () => void {
  const over = u.over;
  over.style.touchAction = "pan-y";
  const pointers = new Map<number, number>();
  let start: { min: number; max: number; xs: number[] } | null = null;
  /** Whether this gesture (first finger down to last finger up) moved the chart. */
  let moved = false;

  const xs = () => [...pointers.values()];
  const begin = () => {
    const { min, max } = u.scales.x;
    start = min === undefined || max === undefined ? null : { min, max, xs: xs() };
  };
  const rangeNow = (): [number, number] | null => {
    if (!start) return null;
    const px = over.clientWidth || 1;
    const span = start.max - start.min;
    const now = xs();
    if (now.length >= 2 && start.xs.length >= 2) {
      // Keep the value under the fingers' midpoint where it was, scaled by their spread.
      const d0 = Math.max(10, Math.abs(start.xs[1] - start.xs[0]));
      const d1 = Math.max(10, Math.abs(now[1] - now[0]));
      const mid0 = (start.xs[0] + start.xs[1]) / 2;
      const mid1 = (now[0] + now[1]) / 2;
      const newSpan = (span * d0) / d1;
      const anchor = start.min + (mid0 / px) * span;
      const min = anchor - (mid1 / px) * newSpan;
      return [min, min + newSpan];
    }
    if (now.length === 1 && start.xs.length === 1) {
      const shift = ((now[0] - start.xs[0]) / px) * span;
      return [start.min - shift, start.max - shift];
    }
    return null;
  };
  const local = (e: PointerEvent) => e.clientX - over.getBoundingClientRect().left;

  const down = (e: PointerEvent) => {
    const touch = e.pointerType === "touch";
    if (!touch && !(e.pointerType === "mouse" && e.shiftKey && e.button === 0)) return;
    // uPlot would start a zoom selection on this press.
    e.stopPropagation();
    e.preventDefault();
    over.setPointerCapture(e.pointerId);
    pointers.set(e.pointerId, local(e));
    if (pointers.size === 1) moved = false;
    begin();
  };
  const move = (e: PointerEvent) => {
    if (!pointers.has(e.pointerId)) return;
    pointers.set(e.pointerId, local(e));
    const r = rangeNow();
    if (r && (r[0] !== start?.min || r[1] !== start?.max)) {
      moved = true;
      u.setScale("x", { min: r[0], max: r[1] });
    }
  };
  const up = (e: PointerEvent) => {
    if (!pointers.has(e.pointerId)) return;
    pointers.delete(e.pointerId);
    // A finger left on the screen goes on panning from where the chart is now.
    if (pointers.size > 0) {
      begin();
      return;
    }
    start = null;
    const { min, max } = u.scales.x;
    if (moved && min !== undefined && max !== undefined) onRange(min * 1000, max * 1000);
    moved = false;
  };
  // Capture on the root, before uPlot's own listeners on the plotting area see the press.
  u.root.addEventListener("pointerdown", down, true);
  over.addEventListener("pointermove", move);
  over.addEventListener("pointerup", up);
  over.addEventListener("pointercancel", up);
  return () => {
    u.root.removeEventListener("pointerdown", down, true);
    over.removeEventListener("pointermove", move);
    over.removeEventListener("pointerup", up);
    over.removeEventListener("pointercancel", up);
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
