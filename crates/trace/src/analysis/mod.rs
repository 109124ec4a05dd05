//! Judging one flow: its causal graph rebuilt, then each family of rules in turn, then its status.
//!
//! [`analyse`] is the whole judgement, as a sequence: each step is a module
//! that reads the flow (and what the steps before it found) and adds its
//! findings. A rule is added or changed by reading one of them:
//!
//! | module | rules |
//! |---|---|
//! | [`causality`] | the graph, the flow's first event; `orphan`, `clock-skew`, `causal-loop` |
//! | [`poison`] | `malformed-record`: records no service could read |
//! | [`dead`] | `dead-lettered`, `recovered`: what services gave up on, and what a replay brought back |
//! | [`names`] | `unknown-event`, `unknown-service`, `unknown-flow`, `wrong-topic`, `undeclared-emit` of a flow's first event |
//! | [`reactions`] | per event and consumer: `undeclared-consume`, `undeclared-emit`, `missing-emit`, `both-branches`, `handled-twice`, `reaction-late`, and what is owed |
//! | [`cycles`] | `cycle-bound` |
//! | [`status`] | the flow's status as of "now"; `flow-late`, `bad-end`, `stuck`, `never-handled` |
//!
//! Findings come out in one order whatever the order of the records
//! ([`canonical_order`]), and duplicates of a record change nothing.

use choreo_core::EventId;
use petgraph::graph::{Graph, NodeIndex};

use crate::config::TracerConfig;
use crate::finding::Rule;
use crate::flow::FlowStatus;
use crate::model::{Model, Sym, Symbols};
use crate::store::FlowState;

pub(crate) mod causality;
pub(crate) mod cycles;
pub(crate) mod dead;
pub(crate) mod names;
pub(crate) mod poison;
pub(crate) mod reactions;
pub(crate) mod status;

#[cfg(test)]
pub(crate) mod testing;

/// What judging a flow needs besides the flow: read-only, so flows can be
/// judged on several threads.
pub(crate) struct Ctx<'a> {
    pub(crate) model: Option<&'a Model>,
    pub(crate) syms: &'a Symbols,
    pub(crate) config: &'a TracerConfig,
    /// Whether the input holds receipts (a sink then owes one).
    pub(crate) receipts_expected: bool,
    /// Event type → the services whose receipts for it the input holds.
    pub(crate) handlers: &'a [Vec<Sym>],
}

impl Ctx<'_> {
    /// Whether the input shows that `service`'s silence about an event of
    /// type `ty` in flow `f` is real: the flow holds other services'
    /// receipts, or `service` wrote receipts for something, or other
    /// services wrote receipts for events on `ty`'s topic. Never when
    /// receipts are declared absent.
    pub(crate) fn receipts_show(&self, f: &FlowState, service: Sym, ty: Sym) -> bool {
        if self.config.receipts == crate::config::Receipts::Absent {
            return false;
        }
        if f.receipts.iter().any(|r| r.service != service) {
            return true;
        }
        let topic = self.model.and_then(|m| m.topic_of(ty));
        self.handlers.iter().enumerate().any(|(t, services)| {
            services.contains(&service)
                || (topic.is_some()
                    && self.model.and_then(|m| m.topic_of(t as Sym)) == topic
                    && services.iter().any(|s| *s != service))
        })
    }
}

/// "Now", and the flow's own bound, for the rules that depend on time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    pub(crate) now: i64,
    /// The flow's start plus its `within`.
    pub(crate) flow_deadline: Option<i64>,
}

impl Clock {
    /// The tightest bound of a debt whose own bound is `deadline`.
    pub(crate) fn bound(&self, deadline: Option<i64>) -> Option<i64> {
        match (deadline, self.flow_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether that bound has passed.
    pub(crate) fn overdue(&self, deadline: Option<i64>) -> bool {
        self.bound(deadline).is_some_and(|d| self.now > d)
    }
}

/// Buffers reused from flow to flow: the causal graph and the time order.
#[derive(Default)]
pub(crate) struct Scratch {
    /// Events as nodes (weight: index in the flow's events), causes → effects.
    pub(crate) graph: Graph<u32, ()>,
    /// The flow's events in time order (indexes).
    pub(crate) order: Vec<u32>,
    /// Event index → its node.
    pub(crate) node_of: Vec<NodeIndex>,
    /// Event index → its cause's index (`u32::MAX`: none in the flow).
    pub(crate) parent: Vec<u32>,
    /// Event index → no service could read its record.
    pub(crate) poison: Vec<bool>,
    /// Event index → published on another topic than its type's.
    pub(crate) misrouted: Vec<bool>,
}

impl Scratch {
    /// The effects of event `i` (indexes), in the graph's order.
    pub(crate) fn kids(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        self.graph
            .neighbors(self.node_of[i])
            .map(|nx| self.graph[nx] as usize)
    }

    /// The effects of event `i` in time order (ties by id), into `out`.
    pub(crate) fn kids_in_order(&self, f: &FlowState, i: usize, out: &mut Vec<usize>) {
        out.clear();
        out.extend(self.kids(i));
        if out.len() > 1 {
            out.sort_by(|&a, &b| by_time(f, a, b));
        }
    }
}

/// Events `a` and `b` of `f` by time, ties by id: an order that does not
/// depend on the order records arrived in.
pub(crate) fn by_time(f: &FlowState, a: usize, b: usize) -> std::cmp::Ordering {
    let (x, y) = (&f.events[a], &f.events[b]);
    x.time.cmp(&y.time).then_with(|| x.id.cmp(&y.id))
}

/// What judging a flow found.
pub(crate) struct Analysis {
    pub(crate) status: FlowStatus,
    /// The flow's index in the model, when known.
    pub(crate) name: Option<usize>,
    pub(crate) start: i64,
    pub(crate) end: Option<i64>,
    pub(crate) findings: Vec<Raw>,
    pub(crate) owed: Vec<RawOwed>,
    /// The earliest future deadline, for live mode.
    pub(crate) next_deadline: Option<i64>,
    pub(crate) orphans: u32,
}

/// A finding before names are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Raw {
    pub(crate) rule: Rule,
    pub(crate) service: Sym,
    pub(crate) event_type: Sym,
    /// The event concerned (index in the flow's events).
    pub(crate) event: Option<u32>,
    pub(crate) time: i64,
    pub(crate) message: String,
}

/// A service that owes events for one event of the flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawOwed {
    pub(crate) service: Sym,
    /// The event it reacts to (index in the flow's events).
    pub(crate) event: u32,
    pub(crate) owes: Vec<Sym>,
    pub(crate) one_of: bool,
    /// The reaction's own bound (the event's time plus its `within`).
    pub(crate) deadline: Option<i64>,
    /// What is owed, and why.
    pub(crate) debt: Debt,
    /// Whether the flow waits for it (a sink's receipt holds nothing up).
    pub(crate) blocking: bool,
}

