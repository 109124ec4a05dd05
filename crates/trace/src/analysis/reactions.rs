//! Each event against the reactions to it: who handled it and how, what they emitted, what they still owe.
//!
//! Rules: `undeclared-consume`, `undeclared-emit` (in a reaction),
//! `missing-emit`, `both-branches`, `handled-twice`, `reaction-late`; and the
//! debts ([`RawOwed`]) the status is judged from.
//!
//! A reaction may finish after its handler (an emission published later
//! through `Publisher::publish_caused_by`: a payment provider's callback, a
//! customer's upload). So a handler that acked without emitting what its
//! reaction must *owes* it, and is `missing-emit` only once the reaction's
//! `within` (or the flow's, whichever is earlier) has passed.

use choreo_core::Outcome;

use super::dead::DeadLetters;
use super::{Clock, Ctx, Debt, Raw, RawOwed, Scratch, list};
use crate::finding::Rule;
use crate::model::{Kind, Model, ReactionInfo, Sym};
use crate::stats::format_micros;
use crate::store::FlowState;
use smallvec::SmallVec;

/// Checks every event of the flow against the reactions to it; returns what
/// is owed.
pub(crate) fn check(
    ctx: &Ctx<'_>,
    m: &Model,
    s: &Scratch,
    f: &FlowState,
    dead: &DeadLetters<'_>,
    clock: &Clock,
    findings: &mut Vec<Raw>,
) -> Vec<RawOwed> {
    let mut owed: Vec<RawOwed> = Vec::new();
    let mut kids: Vec<usize> = Vec::new();
    for i in 0..f.events.len() {
        if s.poison[i] {
            continue;
        }
        s.kids_in_order(f, i, &mut kids);
        undeclared(ctx, m, f, i, &kids, findings);
        let Some(info) = m.event(f.events[i].ty) else {
            continue;
        };
        let event = Event { f, i, kids: &kids };
        for reaction in &info.consumers {
            if dead.gave_up(i, reaction.service) {
                // The dead-letter rule has it.
                continue;
            }
            // A replayed dead letter took the time it took: the recovery note says so.
            let late_ok = dead.recovered(i, reaction.service);
            consumer(
                ctx, s, &event, reaction, clock, late_ok, &mut owed, findings,
            );
        }
    }
    owed
}

/// One event of a flow and its effects (in time order).
struct Event<'a> {
    f: &'a FlowState,
    i: usize,
    kids: &'a [usize],
}

/// Children from services that have no reaction to event `i`, receipts from
/// them, and children outside the reacting service's contract.
fn undeclared(
    ctx: &Ctx<'_>,
    m: &Model,
    f: &FlowState,
    i: usize,
    kids: &[usize],
    findings: &mut Vec<Raw>,
) {
    let syms = ctx.syms;
    let e = &f.events[i];
    if m.event(e.ty).is_none() {
        return;
    }
    let mut blamed: Vec<Sym> = Vec::new();
    for &k in kids {
        let kid = &f.events[k];
        if m.service(kid.source).is_none() || m.event(kid.ty).is_none() {
            continue;
        }
        match m.reaction(kid.source, e.ty) {
            None => {
                if !blamed.contains(&kid.source) {
                    blamed.push(kid.source);
                    findings.push(Raw {
                        rule: Rule::UndeclaredConsume,
                        service: kid.source,
                        event_type: e.ty,
                        event: Some(i as u32),
                        time: kid.time,
                        message: format!(
                            "'{}' reacted to '{}' (it published '{}'), but declares no reaction to it",
                            syms.name(kid.source),
                            syms.name(e.ty),
                            syms.name(kid.ty)
                        ),
                    });
                }
            }
            Some(r) if !r.emits.contains(&kid.ty) => findings.push(Raw {
                rule: Rule::UndeclaredEmit,
                service: kid.source,
                event_type: kid.ty,
                event: Some(k as u32),
                time: kid.time,
                message: format!(
                    "'{}' emitted '{}' in reaction to '{}', which its reaction does not list{}",
                    syms.name(kid.source),
                    syms.name(kid.ty),
                    syms.name(e.ty),
                    if r.emits.is_empty() {
                        " (it is a sink)".to_owned()
                    } else {
                        format!(
                            " ({}{})",
                            if r.kind == Kind::OneOf { "one of " } else { "" },
                            list(syms, &r.emits)
                        )
                    }
                ),
            }),
            Some(_) => {}
        }
    }
    // Receipts from services with no reaction to this event, earliest first.
    let mut strangers: Vec<&crate::store::Rc> = f
        .receipts
        .iter()
        .filter(|r| {
            r.event == e.id
                && m.service(r.service).is_some()
                && m.reaction(r.service, e.ty).is_none()
        })
        .collect();
    strangers.sort_by_key(|r| (r.started, r.outcome.as_str()));
    for r in strangers {
        if blamed.contains(&r.service) {
            continue;
        }
        blamed.push(r.service);
        findings.push(Raw {
            rule: Rule::UndeclaredConsume,
            service: r.service,
            event_type: e.ty,
            event: Some(i as u32),
            time: r.started,
            message: format!(
                "'{}' handled '{}' ({}), but declares no reaction to it",
                syms.name(r.service),
                syms.name(e.ty),
                r.outcome.as_str()
            ),
        });
    }
}

