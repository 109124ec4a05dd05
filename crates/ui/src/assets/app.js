// choreo's flow viewer: fills each page from the JSON API and refreshes it
// every two seconds while it is open. Data from events goes into the page as
// text nodes only (textContent), never as markup.
"use strict";

const REFRESH_MS = 2000;

// An element with attributes and children (strings become text nodes).
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined) e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
}

function fmtTime(us) {
  if (us === null || us === undefined) return "";
  return new Date(us / 1000).toISOString().replace("T", " ").replace("Z", " UTC");
}

function fmtDuration(us) {
  if (us === null || us === undefined) return "";
  if (us < 1000) return us + "µs";
  if (us < 1e6) return (us / 1e3).toFixed(1) + "ms";
  if (us < 6e7) return (us / 1e6).toFixed(2) + "s";
  const s = Math.floor(us / 1e6);
  return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
}

function badge(status) {
  return el("span", { class: "status " + status }, status.replace("_", " "));
}

function showError(message) {
  const e = document.getElementById("error");
  if (!e) return;
  e.hidden = !message;
  e.textContent = message || "";
}

function liveNote(live, ok) {
  const l = document.getElementById("live");
  if (!l) return;
  l.textContent = (ok ? (live ? "● live" : "capture") : "✗ not updating") +
    " · updated " + new Date().toLocaleTimeString();
  l.className = "live" + (ok ? "" : " stale");
}

async function getJson(url) {
  const r = await fetch(url, { headers: { Accept: "application/json" } });
  let body = null;
  try { body = await r.json(); } catch (_) { body = null; }
  if (!r.ok) {
    const msg = body && body.error ? body.error : r.status + " " + r.statusText;
    const err = new Error(msg);
    err.status = r.status;
    throw err;
  }
  return body;
}

// Polls `load` now and every REFRESH_MS, without overlapping calls.
function every(load) {
  let busy = false;
  const tick = async () => {
    if (busy) return;
    busy = true;
    try { await load(); } finally { busy = false; }
  };
  tick();
  return setInterval(tick, REFRESH_MS);
}

// ---- the flows list ----

const FILTERS = ["q", "status", "flow", "service", "window"];

function flowsQuery() {
  const p = new URLSearchParams();
  for (const f of FILTERS) {
    const v = document.getElementById(f).value.trim();
    if (v) p.set(f, v);
  }
  return p;
}

function flowsPage() {
  const url = new URLSearchParams(location.search);
  for (const f of FILTERS) {
    const input = document.getElementById(f);
    const v = url.get(f);
    if (v === null) continue;
    if (input.tagName === "SELECT" && ![...input.options].some((o) => o.value === v)) {
      input.append(el("option", { value: v }, v));
    }
    input.value = v;
  }
  const headerSearch = document.querySelector("header input[name=q]");
  if (headerSearch && url.get("q")) headerSearch.value = url.get("q");
  const load = async () => {
    const p = flowsQuery();
    try {
      const data = await getJson("/api/flows?" + p.toString());
      showError(null);
      renderFlows(data);
      liveNote(data.live, true);
    } catch (e) {
      showError(e.message);
      liveNote(false, false);
    }
  };
  document.getElementById("filters").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const p = flowsQuery();
    history.replaceState(null, "", p.toString() ? "?" + p.toString() : location.pathname);
    load();
  });
  for (const f of ["status", "flow", "window"]) {
    document.getElementById(f).addEventListener("change", () =>
      document.getElementById("filters").requestSubmit());
  }
  every(load);
}

