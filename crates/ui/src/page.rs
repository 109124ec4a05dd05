//! The HTML pages: shells that the embedded script fills from the JSON API (and refreshes while they are open).
//!
//! Nothing that comes from events is written into the HTML on the server
//! except escaped in an attribute (a flow's id); the script puts data in
//! the page as text nodes only, and the pages forbid any script but the
//! embedded one (Content-Security-Policy).

use crate::svg::escape;

/// The embedded script: every page's rendering and refreshing.
pub(crate) const APP_JS: &str = include_str!("assets/app.js");
/// The embedded style sheet.
pub(crate) const APP_CSS: &str = include_str!("assets/app.css");

/// What the pages allow to load and run: only this server's own script,
/// style sheet, images and API.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

fn shell(title: &str, page: &str, data: &str, main: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} — choreo</title>
<link rel="stylesheet" href="/ui/app.css">
<script src="/ui/app.js" defer></script>
</head>
<body data-page="{page}"{data}>
<header>
<a class="brand" href="/">choreo</a>
<nav><a href="/">Flows</a> <a href="/services">Services</a> <a href="/metrics">Metrics</a></nav>
<form class="search" action="/" method="get"><input name="q" placeholder="correlation id, event id, key, order_id=42" aria-label="search flows"><button>Find</button></form>
<span id="live" class="live"></span>
</header>
<main>
{main}
</main>
</body>
</html>
"#,
        title = escape(title),
    )
}

/// The flows list, with its filters.
pub(crate) fn flows() -> String {
    shell(
        "Flows",
        "flows",
        "",
        r#"<h1>Flows</h1>
<form id="filters" class="filters">
<label>Search <input id="q" name="q" placeholder="order_id=42"></label>
<label>Status <select id="status" name="status">
<option value="">any</option>
<option value="in_progress">in progress</option>
<option value="completed">completed</option>
<option value="failed">failed</option>
<option value="stuck">stuck</option>
<option value="recovered">recovered</option>
<option value="stuck,failed">stuck or failed</option>
</select></label>
<label>Flow <select id="flow" name="flow"><option value="">any</option></select></label>
<label>Service <input id="service" name="service" placeholder="shipping"></label>
<label>Started <select id="window" name="window">
<option value="">any time</option>
<option value="5m">last 5 min</option>
<option value="1h">last hour</option>
<option value="1d">last day</option>
</select></label>
<button>Apply</button>
</form>
<p id="counts" class="muted"></p>
<p id="error" class="error" hidden></p>
<p id="not-held" class="muted" hidden></p>
<table id="flows">
<thead><tr><th>Status</th><th>Flow</th><th>Correlation id</th><th>Started</th><th>Duration</th><th>Owing</th><th>Findings</th></tr></thead>
<tbody></tbody>
</table>"#,
    )
}

/// One flow's page; the script loads it by `id`.
pub(crate) fn flow(id: &str) -> String {
    shell(
        &format!("Flow {id}"),
        "flow",
        &format!(r#" data-id="{}""#, escape(id)),
        r#"<h1>Flow <code id="flow-id"></code></h1>
<p id="error" class="error" hidden></p>
<dl id="facts" class="facts">
<dt>Status</dt><dd id="status"></dd>
<dt>Flow</dt><dd id="flow-name"></dd>
<dt>Started</dt><dd id="started"></dd>
<dt>Duration</dt><dd id="duration"></dd>
<dt>Owing</dt><dd id="owing"></dd>
</dl>
<section><h2>What is owed</h2><ul id="owed"></ul></section>
<section><h2>Causal graph</h2><p class="muted">Events left to right by cause; dashed: owed; red: findings. Also as <a id="dot-link" href="">JSON with DOT and Mermaid</a>.</p>
<div class="graph"><img id="graph" alt="the flow's causal graph"></div></section>
<section><h2>Findings</h2><ul id="findings"></ul></section>
<section><h2>Dead letters</h2><div id="dead-letters"></div></section>
<section><h2>Receipts</h2>
<table id="receipts"><thead><tr><th>Event</th><th>Service</th><th>Outcome</th><th>Attempts</th><th>Handler time</th><th>Reason</th></tr></thead><tbody></tbody></table></section>
<section><h2>Timeline</h2><pre id="timeline"></pre></section>
<section id="payloads-section" hidden><h2>Payloads</h2><div id="payloads"></div></section>"#,
    )
}

/// The service graph with its numbers.
pub(crate) fn services() -> String {
    shell(
        "Services",
        "services",
        "",
        r#"<h1>Service graph</h1>
<p class="muted">Every edge producer → consumer by event type, with the handled count, failures and latencies (end to end: publication to settlement), the numbers of the tracer's metrics.</p>
<p id="error" class="error" hidden></p>
<div class="graph"><img id="service-graph" alt="the service graph"></div>
<h2>Services</h2>
<table id="services"><thead><tr><th>Service</th><th>Handled</th><th>Failed</th><th>Published</th></tr></thead><tbody></tbody></table>
<h2>Edges</h2>
<table id="edges"><thead><tr><th>Producer</th><th>Event</th><th>Consumer</th><th>Count</th><th>Failed</th><th>p50</th><th>p99</th><th>Handler p50</th><th>Handler p99</th></tr></thead><tbody></tbody></table>"#,
    )
}

/// The page for a flow the tracer does not hold, with a search box.
pub(crate) fn not_found(what: &str) -> String {
    shell(
        "Not found",
        "missing",
        "",
        &format!(
            r#"<h1>Not found</h1>
<p class="error">{}</p>
<form action="/" method="get"><label>Search flows <input id="q" name="q" placeholder="correlation id, event id, key, order_id=42"></label> <button>Find</button></form>"#,
            escape(what)
        ),
    )
}
