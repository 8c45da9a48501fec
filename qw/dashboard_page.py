"""The dashboard's one page: HTML, CSS and script in a constant, nothing fetched from
anywhere but the dashboard itself (it works offline and behind a firewall).

The script asks the JSON API (qw.dashboard) every REFRESH_MS and redraws:

    /api/specs                    the spec tabs, each marked live or not
    /api/specs/<spec>             the chosen spec: its runs (for the run picker)
    /api/runs/<run>               summary cards, tasks by status, recent errors
    /api/runs/<run>/timeline.svg  the Gantt chart (drawn by qw.htmlreport, as in report.html)
    /api/metrics                  the gauges: load, memory, pool use, queue
    /api/stats?spec=<spec>        the per-agent history table

The chosen spec and run live in the address's #fragment, so a reload or a shared link
shows the same view. A token in the page's own address (?token=) is passed on to every
request and transcript link. Text from the API is set with textContent, never as HTML;
only the timeline SVG, which the server escapes, is inserted as markup.
"""

from __future__ import annotations

REFRESH_MS = 2000

# Shared with the static report (qw.htmlreport), so both look alike.
CSS = """
:root{--ok:#2e9d57;--fail:#d64545;--run:#2f6fdf;--wait:#8a8f98;--warn:#b7791f;
--bg:#f4f5f7;--card:#fff;--ink:#1d2330;--mute:#667085;--line:#e4e7ec}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
background:var(--bg);color:var(--ink)}
header{display:flex;flex-wrap:wrap;align-items:center;gap:14px;padding:10px 20px;
background:#1d2330;color:#fff}
header h1{font-size:18px;margin:0 10px 0 0}
header .mute{color:#b8bfcc}
main{padding:16px 20px;max-width:1400px;margin:0 auto}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;
padding:12px 16px;margin-bottom:14px}
section.cards{display:flex;flex-wrap:wrap;gap:10px;background:none;border:0;padding:0}
h2{font-size:15px;margin:0 0 8px}
.card{flex:1 1 130px;background:var(--card);border:1px solid var(--line);border-radius:8px;
padding:8px 12px}
.card .k{color:var(--mute);font-size:11px;text-transform:uppercase;letter-spacing:.03em}
.card .v{font-size:20px;font-weight:600;white-space:nowrap}
.status{display:inline-block;padding:0 8px;border-radius:10px;font-size:12px;color:#fff;
background:var(--wait)}
.status.done{background:var(--ok)}.status.failed{background:var(--fail)}
.status.running{background:var(--run)}.status.skipped,.status.blocked{background:var(--warn)}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid var(--line);vertical-align:top}
th{color:var(--mute);font-weight:600;font-size:12px}
.timeline svg{width:100%;height:auto;display:block}
.err{color:var(--fail)}.mute{color:var(--mute)}
ul.errors{margin:0;padding-left:18px}ul.errors li{margin:3px 0}
footer{font-size:12px;padding:4px 2px}
"""

_PAGE_CSS = """
header select,header button{font:inherit;padding:2px 6px}
nav#specs{display:flex;gap:6px;flex-wrap:wrap}
nav#specs a{color:#fff;text-decoration:none;padding:3px 10px;border-radius:12px;
border:1px solid #4a5265}
nav#specs a.on{background:#fff;color:#1d2330}
.live{display:inline-block;width:8px;height:8px;border-radius:4px;background:#3ddc84;
margin-left:6px}
.grid{display:grid;grid-template-columns:2fr 1fr;gap:14px}
.grid>section{margin:0}
@media (max-width:900px){.grid{grid-template-columns:1fr}}
.group{margin-bottom:8px}.group h3{font-size:13px;margin:6px 0 4px}
.chips{display:flex;flex-wrap:wrap;gap:6px}
.chip{border:1px solid var(--line);border-left:4px solid var(--wait);border-radius:6px;
padding:3px 8px;max-width:360px}
.chip.done{border-left-color:var(--ok)}.chip.failed{border-left-color:var(--fail)}
.chip.running{border-left-color:var(--run)}
.chip.skipped,.chip.blocked{border-left-color:var(--warn)}
.chip .t{color:var(--mute);font-size:12px}
.gauge{margin:6px 0}.gauge .row{display:flex;justify-content:space-between;font-size:12px}
.meter{height:10px;background:var(--line);border-radius:5px;overflow:hidden}
.meter div{height:100%;background:var(--run)}
.meter div.hot{background:var(--fail)}
#problem{display:none;background:#fdecec;border-color:#f5b5b5;color:var(--fail)}
"""

