// The perfcallback pane: a run's step-time breakdown, findings over time, ranks, traces and a
// comparison of two captures. TensorBoard imports this module in the plugin's iframe and calls
// render(); every URL below is relative, so it resolves to /data/plugin/perfcallback/ on the
// same server. Text from the run is always set with textContent (never parsed as HTML).

import {
  PHASE_COLORS, SEVERITY_COLORS, SEVERITY_NAMES, fmt, hbarStack, legend, lineChart,
  severityStrip, stackedBars,
} from "./charts.js";

const PHASES = ["data", "forward", "backward", "optimizer", "other"];
const SEV_RANK = { info: 1, warning: 2, critical: 3 };

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

// Replace a node's children; arrays are flattened and null/false left out (as in h()).
function fill(node, ...children) {
  node.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined &&
    c !== false));
}

async function getJSON(url) {
  const response = await fetch(url);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok || body === null) {
    throw new Error((body && body.error) || `${url}: HTTP ${response.status}`);
  }
  return body;
}

const q = (params) => new URLSearchParams(params).toString();
const message = (text, cls = "message") => h("p", { class: cls }, text);

function table(header, rows, { numeric = [] } = {}) {
  return h("table", {},
    h("thead", {}, h("tr", {}, header.map((c) => h("th", {}, c)))),
    h("tbody", {}, rows.map((r) => h("tr", r.attrs || {},
      (r.cells || r).map((c, i) => h("td", { class: numeric.includes(i) ? "num" : "" }, c))))));
}

function section(title, ...body) {
  return h("section", {}, h("h2", {}, title), ...body);
}

// ------------------------------------------------------------------ run pane
function breakdownSection(bd) {
  if (!bd.steps.length) return null;
  const names = PHASES.filter((p) => p in bd.phases);
  return section("Step-time breakdown",
    h("p", { class: "hint" }, "Mean time per step in each phase, one bar per window " +
      "(perf/phase/<phase>_ms); the phases add up to perf/step_ms."),
    legend(names, PHASE_COLORS), stackedBars(bd.steps, bd.phases));
}

function groupsSection(groups) {
  const units = { throughput: "/s", memory: "MiB", gc: "" };
  const charts = Object.entries(groups).map(([g, series]) => h("div", { class: "card" },
    h("h3", {}, g), h("p", { class: "hint" }, Object.keys(series).map((n) => `perf/${g}/${n}`)
      .join(", ")), lineChart(series, { unit: units[g] || "" })));
  return charts.length ? section("Throughput, memory and GC", h("div", { class: "grid" }, charts))
    : null;
}

function findingCard(f) {
  const evidence = Object.entries(f.evidence || {});
  return h("div", { class: `finding sev-${f.severity} ${f.status || ""}` },
    h("div", { class: "finding-head" },
      h("span", { class: `badge sev-${f.severity}` }, f.severity),
      h("code", {}, f.rule), h("span", { class: "muted" }, f.category),
      f.est_gain !== null && f.est_gain !== undefined
        ? h("span", { class: "muted" }, typeof f.est_gain === "number"
          ? `est. gain ${(100 * f.est_gain).toFixed(0)}%` : `est. gain ${f.est_gain}`) : null,
      f.status === "resolved" ? h("span", { class: "badge resolved" }, "resolved") : null),
    h("p", { class: "fix" }, f.message || ""),
    evidence.length ? table(["evidence", "value"], evidence.map(([k, v]) =>
      [k, typeof v === "number" ? fmt(v, 3) : JSON.stringify(v)]), { numeric: [1] }) : null);
}

function findingsSection(view) {
  const parts = [];
  if (Object.keys(view.severity).length) {
    parts.push(h("p", { class: "hint" }, "Severity of each category's active finding at every " +
      "window (perf/recommendations/<category>)."),
    legend(SEVERITY_NAMES, Object.fromEntries(SEVERITY_NAMES.map((n, i) => [n, SEVERITY_COLORS[i]]))),
    severityStrip(view.severity));
  }
  if (view.history.length) {
    parts.push(h("h3", {}, "How the findings changed (perf/recommendations table)"),
      table(["step", "active findings"], view.history.map((e) => [String(e.step),
        e.findings.length ? h("span", {}, e.findings.map((f) => h("span", {
          class: `chip sev-${f.severity}`, title: f.message }, `${f.rule} (${f.severity})`)))
          : h("span", { class: "muted" }, "none")])));
  }
  if (view.findings.length) {
    parts.push(h("h3", {}, "At the end of the run, with evidence (perf_report.json)"),
      ...view.findings.map(findingCard));
  } else if (view.history.length) {
    const last = view.history[view.history.length - 1].findings;
    parts.push(h("h3", {}, "Latest findings"), ...last.map(findingCard));
  }
  if (!parts.length) parts.push(message("No recommendation was written for this run."));
  return section("Recommendations over the run", ...parts);
}

