//! What the pages show, as the JSON API serves it: built from the tracer's state while its lock is held, serialized after.

use choreo_core::{EventId, Outcome, Timestamp};
use choreo_trace::{
    EdgeReport, Finding, FlowStatus, FlowTotals, FlowTrace, Handling, Owed, Query, Tracer,
};
use serde::{Deserialize, Serialize};

use crate::http::{Found, Inner};

/// In-flight flows judged for one list, at most: the most recently active.
/// Judging is the costly part of a list; a page shows a hundred rows.
pub(crate) const IN_FLIGHT_SCAN: usize = 500;

/// Flows a search returns at most.
const SEARCH_MAX: usize = 200;

/// Rows a list returns unless `limit` says otherwise, and at most.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// The query string of `GET /api/flows`, as written.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct FlowsParams {
    status: Option<String>,
    flow: Option<String>,
    service: Option<String>,
    since: Option<String>,
    until: Option<String>,
    window: Option<String>,
    q: Option<String>,
    limit: Option<String>,
}

/// Which flows a list shows: [`FlowsParams`] checked.
#[derive(Debug)]
pub(crate) struct Filter {
    statuses: Vec<FlowStatus>,
    flow: Option<String>,
    service: Option<String>,
    since: Option<Timestamp>,
    until: Option<Timestamp>,
    /// Started within this many µs before "now".
    window: Option<i64>,
    query: Option<Query>,
    limit: usize,
}

const STATUSES: [FlowStatus; 5] = [
    FlowStatus::InProgress,
    FlowStatus::Completed,
    FlowStatus::Failed,
    FlowStatus::Stuck,
    FlowStatus::Recovered,
];

fn nonempty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// A duration such as `90s`, `15m`, `2h` or `1d`, in µs.
fn parse_window(text: &str) -> Option<i64> {
    let (n, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let n: i64 = n.parse().ok()?;
    let unit_us: i64 = match unit {
        "s" => 1_000_000,
        "m" => 60_000_000,
        "h" => 3_600_000_000,
        "d" => 86_400_000_000,
        _ => return None,
    };
    n.checked_mul(unit_us)
}

impl Filter {
    /// Checks the parameters; an error names the parameter and the fix.
    pub(crate) fn from_params(p: FlowsParams) -> Result<Filter, String> {
        let mut statuses = Vec::new();
        for s in nonempty(p.status).iter().flat_map(|s| s.split(',')) {
            let s = s.trim();
            match STATUSES.iter().find(|x| x.as_str() == s) {
                Some(x) => statuses.push(*x),
                None => {
                    return Err(format!(
                        "status '{s}' is not a flow status; write one or more of in_progress, completed, failed, stuck, recovered, separated by commas"
                    ));
                }
            }
        }
        let time = |name: &str, v: Option<String>| match nonempty(v) {
            None => Ok(None),
            Some(t) => Timestamp::parse_rfc3339(&t).map(Some).ok_or_else(|| {
                format!("{name} '{t}' is not RFC 3339 time; write it like 2026-01-31T12:00:00Z")
            }),
        };
        let window = match nonempty(p.window) {
            None => None,
            Some(w) => Some(parse_window(&w).ok_or_else(|| {
                format!("window '{w}' is not a duration; write a number and s, m, h or d: 15m")
            })?),
        };
        let query = match nonempty(p.q) {
            None => None,
            Some(q) => Some(Query::parse(&q).map_err(|e| format!("q: {e}"))?),
        };
        let limit = match nonempty(p.limit) {
            None => DEFAULT_LIMIT,
            Some(l) => match l.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    return Err(format!(
                        "limit '{l}' must be a number from 1 to {MAX_LIMIT}"
                    ));
                }
            },
        };
        Ok(Filter {
            statuses,
            flow: nonempty(p.flow),
            service: nonempty(p.service),
            since: time("since", p.since)?,
            until: time("until", p.until)?,
            window,
            query,
            limit,
        })
    }

    fn admits(&self, f: &FlowTrace, now: Option<Timestamp>) -> bool {
        if !self.statuses.is_empty() && !self.statuses.contains(&f.status) {
            return false;
        }
        if let Some(name) = &self.flow
            && f.flow.as_deref().unwrap_or("unknown") != name
        {
            return false;
        }
        if let Some(s) = &self.service
            && !involves(f, s)
        {
            return false;
        }
        if self.since.is_some_and(|t| f.started < t) || self.until.is_some_and(|t| f.started >= t) {
            return false;
        }
        if let (Some(w), Some(now)) = (self.window, now)
            && f.started.micros_since(now) < -w
        {
            return false;
        }
        true
    }
}

