// Hand-written SVG charts for the perfcallback pane: no library, nothing fetched from outside.
// Every chart is a function (data, options) -> <svg> element; hover text uses <title> elements.

const NS = "http://www.w3.org/2000/svg";

export const PHASE_COLORS = {
  data: "#e4572e", forward: "#4c78a8", backward: "#72b7b2", optimizer: "#b279a2",
  other: "#bab0ac",
};
export const SEVERITY_COLORS = ["#eef2f5", "#9ecae1", "#f6a821", "#d62728"];
export const SEVERITY_NAMES = ["none", "info", "warning", "critical"];
const LINE_COLORS = ["#4c78a8", "#e4572e", "#54a24b", "#b279a2", "#f6a821", "#72b7b2"];

export function el(name, attrs = {}, parent = null) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (parent) parent.appendChild(node);
  return node;
}

function title(node, text) {
  el("title", {}, node).textContent = text;
  return node;
}

export function fmt(v, digits = 2) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  const a = Math.abs(v);
  if (a >= 1000) return v.toFixed(0);
  if (a >= 100) return v.toFixed(1);
  return v.toFixed(digits);
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function frame(width, height, pad) {
  const svg = el("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "chart" });
  return { svg, x0: pad.l, x1: width - pad.r, y0: height - pad.b, y1: pad.t };
}

function yAxis(f, max, unit) {
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4;
    const y = f.y0 - ((f.y0 - f.y1) * i) / 4;
    el("line", { x1: f.x0, x2: f.x1, y1: y, y2: y, class: "grid" }, f.svg);
    el("text", { x: f.x0 - 6, y: y + 4, class: "tick", "text-anchor": "end" }, f.svg)
      .textContent = fmt(v, 1) + (i === 4 && unit ? ` ${unit}` : "");
  }
}

function xAxis(f, steps, sx) {
  if (!steps.length) return;
  const n = Math.min(6, steps.length);
  for (let i = 0; i < n; i++) {
    const s = steps[Math.round((i * (steps.length - 1)) / Math.max(1, n - 1))];
    el("text", { x: sx(s), y: f.y0 + 16, class: "tick", "text-anchor": "middle" }, f.svg)
      .textContent = String(s);
  }
  el("text", { x: f.x1, y: f.y0 + 30, class: "tick", "text-anchor": "end" }, f.svg)
    .textContent = "step";
}

function scaleX(f, steps) {
  const lo = steps[0], hi = steps[steps.length - 1];
  return (s) => (hi === lo ? (f.x0 + f.x1) / 2 : f.x0 + ((s - lo) / (hi - lo)) * (f.x1 - f.x0));
}

// Stacked bars, one per step: `phases` maps a name to values aligned with `steps` (null = gap).
export function stackedBars(steps, phases, { width = 900, height = 260, unit = "ms" } = {}) {
  const f = frame(width, height, { l: 56, r: 12, t: 12, b: 36 });
  const names = Object.keys(phases);
  const totals = steps.map((_, i) => names.reduce((a, n) => a + (phases[n][i] || 0), 0));
  const max = niceMax(Math.max(0, ...totals));
  yAxis(f, max, unit);
  const slot = (f.x1 - f.x0) / Math.max(1, steps.length);
  const bw = Math.max(1, slot * 0.8);
  const sy = (v) => ((f.y0 - f.y1) * v) / max;
  steps.forEach((s, i) => {
    let top = f.y0;
    const g = el("g", { class: "bar" }, f.svg);
    for (const n of names) {
      const v = phases[n][i];
      if (v === null || v === undefined || v <= 0) continue;
      const h = sy(v);
      el("rect", { x: f.x0 + i * slot + (slot - bw) / 2, y: top - h, width: bw, height: h,
        fill: PHASE_COLORS[n] || "#888" }, g);
      top -= h;
    }
    title(g, `step ${s}: ` + names.map((n) => `${n} ${fmt(phases[n][i])}`).join(", ") +
      ` = ${fmt(totals[i])} ${unit}`);
  });
  xAxis(f, steps, (s) => f.x0 + steps.indexOf(s) * slot + slot / 2);
  return f.svg;
}

