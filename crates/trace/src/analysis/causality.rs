//! The causal graph of a flow and the rules about its links: `orphan`, `clock-skew`, `causal-loop`.

use choreo_core::EventId;
use petgraph::graph::NodeIndex;

use super::{Clock, Ctx, Raw, Scratch};
use crate::finding::Rule;
use crate::model::{EMPTY, Model};
use crate::stats::format_micros;
use crate::store::FlowState;

/// The flow's outline: its first event, when it started, its last event's time.
pub(crate) struct Shape {
    /// The flow's first event: the one whose id is the correlation id, else
    /// the earliest without a cause, else the earliest.
    pub(crate) root: Option<usize>,
    /// The first event's time.
    pub(crate) start: i64,
    /// The latest event's time.
    pub(crate) last: i64,
    /// Events whose cause is not in the flow.
    pub(crate) orphans: u32,
}

/// Takes back the `orphan` findings whose cause may still arrive: a record
/// of another partition can come later than its effect (a capture cut from a
/// running system, partitions read at different paces), so a missing cause
/// is owed, like a reaction, until the bound within which the orphan's
/// publisher emits it has passed (its reaction's `within`, or the flow's,
/// whichever is earlier). An orphan with no bound at all is reported at once.
/// Returns when the first deferred one falls due.
pub(crate) fn defer_orphans(
    m: &Model,
    f: &FlowState,
    clock: &Clock,
    shape: &mut Shape,
    findings: &mut Vec<Raw>,
) -> Option<i64> {
    let mut due: Option<i64> = None;
    findings.retain(|r| {
        let (Rule::Orphan, Some(i)) = (r.rule, r.event) else {
            return true;
        };
        let e = &f.events[i as usize];
        let within = m.emitted_within(m.canonical(e.source), e.ty);
        match clock.bound(within.map(|w| e.time.saturating_add(w))) {
            Some(d) if clock.now <= d => {
                due = Some(due.map_or(d, |x| x.min(d)));
                shape.orphans -= 1;
                false
            }
            _ => true,
        }
    });
    due
}