function renderFlows(data) {
  const flowSel = document.getElementById("flow");
  for (const name of data.flow_names) {
    if (![...flowSel.options].some((o) => o.value === name)) {
      flowSel.append(el("option", { value: name }, name));
    }
  }
  const body = document.querySelector("#flows tbody");
  clear(body);
  for (const f of data.flows) {
    const id = f.correlation_id;
    const row = el("tr", { "data-id": id, class: "row " + f.status },
      el("td", {}, badge(f.status)),
      el("td", {}, f.flow || "unknown"),
      el("td", {}, el("a", { class: "flow-link", href: "/flows/" + encodeURIComponent(id) }, id)),
      el("td", {}, fmtTime(f.started)),
      el("td", {}, fmtDuration(f.duration_us) + (f.ended === null ? " so far" : "")),
      el("td", { class: "owing" }, f.owing.join(", ")),
      el("td", { class: "rules" }, f.rules.join(", ")));
    body.append(row);
  }
  if (data.flows.length === 0) {
    body.append(el("tr", {}, el("td", { colspan: "7", class: "muted" }, "no flow matches")));
  }
  const gone = document.getElementById("not-held");
  gone.hidden = !data.found_not_held.length;
  gone.textContent = data.found_not_held.length
    ? data.found_not_held.length + " more flow(s) match but finished before the newest flows the tracer holds: " +
      data.found_not_held.join(", ") + " (choreo trace CAPTURE --flow ID shows one from a capture)"
    : "";
  const t = data.totals;
  document.getElementById("counts").textContent =
    data.flows.length + (data.truncated ? "+" : "") + " shown · held: " +
    data.held.in_flight + " in flight, " + data.held.recent + " finished · since the start: " +
    t.started + " started, " + t.completed + " completed, " + t.failed + " failed, " +
    t.stuck + " stuck, " + t.recovered + " recovered";
}

// ---- one flow ----

function flowPage() {
  const id = document.body.dataset.id;
  document.getElementById("flow-id").textContent = id;
  document.getElementById("dot-link").href = "/api/flows/" + encodeURIComponent(id);
  let shape = null;
  const load = async () => {
    try {
      const data = await getJson("/api/flows/" + encodeURIComponent(id));
      showError(null);
      // Redraw the graph only when the flow changed.
      const now = JSON.stringify([data.summary.status, data.events.length, data.receipts.length,
        data.owed.length, data.findings.length]);
      if (now !== shape) {
        shape = now;
        document.getElementById("graph").src = data.graph_svg + "?v=" + Date.now();
      }
      renderFlow(data);
      liveNote(data.live, true);
    } catch (e) {
      showError(e.status === 404 ? e.message + " — use the search box above" : e.message);
      liveNote(false, false);
    }
  };
  every(load);
}

