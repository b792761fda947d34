// modelplane dashboard: talks only to /api/v1 and /metrics, like any client.
"use strict";
const HISTORY = 90;            // points kept per series (2 s apart: 3 minutes)
const POLL_MS = 2000;
const series = {};             // name -> [{t, v}]
let last = null;               // previous /metrics parse, for rates

const $ = (html) => { const t = document.createElement("template"); t.innerHTML = html.trim(); return t.content.firstChild; };
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
async function api(path) {
  const r = await fetch(path, {credentials: "same-origin"});
  if (r.status === 401) { location.href = "/login"; throw new Error("signed out"); }
  if (!r.ok) throw new Error(`${path}: ${r.status}`);
  return path === "/metrics" ? r.text() : r.json();
}

// ---- Prometheus text format -------------------------------------------------------------
function parseMetrics(text) {
  const out = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = line.match(/^([a-zA-Z_:][\w:]*)(\{(.*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    if (m[3]) for (const p of m[3].matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[p[1]] = p[2];
    out.push({name: m[1], labels, value: parseFloat(m[4])});
  }
  return out;
}
const sum = (ms, name, f = () => true) => ms.filter((s) => s.name === name && f(s.labels)).reduce((a, s) => a + s.value, 0);
function quantile(q, now, before, name, f = () => true) {
  // from cumulative histogram buckets summed over labels, the increase since the last poll
  const buckets = {};
  for (const s of now) if (s.name === name + "_bucket" && f(s.labels)) buckets[s.labels.le] = (buckets[s.labels.le] || 0) + s.value;
  if (before) for (const s of before) if (s.name === name + "_bucket" && f(s.labels)) buckets[s.labels.le] -= s.value;
  const les = Object.keys(buckets).map((le) => [le === "+Inf" ? Infinity : parseFloat(le), buckets[le]]).sort((a, b) => a[0] - b[0]);
  const total = les.length ? les[les.length - 1][1] : 0;
  if (total <= 0) return null;
  let prevLe = 0, prevCount = 0;
  for (const [le, count] of les) {
    if (count >= q * total) {
      if (le === Infinity) return prevLe;
      return prevLe + (le - prevLe) * ((q * total - prevCount) / Math.max(count - prevCount, 1e-9));
    }
    prevLe = le; prevCount = count;
  }
  return null;
}
function push(name, value) {
  const list = series[name] || (series[name] = []);
  list.push({t: Date.now(), v: value});
  if (list.length > HISTORY) list.shift();
}

// ---- charts (inline SVG, no libraries) --------------------------------------------------
function chart(title, names, unit) {
  const w = 360, h = 120, colors = ["#2764d8", "#d8552a", "#16966b", "#8c3fc8"];
  const all = names.flatMap((n) => series[n] || []);
  const max = Math.max(1e-9, ...all.map((p) => p.v));
  const t0 = Date.now() - HISTORY * POLL_MS;
  const lines = names.map((n, i) => {
    const pts = (series[n] || []).map((p) => `${((p.t - t0) / (HISTORY * POLL_MS) * w).toFixed(1)},${(h - p.v / max * (h - 12)).toFixed(1)}`);
    return `<polyline fill="none" stroke="${colors[i % 4]}" stroke-width="1.6" points="${pts.join(" ")}"/>`;
  }).join("");
  const latest = names.map((n, i) => { const s = series[n]; return `<span class="c${i % 4}">${esc(n.split(":").pop())} ${s && s.length ? fmt(s[s.length - 1].v, unit) : "-"}</span>`; }).join(" · ");
  return `<div class="chart" data-chart="${esc(title)}"><h3>${esc(title)}</h3><svg viewBox="0 0 ${w} ${h}" width="100%" height="${h}">
    <line x1="0" y1="${h - 0.5}" x2="${w}" y2="${h - 0.5}" stroke="#ccd"/><text x="2" y="10">${esc(fmt(max, unit))}</text>${lines}</svg>
    <div class="muted">${latest}</div></div>`;
}
function fmt(v, unit) {
  if (v === null || v === undefined || Number.isNaN(v)) return "-";
  if (unit === "ms") return `${(v * 1000).toFixed(v < 0.01 ? 2 : 1)} ms`;
  if (unit === "%") return `${v.toFixed(1)} %`;
  if (unit === "MB") return `${(v / 2 ** 20).toFixed(0)} MB`;
  if (unit === "/s") return `${v.toFixed(v < 10 ? 1 : 0)}/s`;
  return String(Math.round(v * 100) / 100);
}

// ---- sampling ---------------------------------------------------------------------------
async function sample() {
  const ms = parseMetrics(await api("/metrics"));
  const now = Date.now();
  if (last) {
    const dt = (now - last.t) / 1000;
    const rate = (name, f) => Math.max(0, (sum(ms, name, f) - sum(last.ms, name, f)) / dt);
    const total = rate("modelplane_requests_total");
    push("requests:req/s", total);
    push("errors:error %", total ? rate("modelplane_requests_total", (l) => l.code !== "200") / total * 100 : 0);
    push("latency:p50", quantile(0.5, ms, last.ms, "modelplane_request_duration_seconds"));
    push("latency:p99", quantile(0.99, ms, last.ms, "modelplane_request_duration_seconds"));
    const models = new Set(ms.filter((s) => s.name === "modelplane_requests_total").map((s) => s.labels.model));
    for (const m of models) push(`model:${m}`, rate("modelplane_requests_total", (l) => l.model === m));
    // each version of a deployment side by side: requests/s, errors/s and p99
    const versions = new Set(ms.filter((s) => s.name === "modelplane_requests_total").map((s) => `${s.labels.model}\t${s.labels.version}`));
    for (const key of versions) {
      const [m, v] = key.split("\t");
      const of = (l) => l.model === m && l.version === v;
      push(`req:${m}:v${v}`, rate("modelplane_requests_total", of));
      push(`err:${m}:v${v}`, rate("modelplane_requests_total", (l) => of(l) && l.code >= "500"));
      push(`p99:${m}:v${v}`, quantile(0.99, ms, last.ms, "modelplane_request_duration_seconds", of));
    }
    // language models: tokens/s each way, time to first token and between tokens (p50)
    const generating = new Set(ms.filter((s) => s.name === "modelplane_generation_streams").map((s) => s.labels.model));
    for (const m of generating) {
      const of = (l) => l.model === m;
      push(`tokens:${m}:out`, rate("modelplane_generation_tokens_total", (l) => of(l) && l.direction === "out"));
      push(`tokens:${m}:in`, rate("modelplane_generation_tokens_total", (l) => of(l) && l.direction === "in"));
      push(`ttft:${m}:p50`, quantile(0.5, ms, last.ms, "modelplane_generation_first_token_seconds", of));
      push(`itl:${m}:p50`, quantile(0.5, ms, last.ms, "modelplane_generation_inter_token_seconds", of));
    }
  }
  const gauges = {};  // summed over a deployment's replicas
  for (const s of ms) {
    if (s.name === "modelplane_generation_streams") gauges[`streams:${s.labels.model}:${s.labels.state}`] = (gauges[`streams:${s.labels.model}:${s.labels.state}`] || 0) + s.value;
    if (s.name === "modelplane_drift_psi") { const k = `psi:${s.labels.model}:${s.labels.feature}`; gauges[k] = Math.max(gauges[k] || 0, s.value); }
    if (s.name === "modelplane_generation_kv_cache_usage") gauges[`kv:${s.labels.model}:used`] = Math.max(gauges[`kv:${s.labels.model}:used`] || 0, s.value * 100);
  }
  for (const [name, value] of Object.entries(gauges)) push(name, value);
  push("node:cpu %", sum(ms, "modelplane_node_cpu_percent"));
  const total = sum(ms, "modelplane_node_memory_total_bytes");
  push("node:memory %", total ? sum(ms, "modelplane_node_memory_used_bytes") / total * 100 : 0);
  for (const s of ms) {
    if (s.name === "modelplane_replica_cpu_percent") push(`cpu:${s.labels.replica}`, s.value);
    if (s.name === "modelplane_replica_resident_memory_bytes") push(`rss:${s.labels.replica}`, s.value);
  }
  last = {t: now, ms};
  return ms;
}

// ---- pages ------------------------------------------------------------------------------
async function overview(view) {
  const [deps, models] = await Promise.all([api("/api/v1/deployments"), api("/api/v1/models")]);
  const latest = (n) => { const s = series[n]; return s && s.length ? s[s.length - 1].v : null; };
  const replicas = deps.reduce((a, d) => a + d.ready_replicas, 0);
  view.replaceChildren($(`<div><div class="cards">
    <div class="card"><div class="v" id="card-deployments">${deps.length}</div><div class="k">deployments</div></div>
    <div class="card"><div class="v">${replicas}</div><div class="k">ready replicas</div></div>
    <div class="card"><div class="v" id="card-rps">${fmt(latest("requests:req/s"), "/s")}</div><div class="k">requests</div></div>
    <div class="card"><div class="v">${fmt(latest("errors:error %"), "%")}</div><div class="k">errors</div></div>
    <div class="card"><div class="v">${fmt(latest("latency:p50"), "ms")} / ${fmt(latest("latency:p99"), "ms")}</div><div class="k">p50 / p99</div></div>
    <div class="card"><div class="v">${fmt(latest("node:cpu %"), "%")}</div><div class="k">node CPU</div></div></div>
    <div class="charts">${chart("Requests/s", ["requests:req/s"], "/s")}${chart("Latency", ["latency:p50", "latency:p99"], "ms")}
    ${chart("Error rate", ["errors:error %"], "%")}${chart("Node CPU and memory", ["node:cpu %", "node:memory %"], "%")}</div>
    <h2>Deployments</h2><table id="deployments"><thead><tr><th>name</th><th>model</th><th>state</th><th>replicas</th><th>endpoint</th></tr></thead><tbody>
    ${deps.map((d) => `<tr><td><a href="#/deployments/${esc(d.name)}">${esc(d.name)}</a></td><td>${esc(d.ref)}${d.traffic.length > 1 ? ` + ${esc(d.traffic[1].ref)} ${share(d.traffic[1])}` : ""}</td><td class="${esc(d.state)}">${esc(d.state)}</td><td>${d.ready_replicas}/${d.desired_replicas}</td><td>${esc(d.endpoint)}</td></tr>`).join("")}</tbody></table>
    <h2>Models</h2><table id="models"><thead><tr><th>name</th><th>latest</th><th>aliases</th></tr></thead><tbody>
    ${models.map((m) => `<tr><td><a href="#/models/${esc(m.name)}">${esc(m.name)}</a></td><td>${m.latest_version ?? "-"}</td><td>${esc(Object.entries(m.aliases).map(([a, v]) => `${a}→${v}`).join(", "))}</td></tr>`).join("")}</tbody></table></div>`));
}

function report(r) {
  if (!r) return '<span class="muted">no report (pushed as ONNX)</span>';
  const outs = (r.outputs || []).map((o) => `<li>${esc(o.name)}: ${o.label_agreement !== undefined ? `${(o.label_agreement * 100).toFixed(1)}% labels agree` : o.max_abs_error !== undefined ? `max abs ${o.max_abs_error.toExponential(1)}, max rel ${o.max_rel_error.toExponential(1)}` : esc(o.problem || "")} <span class="${o.passed ? "passed" : "failed"}">${o.passed ? "within tolerance" : "outside tolerance"}</span></li>`).join("");
  const opt = r.optimization ? `<p>latency batch 1: ${r.optimization.latency.batch_1.before_ms} → ${r.optimization.latency.batch_1.after_ms} ms (${r.optimization.latency.batch_1.speedup}x); batch 32: ${r.optimization.latency.batch_32.before_ms} → ${r.optimization.latency.batch_32.after_ms} ms (${r.optimization.latency.batch_32.speedup}x)</p>` : "";
  return `${opt}<ul>${outs}</ul>`;
}

async function modelPage(view, name) {
  const m = await api(`/api/v1/models/${encodeURIComponent(name)}`);
  view.replaceChildren($(`<div><h2>${esc(m.name)}</h2>${m.versions.slice().reverse().map((v) => `<section class="chart"><h3>${esc(v.ref)} · ${esc(v.source_format)} · sha256:${esc(v.digest.slice(0, 12))}${v.aliases.length ? " · " + esc(v.aliases.join(", ")) : ""}</h3>
    <p class="muted">${esc(v.description)} — by ${esc(v.created_by)} at ${esc(v.created_at)}${v.parent ? ` · from ${esc(v.parent)}` : ""}</p>
    <table><tr><th></th><th>name</th><th>datatype</th><th>shape</th></tr>${v.signature.inputs.map((t) => `<tr><td>input</td><td>${esc(t.name)}</td><td>${esc(t.datatype)}</td><td>${esc(JSON.stringify(t.shape))}</td></tr>`).join("")}${v.signature.outputs.map((t) => `<tr><td>output</td><td>${esc(t.name)}</td><td>${esc(t.datatype)}</td><td>${esc(JSON.stringify(t.shape))}</td></tr>`).join("")}</table>
    <div>${report(v.report)}</div></section>`).join("")}</div>`));
}

async function deploymentPage(view, name) {
  const d = await api(`/api/v1/deployments/${encodeURIComponent(name)}`);
  const logs = await api(`/api/v1/deployments/${encodeURIComponent(name)}/logs?limit=60`);
  view.replaceChildren($(`<div><h2>${esc(d.name)} <span class="${esc(d.state)}">${esc(d.state)}</span></h2>
    <p>${esc(d.ref)} · ${d.ready_replicas}/${d.desired_replicas} ready${d.autoscaling ? ` · autoscaled ${d.autoscaling.min_replicas}-${d.autoscaling.max_replicas} at ${d.autoscaling.target_ongoing_requests} in flight per replica` : ""} · ${d.resources.cpu} CPU, ${d.resources.memory_mb} MB per replica · batch ≤ ${d.config.max_batch_size} · queue ≤ ${d.config.max_queued_requests}${d.last_failure ? ` · last failure: ${esc(d.last_failure)}` : ""}</p>
    ${versionsTable(d)}
    <table id="replicas"><tr><th>replica</th><th>version</th><th>state</th><th>pid</th><th>node</th><th>message</th></tr>${d.replicas.map((r) => `<tr><td>${esc(r.id)}</td><td>${r.version}</td><td class="${esc(r.state)}">${esc(r.state)}</td><td>${r.pid ?? "-"}</td><td title="${esc(r.placement || "")}">${esc(r.node || "-")}</td><td>${esc(r.message)}</td></tr>`).join("")}</table>
    ${(d.pending || []).length ? `<p class="pending" id="pending">${d.pending.length} replica(s) pending: ${esc([...new Set(d.pending)].join("; "))}</p>` : ""}
    <div class="charts">${chart("Requests/s", [`model:${d.name}`], "/s")}${d.traffic.length > 1 ? chart("Requests/s by version", d.traffic.map((t) => `req:${d.name}:v${t.version}`), "/s") + chart("Errors/s by version", d.traffic.map((t) => `err:${d.name}:v${t.version}`), "/s") + chart("p99 by version", d.traffic.map((t) => `p99:${d.name}:v${t.version}`), "ms") : ""}${chart("Replica CPU", d.replicas.map((r) => `cpu:${r.id}`), "%")}${chart("Replica memory", d.replicas.map((r) => `rss:${r.id}`), "MB")}${generationCharts(d.name)}${driftChart(d.name)}</div>
    <h3>Scaling events</h3><table id="events"><tr><th>time</th><th>action</th><th>replica</th><th>reason</th></tr>${(d.events || []).slice().reverse().map((e) => `<tr><td>${esc(e.time)}</td><td>${esc(e.action)}</td><td>${esc(e.replica)}</td><td>${esc(e.reason)}</td></tr>`).join("")}</table>
    <h3>Logs</h3><pre class="logs" id="logs">${logs.map((l) => esc(`${l.time} ${l.level} ${l.replica || "-"} ${l.request_id || "-"} ${l.message} ${JSON.stringify(l.fields || {})}`)).join("\n")}</pre></div>`));
  const pre = document.getElementById("logs"); pre.scrollTop = pre.scrollHeight;
}

function share(t) { return t.role === "shadow" ? "shadow" : `${t.percent}%`; }

function versionsTable(d) {
  // the versions a deployment serves, with what this server measured of each, and its rollout
  const rows = d.traffic.map((t) => `<tr><td>${esc(t.ref)}</td><td>${esc(t.role)}</td><td>${share(t)}</td><td>${t.ready_replicas}</td><td>${t.requests}</td><td>${t.errors}</td><td>${t.p99_ms === null ? "-" : t.p99_ms.toFixed(1) + " ms"}</td><td>${t.role === "current" ? "" : `${t.disagreeing_rows} of ${t.compared_rows}`}</td></tr>`).join("");
  const policy = d.rollout ? `<p class="muted">rollout policy: steps ${d.rollout.steps.join(", ")}% every ${d.rollout.interval_s} s; rolls back above ${(d.rollout.max_error_rate * 100).toFixed(1)}% errors, ${d.rollout.max_p99_ratio}x p99 or ${(d.rollout.max_disagreement * 100).toFixed(1)}% disagreement</p>` : "";
  const status = d.rollout_status ? `<p id="rollout">rollout: ${esc(d.rollout_status)}</p>` : "";
  const lastOne = d.last_rollout ? `<p id="last-rollout" class="${d.last_rollout.result === "promoted" ? "passed" : "failed"}">last: ${esc(d.last_rollout.version)} ${esc(d.last_rollout.result)} — ${esc(d.last_rollout.reason)}</p>` : "";
  const table = d.traffic.length > 1 ? `<table id="versions"><tr><th>version</th><th>role</th><th>share</th><th>ready</th><th>requests</th><th>errors</th><th>p99</th><th>disagreeing rows</th></tr>${rows}</table>` : "";
  return `${table}${policy}${status}${lastOne}`;
}

function driftChart(name) {
  // each input feature's and the prediction's PSI against the rows the deployment first served
  const keys = Object.keys(series).filter((k) => k.startsWith(`psi:${name}:`));
  return keys.length ? chart("Drift (PSI; above 0.2: significant)", keys, "") : "";
}

function generationCharts(name) {
  // a language model's deployment: what its replicas' engines report
  if (!series[`streams:${name}:running`]) return "";
  return chart("Tokens/s", [`tokens:${name}:out`, `tokens:${name}:in`], "/s")
    + chart("Time to first token · between tokens", [`ttft:${name}:p50`, `itl:${name}:p50`], "ms")
    + chart("Streams", [`streams:${name}:running`, `streams:${name}:waiting`], "")
    + chart("KV cache", [`kv:${name}:used`], "%");
}

async function nodesPage(view) {
  const [nodes, ms] = await Promise.all([api("/api/v1/nodes"), last ? last.ms : sample()]);
  const g = (n) => sum(ms, n);
  const used = (n, k) => `${+n.allocated[k].toFixed(2)} / ${n.capacity[k]}`;
  view.replaceChildren($(`<div><h2>Nodes</h2><table id="nodes"><tr><th>node</th><th>state</th><th>address</th><th>zone</th><th>type</th><th>CPU</th><th>memory (MB)</th><th>GPU</th><th>replicas</th><th>$/hour</th><th>maintenance</th></tr>
    ${nodes.map((n) => `<tr><td>${esc(n.id)}</td><td class="${esc(n.state)}">${esc(n.state)}</td><td>${esc(n.address)}</td><td>${esc(n.zone || "-")}</td><td>${esc(n.instance_type || "-")}</td><td>${used(n, "cpu")}</td><td>${used(n, "memory_mb")}</td><td>${used(n, "gpus")}${n.gpu_type ? " " + esc(n.gpu_type) : ""}</td><td>${n.replicas}</td><td>${n.cost_per_hour.toFixed(3)}</td><td>${esc(n.maintenance || "")}</td></tr>`).join("")}</table>
    <h3>This machine</h3><table id="machine"><tr><th>CPU</th><th>memory</th><th>network in / out</th><th>replica processes</th></tr>
    <tr><td>${fmt(g("modelplane_node_cpu_percent"), "%")}</td><td>${fmt(g("modelplane_node_memory_used_bytes"), "MB")} of ${fmt(g("modelplane_node_memory_total_bytes"), "MB")}</td>
    <td>${fmt(g("modelplane_node_network_received_bytes_total"), "MB")} / ${fmt(g("modelplane_node_network_sent_bytes_total"), "MB")}</td><td>${g("modelplane_replicas")}</td></tr></table>
    <div class="charts">${chart("Node CPU and memory", ["node:cpu %", "node:memory %"], "%")}</div></div>`));
}

// ---- keys: list, create (the secret is shown once, in the page only), revoke ----------------
const ROLES = ["invoker", "viewer", "publisher", "operator", "admin"];
let confirmRevoke = null;      // the key id whose Revoke button asks for a second click
async function send(method, path, body) {
  // the page's own fetch: the browser adds this origin's Origin header, so the CSRF check passes
  const r = await fetch(path, {method, credentials: "same-origin",
    headers: body ? {"content-type": "application/json"} : {}, body: body ? JSON.stringify(body) : undefined});
  if (r.status === 401) { location.href = "/login"; throw new Error("signed out"); }
  const doc = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(doc.error || `${path}: ${r.status}`);
  return doc;
}
function keyForm() {
  return $(`<div id="keys-page"><h2>Keys</h2>
    <form id="key-create" class="key-form" autocomplete="off"><strong>New key</strong>
      <label>name <input name="name" required maxlength="128" placeholder="ci"></label>
      <label>role <select name="role">${ROLES.map((r) => `<option>${r}</option>`).join("")}</select></label>
      <label>models <input name="models" placeholder="fraud-*, iris (empty: every model)"></label>
      <label>expires <input name="expires" placeholder="30d (empty: never)"></label>
      <label>rate/s <input name="rate_limit" type="number" min="0" step="any"></label>
      <label>burst <input name="burst" type="number" min="1" step="1"></label>
      <label>at once <input name="max_concurrent" type="number" min="1" step="1"></label>
      <label>per day <input name="daily" type="number" min="1" step="1"></label>
      <button type="submit">Create</button></form>
    <p id="key-error" class="failed" hidden></p>
    <div id="key-secret" class="secret" hidden><p>The secret of key <code id="key-secret-id"></code>, shown this once (only its hash is kept; leaving this page forgets it):</p>
      <pre id="key-secret-value"></pre><button type="button" id="key-secret-hide">Done</button></div>
    <div id="keys-list"></div>
    <p class="muted">Limited: requests refused with 429 since the server started. Change a key's limits with <code>modelplane keys update ID --rate-limit N --burst N --max-concurrent N --daily N</code> (0 removes one).</p></div>`);
}
function keyError(message) {
  const el = document.getElementById("key-error");
  el.textContent = message || "";
  el.hidden = !message;
}
async function createKey(event) {
  event.preventDefault();
  const form = event.target;
  const f = Object.fromEntries(new FormData(form));
  const body = {name: f.name.trim(), role: f.role};
  const models = f.models.split(",").map((m) => m.trim()).filter(Boolean);
  if (models.length) body.models = models;
  if (f.expires.trim()) body.expires = f.expires.trim();
  for (const k of ["rate_limit", "burst", "max_concurrent", "daily"]) if (f[k] !== "") body[k] = Number(f[k]);
  try {
    const made = await send("POST", "/api/v1/keys", body);
    keyError("");
    form.reset();
    document.getElementById("key-secret-id").textContent = made.id;
    document.getElementById("key-secret-value").textContent = made.secret;
    document.getElementById("key-secret").hidden = false;
    await render();
  } catch (e) { keyError(e.message); }
}
async function onKeyClick(event) {
  const button = event.target.closest("button");
  if (!button) return;
  if (button.id === "key-secret-hide") {
    document.getElementById("key-secret-value").textContent = "";
    document.getElementById("key-secret").hidden = true;
  } else if (button.dataset.revoke) {
    const id = button.dataset.revoke;
    if (confirmRevoke !== id) { confirmRevoke = id; await render(); return; }
    confirmRevoke = null;
    try { await send("DELETE", `/api/v1/keys/${encodeURIComponent(id)}`); keyError(""); } catch (e) { keyError(e.message); }
    await render();
  } else if (button.dataset.cancel) { confirmRevoke = null; await render(); }
}

async function keysPage(view) {
  // each key's limits (/api/v1/keys: admin keys only) and its refusals (429s) from /metrics
  const r = await fetch("/api/v1/keys", {credentials: "same-origin"});
  if (r.status === 401) { location.href = "/login"; return; }
  if (!r.ok) { view.replaceChildren($(`<div><h2>Keys</h2><p class="muted">Only an admin key can list keys (${r.status}).</p></div>`)); return; }
  const [keys, ms] = await Promise.all([r.json(), last ? last.ms : sample()]);
  const limited = (id, limit) => sum(ms, "modelplane_key_requests_limited_total", (l) => l.key_id === id && (!limit || l.limit === limit));
  const limits = (k) => [k.rate_limit != null ? `${k.rate_limit}/s burst ${k.burst ?? "auto"}` : "", k.max_concurrent != null ? `${k.max_concurrent} at once` : "", k.daily != null ? `${k.daily}/day` : ""].filter(Boolean).join(", ") || "-";
  const action = (k) => k.state === "revoked" ? "" : confirmRevoke === k.id
    ? `<button type="button" data-revoke="${esc(k.id)}">Confirm revoke</button> <button type="button" data-cancel="1">Cancel</button>`
    : `<button type="button" data-revoke="${esc(k.id)}">Revoke</button>`;
  // the form and a shown secret stay put across the 2 s refresh: only the table is redrawn
  let page = view.querySelector("#keys-page");
  if (!page) {
    page = keyForm();
    page.querySelector("#key-create").addEventListener("submit", createKey);
    page.addEventListener("click", onKeyClick);
    view.replaceChildren(page);
  }
  page.querySelector("#keys-list").replaceChildren($(`<table id="keys"><thead><tr><th>id</th><th>name</th><th>role</th><th>models</th><th>state</th><th>expires</th><th>limits</th><th>limited (rate / concurrency / daily)</th><th>last used</th><th></th></tr></thead><tbody>
    ${keys.map((k) => `<tr data-key="${esc(k.id)}"><td>${esc(k.id)}</td><td>${esc(k.name)}</td><td>${esc(k.role)}</td><td>${esc(k.models.join(", "))}</td><td class="${esc(k.state)}">${esc(k.state)}</td><td>${esc(k.expires_at || "never")}</td><td>${esc(limits(k))}</td><td class="limited">${limited(k.id)} (${limited(k.id, "rate")} / ${limited(k.id, "concurrency")} / ${limited(k.id, "daily")})</td><td>${esc(k.last_used_at || "-")}</td><td>${action(k)}</td></tr>`).join("")}</tbody></table>`));
}

async function auditPage(view) {
  // the newest audit entries (/api/v1/audit: admin keys only); never a secret in them
  const r = await fetch("/api/v1/audit?limit=200", {credentials: "same-origin"});
  if (r.status === 401) { location.href = "/login"; return; }
  if (!r.ok) { view.replaceChildren($(`<div><h2>Audit</h2><p class="muted">Only an admin key can read the audit trail (${r.status}).</p></div>`)); return; }
  const entries = (await r.json()).reverse();
  const who = (e) => e.key_id ? `${esc(e.key_name || "?")} (${esc(e.key_id)})` : "anonymous";
  view.replaceChildren($(`<div><h2>Audit</h2><table id="audit"><thead><tr><th>time</th><th>action</th><th>result</th><th>key</th><th>source</th><th>target</th><th>detail</th></tr></thead><tbody>
    ${entries.map((e) => `<tr class="${e.action === "denied" ? "denied" : ""}"><td>${esc(e.at)}</td><td>${esc(e.action)}</td><td>${esc(e.result)}</td><td>${who(e)}</td><td>${esc(e.source)}</td><td>${esc(e.target)}</td><td>${esc(e.detail)}</td></tr>`).join("")}</tbody></table>
    <p class="muted">Newest first: management changes and denied requests. Filter and follow with <code>modelplane audit --since 1h --key ID --action denied --follow</code>.</p></div>`));
}

async function render() {
  const view = document.getElementById("view");
  const [, page, name] = (location.hash || "#/").match(/^#\/?([^/]*)\/?(.*)$/) || [];
  try {
    if (page === "models" && name) await modelPage(view, decodeURIComponent(name));
    else if (page === "deployments" && name) await deploymentPage(view, decodeURIComponent(name));
    else if (page === "nodes") await nodesPage(view);
    else if (page === "keys") await keysPage(view);
    else if (page === "audit") await auditPage(view);
    else await overview(view);
    document.getElementById("status").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    document.getElementById("status").textContent = `error: ${e.message}`;
  }
}
async function tick() {
  try { await sample(); } catch (e) { document.getElementById("status").textContent = `error: ${e.message}`; }
  await render();
}
window.addEventListener("hashchange", render);
tick();
setInterval(tick, POLL_MS);