/// Whether `service` published, handled, owes or is named by a finding in the flow.
fn involves(f: &FlowTrace, service: &str) -> bool {
    f.events().any(|e| {
        e.source.as_str() == service || e.handled.iter().any(|h| h.service.as_str() == service)
    }) || f.owed.iter().any(|o| o.service == service)
        || f.findings.iter().any(|x| x.service == service)
}

/// The services a flow waits on: those that owe events; for a failed or
/// stuck flow that owes nothing, those that dead-lettered an event of it, or
/// else those its violations name.
fn owing(f: &FlowTrace) -> Vec<String> {
    let mut out: Vec<String> = f.owed.iter().map(|o| o.service.clone()).collect();
    let gone_wrong = matches!(f.status, FlowStatus::Failed | FlowStatus::Stuck);
    if out.is_empty() && gone_wrong {
        out = f
            .events()
            .flat_map(|e| &e.handled)
            .filter(|h| h.outcome == Outcome::DeadLettered)
            .map(|h| h.service.to_string())
            .collect();
    }
    if out.is_empty() && gone_wrong {
        out = f
            .findings
            .iter()
            .filter(|x| x.rule.is_violation() && !x.service.is_empty())
            .map(|x| x.service.clone())
            .collect();
    }
    out.sort();
    out.dedup();
    out
}

/// Where the tracer holds a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Held {
    /// In flight: it may still change.
    InFlight,
    /// Finished, among the recent flows.
    Recent,
}

/// One row of the flows list.
#[derive(Debug, Serialize)]
pub(crate) struct FlowRow {
    correlation_id: EventId,
    flow: Option<String>,
    status: FlowStatus,
    started: Timestamp,
    ended: Option<Timestamp>,
    /// From the start to the end, or (not ended) to "now".
    duration_us: Option<u64>,
    owing: Vec<String>,
    rules: Vec<String>,
    events: u64,
    held: Held,
}

impl FlowRow {
    fn of(f: &FlowTrace, held: Held, now: Option<Timestamp>) -> FlowRow {
        let mut rules: Vec<String> = f
            .findings
            .iter()
            .map(|x| x.rule.code().to_owned())
            .collect();
        rules.sort();
        rules.dedup();
        FlowRow {
            correlation_id: f.correlation_id.clone(),
            flow: f.flow.clone(),
            status: f.status,
            started: f.started,
            ended: f.ended,
            duration_us: f
                .ended
                .or(now)
                .map(|end| end.micros_since(f.started).max(0) as u64),
            owing: owing(f),
            rules,
            events: f.graph.node_count() as u64,
            held,
        }
    }
}

/// What the tracer holds, in numbers.
#[derive(Debug, Serialize)]
pub(crate) struct Holding {
    in_flight: usize,
    recent: usize,
}

/// `GET /api/flows`.
#[derive(Debug, Serialize)]
pub(crate) struct FlowsPage {
    now: Option<Timestamp>,
    live: bool,
    flows: Vec<FlowRow>,
    /// More flows matched than `limit`.
    truncated: bool,
    /// Flows the search found in the search window that are not held any
    /// more (they finished before the newest recent flows): their ids only.
    found_not_held: Vec<EventId>,
    held: Holding,
    /// The flow names seen among the held flows, for the filter.
    flow_names: Vec<String>,
    /// Since the tracer started (the report's totals).
    totals: FlowTotals,
}

/// The flows list: the search's flows, or the held flows newest first, filtered.
pub(crate) fn flows(tracer: &mut Tracer, filter: &Filter, live: bool) -> FlowsPage {
    let now = tracer.now();
    let mut rows = Vec::new();
    let mut truncated = false;
    let mut found_not_held = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let mut push = |f: &FlowTrace, held: Held, rows: &mut Vec<FlowRow>| {
        let name = f.flow.as_deref().unwrap_or("unknown");
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
        if filter.admits(f, now) {
            if rows.len() < filter.limit {
                rows.push(FlowRow::of(f, held, now));
            } else {
                truncated = true;
            }
        }
    };
    let in_flight = tracer.flows_in_flight();
    if let Some(q) = &filter.query {
        for id in tracer.find(q, SEARCH_MAX) {
            let held = if tracer.recent().any(|t| t.correlation_id == id) {
                Held::Recent
            } else {
                Held::InFlight
            };
            match tracer.flow(&id) {
                Some(f) => push(&f, held, &mut rows),
                None => found_not_held.push(id),
            }
        }
    } else {
        for f in tracer.in_flight(IN_FLIGHT_SCAN) {
            push(&f, Held::InFlight, &mut rows);
        }
        for f in tracer.recent().rev() {
            push(f, Held::Recent, &mut rows);
        }
    }
    names.sort();
    FlowsPage {
        now,
        live,
        flows: rows,
        truncated,
        found_not_held,
        held: Holding {
            in_flight,
            recent: tracer.recent().count(),
        },
        flow_names: names,
        totals: tracer.report().flows,
    }
}

