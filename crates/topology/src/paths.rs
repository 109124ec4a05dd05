//! Path enumeration (`choreo check --paths`): the possible executions of each flow.
//!
//! An execution is one way a run can go: every `one_of` resolved to one of its
//! events. Because a reaction may emit several events and several services may
//! consume one event, an execution is a tree of events, not a line. Loops are
//! unrolled a bounded number of times and the count is capped, so this stays
//! cheap on any topology.

use std::collections::HashMap;
use std::fmt;

use serde::Serialize;

use crate::model::{Emit, Flow, Topology};

/// Longest causal chain followed; deeper chains are cut and the count becomes a
/// lower bound. Keeps the recursion's stack use bounded on any topology.
const MAX_DEPTH: usize = 200;

/// Bounds on the enumeration: [`PathLimits::default`], then a setter per field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PathLimits {
    /// How many times one event may appear on a single causal chain before the
    /// chain is cut (a loop unrolled this often). Default 2.
    pub loop_bound: u32,
    /// How many executions to list per flow. Default 20.
    pub max_listed: usize,
    /// Work budget (expansion steps) per flow; past it the count becomes a lower
    /// bound ("at least N"). Default 200 000.
    pub budget: usize,
}

impl Default for PathLimits {
    fn default() -> Self {
        Self {
            loop_bound: 2,
            max_listed: 20,
            budget: 200_000,
        }
    }
}

impl PathLimits {
    /// Sets how many times one event may appear on a single causal chain.
    pub fn loop_bound(self, loop_bound: u32) -> Self {
        Self { loop_bound, ..self }
    }

    /// Sets how many executions are listed per flow.
    pub fn max_listed(self, max_listed: usize) -> Self {
        Self { max_listed, ..self }
    }

    /// Sets the work budget (expansion steps) per flow.
    pub fn budget(self, budget: usize) -> Self {
        Self { budget, ..self }
    }
}

/// One event in an execution, the service that emitted it, and what follows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Step {
    /// The event type.
    pub event: String,
    /// The service that emitted it (the flow's starter for the first event,
    /// `None` when nobody emits the start).
    pub by: Option<String>,
    /// The events its consumers emit, all published (parallel branches).
    pub then: Vec<Step>,
    /// The chain was cut here because the loop bound was reached.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cut: bool,
}

/// How an execution finishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// An end event of the flow is published.
    Ended,
    /// Every branch stops without an end event.
    Stuck,
    /// No end within the loop bound: the execution goes round a loop.
    Looping,
}

/// One possible execution of a flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Execution {
    /// The tree of events, rooted at the flow's start.
    pub root: Step,
    /// The end events it publishes, in tree order.
    pub ends: Vec<String>,
    /// How it finishes.
    pub outcome: Outcome,
}

/// The executions of one flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct FlowPaths {
    /// The flow's name.
    pub flow: String,
    /// How many executions there are (with loops unrolled at most
    /// [`PathLimits::loop_bound`] times); a lower bound when `exact` is false.
    pub count: u64,
    /// Whether `count` is exact.
    pub exact: bool,
    /// The first [`PathLimits::max_listed`] executions.
    pub listed: Vec<Execution>,
}

impl FlowPaths {
    /// How many executions exist beyond those listed (a lower bound when not exact).
    pub fn more(&self) -> u64 {
        self.count.saturating_sub(self.listed.len() as u64)
    }
}

impl Topology {
    /// The possible executions of every flow, in flow declaration order.
    pub fn paths(&self, limits: PathLimits) -> Vec<FlowPaths> {
        self.flows
            .values()
            .map(|f| self.flow_paths(f, limits))
            .collect()
    }

    /// The possible executions of `flow`.
    pub fn flow_paths(&self, flow: &Flow, limits: PathLimits) -> FlowPaths {
        let by = self
            .emitters_of(&flow.starts_with.name)
            .find(|e| e.reaction.is_none())
            .or_else(|| self.emitters_of(&flow.starts_with.name).next())
            .map(|e| e.service.name.clone());
        let mut e = Enumerator {
            t: self,
            flow,
            limits,
            visits: HashMap::new(),
            work: 0,
            exhausted: false,
            // Keep a few more than listed per node, so combining sub-trees still
            // yields enough whole executions to list.
            keep: limits.max_listed.max(1),
            depth: 0,
        };
        let trees = e.expand(&flow.starts_with.name, by.clone());
        e.work = 0;
        e.exhausted = false;
        e.visits.clear();
        let count = e.count(&flow.starts_with.name);
        let exact = !e.exhausted;
        let listed: Vec<Execution> = trees
            .into_iter()
            .take(limits.max_listed)
            .map(|root| {
                let mut ends = Vec::new();
                let mut cut = false;
                collect(&root, flow, &mut ends, &mut cut);
                let outcome = if !ends.is_empty() {
                    Outcome::Ended
                } else if cut {
                    Outcome::Looping
                } else {
                    Outcome::Stuck
                };
                Execution {
                    root,
                    ends,
                    outcome,
                }
            })
            .collect();
        let count = if exact {
            count
        } else {
            count.max(listed.len() as u64)
        };
        FlowPaths {
            flow: flow.name.clone(),
            count,
            exact,
            listed,
        }
    }
}

fn collect(step: &Step, flow: &Flow, ends: &mut Vec<String>, cut: &mut bool) {
    if flow.is_ended_by(&step.event) {
        ends.push(step.event.clone());
    }
    *cut |= step.cut;
    for s in &step.then {
        collect(s, flow, ends, cut);
    }
}