function ranksSection(ranks) {
  if (!ranks) return null;
  const rows = [];
  const finalRanks = Object.entries(ranks.report);
  if (finalRanks.length) {
    for (const [r, entry] of finalRanks) {
      const parts = Object.fromEntries(PHASES.map((p) => [p, 1e3 * (entry.breakdown[p] || 0)]));
      rows.push({ label: `rank ${r}`, parts, highlight: String(ranks.slow) === r });
    }
  } else {
    for (const [r, s] of Object.entries(ranks.scalars)) {
      const i = s.breakdown.steps.length - 1;
      const parts = Object.fromEntries(PHASES.filter((p) => p in s.breakdown.phases)
        .map((p) => [p, s.breakdown.phases[p][i] || 0]));
      rows.push({ label: `rank ${r}`, parts, highlight: String(ranks.slow) === r });
    }
  }
  const lines = Object.fromEntries(Object.entries(ranks.scalars)
    .map(([r, s]) => [`rank ${r}`, s.breakdown.step_ms]));
  return section("Ranks",
    h("p", { class: "hint" }, ranks.slow !== null && ranks.slow !== undefined
      ? `Slowest rank: ${ranks.slow} (outlined).` : "No slow rank named."),
    legend(PHASES, PHASE_COLORS), hbarStack(rows),
    ranks.spread_pct.length ? h("div", { class: "card" }, h("h3", {}, "step-time spread across ranks"),
      lineChart({ "perf/ranks/step_spread_pct": ranks.spread_pct }, { unit: "%" })) : null,
    Object.keys(lines).length ? h("div", { class: "card" }, h("h3", {}, "step time per rank"),
      lineChart(lines, { unit: "ms" })) : null);
}

function summaryCards(view) {
  const r = view.report;
  if (!r) return null;
  const b = r.breakdown || {}, t = r.throughput || {};
  const cards = [["measured steps", String(r.steps ?? "–")],
    ["mean step", `${fmt(1e3 * (b.step ?? NaN))} ms`],
    ["steps/s", fmt(t.steps_per_s)], ["samples/s", fmt(t.samples_per_s)]];
  return h("div", { class: "cards" }, cards.map(([k, v]) =>
    h("div", { class: "stat" }, h("div", { class: "value" }, v), h("div", { class: "muted" }, k))));
}

async function showRun(pane, run) {
  fill(pane, message("Loading…"));
  const view = await getJSON(`./run?${q({ run })}`);
  fill(pane, ...view.messages.map((m) => message(m)), summaryCards(view),
    breakdownSection(view.breakdown), findingsSection(view), ranksSection(view.ranks),
    groupsSection(view.groups));
}

// ------------------------------------------------------------------ trace pane
function overview(ra) {
  const parts = { idle: ra.idle_pct, compute: ra.compute_pct, "non-compute": ra.non_compute_pct };
  const colors = { idle: "#bab0ac", compute: "#54a24b", "non-compute": "#f6a821" };
  return h("div", {},
    ra.idle_pct !== undefined && ra.idle_pct !== null
      ? [legend(Object.keys(parts), colors),
        hbarStack([{ label: `rank ${ra.rank}`, parts }], { unit: "%", colors })]
      : message("No GPU events in this trace: GPU idle/compute figures are not available."),
    table(["figure", "value"], [
      ["device", ra.device || "–"], ["window", ra.window || "–"],
      ["steps analysed", String(ra.steps ?? "–")], ["mean step (ms)", fmt((ra.step_mean_us ?? NaN) / 1e3)],
      ["comm/comp overlap (%)", fmt(ra.comm_comp_overlap_pct)], ["GPU utilisation in steps (%)", fmt(ra.gpu_util_pct)],
      ["data loading share (%)", fmt(ra.data_share_pct)], ["device sync wait (%)", fmt(ra.sync_wait_pct)],
      ["kernels per step", fmt(ra.kernels_per_step)], ["launch delay p50 (µs)", fmt(ra.launch_delay_p50_us)],
    ], { numeric: [1] }));
}