/// One event of a flow, as the flow page shows it.
#[derive(Debug, Serialize)]
struct EventView<'a> {
    id: &'a EventId,
    event_type: &'a str,
    source: &'a str,
    topic: &'a str,
    partition: Option<u32>,
    offset: Option<u64>,
    time: Timestamp,
    /// µs since the flow started.
    at_us: i64,
    causation_id: Option<&'a EventId>,
    orphan: bool,
    handled: &'a [Handling],
    /// The rules its findings broke.
    rules: Vec<&'static str>,
    /// Its JSON payload, only with `--ui-show-payloads` and while the
    /// search window holds it.
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a str>,
}

/// A handling of an event by a service: one receipt.
#[derive(Debug, Serialize)]
struct ReceiptView<'a> {
    event_id: &'a EventId,
    event_type: &'a str,
    service: &'a str,
    outcome: &'static str,
    attempts: u32,
    duration_us: u64,
    reason: Option<&'a str>,
}

/// A dead-lettered event, and the commands that show it and replay it.
#[derive(Debug, Serialize)]
struct DeadLetterView<'a> {
    event_id: &'a EventId,
    event_type: &'a str,
    service: &'a str,
    reason: Option<&'a str>,
    attempts: u32,
    /// Where the runtime put it: the event's topic with `.dlq`.
    dlq_topic: String,
    /// `choreo dlq show …` for it (from the captures, when the viewer shows captures).
    show: String,
    /// `choreo dlq replay …` for it.
    replay: String,
}

/// `GET /api/flows/{id}`.
#[derive(Debug, Serialize)]
pub(crate) struct FlowPage<'a> {
    live: bool,
    now: Option<Timestamp>,
    /// Whether payloads are shown (`--ui-show-payloads`).
    payloads_shown: bool,
    summary: FlowRow,
    events: Vec<EventView<'a>>,
    receipts: Vec<ReceiptView<'a>>,
    dead_letters: Vec<DeadLetterView<'a>>,
    findings: &'a [Finding],
    owed: &'a [Owed],
    duplicates: u32,
    /// The CLI's `--flow` view.
    timeline: String,
    /// The causal graph, as the CLI draws it.
    dot: String,
    mermaid: String,
    /// Where the graph is served as SVG.
    graph_svg: String,
}

/// One flow's page.
pub(crate) fn flow<'a>(found: &'a Found, inner: &Inner) -> FlowPage<'a> {
    let (f, held, now, live) = (&found.flow, found.held, found.now, inner.live);
    let captures = &inner.captures;
    // Where `choreo dlq show` reads the dead letter: the captures the
    // viewer shows, or else Kafka's dead-letter topic.
    let show_from = |dlq_topic: &str| {
        if captures.is_empty() {
            format!("--topic {dlq_topic}")
        } else {
            format!("--capture {}", captures.join(" "))
        }
    };
    let mut events = Vec::new();
    let mut receipts = Vec::new();
    let mut dead_letters = Vec::new();
    for e in f.events() {
        let mut rules: Vec<&'static str> = f
            .findings
            .iter()
            .filter(|x| x.event_id.as_ref() == Some(&e.id))
            .map(|x| x.rule.code())
            .collect();
        rules.dedup();
        events.push(EventView {
            id: &e.id,
            event_type: e.event_type.as_str(),
            source: e.source.as_str(),
            topic: e.topic.as_str(),
            partition: e.partition,
            offset: e.offset,
            time: e.time,
            at_us: e.time.micros_since(f.started),
            causation_id: e.causation_id.as_ref(),
            orphan: e.orphan,
            handled: &e.handled,
            rules,
            payload: found
                .payloads
                .iter()
                .find(|(id, _)| id == &e.id)
                .map(|(_, p)| p.as_str()),
        });
        for h in &e.handled {
            receipts.push(ReceiptView {
                event_id: &e.id,
                event_type: e.event_type.as_str(),
                service: h.service.as_str(),
                outcome: h.outcome.as_str(),
                attempts: h.attempts,
                duration_us: h.duration_us,
                reason: h.reason.as_deref(),
            });
            if h.outcome == Outcome::DeadLettered {
                let dlq_topic = format!("{}.dlq", e.topic);
                dead_letters.push(DeadLetterView {
                    event_id: &e.id,
                    event_type: e.event_type.as_str(),
                    service: h.service.as_str(),
                    reason: h.reason.as_deref(),
                    attempts: h.attempts,
                    show: format!("choreo dlq show {} {}", e.id, show_from(&dlq_topic)),
                    replay: format!("choreo dlq replay {} --topic {dlq_topic}", e.id),
                    dlq_topic,
                });
            }
        }
    }
    FlowPage {
        live,
        now,
        payloads_shown: inner.show_payloads,
        summary: FlowRow::of(f, held, now),
        events,
        receipts,
        dead_letters,
        findings: &f.findings,
        owed: &f.owed,
        duplicates: f.duplicates,
        timeline: f.timeline(),
        dot: f.to_dot(),
        mermaid: f.to_mermaid(),
        graph_svg: format!("/api/flows/{}/graph.svg", f.correlation_id),
    }
}

