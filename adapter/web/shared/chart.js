// A small line/bar chart drawn as inline SVG, for the rows of the average query (D9):
// [{time_stamp: "2016-12-06T13:00:00.000Z", result: 6.1, data_points: 53}, ...].
// Each row becomes one element of class "point" carrying the row in data attributes
// (data-time-stamp, data-result, data-data-points), so what is drawn can be checked
// against the endpoint's JSON. Times are shown in UTC, as the buckets are UTC buckets.

import { number, svg } from "./common.js";

/** About `count` round tick values covering [min, max]. */
export function niceTicks(min, max, count = 5) {
  if (!(max > min)) {
    const pad = Math.abs(min) > 0 ? Math.abs(min) * 0.1 : 1;
    min -= pad;
    max += pad;
  }
  const rough = (max - min) / count;
  const power = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= rough) ?? 10 * power;
  const first = Math.floor(min / step) * step;
  const last = Math.ceil(max / step) * step;
  const ticks = [];
  for (let v = first; v <= last + step / 2; v += step) ticks.push(Number(v.toPrecision(12)));
  return ticks;
}

function pad2(n) {
  return String(n).padStart(2, "0");
}

/** A UTC label for an instant, as precise as the span and granularity need. */
export function timeLabel(ms, spanSeconds, granularity) {
  const d = new Date(ms);
  const date = `${pad2(d.getUTCMonth() + 1)}-${pad2(d.getUTCDate())}`;
  const time = `${pad2(d.getUTCHours())}:${pad2(d.getUTCMinutes())}`;
  if (["month", "quarter", "year"].includes(granularity)) {
    return `${d.getUTCFullYear()}-${pad2(d.getUTCMonth() + 1)}`;
  }
  if (["day", "week"].includes(granularity)) return `${d.getUTCFullYear()}-${date}`;
  if (granularity === "second" && spanSeconds < 3600) return `${time}:${pad2(d.getUTCSeconds())}`;
  if (spanSeconds < 86400) return time;
  return `${date} ${time}`;
}

/** The full UTC text of a bucket start, for tooltips and the data table. */
export function fullTime(ms) {
  return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}

/**
 * Draw `rows` into an <svg>. Options: kind ("line" or "bar"), width (CSS pixels),
 * measurement and granularity (for the labels).
 */
export function drawChart(rows, { kind = "line", width = 720, measurement = "", granularity = "all" } = {}) {
  const W = Math.max(300, Math.round(width));
  const H = Math.round(Math.min(340, Math.max(220, W * 0.42)));
  const margin = { left: 64, right: 18, top: 14, bottom: 40 };
  const plotW = W - margin.left - margin.right;
  const plotH = H - margin.top - margin.bottom;

  const points = rows.map((row) => ({ row, t: Date.parse(row.time_stamp), v: Number(row.result) }));
  const values = points.map((p) => p.v);
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  if (kind === "bar") {
    lo = Math.min(0, lo);
    hi = Math.max(0, hi);
  }
  const ticks = niceTicks(lo, hi, W < 480 ? 4 : 5);
  const yMin = ticks[0];
  const yMax = ticks[ticks.length - 1];
  const y = (v) => margin.top + plotH - ((v - yMin) / (yMax - yMin)) * plotH;

  const times = points.map((p) => p.t);
  const tMin = Math.min(...times);
  const tMax = Math.max(...times);
  const span = (tMax - tMin) / 1000;
  const band = plotW / Math.max(1, points.length);
  const x =
    kind === "bar" || tMax === tMin
      ? (i) => margin.left + band * (i + 0.5)
      : (i) => margin.left + ((points[i].t - tMin) / (tMax - tMin)) * plotW;

  const title = `${measurement || "reading"}: average per ${granularity.replace("_", " ")}`;
  const desc =
    `${kind === "bar" ? "Bar" : "Line"} chart of ${points.length} ` +
    `${points.length === 1 ? "bucket" : "buckets"}, values from ${number(Math.min(...values))} ` +
    `to ${number(Math.max(...values))}; times in UTC.`;
  const root = svg("svg", {
    class: "chart",
    viewBox: `0 0 ${W} ${H}`,
    width: W,
    height: H,
    role: "img",
    "aria-labelledby": "chart-title chart-desc",
    "data-kind": kind,
    "data-count": points.length,
  });
  root.append(svg("title", { id: "chart-title" }, title), svg("desc", { id: "chart-desc" }, desc));

  // grid and y axis labels
  const grid = svg("g", { "aria-hidden": "true" });
  for (const tick of ticks) {
    const ty = y(tick);
    grid.append(
      svg("line", { class: "grid", x1: margin.left, x2: W - margin.right, y1: ty, y2: ty }),
      svg("text", { x: margin.left - 8, y: ty + 4, "text-anchor": "end" }, number(tick)),
    );
  }
  grid.append(
    svg("line", {
      class: "axis",
      x1: margin.left,
      x2: W - margin.right,
      y1: margin.top + plotH,
      y2: margin.top + plotH,
    }),
  );
  // x axis labels: at most one per ~110 px
  const maxLabels = Math.max(2, Math.floor(plotW / 110));
  const every = Math.max(1, Math.ceil(points.length / maxLabels));
  for (let i = 0; i < points.length; i += every) {
    const px = x(i);
    const anchor = px - margin.left < 40 ? "start" : W - margin.right - px < 40 ? "end" : "middle";
    grid.append(
      svg("text", { x: px, y: H - margin.bottom + 18, "text-anchor": anchor }, timeLabel(points[i].t, span, granularity)),
    );
  }
  grid.append(
    svg("text", { x: W - margin.right, y: H - 4, "text-anchor": "end" }, "time (UTC)"),
  );
  root.append(grid);

  const marks = svg("g", { class: "marks" });
  if (kind === "bar") {
    const barW = Math.max(2, Math.min(64, band * 0.7));
    const zero = y(Math.max(yMin, Math.min(0, yMax)));
    points.forEach((p, i) => {
      const top = Math.min(y(p.v), zero);
      marks.append(
        point("rect", p.row, {
          x: x(i) - barW / 2,
          y: top,
          width: barW,
          height: Math.max(1, Math.abs(zero - y(p.v))),
        }),
      );
    });
  } else {
    // Empty buckets are left out of the answer; the line joins the buckets that have data
    // (a plug reporting every 5 minutes would otherwise be dots at minute granularity).
    const d = points.map((p, i) => `${i ? "L" : "M"}${x(i).toFixed(1)},${y(p.v).toFixed(1)}`).join("");
    if (points.length > 1) marks.append(svg("path", { class: "line", d, "aria-hidden": "true" }));
    const r = points.length > 150 ? 2 : points.length > 60 ? 3 : 4.5;
    points.forEach((p, i) => marks.append(point("circle", p.row, { cx: x(i), cy: y(p.v), r })));
  }
  root.append(marks);
  return root;
}

function point(tag, row, attrs) {
  const label = `${fullTime(Date.parse(row.time_stamp))}: ${number(row.result)} (${row.data_points} ${
    row.data_points === 1 ? "reading" : "readings"
  })`;
  return svg(
    tag,
    {
      class: "point",
      ...attrs,
      dataset: { timeStamp: row.time_stamp, result: row.result, dataPoints: row.data_points },
    },
    svg("title", {}, label),
  );
}
