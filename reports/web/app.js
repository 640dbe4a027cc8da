// The dashboard: fetches the read-only JSON API of `python -m reports --serve` (docs/api.md) and
// draws it. No library, no build step. Every text that comes from the database (a model name, an
// origin: clients choose them) goes in through textContent or a text node, never as markup.
"use strict";

const RANGES = {
  "1h": { since: "1h", bucket: "minute", label: "last hour" },
  "6h": { since: "6h", bucket: "minute", label: "last 6 hours" },
  "12h": { since: "12h", bucket: "hour", label: "last 12 hours" },
  "1d": { since: "24h", bucket: "hour", label: "last day" },
  "1w": { since: "7d", bucket: "hour", label: "last week" },
  "1mo": { since: "30d", bucket: "day", label: "last 30 days" },
  "all": { since: null, bucket: null, label: "everything recorded" },
};
const DIMS = ["model", "provider", "origin", "agent"];
const DEFAULT_TABLES = ["model", "origin"]; // tables of /api/report without group_by
const REFRESH_MS = 15000;
const PAGE_SIZE = 20;
const BUCKET_MS = { minute: 60e3, hour: 3600e3, day: 86400e3 };
const SVG = "http://www.w3.org/2000/svg";

const state = { range: "1d", dim: "model", page: 1, load: 0, filters: {} }; // filters: dimension -> value

// -- small helpers ------------------------------------------------------------------------

function $(id) { return document.getElementById(id); }

// An element with attributes and children; a string child becomes a text node (never markup).
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

const NONE = "-";
const count = (n) => (n === null || n === undefined ? NONE : n.toLocaleString("en-US"));
const ms = (n) => (n === null || n === undefined ? NONE : Math.round(n).toLocaleString("en-US"));
const decimal = (n, places = 1) => (n === null || n === undefined ? NONE : n.toFixed(places));
const share = (part, whole) => (!whole ? NONE : (100 * part / whole).toFixed(1) + "%");
function compact(n) {
  if (n === null || n === undefined) return NONE;
  if (Math.abs(n) < 10000) return n.toLocaleString("en-US");
  for (const [d, s] of [[1e9, "G"], [1e6, "M"], [1e3, "k"]]) if (Math.abs(n) >= d) return (n / d).toPrecision(3).replace(/\.?0+$/, "") + s;
  return String(n);
}
function usd(v, unpriced) {
  if (v === null || v === undefined) return NONE;
  const text = Math.abs(v) >= 1 || v === 0 ? "$" + v.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 }) : "$" + v.toFixed(4);
  return (unpriced ? "≥" : "") + text;
}
const when = (utc) => (utc ? utc.slice(0, 19).replace("T", " ") : NONE);
const label = (v) => (v === null || v === undefined ? "(none)" : v);

