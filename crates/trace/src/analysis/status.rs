//! Where a flow stands as of "now": completed, failed, in progress or stuck; `flow-late`, `bad-end`, `stuck`.

use choreo_core::{Outcome, Timestamp};

use super::causality::Shape;
use super::{Analysis, Ctx, Raw, RawOwed, Scratch, list, owes_text, plural};
use crate::finding::Rule;
use crate::flow::FlowStatus;
use crate::model::{EMPTY, Model, Sym, Symbols};
use crate::stats::format_micros;
use crate::store::FlowState;

/// Without a topology: failed when something was dead-lettered, else completed.
pub(crate) fn without_topology(
    ctx: &Ctx<'_>,
    f: &FlowState,
    shape: &Shape,
    mut findings: Vec<Raw>,
) -> Analysis {
    let status = if dead_any(f) {
        FlowStatus::Failed
    } else {
        FlowStatus::Completed
    };
    dead_letter_findings(f, ctx.syms, &mut findings);
    Analysis {
        status,
        name: None,
        start: shape.start,
        end: Some(shape.last),
        findings,
        owed: Vec::new(),
        next_deadline: None,
        orphans: shape.orphans,
    }
}

/// Whether anything in the flow was dead-lettered.
fn dead_any(f: &FlowState) -> bool {
    !f.dead.is_empty()
        || f.receipts
            .iter()
            .any(|r| r.outcome == Outcome::DeadLettered)
}

/// Decides the flow's status from what is owed and what ended it, as of `now`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn judge(
    ctx: &Ctx<'_>,
    m: &Model,
    s: &Scratch,
    f: &FlowState,
    shape: &Shape,
    name: Option<usize>,
    owed: Vec<RawOwed>,
    now: i64,
    mut findings: Vec<Raw>,
) -> Analysis {
    let syms = ctx.syms;
    let n = f.events.len();
    let start = shape.start;
    let last = shape.last;
    let flow = name.map(|x| &m.flows[x]);
    let end = flow.and_then(|fl| {
        f.events
            .iter()
            .filter(|e| fl.ends.contains(&e.ty))
            .map(|e| e.time)
            .min()
    });
    let flow_deadline = flow
        .and_then(|fl| fl.within_us)
        .map(|w| start.saturating_add(w));
    let mut next_deadline: Option<i64> = None;
    let status = if dead_any(f) {
        if findings.iter().all(|x| x.rule != Rule::DeadLettered) {
            dead_letter_findings(f, syms, &mut findings);
        }
        FlowStatus::Failed
    } else if let Some(end_time) = end {
        if let (Some(fl), Some(w)) = (flow, flow.and_then(|fl| fl.within_us)) {
            let took = end_time.saturating_sub(start);
            if took > w {
                let r = shape.root.unwrap_or(0);
                findings.push(Raw {
                    rule: Rule::FlowLate,
                    service: f.events.get(r).map_or(EMPTY, |e| e.source),
                    event_type: f.events.get(r).map_or(EMPTY, |e| e.ty),
                    event: None,
                    time: start,
                    message: format!(
                        "flow '{}' took {} (within {})",
                        fl.name,
                        format_micros(took as u64),
                        format_micros(w as u64)
                    ),
                });
            }
        }
        FlowStatus::Completed
    } else if owed.is_empty() {
        if flow.is_some() && n > 0 {
            let leaves: Vec<Sym> = (0..n)
                .filter(|&i| s.kids(i).next().is_none())
                .map(|i| f.events[i].ty)
                .fold(Vec::new(), |mut acc, t| {
                    if !acc.contains(&t) {
                        acc.push(t);
                    }
                    acc
                });
            let fl = flow.map(|fl| fl.name.as_str()).unwrap_or_default();
            let last_ev = s.order.last().map_or(0, |&i| i as usize);
            findings.push(Raw {
                rule: Rule::BadEnd,
                service: f.events[last_ev].source,
                event_type: f.events[last_ev].ty,
                event: None,
                time: last,
                message: format!(
                    "flow '{fl}' came to rest on {} without reaching an end ({})",
                    list(syms, &leaves),
                    list(syms, &flow.map(|fl| fl.ends.clone()).unwrap_or_default())
                ),
            });
            FlowStatus::Failed
        } else {
            FlowStatus::Completed
        }
    } else {
        let overdue_flow = flow_deadline.is_some_and(|d| now > d);
        let overdue_reaction = owed.iter().any(|o| o.deadline.is_some_and(|d| now > d));
        if overdue_flow || overdue_reaction {
            for o in &owed {
                let overdue = overdue_flow || o.deadline.is_some_and(|d| now > d);
                if !overdue {
                    continue;
                }
                let e = &f.events[o.event as usize];
                findings.push(Raw {
                    rule: Rule::Stuck,
                    service: o.service,
                    event_type: e.ty,
                    event: Some(o.event),
                    time: e.time,
                    message: format!(
                        "'{}' owes {} for '{}' since {} ({} overdue{})",
                        syms.name(o.service),
                        owes_text(syms, &o.owes, o.one_of),
                        syms.name(e.ty),
                        Timestamp::from_micros(e.time),
                        if o.deadline.is_some_and(|d| now > d) {
                            "its reaction is"
                        } else {
                            "the flow is"
                        },
                        match (o.deadline, flow_deadline) {
                            (Some(d), _) if now > d => {
                                format!(", by {}", format_micros(now.saturating_sub(d) as u64))
                            }
                            (_, Some(d)) if now > d => {
                                format!(", by {}", format_micros(now.saturating_sub(d) as u64))
                            }
                            _ => String::new(),
                        }
                    ),
                });
            }
            FlowStatus::Stuck
        } else {
            next_deadline = owed
                .iter()
                .filter_map(|o| o.deadline)
                .chain(flow_deadline)
                .min()
                .map(|d| d.saturating_add(1));
            FlowStatus::InProgress
        }
    };
    let end = match status {
        FlowStatus::Completed => end.or(Some(last)),
        FlowStatus::Failed => Some(last),
        _ => None,
    };
    Analysis {
        status,
        name,
        start,
        end,
        findings,
        owed,
        next_deadline,
        orphans: shape.orphans,
    }
}