/// What one consumer did with the event: its findings, and what it owes.
#[allow(clippy::too_many_arguments)]
fn consumer(
    ctx: &Ctx<'_>,
    s: &Scratch,
    ev: &Event<'_>,
    reaction: &ReactionInfo,
    clock: &Clock,
    late_ok: bool,
    owed: &mut Vec<RawOwed>,
    findings: &mut Vec<Raw>,
) {
    let syms = ctx.syms;
    let (f, i) = (ev.f, ev.i);
    let e = &f.events[i];
    let svc = reaction.service;
    // Its handlings, from its receipts: each acked one once, however many
    // copies of its receipt arrived.
    // Inline: a reaction's handlings, children and emissions are few, and
    // this runs for every event and consumer of every flow.
    let mut acked: SmallVec<[(i64, i64); 2]> = SmallVec::new();
    let mut duplicate = false;
    let mut announced: Option<u32> = None;
    for r in f
        .receipts
        .iter()
        .filter(|r| r.service == svc && r.event == e.id)
    {
        match r.outcome {
            Outcome::Acked => {
                let done = r.started.saturating_add(r.duration_us as i64);
                if !acked.iter().any(|a| a.0 == r.started) {
                    acked.push((r.started, done));
                }
                announced = Some(announced.unwrap_or(0).max(r.emitted));
            }
            Outcome::Duplicate => duplicate = true,
            // Dead letters are the dead-letter rule's (a recovered one was
            // handled again: that handling's receipt is acked).
            _ => {}
        }
    }
    let mine: SmallVec<[usize; 4]> = ev
        .kids
        .iter()
        .copied()
        .filter(|&k| f.events[k].source == svc)
        .collect();
    let deadline = reaction.within_us.map(|w| e.time.saturating_add(w));
    let debt = |debt: Debt, blocking: bool| RawOwed {
        service: svc,
        event: i as u32,
        owes: reaction.emits.clone(),
        one_of: reaction.kind == Kind::OneOf,
        deadline,
        debt,
        blocking,
    };
    if acked.is_empty() && mine.is_empty() {
        // Not handled (yet). A duplicate receipt says it was, before the
        // input begins; an event on the wrong topic never reaches it; a sink
        // owes only its receipt, when receipts are captured at all.
        let sink = reaction.kind == Kind::Nothing;
        if !duplicate && !s.misrouted[i] && (!sink || ctx.receipts_expected) {
            owed.push(debt(Debt::Unhandled, !sink));
        }
        return;
    }
    let mut emitted: SmallVec<[Sym; 4]> = SmallVec::new();
    for &k in &mine {
        if !emitted.contains(&f.events[k].ty) {
            emitted.push(f.events[k].ty);
        }
    }
    handled_twice(ctx, ev, reaction, &acked, &mine, findings);
    let seen = mine.len() as u32;
    let missing: SmallVec<[Sym; 4]> = match reaction.kind {
        Kind::All => reaction
            .emits
            .iter()
            .copied()
            .filter(|x| !emitted.contains(x))
            .collect(),
        Kind::OneOf => {
            let chosen: Vec<Sym> = emitted
                .iter()
                .copied()
                .filter(|x| reaction.emits.contains(x))
                .collect();
            if chosen.len() > 1 {
                findings.push(Raw {
                    rule: Rule::BothBranches,
                    service: svc,
                    event_type: e.ty,
                    event: Some(i as u32),
                    time: e.time,
                    message: format!(
                        "'{}' emitted {} in reaction to '{}', but its reaction emits exactly one of {}",
                        syms.name(svc),
                        list(syms, &chosen),
                        syms.name(e.ty),
                        list(syms, &reaction.emits)
                    ),
                });
            }
            if chosen.is_empty() {
                reaction.emits.iter().copied().collect()
            } else {
                SmallVec::new()
            }
        }
        Kind::Nothing => SmallVec::new(),
    };
    match announced {
        // Emissions its receipt announces but the input does not (yet) hold.
        Some(n) if n > seen => owed.push(debt(
            Debt::Announced { announced: n, seen },
            !reaction.emits.is_empty(),
        )),
        _ if missing.is_empty() => {}
        // Handled, and not emitted yet: owed until its bound, then missing.
        _ if clock.overdue(deadline) => findings.push(Raw {
            rule: Rule::MissingEmit,
            service: svc,
            event_type: e.ty,
            event: Some(i as u32),
            time: e.time,
            message: if reaction.kind == Kind::OneOf {
                format!(
                    "'{}' handled '{}' but emitted none of {}{}",
                    syms.name(svc),
                    syms.name(e.ty),
                    list(syms, &reaction.emits),
                    receipt_note(announced)
                )
            } else {
                format!(
                    "'{}' handled '{}' but did not emit {} (its reaction emits {}){}",
                    syms.name(svc),
                    syms.name(e.ty),
                    list(syms, &missing),
                    list(syms, &reaction.emits),
                    receipt_note(announced)
                )
            },
        }),
        _ => owed.push(debt(Debt::Unemitted, true)),
    }
    if let Some(within) = reaction.within_us.filter(|_| !late_ok) {
        let last_emit = mine.iter().map(|&k| f.events[k].time).max();
        let settled = acked.iter().map(|a| a.1).min();
        if let Some(done) = last_emit.or(settled) {
            let took = done.saturating_sub(e.time);
            if took > within {
                findings.push(Raw {
                    rule: Rule::ReactionLate,
                    service: svc,
                    event_type: e.ty,
                    event: Some(i as u32),
                    time: e.time,
                    message: format!(
                        "'{}' took {} to react to '{}' (within {})",
                        syms.name(svc),
                        format_micros(took as u64),
                        syms.name(e.ty),
                        format_micros(within as u64)
                    ),
                });
            }
        }
    }
}