function spanText(seconds) {
  if (seconds === null || seconds === undefined) return "";
  if (seconds < 120) return `${seconds.toFixed(0)} s`;
  if (seconds < 7200) return `${(seconds / 60).toFixed(0)} min`;
  if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86400).toFixed(1)} days`;
}

// A table: columns are [header, cell(row), className]; a cell is text or a Node.
function table(columns, rows) {
  const head = el("tr", {}, ...columns.map(([h, , cls]) => el("th", cls ? { class: cls } : {}, h)));
  const body = rows.map((row) => el("tr", {}, ...columns.map(([, cell, cls]) => {
    const value = cell(row);
    const td = el("td", cls ? { class: cls } : {}, value instanceof Node ? value : String(value));
    if (!(value instanceof Node) && cls && cls.includes("text")) td.title = String(value);
    return td;
  })));
  return el("table", {}, el("thead", {}, head), el("tbody", {}, ...body));
}

function fill(id, ...nodes) { $(id).replaceChildren(...nodes); }
const empty = (text) => el("p", { class: "empty" }, text);

// -- fetching -----------------------------------------------------------------------------

function query(extra) {
  const params = new URLSearchParams();
  const since = RANGES[state.range].since;
  if (since) params.set("since", since);
  for (const [dim, value] of Object.entries(state.filters)) params.set(dim, value);
  for (const [k, v] of Object.entries(extra || {})) if (v !== null && v !== undefined) params.set(k, v);
  return params.toString();
}

async function getJSON(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `${path}: HTTP ${response.status}`);
  return body;
}

async function load() {
  const mine = ++state.load;
  document.body.dataset.state = "loading";
  const range = RANGES[state.range];
  try {
    // The report's own tables are by model, provider/host and origin: only a table by provider
    // alone or by agent takes a request of its own.
    const own = DEFAULT_TABLES.includes(state.dim);
    const [report, usage, timeline, calls] = await Promise.all([
      getJSON("api/report?" + query({ top: 10 })),
      own ? null : getJSON("api/report?" + query({ group_by: state.dim, top: 1 })),
      getJSON("api/timeline?" + query({ bucket: range.bucket })),
      getJSON("api/calls?" + query({ page: state.page, page_size: PAGE_SIZE })),
    ]);
    if (mine !== state.load) return; // a newer load started meanwhile: it draws
    draw(report, own ? groupTable(report, state.dim) : usage.groups[0], timeline, calls);
    showStatus(report.note || "", false);
    $("updated").textContent = "updated " + new Date().toISOString().slice(11, 19) + " UTC";
    document.body.dataset.range = state.range;
    document.body.dataset.state = "ready";
  } catch (error) {
    if (mine !== state.load) return;
    showStatus(String(error.message || error), true);
    document.body.dataset.state = "error";
  }
}

function showStatus(text, isError) {
  const status = $("status");
  status.textContent = text;
  status.hidden = !text;
  status.classList.toggle("error", isError);
}

// -- drawing ------------------------------------------------------------------------------

function groupTable(report, dim) {
  return report.groups.find((g) => g.group_by.length === 1 && g.group_by[0] === dim);
}

function draw(report, usage, timeline, calls) {
  $("database").textContent = report.database;
  $("method").textContent = report.percentile_method;
  drawOverview(report.overview, report.cost_known);
  drawQuota(report.quota || []);
  drawTimeline(timeline);
  drawLatency(groupTable(report, "model"));
  drawUsage(usage, report.cost_known);
  drawErrors(report.errors);
  drawRetries(report.retries, report.cost_known);
  drawSlowest(report.slowest);
  drawCalls(calls);
}

function setCard(id, value, shown, sub) {
  const node = $(id);
  node.textContent = shown;
  node.dataset.value = value === null || value === undefined ? "" : String(value);
  if (sub) $(sub[0]).textContent = sub[1];
}

function drawOverview(o, costKnown) {
  setCard("requests", o.requests, count(o.requests), ["span", o.first_utc ? `${when(o.first_utc)} → ${when(o.last_utc)} (${spanText(o.span_seconds)})` : RANGES[state.range].label]);
  setCard("success_rate", o.success_rate, o.success_rate === null ? NONE : (100 * o.success_rate).toFixed(1) + "%", ["successes", `${count(o.successes)} calls`]);
  setCard("errors", o.errors, count(o.errors), ["dropped", o.dropped_rows && o.dropped_rows.row_count ? `${count(o.dropped_rows.row_count)} rows dropped by the proxy` : ""]);
  $("errors").classList.toggle("bad", o.errors > 0);
  setCard("streamed", o.streamed, count(o.streamed), ["streamed_share", share(o.streamed, o.requests)]);
  setCard("prompt_tokens", o.prompt_tokens, compact(o.prompt_tokens), ["cached_tokens", `cached ${compact(o.cached_tokens)}`]);
  setCard("completion_tokens", o.completion_tokens, compact(o.completion_tokens), ["reasoning_tokens", `reasoning ${compact(o.reasoning_tokens)}`]);
  setCard("cost_usd", o.cost_usd, costKnown ? usd(o.cost_usd, o.unpriced_calls) : NONE,
    ["unpriced_calls", costKnown ? `${count(o.unpriced_calls)} successful calls unpriced` : "no cost column"]);
}

function drawQuota(rows) {
  $("quota-section").hidden = rows.length === 0;
  if (!rows.length) return;
  const now = Date.now();
  const left = (r) => (r.used_percent !== null ? `${decimal(r.used_percent)}% used` : `${count(r.remaining)} left`);
  const resets = (r) => (r.resets_at_utc ? `${when(r.resets_at_utc)} (${spanText((Date.parse(r.resets_at_utc) - now) / 1000) || "now"})` : NONE);
  const runsOut = (r) => (r.resets_first ? "resets first" : r.runs_out_utc ? when(r.runs_out_utc) : NONE);
  fill("quota", table([
    ["provider", (r) => label(r.provider), "text"],
    ["credential", (r) => label(r.auth_mode), "text"],
    ["limit", (r) => r.limit, "text"],
    ["headroom", left],
    ["", (r) => (r.used_percent !== null ? meter(r.used_percent / 100, true) : ""), "bar"],
    ["resets", resets],
    ["per hour", (r) => decimal(r.burn_per_hour)],
    ["runs out", runsOut],
    ["as of", (r) => when(r.as_of_utc)],
  ], rows));
}

// A bar filled to `fraction`; `warn`: red from 90 % (a quota nearly used up).
function meter(fraction, warn = false) {
  const f = Math.max(0, Math.min(1, fraction));
  const box = svg("svg", { viewBox: "0 0 100 10", preserveAspectRatio: "none", height: 10, role: "img" });
  box.append(svg("rect", { x: 0, y: 0, width: 100, height: 10, class: "ok-light" }));
  box.append(svg("rect", { x: 0, y: 0, width: 100 * f, height: 10, class: warn && f >= 0.9 ? "bad" : "ok" }));
  return box;
}

// Bars of calls (succeeded, then errors on top) per bucket, over the whole timeframe.
function drawTimeline(t) {
  $("timeline-bucket").textContent = `(per ${t.bucket}${t.empty_buckets_left_out ? ", only those with calls" : ""})`;
  const step = BUCKET_MS[t.bucket];
  const byStart = new Map(t.buckets.map((b) => [Date.parse(b.start_utc), b]));
  let start; let end;
  if (t.filters.since_utc) {
    start = Math.floor(Date.parse(t.filters.since_utc) / step) * step;
    end = Date.parse(t.generated_at_utc);
  } else if (t.buckets.length) {
    start = Date.parse(t.buckets[0].start_utc);
    end = Date.parse(t.buckets[t.buckets.length - 1].start_utc) + step;
  } else {
    fill("timeline", empty("No calls in this timeframe."));
    return;
  }
  const slots = [];
  for (let at = start; at < end; at += step) slots.push(byStart.get(at) || { start_utc: new Date(at).toISOString(), requests: 0, errors: 0 });
  if (t.empty_buckets_left_out) slots.splice(0, slots.length, ...t.buckets);
  const W = 900; const H = 220; const left = 44; const bottom = 22; const top = 8;
  const peak = Math.max(1, ...slots.map((b) => b.requests));
  const plotW = W - left - 6; const plotH = H - bottom - top;
  const barW = plotW / Math.max(1, slots.length);
  const y = (n) => top + plotH - (n / peak) * plotH;
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "calls and errors over time" });
  for (const n of [0, Math.round(peak / 2), peak]) {
    chart.append(svg("line", { x1: left, x2: W - 6, y1: y(n), y2: y(n), class: "axis" }));
    chart.append(svg("text", { x: left - 6, y: y(n) + 4, "text-anchor": "end" }, count(n)));
  }
  const spanDays = (end - start) > 86400e3;
  slots.forEach((b, i) => {
    const x = left + i * barW; const w = Math.max(1, barW - (barW > 4 ? 1 : 0));
    const group = svg("g", {});
    const ok = b.requests - b.errors;
    if (ok > 0) group.append(svg("rect", { x, y: y(b.requests), width: w, height: y(b.errors) - y(b.requests), class: "ok" }));
    if (b.errors > 0) group.append(svg("rect", { x, y: y(b.errors), width: w, height: y(0) - y(b.errors), class: "bad" }));
    group.append(svg("title", {}, `${when(b.start_utc)} UTC: ${count(b.requests)} calls, ${count(b.errors)} errors`));
    chart.append(group);
  });
  const labels = Math.min(slots.length, 6);
  for (let k = 0; k < labels; k++) {
    const i = Math.round(k * (slots.length - 1) / Math.max(1, labels - 1));
    const s = slots[i].start_utc;
    const text = t.bucket === "day" ? s.slice(5, 10) : spanDays ? `${s.slice(5, 10)} ${s.slice(11, 16)}` : s.slice(11, 16);
    const anchor = labels > 1 && k === 0 ? "start" : labels > 1 && k === labels - 1 ? "end" : "middle";
    const x = anchor === "start" ? left + i * barW : anchor === "end" ? left + (i + 1) * barW : left + (i + 0.5) * barW;
    chart.append(svg("text", { x, y: H - 6, "text-anchor": anchor }, text));
  }
  fill("timeline", chart);
}

// Per model: a bar to p50, lighter to p95, a tick at p99; then the numbers.
function drawLatency(group) {
  const rows = group ? group.rows : [];
  if (!rows.length) { fill("latency", empty("No calls in this timeframe.")); return; }
  const peak = Math.max(1, ...rows.map((r) => r.latency_ms.p99 || r.latency_ms.p95 || r.latency_ms.p50 || 0));
  const range = (r) => {
    const box = svg("svg", { viewBox: "0 0 100 12", preserveAspectRatio: "none", height: 12, role: "img" });
    const x = (v) => (100 * (v || 0)) / peak;
    if (r.latency_ms.p95 !== null) box.append(svg("rect", { x: 0, y: 1, width: x(r.latency_ms.p95), height: 10, class: "ok-light" }));
    if (r.latency_ms.p50 !== null) box.append(svg("rect", { x: 0, y: 1, width: x(r.latency_ms.p50), height: 10, class: "ok" }));
    if (r.latency_ms.p99 !== null) box.append(svg("rect", { x: Math.min(99.4, x(r.latency_ms.p99)), y: 0, width: 0.6, height: 12, class: "p99" }));
    return box;
  };
  fill("latency", table([
    ["model", (r) => keyCell("model", r.key.model), "text"],
    ["calls", (r) => count(r.requests)],
    ["latency", range, "bar"],
    ["p50", (r) => ms(r.latency_ms.p50)],
    ["p95", (r) => ms(r.latency_ms.p95)],
    ["p99", (r) => ms(r.latency_ms.p99)],
    ["TTFT p50", (r) => ms(r.ttft_ms.p50)],
    ["TTFT p95", (r) => ms(r.ttft_ms.p95)],
    ["ms/tok", (r) => decimal(r.time_per_output_token_ms.p50)],
    ["tok/s", (r) => decimal(r.output_tokens_per_second.p50)],
  ], rows));
}

function drawUsage(group, costKnown) {
  for (const button of document.querySelectorAll("#dims button")) button.setAttribute("aria-pressed", String(button.dataset.dim === state.dim));
  const rows = group ? group.rows : [];
  if (!rows.length) { fill("usage", empty("No calls in this timeframe.")); return; }
  const measure = costKnown && rows.some((r) => r.cost_usd) ? (r) => r.cost_usd || 0 : (r) => (r.prompt_tokens || 0) + (r.completion_tokens || 0);
  const total = rows.reduce((sum, r) => sum + measure(r), 0) || 1;
  const columns = [
    [state.dim, (r) => keyCell(state.dim, r.key[state.dim]), "text"],
    ["calls", (r) => count(r.requests)],
    ["errors", (r) => count(r.errors)],
    ["tokens in", (r) => compact(r.prompt_tokens)],
    ["tokens out", (r) => compact(r.completion_tokens)],
  ];
  if (costKnown) columns.push(["cost", (r) => usd(r.cost_usd, r.unpriced_calls)]);
  columns.push([costKnown && rows.some((r) => r.cost_usd) ? "share of cost" : "share of tokens", (r) => meter(measure(r) / total), "bar"]);
  fill("usage", table(columns, rows));
}

function drawErrors(errors) {
  $("errors-total").textContent = errors.total_errors ? `(${count(errors.total_errors)})` : "";
  if (!errors.kinds.length) { fill("error-kinds", empty("No errors.")); return; }
  const more = errors.total_kinds - errors.kinds.length;
  fill("error-kinds", table([
    ["status", (k) => (k.status_code === null ? NONE : String(k.status_code))],
    ["error type", (k) => k.error_type || NONE, "text"],
    ["count", (k) => count(k.count)],
    ["last seen", (k) => when(k.last_seen_utc)],
    ["sample message", (k) => k.sample_message || NONE, "text message"],
  ], errors.kinds), ...(more > 0 ? [empty(`${more} more kind(s) not shown`)] : []));
}

function drawRetries(r, costKnown) {
  const any = r && (r.retried_calls || r.rate_limited || r.overloaded);
  $("retries-section").hidden = !any;
  if (!any) return;
  const rows = [
    ["retried calls (an SDK's 2nd or later attempt)", r.retried_calls, r.retried_cost_usd],
    ["429 rate limited", r.rate_limited, null],
    ["529 overloaded", r.overloaded, null],
    ["failed calls", r.failed_calls, r.failed_cost_usd],
  ];
  const columns = [["", (x) => x[0], "text"], ["calls", (x) => count(x[1])]];
  if (costKnown) columns.push(["cost", (x) => usd(x[2])]);
  fill("retries", table(columns, rows));
}

const outcome = (c) => {
  const text = c.success ? "ok" : (c.error_type || "error");
  return c.status_code === null ? text : `${c.status_code} ${text}`;
};

function drawSlowest(calls) {
  if (!calls.length) { fill("slowest", empty("No calls in this timeframe.")); return; }
  fill("slowest", table([
    ["latency ms", (c) => ms(c.response_time_ms)],
    ["time", (c) => when(c.timestamp_utc), "text"],
    ["model", (c) => label(c.model), "text"],
    ["origin", (c) => label(c.origin), "text"],
    ["provider", (c) => label(c.provider), "text"],
    ["outcome", outcome, "text"],
  ], calls));
}

function drawCalls(page) {
  $("calls-total").textContent = page.total ? `(${count(page.total)})` : "";
  $("page").textContent = page.pages ? `page ${count(page.page)} of ${count(page.pages)}` : "";
  $("newer").disabled = page.page <= 1;
  $("older").disabled = page.page >= page.pages;
  if (!page.calls.length) { fill("calls", empty("No calls in this timeframe.")); return; }
  fill("calls", table([
    ["time", (c) => when(c.timestamp_utc), "text"],
    ["model", (c) => label(c.model), "text"],
    ["provider", (c) => label(c.provider), "text"],
    ["origin", (c) => label(c.origin), "text"],
    ["agent", (c) => label(c.agent), "text"],
    ["stream", (c) => (c.is_streaming ? "yes" : "no")],
    ["outcome", outcome, "text"],
    ["latency ms", (c) => ms(c.response_time_ms)],
    ["TTFT ms", (c) => ms(c.time_to_first_token_ms)],
    ["in", (c) => compact(c.prompt_tokens)],
    ["out", (c) => compact(c.completion_tokens)],
    ["cost", (c) => usd(c.cost_usd)],
  ], page.calls));
  for (const [row, call] of Array.from($("calls").querySelectorAll("tbody tr")).map((tr, i) => [tr, page.calls[i]])) {
    if (!call.success) row.querySelectorAll("td")[6].classList.add("bad");
  }
}

// -- controls -----------------------------------------------------------------------------

// A key that filters the view when clicked (a model, an origin…); calls of none cannot be picked.
function keyCell(dim, value) {
  if (value === null || value === undefined || state.filters[dim] === value) return label(value);
  const button = el("button", { type: "button", class: "key", title: `only calls with this ${dim}` }, value);
  button.dataset.dim = dim;
  button.addEventListener("click", () => { state.filters[dim] = value; state.page = 1; show(); });
  return button;
}

function drawFilters() {
  const chips = Object.entries(state.filters).map(([dim, value]) => {
    const remove = el("button", { type: "button", class: "remove", "aria-label": `show every ${dim}` }, "×");
    remove.addEventListener("click", () => { delete state.filters[dim]; state.page = 1; show(); });
    return el("span", { class: "chip" }, `${dim} `, el("strong", {}, value), " ", remove);
  });
  $("filters").replaceChildren(...(chips.length ? [el("span", { class: "muted" }, "only calls with "), ...chips] : []));
  $("filters").hidden = chips.length === 0;
}

// The URL keeps the view (`#1w&model=gpt-4o`): a link opens the same one.
function hashOf() {
  const params = new URLSearchParams(state.filters).toString();
  return "#" + state.range + (params ? "&" + params : "");
}