/// One `dead-lettered` finding per dead letter (receipt, or dead-letter copy
/// no receipt stands for).
pub(crate) fn dead_letter_findings(f: &FlowState, syms: &Symbols, findings: &mut Vec<Raw>) {
    let mut seen: Vec<(usize, Sym)> = Vec::new();
    for r in f
        .receipts
        .iter()
        .filter(|r| r.outcome == Outcome::DeadLettered)
    {
        let i = f.find(&r.event);
        if let Some(i) = i {
            seen.push((i, r.service));
        }
        findings.push(Raw {
            rule: Rule::DeadLettered,
            service: r.service,
            event_type: r.ty,
            event: i.map(|i| i as u32),
            time: r.started,
            message: format!(
                "'{}' dead-lettered '{}' after {} attempt{}: {}",
                syms.name(r.service),
                syms.name(r.ty),
                r.attempts,
                plural(r.attempts),
                r.reason.as_deref().unwrap_or("")
            ),
        });
    }
    for d in &f.dead {
        let i = f.find(&d.event);
        if i.is_some_and(|i| seen.contains(&(i, d.service))) {
            continue;
        }
        let ty = i.map_or(EMPTY, |i| f.events[i].ty);
        findings.push(Raw {
            rule: Rule::DeadLettered,
            service: d.service,
            event_type: ty,
            event: i.map(|i| i as u32),
            time: i.map_or(0, |i| f.events[i].time),
            message: format!(
                "'{}' dead-lettered '{}' after {} attempts: {}",
                syms.name(d.service),
                syms.name(ty),
                d.attempts,
                d.reason
            ),
        });
    }
}

#[cfg(test)]
mod tests {
    use choreo_core::Outcome;

    use crate::analysis::testing::{Fixture, ORDERS};
    use crate::finding::Rule;
    use crate::flow::FlowStatus;

    fn shipped() -> Fixture {
        let mut f = Fixture::new(ORDERS);
        f.event("p", "OrderPlaced", "checkout", None, 0)
            .event("c", "PaymentCaptured", "payment", Some("p"), 10)
            .event("r", "StockReserved", "inventory", Some("c"), 20)
            .event("s", "OrderShipped", "shipping", Some("r"), 30);
        f
    }

    #[test]
    fn a_flow_that_reaches_an_end_is_completed() {
        let j = shipped().judge(40);
        assert_eq!(j.status, FlowStatus::Completed);
        assert!(j.findings.is_empty(), "{j:?}");
    }

    #[test]
    fn a_flow_that_ends_past_its_within_is_late() {
        let mut f = Fixture::new(ORDERS);
        f.event("p", "OrderPlaced", "checkout", None, 0)
            .event("x", "PaymentFailed", "payment", Some("p"), 1_000)
            .event("k", "OrderCancelled", "checkout", Some("x"), 61_000);
        let j = f.judge(61_000);
        assert_eq!(j.status, FlowStatus::Completed);
        assert!(j.rules().contains(&Rule::FlowLate), "{j:?}");
    }

    #[test]
    fn owed_events_are_in_progress_until_a_within_passes_then_stuck() {
        let mut f = Fixture::new(ORDERS);
        f.event("p", "OrderPlaced", "checkout", None, 0).event(
            "c",
            "PaymentCaptured",
            "payment",
            Some("p"),
            10,
        );
        let j = f.judge(1_000);
        assert_eq!(j.status, FlowStatus::InProgress);
        assert!(j.findings.is_empty());
        let j = f.judge(3_011);
        assert_eq!(j.status, FlowStatus::Stuck);
        assert_eq!(
            j.findings,
            [(
                Rule::Stuck,
                "inventory".into(),
                "PaymentCaptured".into(),
                Some("c".into())
            )]
        );
    }

    #[test]
    fn a_dead_letter_fails_the_flow() {
        let mut f = shipped();
        f.receipt(
            "notifications",
            "s",
            "OrderShipped",
            Outcome::DeadLettered,
            0,
            31,
            1,
        );
        assert_eq!(f.judge(40).status, FlowStatus::Failed);
    }

    #[test]
    fn without_a_topology_only_dead_letters_fail_a_flow() {
        let mut f = Fixture::bare();
        f.event("a", "A", "s", None, 0);
        assert_eq!(f.judge(0).status, FlowStatus::Completed);
        f.dead("a", "t");
        let j = f.judge(0);
        assert_eq!(j.status, FlowStatus::Failed);
        assert_eq!(j.rules(), [Rule::DeadLettered]);
    }
}
