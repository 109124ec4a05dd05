//! Judging one flow: its causal graph rebuilt, then each family of rules in turn, then its status.
//!
//! [`analyse`] is the whole judgement, as a sequence: each step is a module
//! that reads the flow (and what the steps before it found) and adds its
//! findings. A rule is added or changed by reading one of them:
//!
//! | module | rules |
//! |---|---|
//! | [`causality`] | the graph, the flow's first event; `orphan`, `clock-skew`, `causal-loop` |
//! | [`names`] | `unknown-event`, `unknown-service`, `unknown-flow`, `undeclared-emit` of a flow's first event |
//! | [`reactions`] | per event and consumer: `undeclared-consume`, `undeclared-emit`, `missing-emit`, `both-branches`, `reaction-late`, `dead-lettered`, and what is owed |
//! | [`cycles`] | `cycle-bound` |
//! | [`status`] | the flow's status; `flow-late`, `bad-end`, `stuck` |

use choreo_core::EventId;
use petgraph::graph::{Graph, NodeIndex};

use crate::config::TracerConfig;
use crate::finding::Rule;
use crate::flow::FlowStatus;
use crate::model::{Model, Sym, Symbols};
use crate::store::FlowState;

pub(crate) mod causality;
pub(crate) mod cycles;
pub(crate) mod names;
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
}

impl Scratch {
    /// The effects of event `i` (indexes), in the graph's order.
    pub(crate) fn kids(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        self.graph
            .neighbors(self.node_of[i])
            .map(|nx| self.graph[nx] as usize)
    }
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
    pub(crate) deadline: Option<i64>,
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
    let shape = causality::rebuild(ctx, s, corr, f, &mut findings);
    let Some(m) = ctx.model else {
        return status::without_topology(ctx, f, &shape, findings);
    };
    let name = names::flow_name(m, f, shape.root);
    names::check(m, ctx.syms, f, shape.root, &mut findings);
    let owed = reactions::check(ctx, m, s, f, &mut findings);
    cycles::check(ctx, s, f, &mut findings);
    status::judge(ctx, m, s, f, &shape, name, owed, now, findings)
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