/// Why a service owes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Debt {
    /// It has not handled the event (no receipt, no emission).
    Unhandled,
    /// Its receipt announced `announced` emissions; `seen` are in the input.
    Announced { announced: u32, seen: u32 },
    /// It handled the event and has not emitted its reaction yet (an
    /// asynchronous reaction, or one it will never emit).
    Unemitted,
}

/// Rebuilds the causal graph of flow `corr` and judges it as of `now`.
pub(crate) fn analyse(
    ctx: &Ctx<'_>,
    s: &mut Scratch,
    corr: &EventId,
    f: &FlowState,
    now: i64,
) -> Analysis {
    let mut findings = Vec::new();
    let mut shape = causality::rebuild(ctx, s, corr, f, &mut findings);
    let poisoned = poison::check(ctx, s, f, &mut findings);
    let dead = dead::check(ctx, s, f, &mut findings);
    let mut a = match ctx.model {
        None => status::without_topology(&shape, poisoned, &dead, findings),
        Some(m) => {
            let name = names::flow_name(m, s, f, shape.root);
            names::check(m, ctx.syms, s, f, shape.root, &mut findings);
            let clock = Clock {
                now,
                flow_deadline: name
                    .and_then(|n| m.flows[n].within_us)
                    .map(|w| shape.start.saturating_add(w)),
            };
            let cause_due = causality::defer_orphans(m, f, &clock, &mut shape, &mut findings);
            let owed = reactions::check(ctx, m, s, f, &dead, &clock, &mut findings);
            cycles::check(ctx, s, f, &mut findings);
            let judged = status::Judged {
                name,
                owed,
                poisoned,
                dead: &dead,
            };
            let mut a = status::judge(ctx, m, s, f, &shape, judged, &clock, findings);
            // Judged again once a missing cause is no longer expected.
            if let Some(d) = cause_due {
                a.next_deadline = Some(a.next_deadline.map_or(d, |n| n.min(d)));
            }
            a
        }
    };
    canonical_order(ctx, f, &mut a);
    a
}

/// Sorts the findings by time, rule, event and message, and the debts by
/// event and service: an order that does not depend on the order of the
/// records (symbols do: they number names as they first arrive).
fn canonical_order(ctx: &Ctx<'_>, f: &FlowState, a: &mut Analysis) {
    let id = |e: Option<u32>| e.map(|i| &f.events[i as usize].id);
    if a.findings.len() > 1 {
        a.findings.sort_by(|x, y| {
            (x.time, x.rule, id(x.event), &x.message).cmp(&(
                y.time,
                y.rule,
                id(y.event),
                &y.message,
            ))
        });
    }
    if a.owed.len() > 1 {
        a.owed.sort_by(|x, y| {
            by_time(f, x.event as usize, y.event as usize)
                .then_with(|| ctx.syms.name(x.service).cmp(ctx.syms.name(y.service)))
        });
    }
}

/// `'A', 'B'`, or `nothing`.
pub(crate) fn list(syms: &Symbols, s: &[Sym]) -> String {
    let names: Vec<String> = s.iter().map(|x| format!("'{}'", syms.name(*x))).collect();
    if names.is_empty() {
        "nothing".to_owned()
    } else {
        names.join(", ")
    }
}

/// What a debt is, in words.
pub(crate) fn owes_text(syms: &Symbols, owes: &[Sym], one_of: bool) -> String {
    if owes.is_empty() {
        "its receipt".to_owned()
    } else if one_of {
        format!("one of {}", list(syms, owes))
    } else {
        list(syms, owes)
    }
}

/// `s` unless `n` is one.
pub(crate) fn plural(n: u32) -> &'static str {
    if n == 1 { "" } else { "s" }
}