/// A service that handled one event more than once: acked it twice (its
/// idempotency failed), or emitted its reaction twice under new ids (it
/// handled it again after a restart that forgot what it had done).
fn handled_twice(
    ctx: &Ctx<'_>,
    ev: &Event<'_>,
    reaction: &ReactionInfo,
    acked: &[(i64, i64)],
    mine: &[usize],
    findings: &mut Vec<Raw>,
) {
    let syms = ctx.syms;
    let (f, i) = (ev.f, ev.i);
    let e = &f.events[i];
    let svc = reaction.service;
    let message = if acked.len() > 1 {
        let mut starts: Vec<i64> = acked.iter().map(|a| a.0).collect();
        starts.sort_unstable();
        let at: Vec<String> = starts
            .iter()
            .map(|t| format!("+{}", format_micros(t.saturating_sub(e.time).max(0) as u64)))
            .collect();
        format!(
            "'{}' handled '{}' {} times (acked, started {} after it): its idempotency failed",
            syms.name(svc),
            syms.name(e.ty),
            acked.len(),
            at.join(", ")
        )
    } else {
        let Some((ty, n)) = reaction
            .emits
            .iter()
            .map(|t| (*t, mine.iter().filter(|&&k| f.events[k].ty == *t).count()))
            .find(|(_, n)| *n > 1)
        else {
            return;
        };
        format!(
            "'{}' emitted '{}' {} in reaction to one '{}' (new ids each time): it handled the event {}",
            syms.name(svc),
            syms.name(ty),
            times(n),
            syms.name(e.ty),
            times(n)
        )
    };
    findings.push(Raw {
        rule: Rule::HandledTwice,
        service: svc,
        event_type: e.ty,
        event: Some(i as u32),
        time: e.time,
        message,
    });
}

fn times(n: usize) -> String {
    if n == 2 {
        "twice".to_owned()
    } else {
        format!("{n} times")
    }
}

