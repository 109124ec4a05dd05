//! Where a flow stands as of "now": completed, recovered, failed, in progress or stuck; `flow-late`, `bad-end`, `stuck`, `never-handled`.
//!
//! A flow is judged from what is owed in it ([`RawOwed`]): a debt becomes a
//! finding only once its bound — the reaction's `within` or the flow's,
//! whichever is earlier — has passed relative to "now", so a capture cut
//! from a running system reads "in progress", not "failed".

use choreo_core::Timestamp;

use super::causality::Shape;
use super::dead::DeadLetters;
use super::{Analysis, Clock, Ctx, Debt, Raw, RawOwed, Scratch, list, owes_text};
use crate::finding::Rule;
use crate::flow::FlowStatus;
use crate::model::{EMPTY, FlowInfo, Model, Sym};
use crate::stats::format_micros;
use crate::store::FlowState;

/// What the rules before found, for the status.
pub(crate) struct Judged<'a> {
    /// The flow's index in the model.
    pub(crate) name: Option<usize>,
    /// Debts.
    pub(crate) owed: Vec<RawOwed>,
    /// A record in the flow no service could read.
    pub(crate) poisoned: bool,
    pub(crate) dead: &'a DeadLetters<'a>,
}

/// Without a topology: failed when something was dead-lettered (and not
/// recovered), else completed.
pub(crate) fn without_topology(
    shape: &Shape,
    poisoned: bool,
    dead: &DeadLetters<'_>,
    findings: Vec<Raw>,
) -> Analysis {
    let status = if poisoned || dead.any_lost() {
        FlowStatus::Failed
    } else if dead.any_recovered() {
        FlowStatus::Recovered
    } else {
        FlowStatus::Completed
    };
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

/// Decides the flow's status from what ended it and what is owed, as of `clock.now`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn judge(
    ctx: &Ctx<'_>,
    m: &Model,
    s: &Scratch,
    f: &FlowState,
    shape: &Shape,
    j: Judged<'_>,
    clock: &Clock,
    mut findings: Vec<Raw>,
) -> Analysis {
    let n = f.events.len();
    let flow = j.name.map(|x| &m.flows[x]);
    // The flow's end: its earliest end event.
    let end = flow.and_then(|fl| {
        (0..n)
            .filter(|&i| !s.poison[i] && fl.ends.contains(&f.events[i].ty))
            .min_by(|&a, &b| super::by_time(f, a, b))
    });
    let blocking = j.owed.iter().any(|o| o.blocking);
    let mut stuck: Vec<&RawOwed> = Vec::new();
    let status = if j.poisoned || j.dead.any_lost() {
        FlowStatus::Failed
    } else if let Some(end) = end {
        // A flow that recovered took the time its replay took: the recovery
        // note says so, not a late flow.
        if let Some(fl) = flow.filter(|_| !j.dead.any_recovered()) {
            flow_late(ctx, s, f, shape, fl, end, &mut findings);
        }
        if j.dead.any_recovered() {
            FlowStatus::Recovered
        } else {
            FlowStatus::Completed
        }
    } else if !blocking {
        if let Some(fl) = flow.filter(|_| n > 0) {
            // It came to rest without an end. When a rule already names who
            // stopped it, nobody upstream, who did their part, is blamed.
            if !findings.iter().any(|x| explains_rest(x.rule)) {
                findings.push(bad_end(ctx, s, f, shape, fl));
            }
            FlowStatus::Failed
        } else if j.dead.any_recovered() {
            FlowStatus::Recovered
        } else {
            FlowStatus::Completed
        }
    } else {
        let flow_overdue = clock.flow_deadline.is_some_and(|d| clock.now > d);
        stuck.extend(
            j.owed
                .iter()
                .filter(|o| o.blocking && (flow_overdue || clock.overdue(o.deadline))),
        );
        if stuck.is_empty() {
            FlowStatus::InProgress
        } else {
            for o in &stuck {
                findings.push(stuck_finding(ctx, f, o, clock));
            }
            FlowStatus::Stuck
        }
    };
    never_handled(ctx, f, &j.owed, &stuck, clock, &mut findings);
    // The next time something may change here: the earliest bound not yet passed.
    let next_deadline = j
        .owed
        .iter()
        .filter_map(|o| clock.bound(o.deadline))
        .filter(|&d| d >= clock.now)
        .min()
        .map(|d| d.saturating_add(1));
    let end = match status {
        FlowStatus::Completed | FlowStatus::Recovered => {
            Some(end.map_or(shape.last, |i| f.events[i].time))
        }
        FlowStatus::Failed => Some(shape.last),
        _ => None,
    };
    Analysis {
        status,
        name: j.name,
        start: shape.start,
        end,
        findings,
        owed: j.owed,
        next_deadline,
        orphans: shape.orphans,
    }
}