function rankTables(rank, ra) {
  return h("div", { class: "rank" }, h("h3", {}, `Rank ${rank}`), overview({ ...ra, rank }),
    ra.per_step.length ? [h("h4", {}, "Per step"), table(
      ["step", "wall ms", "GPU busy ms", "GPU util %", "data ms", "comm ms", "sync ms", "kernels"],
      ra.per_step.map((s) => [String(s.number), fmt(s.wall_us / 1e3), fmt(s.gpu_busy_us / 1e3),
        fmt(s.gpu_util_pct), fmt(s.data_us / 1e3), fmt(s.comm_us / 1e3), fmt(s.sync_us / 1e3),
        String(s.kernels)]), { numeric: [1, 2, 3, 4, 5, 6, 7] })] : null,
    ra.kernel_types.length ? [h("h4", {}, "Kernel types"), table(["type", "count", "total ms", "%"],
      ra.kernel_types.map((k) => [k.kernel_type, String(k.count), fmt(k.total_us / 1e3), fmt(k.pct)]),
      { numeric: [1, 2, 3] })] : null,
    ra.top_kernels.length ? [h("h4", {}, "Top kernels"), table(
      ["kernel", "type", "count", "total ms", "mean µs", "max µs", "%"],
      ra.top_kernels.map((k) => [h("span", { class: "kname", title: k.name }, k.name), k.kernel_type,
        String(k.count), fmt(k.total_us / 1e3), fmt(k.mean_us), fmt(k.max_us), fmt(k.pct)]),
      { numeric: [2, 3, 4, 5, 6] })] : null,
    (ra.operators || []).length ? [h("h4", {}, "Top operators (by device self time, then host self time)"),
      table(["operator", "calls", "device self ms", "device total ms", "host self ms", "host total ms"],
        ra.operators.map((o) => [h("span", { class: "kname", title: o.name }, o.name), String(o.calls),
          fmt(o.device_self_us / 1e3), fmt(o.device_total_us / 1e3), fmt(o.host_self_us / 1e3),
          fmt(o.host_total_us / 1e3)]), { numeric: [1, 2, 3, 4, 5] })] : null,
    ra.notes.length ? h("ul", { class: "notes" }, ra.notes.map((n) => h("li", {}, n))) : null);
}

async function showTrace(out, run, capture) {
  fill(out, message(`Analysing ${capture}…`));
  const view = await getJSON(`./trace?${q({ run, capture })}`);
  const links = h("p", {}, "Raw trace (opens in Perfetto or chrome://tracing): ",
    view.capture.files.map((f) => h("a", { href: `./download?${q({ run, capture, file: f })}`,
      download: f, class: "download" }, f)));
  if (view.error) { fill(out, message(view.error, "message error"), links); return; }
  const a = view.analysis;
  const cross = a.cross_rank;
  fill(out, links,
    a.skipped.length ? h("ul", { class: "notes error" }, a.skipped.map((s) => h("li", {}, s))) : null,
    a.notes.length ? h("ul", { class: "notes" }, a.notes.map((n) => h("li", {}, n))) : null,
    Object.keys(a.ranks).length > 1 ? h("p", {}, `Slowest rank ${cross.slowest_rank ?? "–"}, ` +
      `step-time spread ${fmt(cross.straggler_spread_pct)}%`) : null,
    Object.entries(a.ranks).map(([r, ra]) => rankTables(r, ra)));
}

function showTraces(pane, runs, run) {
  const entry = runs.find((r) => r.run === run);
  const captures = entry ? entry.captures : [];
  const out = h("div", {});
  if (!captures.length) {
    fill(pane, message("No profiler capture under this run (profiler/<capture>/*.pt.trace.json.gz)."));
    return;
  }
  const select = h("select", { onchange: () => showTrace(out, run, select.value).catch(fail(out)) },
    captures.map((c) => h("option", { value: c }, c)));
  fill(pane, section("Profiler captures", h("label", {}, "capture ", select), out));
  showTrace(out, run, captures[0]).catch(fail(out));
}