function readHash() {
  const [range, ...rest] = location.hash.slice(1).split("&");
  state.range = RANGES[range] ? range : "1d";
  state.filters = {};
  for (const [dim, value] of new URLSearchParams(rest.join("&"))) if (DIMS.includes(dim) && value) state.filters[dim] = value;
}

function show() {
  for (const button of document.querySelectorAll("#ranges button")) button.setAttribute("aria-pressed", String(button.dataset.range === state.range));
  if (location.hash !== hashOf()) history.replaceState(null, "", hashOf());
  drawFilters();
  load();
}

function pick(range) {
  state.range = RANGES[range] ? range : "1d";
  state.page = 1;
  show();
}

function start() {
  for (const button of document.querySelectorAll("#ranges button")) button.addEventListener("click", () => pick(button.dataset.range));
  for (const button of document.querySelectorAll("#dims button")) {
    button.addEventListener("click", () => { if (DIMS.includes(button.dataset.dim)) { state.dim = button.dataset.dim; load(); } });
  }
  $("newer").addEventListener("click", () => { state.page = Math.max(1, state.page - 1); load(); });
  $("older").addEventListener("click", () => { state.page += 1; load(); });
  window.addEventListener("hashchange", () => { if (location.hash !== hashOf()) { readHash(); state.page = 1; show(); } });
  setInterval(() => { if ($("auto").checked && !document.hidden) load(); }, REFRESH_MS);
  readHash();
  show();
}

document.addEventListener("DOMContentLoaded", start);