fn receipt_note(emitted: Option<u32>) -> String {
    match emitted {
        Some(n) => format!(" — its receipt says it emitted {n}"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use choreo_core::Outcome;

    use crate::analysis::testing::{Fixture, ORDERS};
    use crate::finding::Rule;

    /// Past every bound of the order-fulfillment topology.
    const LATER: i64 = 120_000;

    fn placed() -> Fixture {
        let mut f = Fixture::new(ORDERS);
        f.event("p", "OrderPlaced", "checkout", None, 0);
        f
    }

    #[test]
    fn a_child_or_a_receipt_from_a_service_without_the_reaction_is_undeclared_consume() {
        let mut f = placed();
        f.event("s", "OrderShipped", "shipping", Some("p"), 5);
        let j = f.judge(10);
        assert!(
            j.findings.contains(&(
                Rule::UndeclaredConsume,
                "shipping".into(),
                "OrderPlaced".into(),
                Some("p".into())
            )),
            "{j:?}"
        );
        let mut f = placed();
        f.receipt("inventory", "p", "OrderPlaced", Outcome::Acked, 0, 1, 1);
        let j = f.judge(10);
        assert_eq!(
            j.of(Rule::UndeclaredConsume),
            [&(
                Rule::UndeclaredConsume,
                "inventory".into(),
                "OrderPlaced".into(),
                Some("p".into())
            )]
        );
    }

    #[test]
    fn an_emission_outside_the_reaction_is_undeclared_emit() {
        let mut f = placed();
        f.event("c", "PaymentCaptured", "payment", Some("p"), 5)
            .event("r", "PaymentRefunded", "payment", Some("p"), 6);
        let j = f.judge(10);
        assert!(
            j.findings.contains(&(
                Rule::UndeclaredEmit,
                "payment".into(),
                "PaymentRefunded".into(),
                Some("r".into())
            )),
            "{j:?}"
        );
    }

    #[test]
    fn a_handler_that_acked_and_emitted_nothing_owes_a_missing_emit() {
        let mut f = placed();
        f.receipt("payment", "p", "OrderPlaced", Outcome::Acked, 0, 1, 1);
        let j = f.judge(LATER);
        assert_eq!(
            j.of(Rule::MissingEmit),
            [&(
                Rule::MissingEmit,
                "payment".into(),
                "OrderPlaced".into(),
                Some("p".into())
            )]
        );
        assert!(
            j.messages
                .iter()
                .any(|m| m.contains("its receipt says it emitted 0"))
        );
    }

    #[test]
    fn both_branches_of_a_one_of() {
        let mut f = placed();
        f.event("c", "PaymentCaptured", "payment", Some("p"), 5)
            .event("x", "PaymentFailed", "payment", Some("p"), 6);
        let j = f.judge(10);
        assert_eq!(
            j.of(Rule::BothBranches),
            [&(
                Rule::BothBranches,
                "payment".into(),
                "OrderPlaced".into(),
                Some("p".into())
            )]
        );
    }

    #[test]
    fn a_reaction_slower_than_its_within_is_late() {
        let mut f = placed();
        f.event("x", "PaymentFailed", "payment", Some("p"), 6_000)
            .event("k", "OrderCancelled", "checkout", Some("x"), 6_001);
        let j = f.judge(6_001);
        assert_eq!(
            j.findings,
            [(
                Rule::ReactionLate,
                "payment".into(),
                "OrderPlaced".into(),
                Some("p".into())
            )]
        );
        assert!(j.messages[0].contains("took 6.00s"), "{}", j.messages[0]);
    }

    #[test]
    fn a_dead_letter_names_the_service_that_gave_up() {
        let mut f = placed();
        f.receipt(
            "payment",
            "p",
            "OrderPlaced",
            Outcome::DeadLettered,
            0,
            1,
            1,
        );
        let j = f.judge(10);
        assert_eq!(
            j.findings,
            [(
                Rule::DeadLettered,
                "payment".into(),
                "OrderPlaced".into(),
                Some("p".into())
            )]
        );
        let mut f = placed();
        f.dead("p", "payment");
        assert_eq!(f.judge(10).rules(), [Rule::DeadLettered]);
    }

    #[test]
    fn an_event_not_handled_yet_is_owed_by_each_consumer() {
        let mut f = placed();
        f.event("c", "PaymentCaptured", "payment", Some("p"), 5);
        let j = f.judge(10);
        assert_eq!(j.owed, [("inventory".to_owned(), "c".to_owned())]);
        assert!(j.findings.is_empty());
    }

    #[test]
    fn an_acked_handler_owes_its_reaction_until_the_bound() {
        let mut f = placed();
        f.receipt("payment", "p", "OrderPlaced", Outcome::Acked, 0, 1, 1);
        let j = f.judge(4_999);
        assert!(j.findings.is_empty(), "{j:?}");
        assert_eq!(j.owed, [("payment".to_owned(), "p".to_owned())]);
        assert_eq!(f.judge(5_001).rules(), [Rule::MissingEmit]);
    }

    #[test]
    fn two_acked_handlings_or_two_emissions_are_handled_twice() {
        let mut f = placed();
        f.event("x", "PaymentFailed", "payment", Some("p"), 5)
            .receipt("payment", "p", "OrderPlaced", Outcome::Acked, 1, 1, 4)
            .receipt("payment", "p", "OrderPlaced", Outcome::Acked, 0, 900, 4)
            .receipt("payment", "p", "OrderPlaced", Outcome::Acked, 0, 900, 4);
        let j = f.judge(10);
        assert_eq!(j.of(Rule::HandledTwice).len(), 1, "{j:?}");
        assert!(
            j.messages
                .iter()
                .any(|m| m.contains("handled 'OrderPlaced' 2 times"))
        );
        let mut f = placed();
        f.event("x", "PaymentFailed", "payment", Some("p"), 5)
            .event("y", "PaymentFailed", "payment", Some("p"), 700);
        let j = f.judge(800);
        assert_eq!(
            j.of(Rule::HandledTwice),
            [&(
                Rule::HandledTwice,
                "payment".into(),
                "OrderPlaced".into(),
                Some("p".into())
            )]
        );
    }
}