_BODY = """
<header><h1>qw</h1><nav id="specs"></nav>
<label class="mute">run <select id="run"></select></label>
<span id="updated" class="mute"></span></header>
<main>
<section id="problem"></section>
<section class="cards" id="summary"></section>
<div class="grid">
<section><h2>Tasks by status</h2><div id="tasks"><p class="mute">loading…</p></div></section>
<section><h2>Resources</h2><div id="gauges"></div></section>
</div>
<section><h2>Timeline <span class="mute" id="timeline-note"></span></h2>
<div class="timeline" id="timeline"></div></section>
<section><h2>Recent errors</h2><div id="errors"></div></section>
<section><h2>History: all recorded runs of this spec</h2><div id="stats"></div></section>
</main>
"""

_SCRIPT = r"""
"use strict";
const REFRESH_MS = %(refresh)d;
const TOKEN = new URLSearchParams(location.search).get("token");
const ORDER = ["running", "failed", "pending", "ready", "blocked", "skipped", "done"];
let chosen = {spec: null, run: null};
let lastStats = 0;

function withToken(path) {
  if (!TOKEN) return path;
  return path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(TOKEN);
}
async function get(path, asText) {
  const response = await fetch(withToken(path), {cache: "no-store"});
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { message = (await response.json()).error || message; } catch (e) {}
    throw new Error(path + ": " + message);
  }
  return asText ? response.text() : response.json();
}
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined) node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}
function fill(id, ...children) {
  const node = document.getElementById(id);
  node.replaceChildren(...children.filter(c => c !== null && c !== undefined));
  return node;
}
function money(x) { return "$" + (x || 0).toFixed(4); }
function number(x) { return (x || 0).toLocaleString("en-US"); }
function seconds(s) {
  if (s === null || s === undefined) return "-";
  if (s < 10) return s.toFixed(1) + "s";
  s = Math.round(s);
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(s %% 60).padStart(2, "0") + "s";
  return Math.floor(s / 3600) + "h" + String(Math.floor(s %% 3600 / 60)).padStart(2, "0") + "m";
}
function clock(t) { return t ? new Date(t * 1000).toLocaleString() : "-"; }
function enc(x) { return encodeURIComponent(x); }

function readHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  chosen.spec = params.get("spec"); chosen.run = params.get("run");
}
function writeHash() {
  const params = new URLSearchParams();
  if (chosen.spec) params.set("spec", chosen.spec);
  if (chosen.run) params.set("run", chosen.run);
  history.replaceState(null, "", location.pathname + location.search + "#" + params);
}

function drawSpecs(specs) {
  const links = specs.map(s => {
    const a = el("a", {href: "#spec=" + enc(s.spec), class: s.spec === chosen.spec ? "on" : null,
                       title: s.run_id ? "run " + s.run_id : "never run"}, s.spec);
    if (s.live) a.append(el("span", {class: "live", title: "running now"}));
    a.addEventListener("click", e => { e.preventDefault(); chosen = {spec: s.spec, run: null};
                                       writeHash(); refresh(); });
    return a;
  });
  fill("specs", ...(links.length ? links : [el("span", {class: "mute"}, "no specs")]));
}
function drawRunPicker(spec) {
  const select = document.getElementById("run");
  const options = spec.runs.map(r => el("option", {value: r.run_id},
    r.run_id + (r.live ? " (live)" : " (" + r.status + ")")));
  select.replaceChildren(...options);
  select.value = chosen.run || "";
}
function drawSummary(run, spec) {
  const t = run.totals || {};
  const cards = [
    ["run", run.run_id + (run.live ? " · live" : "")], ["status", run.status],
    ["phase", spec.phase || "-"],
    ["tasks done", (t.done || 0) + "/" + (t.tasks || 0)], ["failed", t.failed || 0],
    ["running", t.running || 0], ["attempts", run.attempts.length],
    ["cost", money(t.cost_usd)],
    ["tokens in / out", number(t.input_tokens) + " / " + number(t.output_tokens)],
    ["wall time", seconds((run.live ? run.now : run.ended_at || run.last_event_at || 0)
                          - (run.started_at || 0))],
  ];
  fill("summary", ...cards.map(([k, v]) =>
    el("div", {class: "card"}, el("div", {class: "k"}, k), el("div", {class: "v"}, v))));
}
function runningDetail(task, run) {
  const p = task.progress || {};
  const open = (run.attempts || []).filter(a => a.task === task.id && !a.ended_at).pop();
  const parts = [];
  if (open) parts.push("attempt " + open.attempt + ", " + seconds(run.now - open.started_at));
  if (p.tool) parts.push("using " + p.tool);
  if (p.output_tokens) parts.push(number(p.output_tokens) + " tokens out");
  if (p.rss_mb) parts.push(Math.round(p.rss_mb) + " MB");
  return parts.join(" · ");
}
function drawTasks(run) {
  const groups = {};
  for (const task of run.tasks) (groups[task.status] = groups[task.status] || []).push(task);
  const chip = task => {
    const tried = task.attempts ? task.attempts + " attempt(s), " + seconds(task.duration_s) : "";
    const detail = task.status === "running" ? runningDetail(task, run) : task.error || tried;
    return el("div", {class: "chip " + task.status, "data-task": task.id,
                      title: task.error || task.title},
              el("b", {}, task.id), " " + task.title,
              detail ? el("div", {class: "t"}, detail) : null);
  };
  const blocks = ORDER.filter(s => groups[s]).map(status => el("div",
    {class: "group", "data-status": status},
    el("h3", {}, el("span", {class: "status " + status}, status), " " + groups[status].length),
    el("div", {class: "chips"}, ...groups[status].map(chip))));
  fill("tasks", ...(blocks.length ? blocks : [el("p", {class: "mute"}, "no tasks")]));
}
function gauge(name, value, shown) {
  const pct = value === null || value === undefined ? 0 : Math.max(0, Math.min(100, value));
  return el("div", {class: "gauge", "data-gauge": name},
    el("div", {class: "row"}, el("span", {}, name), el("span", {}, shown)),
    el("div", {class: "meter"},
       el("div", {class: pct >= 90 ? "hot" : null, style: "width:" + pct + "%%"})));
}
function drawGauges(metrics) {
  const r = metrics.resources || {}, pool = metrics.pool || {};
  const known = x => x !== null && x !== undefined;
  const pct = x => known(x) ? x.toFixed(0) + "%%" : "unknown";
  const size = pool.size || 0;
  const load = known(r.load1) ? " (" + r.load1 + " on " + r.cpu_count + " cpus)" : "";
  const free = r.memory_available_mb
    ? ", " + number(Math.round(r.memory_available_mb)) + " MB free" : "";
  fill("gauges",
    gauge("CPU load", r.load_per_cpu_percent, pct(r.load_per_cpu_percent) + load),
    gauge("memory", r.memory_used_percent, pct(r.memory_used_percent) + free),
    gauge("pool", size ? 100 * pool.running / size : 0,
          (pool.running || 0) + " running" + (size ? " of " + size : "")),
    el("p", {class: "mute"}, "queue: " + (pool.queued || 0) + " waiting · live runs: " +
       (metrics.live_runs || []).length + " · " + (r.backend || "")));
}
function drawErrors(run) {
  const failed = run.attempts.filter(a => a.outcome && a.outcome !== "ok").reverse().slice(0, 10);
  if (!failed.length) { fill("errors", el("p", {class: "mute"}, "none")); return; }
  const transcript = a => withToken("/api/runs/" + enc(run.run_id) + "/transcripts/" +
                                    enc(a.task) + "/" + a.launch);
  fill("errors", el("ul", {class: "errors"}, ...failed.map(a =>
    el("li", {class: "error", "data-task": a.task},
       el("b", {}, "task " + a.task), " attempt " + a.attempt + " · " + clock(a.ended_at) + " · ",
       el("span", {class: "err"}, a.outcome), " " + (a.message || "") + " ",
       el("a", {href: transcript(a), target: "_blank"}, "transcript")))));
}
function drawStats(stats) {
  if (!stats.overall.attempts) {
    fill("stats", el("p", {class: "mute"}, "no attempts recorded yet"));
    return;
  }
  const head = ["agent", "attempts", "ok", "median", "p95", "cost", "peak jobs", "peak memory",
                "retries by cause"];
  const cells = (name, f) => [
    name, f.attempts,
    f.success_rate === null ? "-" : Math.round(100 * f.success_rate) + "%%",
    seconds(f.median_duration_s), seconds(f.p95_duration_s), money(f.cost_usd),
    f.peak_concurrency,
    f.peak_memory_mb === null ? "-" : number(Math.round(f.peak_memory_mb)) + " MB",
    Object.entries(f.retries_by_cause).map(([k, v]) => k + " " + v).join(", ") || "-"];
  const rows = Object.entries(stats.agents).concat([["all", stats.overall]]);
  fill("stats", el("table", {id: "stats-table"}, el("tr", {}, ...head.map(h => el("th", {}, h))),
    ...rows.map(([name, f]) => el("tr", {}, ...cells(name, f).map(v => el("td", {}, v))))),
    el("p", {class: "mute"}, stats.runs + " run(s)"));
}
function problem(message) {
  const box = document.getElementById("problem");
  box.style.display = message ? "block" : "none";
  box.textContent = message || "";
}

async function refresh() {
  clearTimeout(refresh.timer);
  try {
    const specs = (await get("/api/specs")).specs;
    if (!specs.some(s => s.spec === chosen.spec)) {
      const first = specs.find(s => s.live) || specs.find(s => s.run_id) || specs[0];
      chosen.spec = first ? first.spec : null;
      chosen.run = null;
    }
    drawSpecs(specs);
    if (!chosen.spec) { problem("no specs in this repository (.claude/specs/)"); return; }
    const spec = await get("/api/specs/" + enc(chosen.spec));
    if (!spec.runs.some(r => r.run_id === chosen.run)) chosen.run = spec.run_id;
    writeHash();
    drawRunPicker(spec);
    if (!chosen.run) {
      drawTasks({tasks: spec.tasks});
      fill("summary");
      fill("timeline", el("p", {class: "mute"}, "never run"));
      fill("errors", el("p", {class: "mute"}, "none"));
    } else {
      const base = "/api/runs/" + enc(chosen.run);
      const [run, svg] = await Promise.all([get(base), get(base + "/timeline.svg", true)]);
      drawSummary(run, spec); drawTasks(run); drawErrors(run);
      document.getElementById("timeline").innerHTML = svg;
      document.getElementById("timeline-note").textContent =
        run.workers.length + " worker(s), peak " + run.peak_concurrency + " at once";
    }
    drawGauges(await get("/api/metrics"));
    if (Date.now() - lastStats > 10000 || !document.getElementById("stats-table")) {
      drawStats(await get("/api/stats?spec=" + enc(chosen.spec)));
      lastStats = Date.now();
    }
    problem(null);
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (error) {
    problem(String(error.message || error));
  } finally {
    refresh.timer = setTimeout(refresh, REFRESH_MS);
  }
}
document.getElementById("run").addEventListener("change", e => {
  chosen.run = e.target.value; writeHash(); refresh();
});
window.addEventListener("hashchange", () => { readHash(); refresh(); });
readHash();
refresh();
"""

PAGE = ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        "<title>qw dashboard</title><style>" + CSS + _PAGE_CSS + "</style></head><body>"
        + _BODY + "<script>" + _SCRIPT % {"refresh": REFRESH_MS} + "</script></body></html>\n")
