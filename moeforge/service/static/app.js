// The Customization Centre's web UI: plain JS on the JSON API (the same endpoints the openai client calls).
// Server text is tenants' data and so hostile: it only ever goes into the page as textContent or attribute values.
"use strict";

const KEY_STORE = "moeforge.key";
const POLL_MS = 1500;
const FILE_POLL_MS = 1000;
const FINAL = new Set(["succeeded", "failed", "cancelled"]);
const EXPORT_FINAL = new Set(["succeeded", "failed"]);
const MIB = 1024 * 1024;
const SVG_NS = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(status, message, param, code) {
    super(message);
    this.status = status;
    this.param = param || null;
    this.code = code || null;
  }
}

// ---------------------------------------------------------------- the API

function key() {
  return sessionStorage.getItem(KEY_STORE) || "";
}

async function request(path, { method = "GET", json, form, headers = {}, withKey } = {}) {
  const h = { Authorization: `Bearer ${withKey !== undefined ? withKey : key()}`, ...headers };
  let body;
  if (json !== undefined) {
    h["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form; // the browser sets the multipart boundary
  }
  let response;
  try {
    response = await fetch(path, { method, headers: h, body });
  } catch (err) {
    // a key with characters no header can carry lands here too
    throw new ApiError(0, `the request did not reach the Centre (${err.message})`);
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`, param = null, code = null;
    try {
      const e = (await response.json()).error;
      if (e && typeof e.message === "string") ({ message, param, code } = e);
    } catch (_) { /* not JSON */ }
    const error = new ApiError(response.status, message, param, code);
    if (response.status === 401 && withKey === undefined && key()) signOut(message);
    throw error;
  }
  return response;
}

async function api(path, options) {
  return (await request(path, options)).json();
}

async function blob(path) {
  return (await request(path)).blob();
}

// ---------------------------------------------------------------- DOM helpers

/** An element with attributes (set as attributes, never parsed as HTML) and children (strings become text nodes). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "onclick") node.addEventListener("click", value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function fill(node, ...children) {
  node.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false)
    .map((c) => (c instanceof Node ? c : document.createTextNode(String(c)))));
}

function setError(id, message) {
  const node = $(id);
  node.textContent = message || "";
  const field = node.id.endsWith("-error") ? $(node.id.slice(0, -"-error".length)) : null;
  if (field && ["INPUT", "SELECT", "TEXTAREA"].includes(field.tagName)) {
    if (message) field.setAttribute("aria-invalid", "true");
    else field.removeAttribute("aria-invalid");
  }
}

function when(stamp) {
  if (stamp === null || stamp === undefined) return "";
  return new Date(stamp * 1000).toLocaleString();
}

function bytes(n) {
  if (typeof n !== "number") return "";
  if (n < 1024) return `${n} B`;
  if (n < MIB) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / MIB).toFixed(1)} MiB`;
}

function mib(n) {
  const v = n / MIB;
  return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toPrecision(3);
}

function num(x, digits = 4) {
  return typeof x === "number" && Number.isFinite(x) ? x.toFixed(digits) : "—";
}

function kv(pairs) {
  return el("dl", { class: "kv" }, pairs.filter(([, v]) => v !== undefined).map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID(); // secure contexts only (https, localhost)
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Show a PNG fetched with the key in `img`; hide it (and show `none`) if there is none; any other failure goes to `errorId`. */
async function showImage(img, none, path, errorId) {
  try {
    const url = URL.createObjectURL(await blob(path));
    if (img.dataset.url) URL.revokeObjectURL(img.dataset.url);
    img.dataset.url = url;
    img.src = url;
    img.hidden = false;
    if (none) none.hidden = true;
    return true;
  } catch (err) {
    if (img.dataset.url) URL.revokeObjectURL(img.dataset.url);
    delete img.dataset.url;
    img.removeAttribute("src");
    img.hidden = true;
    if (none) none.hidden = false;
    if (errorId && err.status !== 404) setError(errorId, `heatmap: ${err.message}`);
    return false;
  }
}

// ---------------------------------------------------------------- sign in

async function signIn(candidate) {
  setError("api-key-error", "");
  if (!candidate) {
    setError("api-key-error", "Enter your API key.");
    $("api-key").focus();
    return;
  }
  let bases;
  try {
    bases = await api("/v1/bases", { withKey: candidate });
  } catch (err) {
    sessionStorage.removeItem(KEY_STORE);
    setError("api-key-error", err.message);
    $("api-key").focus();
    return;
  }
  sessionStorage.setItem(KEY_STORE, candidate);
  $("api-key").value = "";
  $("signin").hidden = true;
  $("app").hidden = false;
  $("who").hidden = false;
  $("who-text").textContent = `Signed in with key ${candidate.slice(0, 12)}…`;
  fillBases(bases.data || []);
  await Promise.allSettled([refreshFiles(), refreshJobs(), refreshModels(), refreshMarket()]);
  $("upload-heading").setAttribute("tabindex", "-1");
  $("upload-heading").focus();
}

function signOut(message) {
  sessionStorage.removeItem(KEY_STORE);
  watch.generation += 1;
  resetMarket();
  $("app").hidden = true;
  $("who").hidden = true;
  $("signin").hidden = false;
  setError("api-key-error", message || "");
  $("api-key").focus();
}

function fillBases(bases) {
  fill($("job-model"), bases.map((b) => el("option", { value: b.id, selected: b.default }, b.id)));
}

// ---------------------------------------------------------------- files

async function upload(event) {
  event.preventDefault();
  setError("upload-file-error", "");
  $("upload-status").textContent = "";
  $("upload-report").hidden = true;
  const input = $("upload-file");
  const file = input.files && input.files[0];
  if (!file) {
    setError("upload-file-error", "Choose a file to upload.");
    input.focus();
    return;
  }
  const form = new FormData();
  form.append("purpose", "fine-tune");
  form.append("file", file, file.name);
  $("upload-button").disabled = true;
  $("upload-status").textContent = `Uploading ${file.name}…`;
  try {
    let f = await api("/v1/files", { method: "POST", form });
    $("upload-status").textContent = `Uploaded as ${f.id}; validating…`;
    refreshFiles();
    while (f.status === "uploaded") {
      await sleep(FILE_POLL_MS);
      f = await api(`/v1/files/${encodeURIComponent(f.id)}`);
    }
    showFileResult(f);
    await refreshFiles();
    if (f.status === "processed") $("job-file").value = f.id;
  } catch (err) {
    $("upload-status").textContent = "";
    setError("upload-file-error", err.message);
  } finally {
    $("upload-button").disabled = false;
  }
}

function showFileResult(f) {
  if (f.status === "error") {
    $("upload-status").textContent = "";
    setError("upload-file-error", `${f.filename} failed validation: ${f.status_details || "no details"}`);
    return;
  }
  $("upload-status").textContent = `${f.filename} (${f.id}) is processed.`;
  const r = f.report || {};
  const skipped = r.skipped_rows || [];
  const dups = r.duplicate_rows || [];
  fill($("upload-report"),
    el("h3", {}, `Validation report: ${f.filename}`),
    kv([
      ["File", f.id],
      ["Format", r.format],
      ["Records", r.records],
      ["Skipped", r.skipped],
      ["Duplicates", r.duplicates],
      ["Fields", r.fields ? `${r.fields}${r.fields_detected ? " (detected)" : ""}` : "plain text"],
      ["Tokens", typeof r.tokens === "number" ? `${r.tokens.toLocaleString()}${r.tokenizer ? ` (${r.tokenizer} tokenizer)` : ""}` : undefined],
      ["Characters", typeof r.characters === "number" ? r.characters.toLocaleString() : undefined],
    ]),
    skipped.length ? [el("h4", {}, "Skipped records"),
      el("ul", { class: "skipped" }, skipped.map((s) => el("li", {}, `${s.line}: ${s.reason}`))),
      r.skipped > skipped.length ? el("p", { class: "hint" }, `…and ${r.skipped - skipped.length} more`) : null] : null,
    dups.length ? [el("h4", {}, "Duplicates"), el("ul", {}, dups.map((d) => el("li", {}, d))),
      r.duplicates > dups.length ? el("p", { class: "hint" }, `…and ${r.duplicates - dups.length} more`) : null] : null);
  $("upload-report").hidden = false;
}

async function refreshFiles() {
  const list = await api("/v1/files?limit=100");
  const files = list.data || [];
  fill($("files-table").tBodies[0], files.map((f) => el("tr", {},
    el("td", {}, f.filename), el("td", {}, el("code", {}, f.id)),
    el("td", { class: `status-${f.status}` }, f.status, f.status === "error" && f.status_details ? `: ${f.status_details}` : ""),
    el("td", {}, f.report ? f.report.records : ""), el("td", {}, bytes(f.bytes)), el("td", {}, when(f.created_at)))));
  $("files-empty").hidden = files.length > 0;
  const select = $("job-file");
  const chosen = select.value;
  const processed = files.filter((f) => f.status === "processed");
  fill(select, processed.length ? processed.map((f) => el("option", { value: f.id }, `${f.filename} (${f.id})`))
    : el("option", { value: "" }, "no processed file yet"));
  if (processed.some((f) => f.id === chosen)) select.value = chosen;
  fillSamples(processed.filter((f) => f.purpose === "fine-tune"));
}

// ---------------------------------------------------------------- jobs

const FIELD_OF_PARAM = {
  "problem.domain": "job-domain", "problem.goal": "job-goal", "problem.metric": "job-metric", "problem": "job-domain",
  model: "job-model", training_file: "job-file", "hyperparameters.n_epochs": "job-rounds", hyperparameters: "job-rounds",
};
const JOB_ERRORS = ["job-domain-error", "job-goal-error", "job-metric-error", "job-model-error", "job-file-error",
  "job-rounds-error", "job-form-error"];

async function submitJob(event) {
  event.preventDefault();
  JOB_ERRORS.forEach((id) => setError(id, ""));
  const raw = $("job-rounds").value.trim();
  const rounds = /^\d+$/.test(raw) ? Number(raw) : NaN;
  if (!Number.isInteger(rounds)) {
    setError("job-rounds-error", "Rounds must be a whole number from 1 to 20.");
    $("job-rounds").focus();
    return;
  }
  const body = {
    model: $("job-model").value,
    training_file: $("job-file").value,
    problem: { domain: $("job-domain").value, goal: $("job-goal").value, metric: $("job-metric").value },
    hyperparameters: { n_epochs: rounds },
  };
  $("job-submit").disabled = true;
  try {
    const job = await api("/v1/fine_tuning/jobs", { method: "POST", json: body, headers: { "Idempotency-Key": uuid() } });
    await refreshJobs();
    openJob(job.id);
  } catch (err) {
    const field = FIELD_OF_PARAM[err.param];
    if (field) {
      setError(`${field}-error`, err.message);
      $(field).focus();
    } else {
      setError("job-form-error", err.message);
    }
  } finally {
    $("job-submit").disabled = false;
  }
}

async function refreshJobs() {
  const list = await api("/v1/fine_tuning/jobs?limit=100");
  const jobs = list.data || [];
  fill($("jobs-table").tBodies[0], jobs.map((j) => el("tr", {},
    el("td", {}, el("code", {}, j.id)), el("td", {}, j.problem ? j.problem.domain : ""), el("td", {}, j.model),
    el("td", { class: `status-${j.status}` }, j.status), el("td", {}, when(j.created_at)),
    el("td", {}, el("button", { type: "button", onclick: () => openJob(j.id), "aria-label": `Watch job ${j.id}` }, "Watch")))));
  $("jobs-empty").hidden = jobs.length > 0;
}

const watch = { generation: 0, job: null, heatmap: false };

async function openJob(id) {
  const generation = ++watch.generation;
  watch.job = id;
  watch.heatmap = false;
  $("job-detail").hidden = false;
  $("job-heading").textContent = `Job ${id}`;
  setError("job-detail-error", "");
  setError("job-export-error", "");
  fill($("job-plan"), el("p", { class: "hint" }, "Not planned yet."));
  fill($("job-chart"), el("p", { class: "hint" }, "No rounds yet."));
  fill($("job-exports"), el("p", { class: "hint" }, "No exports yet."));
  fill($("job-events"));
  fill($("job-summary"));
  $("job-status").textContent = "";
  $("job-heatmap").hidden = true;
  $("job-heatmap-none").hidden = false;
  $("job-heading").focus();
  let lastStatus = null;
  while (generation === watch.generation) {
    let job, done = false;
    try {
      const [j, events, exports] = await Promise.all([
        api(`/v1/fine_tuning/jobs/${encodeURIComponent(id)}`),
        api(`/v1/fine_tuning/jobs/${encodeURIComponent(id)}/events?limit=1000`),
        api(`/v1/exports?job=${encodeURIComponent(id)}`),
      ]);
      if (generation !== watch.generation) return;
      job = j;
      setError("job-detail-error", "");
      renderJob(job);
      renderEvents(events.data || []);
      renderExports(exports.data || [], job);
      if (job.plan && !watch.heatmap) {
        watch.heatmap = await showImage($("job-heatmap"), $("job-heatmap-none"),
          `/v1/fine_tuning/jobs/${encodeURIComponent(id)}/heatmap.png`);
      }
      if (job.status !== lastStatus) {
        lastStatus = job.status;
        refreshJobs().catch(() => {});
        if (job.status === "succeeded") refreshModels().catch(() => {});
      }
      const exporting = (exports.data || []).some((e) => !EXPORT_FINAL.has(e.status));
      const awaitingExport = job.status === "succeeded" && job.fine_tuned_model && !(exports.data || []).length;
      done = FINAL.has(job.status) && !exporting && !awaitingExport;
    } catch (err) {
      if (generation !== watch.generation) return;
      setError("job-detail-error", err.message);
      if (err.status === 404 || err.status === 401 || err.status === 403) return;
    }
    if (done) return;
    await sleep(POLL_MS);
  }
}

function renderJob(job) {
  $("job-status").textContent = job.status;
  $("job-status").className = `status-${job.status}`;
  const cancel = $("job-cancel");
  cancel.hidden = FINAL.has(job.status) || job.cancel_requested;
  const p = job.problem || {};
  fill($("job-summary"), kv([
    ["Domain", p.domain], ["Goal", p.goal || "—"], ["Metric", p.metric], ["Base model", job.model],
    ["Training files", (job.files || [job.training_file]).join(", ")],
    ["Rounds", job.hyperparameters ? job.hyperparameters.n_epochs : undefined],
    ["Created", when(job.created_at)], ["Finished", job.finished_at ? when(job.finished_at) : "—"],
    ["Fine-tuned model", job.fine_tuned_model || "—"],
    ["Cancel requested", job.cancel_requested ? "yes" : undefined],
    ["Error", job.error ? (job.error.message || JSON.stringify(job.error)) : undefined],
  ]));
  if (job.plan) renderPlan(job.plan);
}

function renderPlan(plan) {
  const sel = plan.selection || {};
  const perLayer = Object.entries(sel.per_layer || {}).sort((a, b) => Number(a[0]) - Number(b[0]));
  const memory = Object.entries(plan.memory || {});
  const match = plan.match || [];
  const warm = plan.warm_start || [];
  const est = plan.estimate || {};
  const rec = plan.records || {};
  fill($("job-plan"),
    kv([
      ["Experts selected", sel.experts !== undefined ? `${sel.experts}${sel.experts_per_layer ? ` (of ${sel.experts_per_layer} per layer)` : ""}` : undefined],
      ["Why", sel.why],
      ["Records", rec.train !== undefined ? `train ${rec.train}, validation ${rec.validation}, held out ${rec.held_out}` : undefined],
      ["Warm start", warm.length ? warm.join(", ") : "none (starts from the base)"],
      ["Estimate", est.rounds !== undefined ? `${est.rounds} rounds on ${est.miners} miners, ~${(est.tokens || 0).toLocaleString()} tokens, at most ${est.max_seconds} s` : undefined],
    ]),
    perLayer.length ? el("table", { class: "compact", id: "plan-per-layer" },
      el("caption", {}, "Experts selected per layer"),
      el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Layer"), el("th", { scope: "col" }, "Experts"))),
      el("tbody", {}, perLayer.map(([layer, n]) => el("tr", {}, el("td", {}, layer), el("td", {}, n))))) : null,
    memory.length ? el("table", { class: "compact", id: "plan-memory" },
      el("caption", {}, "Device memory one miner needs, per mode"),
      el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Mode"), el("th", { scope: "col" }, "Device MiB"),
        el("th", { scope: "col" }, "Of full"), el("th", { scope: "col" }, "Host MiB"))),
      el("tbody", {}, memory.map(([mode, m]) => el("tr", {}, el("td", {}, mode),
        el("td", {}, typeof m.bytes === "number" ? mib(m.bytes) : (m.unsupported || "")),
        el("td", {}, typeof m.fraction_of_full === "number" ? `${(m.fraction_of_full * 100).toFixed(1)}%` : ""),
        el("td", {}, m.host_bytes ? mib(m.host_bytes) : "—"))))) : null,
    el("h5", {}, "Library match"),
    match.length ? el("table", { class: "compact", id: "plan-match" },
      el("thead", {}, el("tr", {}, ["Entry", "Domain", "Similarity", "Loss gain", "Why"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, match.map((m) => el("tr", {}, el("td", {}, el("code", {}, String(m.entry).slice(0, 12) + "…")),
        el("td", {}, m.domain), el("td", {}, num(m.similarity, 3)), el("td", {}, m.loss_gain === null ? "—" : num(m.loss_gain, 4)),
        el("td", {}, m.why))))) : el("p", { class: "hint" }, "No library entry resembles this data."));
}

function renderEvents(newestFirst) {
  const events = [...newestFirst].reverse();
  fill($("job-events"), events.map((e) => el("li", { class: `level-${e.level}` },
    el("time", {}, when(e.created_at)), " ", el("span", { class: "level" }, e.level), " ", e.message)));
  const rounds = events.filter((e) => e.type === "metrics" && e.data && typeof e.data.round === "number")
    .map((e) => e.data).sort((a, b) => a.round - b.round);
  if (rounds.length) fill($("job-chart"), chart(rounds));
}

// ---------------------------------------------------------------- the chart

function ticks(lo, hi, count = 4) {
  if (!(hi > lo)) { const pad = Math.abs(lo) * 0.05 || 1; lo -= pad; hi += pad; }
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const start = Math.floor(lo / step) * step, end = Math.ceil(hi / step) * step;
  const out = [];
  for (let v = start; v <= end + step / 2; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

/** One SVG: held-out loss (left axis) and general perplexity (right axis) per round. */
function chart(rounds) {
  const W = 640, H = 300, M = { top: 36, right: 70, bottom: 46, left: 70 };
  const iw = W - M.left - M.right, ih = H - M.top - M.bottom;
  const series = [
    { key: "held_out_loss", label: "held-out loss", cls: "loss", axis: "left" },
    { key: "general_ppl", label: "general perplexity", cls: "ppl", axis: "right" },
  ];
  const xs = rounds.map((r) => r.round);
  const x0 = Math.min(...xs), x1 = Math.max(...xs);
  const xPad = x1 === x0 ? 0.5 : 0;
  const x = (v) => M.left + ((v - (x0 - xPad)) / ((x1 + xPad) - (x0 - xPad))) * iw;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", class: "chart", id: "round-chart",
    "aria-labelledby": "round-chart-title" });
  const summary = rounds.map((r) => `round ${r.round}: loss ${num(r.held_out_loss)}, perplexity ${num(r.general_ppl, 2)}`).join("; ");
  root.append(svg("title", { id: "round-chart-title" }, `Held-out loss and general perplexity per round. ${summary}`));
  root.append(svg("rect", { x: M.left, y: M.top, width: iw, height: ih, class: "plot" }));
  // x axis
  const xAxis = svg("g", { class: "axis x" });
  xAxis.append(svg("line", { x1: M.left, y1: M.top + ih, x2: M.left + iw, y2: M.top + ih }));
  for (const v of [...new Set(xs)]) {
    xAxis.append(svg("line", { x1: x(v), y1: M.top + ih, x2: x(v), y2: M.top + ih + 5 }));
    xAxis.append(svg("text", { x: x(v), y: M.top + ih + 18, "text-anchor": "middle" }, v));
  }
  xAxis.append(svg("text", { x: M.left + iw / 2, y: H - 8, "text-anchor": "middle", class: "label" }, "round"));
  root.append(xAxis);
  // y axes and series
  for (const s of series) {
    const pts = rounds.filter((r) => typeof r[s.key] === "number" && Number.isFinite(r[s.key]));
    const values = pts.map((r) => r[s.key]);
    const t = values.length ? ticks(Math.min(...values), Math.max(...values)) : [0, 1];
    const lo = t[0], hi = t[t.length - 1];
    const y = (v) => M.top + ih - ((v - lo) / (hi - lo)) * ih;
    const ax = s.axis === "left" ? M.left : M.left + iw;
    const dir = s.axis === "left" ? -1 : 1;
    const g = svg("g", { class: `axis y ${s.cls}` });
    g.append(svg("line", { x1: ax, y1: M.top, x2: ax, y2: M.top + ih }));
    for (const v of t) {
      g.append(svg("line", { x1: ax, y1: y(v), x2: ax + dir * 5, y2: y(v) }));
      g.append(svg("text", { x: ax + dir * 8, y: y(v) + 4, "text-anchor": s.axis === "left" ? "end" : "start" },
        Number(v.toPrecision(4))));
    }
    const lx = s.axis === "left" ? 16 : W - 12;
    g.append(svg("text", { x: lx, y: M.top + ih / 2, "text-anchor": "middle", class: "label",
      transform: `rotate(-90 ${lx} ${M.top + ih / 2})` }, s.label));
    root.append(g);
    const data = svg("g", { class: `series ${s.cls}`, "data-series": s.key });
    if (pts.length > 1) {
      data.append(svg("polyline", { points: pts.map((r) => `${x(r.round)},${y(r[s.key])}`).join(" "), class: "line" }));
    }
    for (const r of pts) {
      const cx = x(r.round), cy = y(r[s.key]);
      const mark = s.cls === "loss" ? svg("circle", { cx, cy, r: 5 }) : svg("rect", { x: cx - 4.5, y: cy - 4.5, width: 9, height: 9 });
      mark.setAttribute("class", "point");
      mark.setAttribute("data-round", r.round);
      mark.setAttribute("data-value", r[s.key]);
      mark.append(svg("title", {}, `round ${r.round}: ${s.label} ${num(r[s.key], s.cls === "loss" ? 4 : 2)}${r.choice ? ` (${r.choice})` : ""}`));
      data.append(mark);
    }
    root.append(data);
  }
  // legend
  const legend = svg("g", { class: "legend", transform: `translate(${M.left}, 14)` });
  series.forEach((s, i) => {
    const gx = i * 190;
    const item = svg("g", { class: `series ${s.cls}` });
    item.append(svg("line", { x1: gx, y1: 0, x2: gx + 24, y2: 0, class: "line" }));
    item.append(s.cls === "loss" ? svg("circle", { cx: gx + 12, cy: 0, r: 4 }) : svg("rect", { x: gx + 8, y: -4, width: 8, height: 8 }));
    item.append(svg("text", { x: gx + 30, y: 4 }, `${s.label} (${s.axis} axis)`));
    legend.append(item);
  });
  root.append(legend);
  return root;
}

// ---------------------------------------------------------------- exports

function renderExports(exports, job) {
  if (!exports.length) {
    fill($("job-exports"), el("p", { class: "hint" },
      job.status === "succeeded" ? (job.fine_tuned_model ? "The export is being queued…" : "Nothing to export: the job made no model.")
        : "The job is exported once it has succeeded."));
    return;
  }
  fill($("job-exports"), el("ul", { class: "exports" }, exports.map((e) => {
    const s = e.summary || {};
    const detail = [
      `${e.id}: ${e.status}`,
      `coverage ${e.coverage}`,
      typeof e.bytes === "number" ? bytes(e.bytes) : null,
      s.k !== undefined && s.num_experts !== undefined ? `${s.k} of ${s.num_experts} experts per layer` : null,
      e.sha256 ? `sha256 ${e.sha256.slice(0, 16)}…` : null,
      e.error ? `error: ${typeof e.error === "string" ? e.error : JSON.stringify(e.error)}` : null,
    ].filter(Boolean).join(" · ");
    return el("li", {}, detail, " ",
      e.status === "succeeded" ? el("button", { type: "button", class: "download", "data-export": e.id,
        onclick: () => download(e), "aria-label": `Download export ${e.id}` }, "Download") : null);
  })));
}

async function download(e) {
  setError("job-export-error", "");
  try {
    saveBlob(await blob(`/v1/exports/${encodeURIComponent(e.id)}/content`), `${e.id}.tar`);
  } catch (err) {
    setError("job-export-error", err.message);
  }
}

/** Hand a fetched blob to the browser as a download named `name`. */
function saveBlob(data, name) {
  const url = URL.createObjectURL(data);
  const a = el("a", { href: url, download: name, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

async function cancelJob() {
  if (!watch.job) return;
  setError("job-detail-error", "");
  try {
    renderJob(await api(`/v1/fine_tuning/jobs/${encodeURIComponent(watch.job)}/cancel`, { method: "POST" }));
  } catch (err) {
    setError("job-detail-error", err.message);
  }
}

// ---------------------------------------------------------------- library

async function refreshModels() {
  setError("models-error", "");
  let list;
  try {
    list = await api("/v1/models");
  } catch (err) {
    setError("models-error", err.message);
    return;
  }
  const models = list.data || [];
  fill($("models-table").tBodies[0], models.map((m) => el("tr", {},
    el("td", {}, m.domain), el("td", {}, el("code", { title: m.id }, `${String(m.id).slice(0, 12)}…`)), el("td", {}, m.base_model),
    el("td", {}, m.owned_by), el("td", {}, m.experts),
    el("td", {}, el("button", { type: "button", class: "open-model", "data-model": m.id, onclick: () => openModel(m.id),
      "aria-label": `Show model ${m.domain} ${String(m.id).slice(0, 12)}` }, "Show")))));
  $("models-empty").hidden = models.length > 0;
}

async function openModel(id) {
  setError("models-error", "");
  let m;
  try {
    m = await api(`/v1/models/${encodeURIComponent(id)}`);
  } catch (err) {
    setError("models-error", err.message);
    return;
  }
  const metrics = m.metrics || {};
  $("model-detail").hidden = false;
  $("model-heading").textContent = `Model ${m.domain}: ${m.id}`;
  fill($("model-metrics"),
    [["Base model", m.base_model], ["Owner", m.owned_by], ["License", m.license], ["Experts", m.experts],
      ["Created", when(m.created)],
      ["Domain loss", `${num(metrics.domain_loss_before)} → ${num(metrics.domain_loss_after)}`],
      ["General perplexity", `${num(metrics.general_ppl_before, 2)} → ${num(metrics.general_ppl_after, 2)}`]]
      .filter(([, v]) => v !== undefined && v !== null).map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  const lineage = m.lineage || [];
  fill($("model-lineage"), lineage.length ? lineage.map((p) => el("li", {}, `${p.relation} `, el("code", {}, p.entry),
    Array.isArray(p.experts) ? ` (${p.experts.length} experts)` : typeof p.experts === "number" ? ` (${p.experts} experts)` : "")) : el("li", {}, "no parents: trained from the base"));
  $("model-card").textContent = m.card || "";
  $("model-heading").focus();
  await showImage($("model-heatmap"), $("model-heatmap-none"), `/v1/models/${encodeURIComponent(id)}/heatmap.png`);
}

// ---------------------------------------------------------------- wiring

function quietly(fn) {
  return () => fn().catch(() => {});
}

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", (e) => { e.preventDefault(); signIn($("api-key").value.trim()); });
  $("signout-button").addEventListener("click", () => signOut(""));
  $("upload-form").addEventListener("submit", upload);
  $("job-form").addEventListener("submit", submitJob);
  $("job-cancel").addEventListener("click", cancelJob);
  $("files-refresh").addEventListener("click", quietly(refreshFiles));
  $("jobs-refresh").addEventListener("click", quietly(refreshJobs));
  $("models-refresh").addEventListener("click", quietly(refreshModels));
  $("market-search-form").addEventListener("submit", searchListings);
  $("access-form").addEventListener("submit", requestAccess);
  $("mine-refresh").addEventListener("click", () => Promise.all([refreshMyListings(), refreshGrants()]));
  $("list-form").addEventListener("submit", listModel);
  $("list-licence").addEventListener("change", syncListForm);
  $("list-price-kind").addEventListener("change", syncListForm);
  $("earnings-refresh").addEventListener("click", refreshEarnings);
  $("statement-form").addEventListener("submit", downloadStatement);
  const saved = key();
  if (saved) signIn(saved);
  else $("api-key").focus();
});
