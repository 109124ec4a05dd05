//! Each event against the reactions to it: who handled it and how, what they emitted, what they still owe.
//!
//! Rules: `undeclared-consume`, `undeclared-emit` (in a reaction),
//! `missing-emit`, `both-branches`, `reaction-late`, `dead-lettered`; and the
//! debts ([`RawOwed`]) the status is judged from.

use choreo_core::Outcome;

use super::{Ctx, Raw, RawOwed, Scratch, list, plural};
use crate::finding::Rule;
use crate::model::{EMPTY, Kind, Model, Sym};
use crate::stats::format_micros;
use crate::store::FlowState;

/// Checks every event of the flow against the reactions to it; returns what
/// is owed.
pub(crate) fn check(
    ctx: &Ctx<'_>,
    m: &Model,
    s: &Scratch,
    f: &FlowState,
    findings: &mut Vec<Raw>,
) -> Vec<RawOwed> {
    let syms = ctx.syms;
    let mut owed: Vec<RawOwed> = Vec::new();
    let mut kids: Vec<usize> = Vec::new();
    let mut other_services: Vec<Sym> = Vec::new();
    for (i, e) in f.events.iter().enumerate() {
        kids.clear();
        kids.extend(s.kids(i));
        let info = m.event(e.ty);
        // Children from services that have no reaction to this event, and
        // children outside the reacting service's contract.
        other_services.clear();
        for &k in &kids {
            let kid = &f.events[k];
            if m.service(kid.source).is_none() || m.event(kid.ty).is_none() || info.is_none() {
                continue;
            }
            match m.reaction(kid.source, e.ty) {
                None => {
                    if !other_services.contains(&kid.source) {
                        other_services.push(kid.source);
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
        // Receipts from services with no reaction to this event.
        for r in f.receipts.iter().filter(|r| r.event == e.id) {
            if info.is_none() || m.service(r.service).is_none() {
                continue;
            }
            if m.reaction(r.service, e.ty).is_none() && !other_services.contains(&r.service) {
                other_services.push(r.service);
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
        let Some(info) = info else { continue };
        for reaction in &info.consumers {
            let svc = reaction.service;
            let mut acked = false;
            let mut dup = false;
            let mut dead: Option<(&str, u32)> = None;
            let mut receipt_emitted: Option<u32> = None;
            let mut settled_at: Option<i64> = None;
            for r in f
                .receipts
                .iter()
                .filter(|r| r.service == svc && r.event == e.id)
            {
                match r.outcome {
                    Outcome::Acked => {
                        acked = true;
                        receipt_emitted = Some(receipt_emitted.unwrap_or(0).max(r.emitted));
                        let done = r.started.saturating_add(r.duration_us as i64);
                        settled_at = Some(settled_at.map_or(done, |d: i64| d.min(done)));
                    }
                    Outcome::Duplicate => dup = true,
                    Outcome::DeadLettered => {
                        dead = Some((r.reason.as_deref().unwrap_or(""), r.attempts));
                    }
                    Outcome::Redelivered => {}
                }
            }
            if dead.is_none()
                && let Some(d) = f
                    .dead
                    .iter()
                    .find(|d| d.event == e.id && (d.service == svc || d.service == EMPTY))
            {
                dead = Some((&d.reason, d.attempts));
            }
            if let Some((reason, attempts)) = dead {
                findings.push(Raw {
                    rule: Rule::DeadLettered,
                    service: svc,
                    event_type: e.ty,
                    event: Some(i as u32),
                    time: e.time,
                    message: format!(
                        "'{}' dead-lettered '{}' after {attempts} attempt{}: {reason}",
                        syms.name(svc),
                        syms.name(e.ty),
                        plural(attempts)
                    ),
                });
                continue;
            }
            let mut emitted_types: Vec<Sym> = Vec::new();
            let mut last_emit: Option<i64> = None;
            for &k in &kids {
                let kid = &f.events[k];
                if kid.source == svc {
                    if !emitted_types.contains(&kid.ty) {
                        emitted_types.push(kid.ty);
                    }
                    last_emit = Some(last_emit.map_or(kid.time, |t: i64| t.max(kid.time)));
                }
            }
            let ran = acked || !emitted_types.is_empty();
            if ran {
                // Emissions its receipt announces but the input does not
                // (yet) hold: the flow is not at rest.
                let seen = kids.iter().filter(|&&k| f.events[k].source == svc).count();
                if receipt_emitted.is_some_and(|n| n as usize > seen) {
                    owed.push(RawOwed {
                        service: svc,
                        event: i as u32,
                        owes: reaction.emits.clone(),
                        one_of: reaction.kind == Kind::OneOf,
                        deadline: None,
                    });
                }
                match reaction.kind {
                    Kind::All => {
                        let missing: Vec<Sym> = reaction
                            .emits
                            .iter()
                            .copied()
                            .filter(|x| !emitted_types.contains(x))
                            .collect();
                        let receipts_say_short =
                            receipt_emitted.is_none_or(|n| (n as usize) < reaction.emits.len());
                        if !missing.is_empty() && receipts_say_short {
                            findings.push(Raw {
                                rule: Rule::MissingEmit,
                                service: svc,
                                event_type: e.ty,
                                event: Some(i as u32),
                                time: e.time,
                                message: format!(
                                    "'{}' handled '{}' but did not emit {} (its reaction emits {}){}",
                                    syms.name(svc),
                                    syms.name(e.ty),
                                    list(syms, &missing),
                                    list(syms, &reaction.emits),
                                    receipt_note(receipt_emitted)
                                ),
                            });
                        }
                    }
                    Kind::OneOf => {
                        let chosen: Vec<Sym> = emitted_types
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
                        } else if chosen.is_empty() && receipt_emitted.is_none_or(|n| n == 0) {
                            findings.push(Raw {
                                rule: Rule::MissingEmit,
                                service: svc,
                                event_type: e.ty,
                                event: Some(i as u32),
                                time: e.time,
                                message: format!(
                                    "'{}' handled '{}' but emitted none of {}{}",
                                    syms.name(svc),
                                    syms.name(e.ty),
                                    list(syms, &reaction.emits),
                                    receipt_note(receipt_emitted)
                                ),
                            });
                        }
                    }
                    Kind::Nothing => {}
                }
                if let Some(within) = reaction.within_us {
                    let done = last_emit.or(settled_at);
                    if let Some(done) = done {
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
                continue;
            }
            if dup {
                continue;
            }
            if reaction.kind == Kind::Nothing && !ctx.receipts_expected {
                continue;
            }
            owed.push(RawOwed {
                service: svc,
                event: i as u32,
                owes: reaction.emits.clone(),
                one_of: reaction.kind == Kind::OneOf,
                deadline: reaction.within_us.map(|w| e.time.saturating_add(w)),
            });
        }
    }
    owed
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
}