// Lines: `series` maps a name to [[step, value], ...].
export function lineChart(series, { width = 440, height = 180, unit = "" } = {}) {
  const f = frame(width, height, { l: 56, r: 12, t: 12, b: 36 });
  const names = Object.keys(series).filter((n) => series[n].length);
  const steps = [...new Set(names.flatMap((n) => series[n].map((p) => p[0])))].sort((a, b) => a - b);
  const max = niceMax(Math.max(0, ...names.flatMap((n) => series[n].map((p) => p[1]))));
  yAxis(f, max, unit);
  if (!steps.length) return f.svg;
  const sx = scaleX(f, steps);
  const sy = (v) => f.y0 - ((f.y0 - f.y1) * v) / max;
  names.forEach((n, k) => {
    const color = LINE_COLORS[k % LINE_COLORS.length];
    const d = series[n].map((p, i) => `${i ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`);
    title(el("path", { d: d.join(""), class: "line", stroke: color }, f.svg), n);
    for (const p of series[n]) {
      title(el("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 2, fill: color }, f.svg),
        `${n} at step ${p[0]}: ${fmt(p[1])} ${unit}`);
    }
  });
  xAxis(f, steps, sx);
  return f.svg;
}

// One row per category; each window is a cell coloured by severity (0 none .. 3 critical).
export function severityStrip(tracks, { width = 900 } = {}) {
  const names = Object.keys(tracks);
  const rowH = 22, labelW = 130;
  const steps = [...new Set(names.flatMap((n) => tracks[n].map((p) => p[0])))].sort((a, b) => a - b);
  const height = names.length * rowH + 42;
  const f = frame(width, height, { l: labelW, r: 12, t: 6, b: 30 });
  const slot = (f.x1 - f.x0) / Math.max(1, steps.length);
  names.forEach((n, r) => {
    const y = f.y1 + r * rowH;
    el("text", { x: labelW - 8, y: y + 15, class: "label", "text-anchor": "end" }, f.svg)
      .textContent = n;
    for (const [s, v] of tracks[n]) {
      const sev = Math.max(0, Math.min(3, Math.round(v)));
      const i = steps.indexOf(s);
      title(el("rect", { x: f.x0 + i * slot, y, width: Math.max(1, slot - 1), height: rowH - 4,
        fill: SEVERITY_COLORS[sev] }, f.svg), `${n} at step ${s}: ${SEVERITY_NAMES[sev]}`);
    }
  });
  xAxis(f, steps, (s) => f.x0 + steps.indexOf(s) * slot + slot / 2);
  return f.svg;
}

// Horizontal stacked bars, one per row: rows = [{label, parts: {name: value}, highlight}].
export function hbarStack(rows, { width = 900, unit = "ms", colors = PHASE_COLORS } = {}) {
  const rowH = 26, labelW = 130;
  const height = rows.length * rowH + 30;
  const f = frame(width, height, { l: labelW, r: 80, t: 4, b: 24 });
  const max = niceMax(Math.max(0, ...rows.map((r) => Object.values(r.parts)
    .reduce((a, v) => a + (v || 0), 0))));
  const sx = (v) => ((f.x1 - f.x0) * v) / max;
  rows.forEach((row, k) => {
    const y = f.y1 + k * rowH;
    el("text", { x: labelW - 8, y: y + 16, class: row.highlight ? "label slow" : "label",
      "text-anchor": "end" }, f.svg).textContent = row.label;
    let x = f.x0, total = 0;
    for (const [n, v] of Object.entries(row.parts)) {
      if (!(v > 0)) continue;
      title(el("rect", { x, y: y + 2, width: sx(v), height: rowH - 8, fill: colors[n] || "#888" },
        f.svg), `${row.label} ${n}: ${fmt(v)} ${unit}`);
      x += sx(v); total += v;
    }
    if (row.highlight) {
      el("rect", { x: f.x0 - 2, y: y, width: x - f.x0 + 4, height: rowH - 4, class: "highlight" },
        f.svg);
    }
    el("text", { x: x + 6, y: y + 16, class: "tick" }, f.svg).textContent = `${fmt(total)} ${unit}`;
  });
  return f.svg;
}

export function legend(names, colors) {
  const div = document.createElement("div");
  div.className = "legend";
  for (const n of names) {
    const item = document.createElement("span");
    const sw = document.createElement("i");
    sw.style.background = colors[n] || "#888";
    item.append(sw, n);
    div.appendChild(item);
  }
  return div;
}