// ------------------------------------------------------------------ compare pane
function showCompare(pane, runs) {
  const options = runs.flatMap((r) => r.captures.map((c) => ({ run: r.run, capture: c })));
  if (options.length < 2) {
    fill(pane, message("Comparing needs two profiler captures (in one run or two)."));
    return;
  }
  const pick = (i) => h("select", {}, options.map((o, k) => h("option",
    { value: String(k), ...(k === i ? { selected: "" } : {}) }, `${o.run} · ${o.capture}`)));
  const sa = pick(0), sb = pick(options.length - 1), out = h("div", {});
  const go = async () => {
    const a = options[Number(sa.value)], b = options[Number(sb.value)];
    fill(out, message("Comparing…"));
    const [res, ra, rb] = await Promise.all([
      getJSON(`./diff?${q({ a: a.run, ac: a.capture, b: b.run, bc: b.capture })}`),
      getJSON(`./run?${q({ run: a.run })}`), getJSON(`./run?${q({ run: b.run })}`)]);
    const bars = [[`A ${a.run}`, ra], [`B ${b.run}`, rb]].filter(([, v]) => v.report)
      .map(([label, v]) => ({ label, parts: Object.fromEntries(PHASES.map((p) =>
        [p, 1e3 * ((v.report.breakdown || {})[p] || 0)])) }));
    if (res.error) { fill(out, message(res.error, "message error")); return; }
    const d = res.diff;
    fill(out, 
      bars.length ? [h("h3", {}, "Step-time breakdown of each run (perf_report.json)"),
        legend(PHASES, PHASE_COLORS), hbarStack(bars)] : null,
      h("h3", {}, "Trace figures (perfcallback diff)"),
      table(["figure", "A", "B", "change", ""], d.metrics.map((m) => ({
        attrs: { class: m.worse === true ? "worse" : m.worse === false ? "better" : "" },
        cells: [m.label + (m.unit ? ` (${m.unit})` : ""), fmt(m.a), fmt(m.b),
          m.change_pct === null || m.change_pct === undefined ? "–" : `${fmt(m.change_pct, 1)}%`,
          m.worse === true ? "worse" : m.worse === false ? "better" : ""] })), { numeric: [1, 2, 3] }),
      d.kernels.length ? [h("h3", {}, "Kernels that changed most (µs per step)"),
        table(["kernel", "A", "B", "Δ"], d.kernels.map((k) => [h("span", { class: "kname", title: k.name },
          k.name), fmt(k.a_us), fmt(k.b_us), fmt(k.delta_us)]), { numeric: [1, 2, 3] })] : null);
  };
  const button = h("button", { onclick: () => go().catch(fail(out)) }, "Compare");
  fill(pane, section("Compare two captures (B against baseline A)",
    h("div", { class: "controls" }, h("label", {}, "A ", sa), h("label", {}, "B ", sb), button), out));
  go().catch(fail(out));
}

// ------------------------------------------------------------------ shell
const fail = (pane) => (err) => fill(pane, message(String(err.message || err), "message error"));

export async function render() {
  const css = document.createElement("link");
  css.rel = "stylesheet";
  css.href = "./style.css";
  document.head.appendChild(css);
  const root = h("div", { id: "perfcallback" });
  document.body.appendChild(root);
  let listing;
  try {
    listing = await getJSON("./runs");
  } catch (err) { fail(root)(err); return; }
  if (!listing.runs.length) {
    fill(root, message("No perfcallback data in this logdir yet: run PerfMonitor(logdir=...) " +
      "or PerfCallback and refresh."));
    return;
  }
  const pane = h("div", { class: "pane" });
  const runSelect = h("select", { id: "run" }, listing.runs.map((r) => h("option", { value: r.run }, r.run)));
  let view = "run";
  const tabs = ["run", "traces", "compare"].map((name) => h("button", {
    class: "tab", "data-view": name, onclick: () => { view = name; draw(); } },
  { run: "Run", traces: "Traces", compare: "Compare" }[name]));
  const draw = () => {
    for (const t of tabs) t.classList.toggle("active", t.dataset.view === view);
    const run = runSelect.value;
    if (view === "run") showRun(pane, run).catch(fail(pane));
    else if (view === "traces") showTraces(pane, listing.runs, run);
    else showCompare(pane, listing.runs);
  };
  runSelect.addEventListener("change", draw);
  fill(root, h("header", {}, h("strong", {}, "perfcallback"),
    h("label", {}, "run ", runSelect), h("nav", {}, tabs)), pane);
  draw();
}