function renderFlow(data) {
  const s = data.summary;
  const status = document.getElementById("status");
  clear(status);
  status.append(badge(s.status));
  document.getElementById("flow-name").textContent = s.flow || "unknown";
  document.getElementById("started").textContent = fmtTime(s.started);
  document.getElementById("duration").textContent =
    fmtDuration(s.duration_us) + (s.ended === null ? " so far" : "");
  document.getElementById("owing").textContent = s.owing.length ? s.owing.join(", ") : "nobody";

  const owed = document.getElementById("owed");
  clear(owed);
  for (const o of data.owed) {
    const what = o.owes.length ? (o.one_of ? "one of " : "") + o.owes.join(", ") : "a receipt";
    owed.append(el("li", { class: "owed" },
      el("strong", {}, o.service), " owes " + what + " for " + o.event_type +
      " since " + fmtTime(o.since) + (o.deadline ? " (due " + fmtTime(o.deadline) + ")" : "")));
  }
  if (!data.owed.length) owed.append(el("li", { class: "muted" }, "nothing"));

  const findings = document.getElementById("findings");
  clear(findings);
  for (const f of data.findings) {
    findings.append(el("li", {},
      el("code", {}, f.rule), " ", f.service ? el("strong", {}, f.service) : null,
      f.service ? ": " : "", f.message));
  }
  if (!data.findings.length) findings.append(el("li", { class: "muted" }, "none"));

  const dead = document.getElementById("dead-letters");
  clear(dead);
  for (const d of data.dead_letters) {
    dead.append(el("div", { class: "dead-letter", id: "dead-" + d.event_id },
      el("p", {}, el("strong", {}, d.event_type), " dead-lettered by ",
        el("strong", {}, d.service), " after " + d.attempts + " attempt(s): ", d.reason || "no reason given"),
      el("p", {}, "on ", el("code", {}, d.dlq_topic), " · ",
        el("a", { href: "#event-" + d.event_id }, "the event")),
      el("p", {}, "see it: ", el("code", { class: "cmd" }, d.show)),
      el("p", {}, "replay it: ", el("code", { class: "cmd" }, d.replay))));
  }
  if (!data.dead_letters.length) dead.append(el("p", { class: "muted" }, "none"));

  const receipts = document.querySelector("#receipts tbody");
  clear(receipts);
  for (const r of data.receipts) {
    receipts.append(el("tr", { class: r.outcome },
      el("td", {}, el("a", { href: "#event-" + r.event_id }, r.event_type)),
      el("td", {}, r.service),
      el("td", {}, r.outcome.replace("_", " ")),
      el("td", {}, String(r.attempts)),
      el("td", {}, fmtDuration(r.duration_us)),
      el("td", {}, r.reason || "")));
  }
  if (!data.receipts.length) {
    receipts.append(el("tr", {}, el("td", { colspan: "6", class: "muted" }, "no receipts")));
  }

  const payloads = document.getElementById("payloads");
  document.getElementById("payloads-section").hidden = !data.payloads_shown;
  clear(payloads);
  if (data.payloads_shown) {
    for (const e of data.events) {
      payloads.append(el("div", { class: "payload" },
        el("p", {}, el("strong", {}, e.event_type), " ", el("code", {}, e.id)),
        e.payload === undefined
          ? el("p", { class: "muted" }, "not held (not JSON, over 16 KiB, or past the search window)")
          : el("pre", {}, e.payload)));
    }
  }

  const timeline = document.getElementById("timeline");
  clear(timeline);
  // One line per event, anchored, so the dead letters can point at it.
  timeline.append(document.createTextNode(data.timeline));
  const anchors = el("div", { class: "anchors" });
  for (const e of data.events) anchors.append(el("span", { id: "event-" + e.id }));
  timeline.append(anchors);
}

// ---- the service graph ----

function servicesPage() {
  const load = async () => {
    try {
      const data = await getJson("/api/services");
      showError(null);
      renderServices(data);
      liveNote(data.live, true);
    } catch (e) {
      showError(e.message);
      liveNote(false, false);
    }
  };
  let n = 0;
  every(async () => {
    await load();
    // The image every fifth refresh: it is the heaviest.
    if (n++ % 5 === 0) {
      document.getElementById("service-graph").src = "/api/services/graph.svg?v=" + Date.now();
    }
  });
}

function renderServices(data) {
  const services = document.querySelector("#services tbody");
  clear(services);
  for (const s of data.services) {
    services.append(el("tr", {},
      el("td", {}, s.name), el("td", {}, String(s.handled)),
      el("td", { class: s.failed ? "bad" : "" }, String(s.failed)),
      el("td", {}, String(s.published))));
  }
  const edges = document.querySelector("#edges tbody");
  clear(edges);
  for (const e of data.edges) {
    edges.append(el("tr", {},
      el("td", {}, e.producer), el("td", {}, e.event_type), el("td", {}, e.consumer),
      el("td", {}, String(e.count)),
      el("td", { class: e.failed ? "bad" : "" }, String(e.failed)),
      el("td", {}, fmtDuration(e.latency.p50_us)), el("td", {}, fmtDuration(e.latency.p99_us)),
      el("td", {}, fmtDuration(e.handler.p50_us)), el("td", {}, fmtDuration(e.handler.p99_us))));
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page;
  if (page === "flows") flowsPage();
  else if (page === "flow") flowPage();
  else if (page === "services") servicesPage();
});