/// Orders the flow's events in time (ids break ties), links each to its
/// cause in `s`, and reports the links that are wrong.
pub(crate) fn rebuild(
    ctx: &Ctx<'_>,
    s: &mut Scratch,
    corr: &EventId,
    f: &FlowState,
    findings: &mut Vec<Raw>,
) -> Shape {
    let n = f.events.len();
    let syms = ctx.syms;
    // Time order (ids break ties, so the order records arrived in does not
    // matter): out-of-order input lands in place.
    s.order.clear();
    s.order.extend(0..n as u32);
    // Usually already so: events mostly arrive in the order they happened.
    if !f
        .events
        .is_sorted_by(|a, b| a.time < b.time || (a.time == b.time && a.id <= b.id))
    {
        s.order
            .sort_by(|&a, &b| super::by_time(f, a as usize, b as usize));
    }
    s.graph.clear();
    s.node_of.clear();
    s.node_of.resize(n, NodeIndex::end());
    for &i in &s.order {
        s.node_of[i as usize] = s.graph.add_node(i);
    }
    s.parent.clear();
    s.parent.resize(n, u32::MAX);
    let mut orphans = 0u32;
    let tolerance = i64::try_from(ctx.config.skew_tolerance.as_micros()).unwrap_or(i64::MAX);
    for (i, e) in f.events.iter().enumerate() {
        let Some(cause) = &e.cause else { continue };
        match f.find(cause) {
            Some(p) if p != i => {
                s.parent[i] = p as u32;
                s.graph.add_edge(s.node_of[p], s.node_of[i], ());
                let pt = f.events[p].time;
                if e.time.saturating_add(tolerance) < pt {
                    findings.push(Raw {
                        rule: Rule::ClockSkew,
                        service: e.source,
                        event_type: e.ty,
                        event: Some(i as u32),
                        time: e.time,
                        message: format!(
                            "'{}' (by '{}') is {} earlier than its cause '{}' (by '{}')",
                            syms.name(e.ty),
                            syms.name(e.source),
                            format_micros(pt.saturating_sub(e.time) as u64),
                            syms.name(f.events[p].ty),
                            syms.name(f.events[p].source),
                        ),
                    });
                }
            }
            Some(_) => {
                findings.push(Raw {
                    rule: Rule::CausalLoop,
                    service: e.source,
                    event_type: e.ty,
                    event: Some(i as u32),
                    time: e.time,
                    message: format!("'{}' names itself as its cause", syms.name(e.ty)),
                });
            }
            // Its cause is older than the tracer's horizon: not an orphan.
            None if f.before_horizon => {}
            None => {
                orphans += 1;
                findings.push(Raw {
                    rule: Rule::Orphan,
                    service: e.source,
                    event_type: e.ty,
                    event: Some(i as u32),
                    time: e.time,
                    message: format!(
                        "'{}' by '{}' names cause {cause}, which is not in the flow",
                        syms.name(e.ty),
                        syms.name(e.source)
                    ),
                });
            }
        }
    }
    if n > 1 && petgraph::algo::is_cyclic_directed(&s.graph) {
        findings.push(Raw {
            rule: Rule::CausalLoop,
            service: EMPTY,
            event_type: EMPTY,
            event: None,
            time: f.events.first().map_or(0, |e| e.time),
            message: "causation ids form a loop: some event is its own ancestor".into(),
        });
    }
    let root = f
        .events
        .iter()
        .position(|e| &e.id == corr)
        .or_else(|| {
            s.order
                .iter()
                .map(|&i| i as usize)
                .find(|&i| f.events[i].cause.is_none())
        })
        .or_else(|| s.order.first().map(|&i| i as usize));
    let start = root.map_or(f.last_activity, |r| f.events[r].time);
    let last = f
        .events
        .iter()
        .map(|e| e.time)
        .max()
        .unwrap_or(f.last_activity);
    Shape {
        root,
        start,
        last,
        orphans,
    }
}

#[cfg(test)]
mod tests {
    use crate::analysis::testing::Fixture;
    use crate::finding::Rule;

    #[test]
    fn an_event_whose_cause_is_not_in_the_flow_is_an_orphan() {
        let mut f = Fixture::bare();
        f.event("a", "A", "s", None, 0)
            .event("b", "B", "t", Some("lost"), 5);
        let j = f.judge(10);
        assert_eq!(
            j.findings,
            [(Rule::Orphan, "t".into(), "B".into(), Some("b".into()))]
        );
        assert!(
            j.messages[0].contains("names cause lost"),
            "{}",
            j.messages[0]
        );
    }

    #[test]
    fn an_effect_earlier_than_its_cause_is_clock_skew_past_the_tolerance() {
        let mut f = Fixture::bare();
        f.event("a", "A", "s", None, 100)
            .event("b", "B", "t", Some("a"), 40);
        let j = f.judge(200);
        assert_eq!(
            j.findings,
            [(Rule::ClockSkew, "t".into(), "B".into(), Some("b".into()))]
        );
        assert!(
            j.messages[0].contains("60.0ms earlier"),
            "{}",
            j.messages[0]
        );
        f.config.skew_tolerance = std::time::Duration::from_millis(60);
        assert!(f.judge(200).findings.is_empty());
    }

    #[test]
    fn causation_that_loops_is_reported() {
        let mut f = Fixture::bare();
        f.event("a", "A", "s", Some("a"), 0);
        assert_eq!(f.judge(0).rules(), [Rule::CausalLoop]);
        let mut f = Fixture::bare();
        f.event("a", "A", "s", Some("b"), 0)
            .event("b", "B", "t", Some("a"), 0);
        let j = f.judge(1);
        assert_eq!(j.rules(), [Rule::CausalLoop]);
        assert!(j.messages[0].contains("its own ancestor"));
    }
}
