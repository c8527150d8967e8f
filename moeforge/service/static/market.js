// The Centre's web UI, its marketplace pages: browse and search, a listing, my listings and grants, my earnings.
// Loaded after app.js, whose helpers ($, api, el, svg, fill, setError, …) it uses; app.js wires its forms on load.
// Server text is tenants' data and so hostile: it only ever goes into the page as textContent or attribute values.
"use strict";

// ---------------------------------------------------------------- marketplace: money and shared bits

const MICROS = 1000000n; // 1 unit = 1,000,000 micros; money is integers end to end
const ACCESS = {
  owner: "You own this listing: you need no grant.",
  none: "You have no access yet.",
  pending: "Requested: waiting for the owner's approval.",
  active: "Active: you may export and serve it on the terms of your grant.",
  rejected: "The owner rejected your request; you may ask again.",
  revoked: "Your grant was revoked; you may ask again.",
};
const REQUESTABLE = new Set(["none", "rejected", "revoked"]);
const market = { generation: 0, listing: null, mine: [], domains: new Set(), licences: new Set() };

/** Integer micros → units with 6 decimals, exactly (12345678 → "12.345678"). */
function units(micros) {
  const m = BigInt(micros);
  const abs = m < 0n ? -m : m;
  return `${m < 0n ? "-" : ""}${abs / MICROS}.${String(abs % MICROS).padStart(6, "0")}`;
}

/** "2.5" units → 2500000 micros, exactly; null for anything but an amount ≥ 0 with at most 6 decimals. */
function toMicros(text) {
  const m = /^(\d+)(?:\.(\d{1,6}))?$/.exec(text.trim());
  if (!m) return null;
  const micros = BigInt(m[1]) * MICROS + BigInt((m[2] || "").padEnd(6, "0"));
  return micros <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(micros) : null;
}

function priceText(price) {
  if (price.kind === "free") return "free";
  return `${units(price.micros)} ${price.kind === "per_mtok" ? "per million routed tokens" : "per export"}`;
}

const short = (id) => `${String(id).slice(0, 12)}…`;
const yesNo = (b) => (b ? "yes" : "no");
const signed = (x, digits) => (typeof x === "number" && Number.isFinite(x) ? `${x > 0 ? "+" : ""}${x.toFixed(digits)}` : "—");

function listingLink(id, text) {
  return el("a", { href: "#listing-detail", class: "listing-link", "data-listing": id,
    onclick: (e) => { e.preventDefault(); openListing(id); } }, text);
}

/** Forget the signed-out tenant's marketplace: nothing of it may show to the next key. */
function resetMarket() {
  market.generation += 1;
  market.listing = null;
  market.mine = [];
  market.domains.clear();
  market.licences.clear();
  $("listing-detail").hidden = true;
  for (const id of ["market-results", "mine-table", "grants-pending", "grants-active", "earnings-entries"]) fill($(id).tBodies[0]);
  for (const id of ["market-search-status", "list-form-status", "earnings-payee"]) $(id).textContent = "";
  $("earnings-total").textContent = "—";
  fill($("earnings-chart"), el("p", { class: "hint" }, "No earnings yet."));
}

async function refreshMarket() {
  await refreshMyListings(); // first: the earnings name entries by my listings' titles
  await Promise.all([searchListings(), refreshGrants(), refreshEarnings()]);
}

// ---------------------------------------------------------------- marketplace: browse and search

function fillSamples(files) {
  const select = $("market-sample");
  const chosen = select.value;
  fill(select, el("option", { value: "" }, "no sample"),
    files.map((f) => el("option", { value: f.id }, `${f.filename} (${f.id})`)));
  if (files.some((f) => f.id === chosen)) select.value = chosen;
}

function searchParams() {
  const params = new URLSearchParams({ limit: "100" });
  for (const [name, id] of [["q", "market-q"], ["domain", "market-domain"], ["licence", "market-licence"],
    ["price", "market-price"], ["sort", "market-sort"], ["sample", "market-sample"]]) {
    const value = $(id).value.trim();
    if (value) params.set(name, value);
  }
  return params;
}

async function searchListings(event) {
  if (event) event.preventDefault();
  setError("market-search-error", "");
  const params = searchParams();
  $("market-search-button").disabled = true;
  $("market-search-status").textContent = params.has("sample") ? "Profiling your data's routing and matching listings…" : "Searching…";
  try {
    const found = await api(`/v1/market/listings?${params}`);
    renderResults(found.data || [], found.total);
  } catch (err) {
    $("market-search-status").textContent = "";
    setError("market-search-error", err.message);
  } finally {
    $("market-search-button").disabled = false;
  }
}