struct Enumerator<'a> {
    t: &'a Topology,
    flow: &'a Flow,
    limits: PathLimits,
    /// Occurrences of each event on the chain being expanded.
    visits: HashMap<&'a str, u32>,
    work: usize,
    exhausted: bool,
    keep: usize,
    depth: usize,
}

impl<'a> Enumerator<'a> {
    /// The alternative trees rooted at `event` (at most `keep` of them).
    fn expand(&mut self, event: &'a str, by: Option<String>) -> Vec<Step> {
        self.work += 1;
        if self.work > self.limits.budget || self.depth >= MAX_DEPTH {
            self.exhausted = true;
            return Vec::new();
        }
        let leaf = |cut| Step {
            event: event.to_owned(),
            by: by.clone(),
            then: Vec::new(),
            cut,
        };
        if self.flow.is_ended_by(event) {
            return vec![leaf(false)];
        }
        let seen = self.visits.entry(event).or_insert(0);
        if *seen >= self.limits.loop_bound {
            return vec![leaf(true)];
        }
        *seen += 1;
        self.depth += 1;
        // Each consumer contributes a list of alternatives, each alternative a
        // list of child steps; the node's alternatives are their product.
        let mut combos: Vec<Vec<Step>> = vec![Vec::new()];
        let consumers: Vec<_> = self.t.consumers_of(event).collect();
        for (service, r) in consumers {
            let options: Vec<Vec<Step>> = match &r.emit {
                Emit::Nothing => vec![Vec::new()],
                Emit::OneOf(list) => {
                    let mut out = Vec::new();
                    for e in list {
                        for tree in self.expand(&e.name, Some(service.name.clone())) {
                            out.push(vec![tree]);
                        }
                    }
                    out
                }
                Emit::All(list) => {
                    let mut acc: Vec<Vec<Step>> = vec![Vec::new()];
                    for e in list {
                        let trees = self.expand(&e.name, Some(service.name.clone()));
                        acc = product(acc, &trees, self.keep);
                    }
                    acc
                }
            };
            combos = combine(combos, &options, self.keep);
        }
        self.depth -= 1;
        if let Some(n) = self.visits.get_mut(event) {
            *n -= 1;
        }
        combos
            .into_iter()
            .map(|then| Step {
                event: event.to_owned(),
                by: by.clone(),
                then,
                cut: false,
            })
            .collect()
    }

    /// How many alternative trees `event` roots (saturating).
    fn count(&mut self, event: &'a str) -> u64 {
        self.work += 1;
        if self.work > self.limits.budget || self.depth >= MAX_DEPTH {
            self.exhausted = true;
            return 1;
        }
        if self.flow.is_ended_by(event) {
            return 1;
        }
        let seen = self.visits.entry(event).or_insert(0);
        if *seen >= self.limits.loop_bound {
            return 1;
        }
        *seen += 1;
        self.depth += 1;
        let mut total: u64 = 1;
        let consumers: Vec<_> = self.t.consumers_of(event).collect();
        for (_, r) in consumers {
            let n = match &r.emit {
                Emit::Nothing => 1,
                Emit::OneOf(list) => list
                    .iter()
                    .fold(0u64, |acc, e| acc.saturating_add(self.count(&e.name))),
                Emit::All(list) => list
                    .iter()
                    .fold(1u64, |acc, e| acc.saturating_mul(self.count(&e.name))),
            };
            total = total.saturating_mul(n);
        }
        self.depth -= 1;
        if let Some(n) = self.visits.get_mut(event) {
            *n -= 1;
        }
        total
    }
}

/// Every list in `acc` extended by each of `trees` (at most `keep` results).
fn product(acc: Vec<Vec<Step>>, trees: &[Step], keep: usize) -> Vec<Vec<Step>> {
    let mut out = Vec::new();
    'outer: for prefix in &acc {
        for tree in trees {
            if out.len() >= keep {
                break 'outer;
            }
            let mut list = prefix.clone();
            list.push(tree.clone());
            out.push(list);
        }
    }
    out
}

/// Every list in `acc` concatenated with each of `options` (at most `keep` results).
fn combine(acc: Vec<Vec<Step>>, options: &[Vec<Step>], keep: usize) -> Vec<Vec<Step>> {
    let mut out = Vec::new();
    'outer: for prefix in &acc {
        for option in options {
            if out.len() >= keep {
                break 'outer;
            }
            let mut list = prefix.clone();
            list.extend(option.iter().cloned());
            out.push(list);
        }
    }
    out
}

impl fmt::Display for Step {
    /// `A -> B -> [C -> D, E]`: brackets hold parallel branches; `(loop)` marks a cut.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.event)?;
        if self.cut {
            f.write_str(" (loop)")?;
        }
        match self.then.as_slice() {
            [] => Ok(()),
            [only] => write!(f, " -> {only}"),
            many => {
                f.write_str(" -> [")?;
                for (i, s) in many.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{s}")?;
                }
                f.write_str("]")
            }
        }
    }
}

impl fmt::Display for Execution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.root)?;
        match self.outcome {
            Outcome::Ended => write!(f, "  (ends: {})", self.ends.join(", ")),
            Outcome::Stuck => f.write_str("  (stuck: no end event)"),
            Outcome::Looping => f.write_str("  (loops: no end within the loop bound)"),
        }
    }
}
