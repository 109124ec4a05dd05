//! A judged flow in its public form: findings with names, the [`FlowTrace`] with its graph.

use choreo_core::{EventId, Timestamp};
use petgraph::graph::{Graph, NodeIndex};

use crate::analysis::{Analysis, Ctx};
use crate::finding::Finding;
use crate::flow::{FlowSummary, FlowTrace, Handling, Owed, TracedEvent};
use crate::store::{FlowState, NO_OFFSET, NO_PARTITION};

/// Resolves raw findings into [`Finding`]s with names.
pub(crate) fn resolve_findings(
    ctx: &Ctx<'_>,
    corr: &EventId,
    f: &FlowState,
    a: &Analysis,
) -> Vec<Finding> {
    let flow = a
        .name
        .and_then(|n| ctx.model.map(|m| m.flows[n].name.to_string()));
    a.findings
        .iter()
        .map(|r| Finding {
            rule: r.rule,
            correlation_id: corr.clone(),
            flow: flow.clone(),
            service: ctx.syms.name(r.service).to_string(),
            event_type: ctx.syms.name(r.event_type).to_string(),
            event_id: r.event.map(|i| f.events[i as usize].id.clone()),
            time: Timestamp::from_micros(r.time),
            message: r.message.clone(),
        })
        .collect()
}

/// The flow as a [`FlowTrace`]; `order` is its events' time order, from its
/// analysis `a`.
pub(crate) fn build_trace(
    ctx: &Ctx<'_>,
    corr: &EventId,
    f: &FlowState,
    a: &Analysis,
    order: &[u32],
) -> FlowTrace {
    debug_assert_eq!(order.len(), f.events.len(), "the flow's own order");
    let mut graph: Graph<TracedEvent, ()> = Graph::with_capacity(order.len(), order.len());
    let mut node = vec![NodeIndex::end(); f.events.len()];
    for &i in order {
        let i = i as usize;
        let e = &f.events[i];
        // Each handling once (a receipt may arrive twice), in time order.
        let mut handled: Vec<Handling> = f
            .receipts
            .iter()
            .filter(|r| r.event == e.id)
            .map(|r| Handling {
                service: ctx.syms.name(r.service).clone(),
                outcome: r.outcome,
                attempts: r.attempts,
                started: Timestamp::from_micros(r.started),
                duration_us: r.duration_us,
                reason: r.reason.as_deref().map(str::to_owned),
                emitted: r.emitted,
            })
            .collect();
        if handled.len() > 1 {
            handled.sort_by(|a, b| {
                (a.started, &a.service, a.outcome.as_str(), a.duration_us).cmp(&(
                    b.started,
                    &b.service,
                    b.outcome.as_str(),
                    b.duration_us,
                ))
            });
            handled.dedup();
        }
        let orphan = e.cause.as_ref().is_some_and(|c| f.find(c).is_none());
        node[i] = graph.add_node(TracedEvent {
            id: e.id.clone(),
            event_type: ctx.syms.name(e.ty).clone(),
            source: ctx.syms.name(e.source).clone(),
            topic: ctx.syms.name(e.topic).clone(),
            time: Timestamp::from_micros(e.time),
            partition: (e.partition != NO_PARTITION).then_some(e.partition),
            offset: (e.offset != NO_OFFSET).then_some(e.offset),
            causation_id: e.cause.clone(),
            orphan,
            handled,
        });
    }
    for (i, e) in f.events.iter().enumerate() {
        if let Some(p) = e.cause.as_ref().and_then(|c| f.find(c))
            && p != i
        {
            graph.add_edge(node[p], node[i], ());
        }
    }
    let owed = owed_of(ctx, f, a);
    FlowTrace {
        correlation_id: corr.clone(),
        flow: a
            .name
            .and_then(|n| ctx.model.map(|m| m.flows[n].name.to_string())),
        status: a.status,
        started: Timestamp::from_micros(a.start),
        ended: a.end.map(Timestamp::from_micros),
        graph,
        findings: resolve_findings(ctx, corr, f, a),
        owed,
        duplicates: f.duplicates,
        before_horizon: f.before_horizon,
    }
}

/// What the flow owes, with names.
fn owed_of(ctx: &Ctx<'_>, f: &FlowState, a: &Analysis) -> Vec<Owed> {
    a.owed
        .iter()
        .map(|o| {
            let e = &f.events[o.event as usize];
            Owed {
                service: ctx.syms.name(o.service).to_string(),
                event_type: ctx.syms.name(e.ty).to_string(),
                event_id: e.id.clone(),
                owes: o
                    .owes
                    .iter()
                    .map(|s| ctx.syms.name(*s).to_string())
                    .collect(),
                one_of: o.one_of,
                since: Timestamp::from_micros(e.time),
                deadline: o.deadline.map(Timestamp::from_micros),
            }
        })
        .collect()
}

/// The flow's verdict without its graph: one line of `--format flows-jsonl`.
pub(crate) fn summary_of(
    ctx: &Ctx<'_>,
    corr: &EventId,
    f: &FlowState,
    a: &Analysis,
) -> FlowSummary {
    let owed = owed_of(ctx, f, a);
    FlowSummary {
        correlation_id: corr.clone(),
        flow: a
            .name
            .and_then(|n| ctx.model.map(|m| m.flows[n].name.to_string())),
        status: a.status,
        started: Timestamp::from_micros(a.start),
        ended: a.end.map(Timestamp::from_micros),
        owed_since: owed.iter().map(|o| o.since).min(),
        events: f.events.len() as u64,
        duplicates: f.duplicates,
        owed,
        findings: resolve_findings(ctx, corr, f, a),
        before_horizon: f.before_horizon,
    }
}