function renderResults(listings, total) {
  $("market-search-status").textContent = `${total} listing${total === 1 ? "" : "s"}` +
    `${listings.length < total ? `, the first ${listings.length} shown` : ""}.`;
  fill($("market-results").tBodies[0], listings.map((x) => el("tr", { "data-listing": x.id },
    el("td", {}, x.title, x.tags.length ? el("div", { class: "tags" }, x.tags.join(", ")) : null),
    el("td", {}, x.domain), el("td", {}, x.base_model), el("td", {}, x.licence_id), el("td", {}, x.price.text),
    el("td", {}, num(x.metrics.domain_gain)), el("td", { class: `access access-${x.access}` }, x.access),
    el("td", { class: "why" }, x.relevance ? x.relevance.why : "—"),
    el("td", {}, el("button", { type: "button", class: "open-listing", onclick: () => openListing(x.id),
      "aria-label": `Open listing ${x.title}` }, "Open")))));
  $("market-results-empty").hidden = listings.length > 0;
  offerFilterValues(listings);
}

/** The domains and licences seen so far, as suggestions for the filter fields. */
function offerFilterValues(listings) {
  for (const x of listings) {
    market.domains.add(x.domain);
    market.licences.add(x.licence_id);
  }
  fill($("market-domains"), [...market.domains].sort().map((d) => el("option", { value: d })));
  fill($("market-licences"), [...market.licences].sort().map((l) => el("option", { value: l })));
}

// ---------------------------------------------------------------- marketplace: a listing

async function openListing(id) {
  const generation = ++market.generation;
  setError("listing-error", "");
  setError("access-note-error", "");
  let x;
  try {
    x = await api(`/v1/market/listings/${encodeURIComponent(id)}`);
  } catch (err) {
    if (generation !== market.generation) return;
    showListing({ id, title: id });
    setError("listing-error", err.message);
    return;
  }
  if (generation !== market.generation) return;
  showListing(x);
  $("listing-heading").focus();
  const img = $("listing-heatmap"), none = $("listing-heatmap-none");
  if (x.heatmap) await showImage(img, none, x.heatmap, "listing-error");
  else { img.hidden = true; none.hidden = false; }
}

/** Fill the detail from a listing (a bare {id, title} empties it, for an error to stand alone). */
function showListing(x) {
  market.listing = x.model ? x : null;
  $("listing-detail").hidden = false;
  $("listing-heading").textContent = `Listing: ${x.title}`;
  $("access-note").value = "";
  $("listing-heatmap").hidden = true;
  $("listing-heatmap-none").hidden = true;
  if (!x.model) {
    [$("listing-summary"), $("listing-licence"), $("listing-metrics"), $("listing-lineage"), $("listing-contributors")]
      .forEach((node) => fill(node));
    $("listing-access").textContent = "";
    $("access-form").hidden = true;
    $("listing-card").textContent = "";
    return;
  }
  fill($("listing-summary"), kv([
    ["Listing", x.id], ["Price", x.price.text], ["Visibility", x.visibility], ["Owner", x.owned_by], ["Domain", x.domain],
    ["Base model", x.base_model], ["Model", el("code", {}, x.model)], ["Experts", x.experts],
    ["Tags", x.tags.length ? x.tags.join(", ") : "—"], ["Description", x.description || "—"], ["Listed", when(x.created_at)],
  ]));
  renderAccess(x);
  fill($("listing-licence"), licenceTerms(x.licence));
  fill($("listing-metrics"), metricsTable(x.metrics));
  fill($("listing-lineage"), lineageItems(x));
  fill($("listing-contributors"), contributorsTable(x.contributors || []));
  $("listing-card").textContent = x.card || "";
}

function renderAccess(x) {
  const node = $("listing-access");
  node.textContent = ACCESS[x.access] || x.access;
  if (x.visibility === "gated" && REQUESTABLE.has(x.access)) node.textContent += " This listing is gated: its owner decides each request.";
  node.className = `access access-${x.access}`;
  node.dataset.access = x.access;
  $("access-form").hidden = !REQUESTABLE.has(x.access);
}

async function requestAccess(event) {
  event.preventDefault();
  const x = market.listing;
  if (!x) return;
  setError("access-note-error", "");
  $("access-button").disabled = true;
  try {
    const grant = await api(`/v1/market/listings/${encodeURIComponent(x.id)}/access`, { method: "POST",
      json: { note: $("access-note").value } });
    x.access = grant.status;
    renderAccess(x);
    await searchListings(); // the results' access column
  } catch (err) {
    setError("access-note-error", err.message);
  } finally {
    $("access-button").disabled = false;
  }
}