/// Rules whose findings say why a flow stopped short of its end.
fn explains_rest(rule: Rule) -> bool {
    matches!(
        rule,
        Rule::MissingEmit
            | Rule::DeadLettered
            | Rule::MalformedRecord
            | Rule::WrongTopic
            | Rule::UndeclaredEmit
            | Rule::UnknownEvent
            | Rule::UnknownFlow
            | Rule::Orphan
            | Rule::CausalLoop
            | Rule::NeverHandled
    )
}

/// A flow that ended later than its `within`: named at the service whose
/// reaction took the largest share of the time, along the path from its
/// first event to its end.
fn flow_late(
    ctx: &Ctx<'_>,
    s: &Scratch,
    f: &FlowState,
    shape: &Shape,
    fl: &FlowInfo,
    end: usize,
    findings: &mut Vec<Raw>,
) {
    let Some(w) = fl.within_us else { return };
    let took = f.events[end].time.saturating_sub(shape.start);
    if took <= w {
        return;
    }
    let syms = ctx.syms;
    // (time taken, the reacting event, the event it reacted to)
    let mut slowest: Option<(i64, usize, usize)> = None;
    let mut c = end;
    let mut steps = 0;
    while s.parent[c] != u32::MAX && steps <= f.events.len() {
        let p = s.parent[c] as usize;
        let spent = f.events[c].time.saturating_sub(f.events[p].time);
        if slowest.is_none_or(|(t, _, _)| spent > t) {
            slowest = Some((spent, c, p));
        }
        c = p;
        steps += 1;
    }
    let r = shape.root.unwrap_or(0);
    let (service, ty, event, share) = match slowest {
        Some((spent, c, p)) => (
            f.events[c].source,
            f.events[p].ty,
            Some(p as u32),
            format!(
                "; {} in '{}' (reacting to '{}')",
                format_micros(spent.max(0) as u64),
                syms.name(f.events[c].source),
                syms.name(f.events[p].ty)
            ),
        ),
        None => (
            f.events.get(r).map_or(EMPTY, |e| e.source),
            f.events.get(r).map_or(EMPTY, |e| e.ty),
            None,
            String::new(),
        ),
    };
    findings.push(Raw {
        rule: Rule::FlowLate,
        service,
        event_type: ty,
        event,
        time: shape.start,
        message: format!(
            "flow '{}' took {} (within {}){share}",
            fl.name,
            format_micros(took as u64),
            format_micros(w as u64)
        ),
    });
}

/// A flow at rest on events that end nothing, all its services having done
/// their part: named at the publisher of the last event it rests on.
fn bad_end(ctx: &Ctx<'_>, s: &Scratch, f: &FlowState, shape: &Shape, fl: &FlowInfo) -> Raw {
    let syms = ctx.syms;
    let mut leaves: Vec<Sym> = Vec::new();
    for &i in &s.order {
        let i = i as usize;
        if s.kids(i).next().is_none() && !leaves.contains(&f.events[i].ty) {
            leaves.push(f.events[i].ty);
        }
    }
    let last = s.order.last().map_or(0, |&i| i as usize);
    Raw {
        rule: Rule::BadEnd,
        service: f.events[last].source,
        event_type: f.events[last].ty,
        event: None,
        time: shape.last,
        message: format!(
            "flow '{}' came to rest on {} without reaching an end ({})",
            fl.name,
            list(syms, &leaves),
            list(syms, &fl.ends)
        ),
    }
}