/// A service in the service graph, with what it handled.
#[derive(Debug, Serialize)]
struct ServiceView {
    name: String,
    /// Events it handled (edges into it).
    handled: u64,
    /// Of those, dead-lettered.
    failed: u64,
    /// Events it published that someone handled (edges out of it).
    published: u64,
}

/// `GET /api/services`.
#[derive(Debug, Serialize)]
pub(crate) struct ServicesPage {
    live: bool,
    now: Option<Timestamp>,
    services: Vec<ServiceView>,
    edges: Vec<EdgeReport>,
}

/// The service graph, with the report's numbers.
pub(crate) fn services(tracer: &Tracer, live: bool) -> ServicesPage {
    let report = tracer.report();
    let services = report
        .services
        .iter()
        .map(|name| {
            let into = report.edges.iter().filter(|e| &e.consumer == name);
            ServiceView {
                name: name.clone(),
                handled: into.clone().map(|e| e.count).sum(),
                failed: into.map(|e| e.failed).sum(),
                published: report
                    .edges
                    .iter()
                    .filter(|e| &e.producer == name)
                    .map(|e| e.count)
                    .sum(),
            }
        })
        .collect();
    ServicesPage {
        live,
        now: report.now,
        services,
        edges: report.edges,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> FlowsParams {
        let mut p = FlowsParams::default();
        for (k, v) in pairs {
            let v = Some((*v).to_owned());
            match *k {
                "status" => p.status = v,
                "window" => p.window = v,
                "since" => p.since = v,
                "limit" => p.limit = v,
                "q" => p.q = v,
                _ => unreachable!(),
            }
        }
        p
    }

    #[test]
    fn parameters_are_checked_with_the_fix_named() {
        let f =
            Filter::from_params(params(&[("status", "stuck,failed"), ("window", "15m")])).unwrap();
        assert_eq!(f.statuses, vec![FlowStatus::Stuck, FlowStatus::Failed]);
        assert_eq!(f.window, Some(15 * 60_000_000));
        let e = Filter::from_params(params(&[("status", "late")])).unwrap_err();
        assert!(e.contains("in_progress, completed"), "{e}");
        let e = Filter::from_params(params(&[("window", "soon")])).unwrap_err();
        assert!(e.contains("15m"), "{e}");
        let e = Filter::from_params(params(&[("since", "yesterday")])).unwrap_err();
        assert!(e.contains("RFC 3339"), "{e}");
        let e = Filter::from_params(params(&[("limit", "0")])).unwrap_err();
        assert!(e.contains("1 to 1000"), "{e}");
        let e = Filter::from_params(params(&[("q", "=42")])).unwrap_err();
        assert!(e.contains("FIELD=VALUE"), "{e}");
        assert!(Filter::from_params(params(&[("status", " "), ("q", "")])).is_ok());
    }

    #[test]
    fn windows_parse() {
        assert_eq!(parse_window("90s"), Some(90_000_000));
        assert_eq!(parse_window("2h"), Some(7_200_000_000));
        assert_eq!(parse_window("1d"), Some(86_400_000_000));
        assert_eq!(parse_window("15"), None);
        assert_eq!(parse_window("m"), None);
        assert_eq!(parse_window("5w"), None);
    }
}