function licenceTerms(licence) {
  if (licence.spdx) {
    return el("p", { class: "licence" }, "SPDX licence ", el("strong", {}, licence.spdx), " (its text is published by SPDX at ",
      el("code", {}, `spdx.org/licenses/${licence.spdx}.html`), ").");
  }
  const c = licence.custom;
  return [kv([["Licence", c.name], ["Commercial use", yesNo(c.commercial_use)], ["Redistribution", yesNo(c.redistribution)],
    ["Attribution required", yesNo(c.attribution)], ["Field of use", c.field_of_use || "any"]]),
  el("pre", { class: "card licence-text" }, c.text)];
}

function metricsTable(m) {
  const measured = m.measured || {};
  const row = (key, name, before, after, change, how) => el("tr", { "data-metric": key }, el("th", { scope: "row" }, name),
    el("td", {}, before), el("td", {}, after), el("td", {}, change), el("td", { class: "how" }, how || "—"));
  return el("table", { id: "listing-metrics-table" },
    el("thead", {}, el("tr", {}, ["Metric", "Base experts", "This entry's", "Change", "How it was measured"]
      .map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {},
      row("domain_loss", "Domain held-out loss", num(m.domain_loss_before), num(m.domain_loss_after),
        typeof m.domain_gain === "number" ? signed(-m.domain_gain, 4) : "—",
        [measured.domain_loss, typeof m.domain_tokens === "number" ? ` (${m.domain_tokens.toLocaleString()} tokens)` : ""]),
      row("general_ppl", "General perplexity", num(m.general_ppl_before, 2), num(m.general_ppl_after, 2),
        typeof m.general_ppl_change === "number" ? `${signed(m.general_ppl_change * 100, 2)}%` : "—", measured.general_ppl)));
}

function lineageItems(x) {
  const relation = { warm_start: "warm-started from", merge: "merged from" };
  const parents = (x.lineage || []).map((p) => el("li", { class: "parent" }, `${relation[p.relation] || p.relation} `,
    el("code", { title: p.entry }, short(p.entry)), ` (${p.experts} experts) `,
    p.listing ? listingLink(p.listing, "open its listing") : el("span", { class: "hint" }, "not listed")));
  const children = (x.children || []).map((c) => el("li", { class: "child" }, "built on by ",
    el("code", { title: c.entry }, short(c.entry)), " ",
    c.listing ? listingLink(c.listing, "open its listing") : el("span", { class: "hint" }, "not listed")));
  return [parents.length ? parents : el("li", {}, "no parents: trained from the base"), children];
}

function contributorsTable(people) {
  if (!people.length) return el("p", { class: "hint" }, "No contributors recorded: all of it goes to the owner.");
  return el("table", { class: "compact", id: "listing-contributors-table" },
    el("thead", {}, el("tr", {}, ["Contributor", "Role", "Share"].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, people.map((c) => el("tr", {}, el("td", {}, el("code", {}, c.id)), el("td", {}, c.role),
      el("td", {}, `${(c.share * 100).toFixed(2)}%`)))));
}

// ---------------------------------------------------------------- marketplace: my listings and their grants

async function refreshMyListings() {
  setError("mine-error", "");
  let mine, models;
  try {
    [mine, models] = await Promise.all([api("/v1/market/listings?mine=true&sort=newest&limit=100"), api("/v1/models")]);
  } catch (err) {
    setError("mine-error", err.message);
    return;
  }
  market.mine = mine.data || [];
  fill($("mine-table").tBodies[0], market.mine.map((x) => el("tr", { "data-listing": x.id },
    el("td", {}, x.title), el("td", {}, x.domain), el("td", {}, x.visibility), el("td", {}, x.licence_id), el("td", {}, x.price.text),
    el("td", {}, el("button", { type: "button", onclick: () => openListing(x.id), "aria-label": `Open my listing ${x.title}` }, "Open")))));
  $("mine-empty").hidden = market.mine.length > 0;
  const listed = new Set(market.mine.map((x) => x.model));
  const listable = (models.data || []).filter((m) => m.owned_by === "you" && !listed.has(m.id));
  fill($("list-model"), listable.length
    ? listable.map((m) => el("option", { value: m.id }, `${m.domain} · ${short(m.id)} · ${m.license}`))
    : el("option", { value: "" }, "no model of yours left to list"));
}

/** Show the fields the chosen licence and price need. */
function syncListForm() {
  $("list-spdx-field").hidden = $("list-licence").value !== "spdx";
  $("list-custom").hidden = $("list-licence").value !== "custom";
  $("list-price-amount-field").hidden = $("list-price-kind").value === "free";
}

function chosenLicence() {
  const kind = $("list-licence").value;
  if (kind === "spdx") return { spdx: $("list-spdx").value.trim() };
  if (kind !== "custom") return undefined; // the model's own
  return { custom: { name: $("list-custom-name").value.trim(), text: $("list-custom-text").value,
    commercial_use: $("list-custom-commercial").checked, redistribution: $("list-custom-redistribution").checked,
    attribution: $("list-custom-attribution").checked, field_of_use: $("list-custom-field").value.trim() || null } };
}

const LIST_FIELDS = { model: "list-model", title: "list-title", description: "list-description", tags: "list-tags",
  licence: "list-licence", visibility: "list-visibility" };
const LIST_ERRORS = ["list-model-error", "list-title-error", "list-description-error", "list-tags-error", "list-licence-error",
  "list-price-kind-error", "list-price-amount-error", "list-visibility-error", "list-form-error"];

function listFieldOf(param) {
  if (param === "price.kind") return "list-price-kind";
  if (param === "price" || (param || "").startsWith("price.")) return "list-price-amount";
  return LIST_FIELDS[(param || "").split(".")[0]] || null;
}

async function listModel(event) {
  event.preventDefault();
  LIST_ERRORS.forEach((id) => setError(id, ""));
  $("list-form-status").textContent = "";
  const kind = $("list-price-kind").value;
  const micros = kind === "free" ? 0 : toMicros($("list-price-amount").value);
  if (micros === null) {
    setError("list-price-amount-error", "Enter an amount of units, at least 0, with at most 6 decimals (e.g. 2.5).");
    $("list-price-amount").focus();
    return;
  }
  const body = { model: $("list-model").value, title: $("list-title").value.trim(), description: $("list-description").value,
    tags: $("list-tags").value.split(",").map((t) => t.trim()).filter(Boolean), licence: chosenLicence(),
    price: { kind, micros }, visibility: $("list-visibility").value };
  $("list-submit").disabled = true;
  try {
    const x = await api("/v1/market/listings", { method: "POST", json: body });
    $("list-form-status").textContent = `Listed “${x.title}” as ${x.id} (${x.visibility}, ${x.price.text}).`;
    ["list-title", "list-description", "list-tags", "list-price-amount"].forEach((id) => { $(id).value = ""; });
    await Promise.all([refreshMyListings(), searchListings()]);
  } catch (err) {
    const field = listFieldOf(err.param);
    setError(field ? `${field}-error` : "list-form-error", err.message);
    if (field) $(field).focus();
  } finally {
    $("list-submit").disabled = false;
  }
}

async function refreshGrants() {
  setError("grants-error", "");
  let pending, active;
  try {
    [pending, active] = await Promise.all([api("/v1/market/grants?role=owner&status=pending"),
      api("/v1/market/grants?role=owner&status=active")]);
  } catch (err) {
    setError("grants-error", err.message);
    return;
  }
  const decide = (g, action, label) => el("button", { type: "button", class: action, "data-grant": g.id,
    onclick: () => decideGrant(g, action), "aria-label": `${label} ${g.tenant}'s access to ${g.title}` }, label);
  fill($("grants-pending").tBodies[0], pending.data.map((g) => el("tr", { "data-grant": g.id },
    el("td", {}, g.title), el("td", {}, g.tenant), el("td", { class: "note" }, g.note || "—"), el("td", {}, when(g.created_at)),
    el("td", {}, decide(g, "approve", "Approve"), " ", decide(g, "reject", "Reject")))));
  $("grants-pending-empty").hidden = pending.data.length > 0;
  fill($("grants-active").tBodies[0], active.data.map((g) => el("tr", { "data-grant": g.id },
    el("td", {}, g.title), el("td", {}, g.tenant),
    el("td", {}, g.terms ? `${g.terms.licence.spdx || g.terms.licence.custom.name}, ${priceText(g.terms.price)}` : "—"),
    el("td", {}, when(g.decided_at)), el("td", {}, decide(g, "revoke", "Revoke")))));
  $("grants-active-empty").hidden = active.data.length > 0;
}

async function decideGrant(grant, action) {
  setError("grants-error", "");
  try {
    await api(`/v1/market/grants/${encodeURIComponent(grant.id)}/${action}`, { method: "POST" });
  } catch (err) {
    setError("grants-error", err.message);
    return;
  }
  await refreshGrants();
}

// ---------------------------------------------------------------- marketplace: my earnings

async function refreshEarnings() {
  setError("earnings-error", "");
  let e;
  try {
    e = await api("/v1/market/earnings");
  } catch (err) {
    setError("earnings-error", err.message);
    return;
  }
  $("earnings-total").textContent = units(e.total_micros);
  $("earnings-total").dataset.micros = String(e.total_micros);
  $("earnings-payee").textContent = `(to ${e.payee})`;
  const daily = e.months.length === 1; // within one month: a bar per day
  const periods = daily ? e.days : e.months;
  fill($("earnings-chart"), periods.length ? earningsChart(periods, daily ? "day" : "month")
    : el("p", { class: "hint" }, "No earnings yet."));
  const titles = new Map(market.mine.map((x) => [x.model, x]));
  fill($("earnings-entries").tBodies[0], e.entries.map((row) => el("tr", {},
    el("td", {}, row.model ? el("code", { title: row.model }, short(row.model)) : "—"),
    el("td", {}, titles.has(row.model) ? listingLink(titles.get(row.model).id, titles.get(row.model).title) : "—"),
    el("td", { class: "money", "data-micros": row.micros }, units(row.micros)))));
  const months = [...new Set([new Date().toISOString().slice(0, 7), ...e.months.map((m) => m.period)])].sort().reverse();
  const select = $("statement-period");
  const chosen = select.value;
  fill(select, months.map((m) => el("option", { value: m }, m)));
  if (months.includes(chosen)) select.value = chosen;
}

/** One SVG: a bar per period (a month or a day), its height the units earned; each bar's title gives them exactly. */
function earningsChart(periods, unit) {
  const W = 640, H = 260, M = { top: 20, right: 20, bottom: 64, left: 90 };
  const iw = W - M.left - M.right, ih = H - M.top - M.bottom;
  const values = periods.map((p) => p.micros / 1e6); // bar heights only; every label is exact
  const t = ticks(Math.min(0, ...values), Math.max(0, ...values));
  const lo = t[0], hi = t[t.length - 1];
  const y = (v) => M.top + ih - ((v - lo) / (hi - lo)) * ih;
  const band = iw / periods.length, width = Math.min(48, band * 0.7);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", class: "chart", id: "earnings-bars",
    "aria-labelledby": "earnings-bars-title" });
  root.append(svg("title", { id: "earnings-bars-title" },
    `Units earned per ${unit}: ${periods.map((p) => `${p.period} ${units(p.micros)}`).join("; ")}`));
  root.append(svg("rect", { x: M.left, y: M.top, width: iw, height: ih, class: "plot" }));
  const axis = svg("g", { class: "axis y" });
  axis.append(svg("line", { x1: M.left, y1: M.top, x2: M.left, y2: M.top + ih }));
  for (const v of t) {
    axis.append(svg("line", { x1: M.left, y1: y(v), x2: M.left - 5, y2: y(v) }));
    axis.append(svg("text", { x: M.left - 8, y: y(v) + 4, "text-anchor": "end" }, Number(v.toPrecision(6))));
  }
  axis.append(svg("text", { x: 16, y: M.top + ih / 2, "text-anchor": "middle", class: "label",
    transform: `rotate(-90 16 ${M.top + ih / 2})` }, "units"));
  root.append(axis);
  const bars = svg("g", { class: "bars" });
  const tilt = periods.length > 8;
  periods.forEach((p, i) => {
    const cx = M.left + band * (i + 0.5), v = values[i];
    const bar = svg("rect", { x: cx - width / 2, y: Math.min(y(v), y(0)), width, height: Math.abs(y(v) - y(0)), class: "bar",
      "data-period": p.period, "data-micros": p.micros });
    bar.append(svg("title", {}, `${p.period}: ${units(p.micros)} units`));
    bars.append(bar);
    bars.append(svg("text", { x: cx, y: M.top + ih + 16, "text-anchor": tilt ? "end" : "middle", class: "period",
      ...(tilt ? { transform: `rotate(-40 ${cx} ${M.top + ih + 16})` } : {}) }, p.period));
  });
  root.append(bars);
  root.append(svg("line", { x1: M.left, y1: y(0), x2: M.left + iw, y2: y(0), class: "baseline" }));
  root.append(svg("text", { x: M.left + iw / 2, y: H - 6, "text-anchor": "middle", class: "label" }, unit));
  return root;
}

async function downloadStatement(event) {
  event.preventDefault();
  setError("statement-period-error", "");
  const period = $("statement-period").value;
  try {
    saveBlob(await blob(`/v1/market/statements?period=${encodeURIComponent(period)}&format=csv`), `statements-${period}.csv`);
  } catch (err) {
    setError("statement-period-error", err.message);
  }
}