/// The finding of a debt past its bound that holds the flow up.
fn stuck_finding(ctx: &Ctx<'_>, f: &FlowState, o: &RawOwed, clock: &Clock) -> Raw {
    let syms = ctx.syms;
    let e = &f.events[o.event as usize];
    let now = clock.now;
    let own = o.deadline.is_some_and(|d| now > d);
    let by = match (o.deadline, clock.flow_deadline) {
        (Some(d), _) if now > d => format!(", by {}", format_micros(now.saturating_sub(d) as u64)),
        (_, Some(d)) if now > d => format!(", by {}", format_micros(now.saturating_sub(d) as u64)),
        _ => String::new(),
    };
    let overdue = if own {
        "its reaction is"
    } else {
        "the flow is"
    };
    let message = match o.debt {
        Debt::Announced { announced, seen } => format!(
            "'{}' announced {announced} event{} for '{}' in its receipt, and {} of them arrived: it owes {} since {} ({overdue} overdue{by})",
            syms.name(o.service),
            if announced == 1 { "" } else { "s" },
            syms.name(e.ty),
            if seen == 0 {
                "none".to_owned()
            } else {
                seen.to_string()
            },
            owes_text(syms, &o.owes, o.one_of),
            Timestamp::from_micros(e.time),
        ),
        Debt::Unhandled | Debt::Unemitted => format!(
            "'{}' owes {} for '{}' since {} ({overdue} overdue{by})",
            syms.name(o.service),
            owes_text(syms, &o.owes, o.one_of),
            syms.name(e.ty),
            Timestamp::from_micros(e.time),
        ),
    };
    Raw {
        rule: Rule::Stuck,
        service: o.service,
        event_type: e.ty,
        event: Some(o.event),
        time: e.time,
        message,
    }
}

/// Consumers that never handled an event they react to, past its bound,
/// where the input shows their silence is real; debts reported `stuck` aside.
fn never_handled(
    ctx: &Ctx<'_>,
    f: &FlowState,
    owed: &[RawOwed],
    stuck: &[&RawOwed],
    clock: &Clock,
    findings: &mut Vec<Raw>,
) {
    let syms = ctx.syms;
    for o in owed {
        if o.debt != Debt::Unhandled
            || !clock.overdue(o.deadline)
            || stuck.iter().any(|x| std::ptr::eq(*x, o))
        {
            continue;
        }
        let e = &f.events[o.event as usize];
        if !ctx.receipts_show(f, o.service, e.ty) {
            continue;
        }
        let bound = clock.bound(o.deadline).unwrap_or(clock.now);
        findings.push(Raw {
            rule: Rule::NeverHandled,
            service: o.service,
            event_type: e.ty,
            event: Some(o.event),
            time: e.time,
            message: format!(
                "'{}' never handled '{}' (published {}), {} past its bound, though it reacts to it{}",
                syms.name(o.service),
                syms.name(e.ty),
                Timestamp::from_micros(e.time),
                format_micros(clock.now.saturating_sub(bound).max(0) as u64),
                if o.owes.is_empty() {
                    String::new()
                } else {
                    format!(" and owes {}", owes_text(syms, &o.owes, o.one_of))
                }
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

    #[test]
    fn a_sink_that_never_handled_an_end_event_is_found_past_the_flows_bound() {
        let mut f = shipped();
        f.receipt("shipping", "r", "StockReserved", Outcome::Acked, 1, 21, 5);
        let j = f.judge(30_000);
        assert_eq!(j.status, FlowStatus::Completed);
        assert!(j.findings.is_empty(), "{j:?}");
        let j = f.judge(60_001);
        assert_eq!(j.status, FlowStatus::Completed);
        assert_eq!(
            j.findings,
            [(
                Rule::NeverHandled,
                "notifications".into(),
                "OrderShipped".into(),
                Some("s".into())
            )]
        );
        f.config.receipts = crate::config::Receipts::Absent;
        assert!(f.judge(60_001).findings.is_empty());
    }

    #[test]
    fn emissions_a_receipt_announced_and_that_never_came_are_stuck_at_the_reactions_bound() {
        let mut f = Fixture::new(ORDERS);
        f.event("p", "OrderPlaced", "checkout", None, 0).receipt(
            "payment",
            "p",
            "OrderPlaced",
            Outcome::Acked,
            1,
            1,
            2,
        );
        assert_eq!(f.judge(4_000).status, FlowStatus::InProgress);
        let j = f.judge(5_001);
        assert_eq!(j.status, FlowStatus::Stuck);
        assert_eq!(
            j.findings,
            [(
                Rule::Stuck,
                "payment".into(),
                "OrderPlaced".into(),
                Some("p".into())
            )]
        );
        assert!(
            j.messages[0].contains("announced 1 event"),
            "{}",
            j.messages[0]
        );
    }

    #[test]
    fn a_flow_at_rest_on_a_missing_emission_blames_nobody_else() {
        let mut f = Fixture::new(ORDERS);
        f.event("p", "OrderPlaced", "checkout", None, 0)
            .event("c", "PaymentCaptured", "payment", Some("p"), 10)
            .receipt(
                "inventory",
                "c",
                "PaymentCaptured",
                Outcome::Acked,
                0,
                11,
                1,
            );
        let j = f.judge(5_000);
        assert_eq!(j.status, FlowStatus::Failed);
        assert_eq!(j.rules(), [Rule::MissingEmit]);
    }
}
