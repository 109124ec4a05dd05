//! What services gave up on: `dead-lettered`, or `recovered` when the event was replayed and then handled.
//!
//! A dead letter is known from the service's receipt (outcome
//! `dead_lettered`) or from the copy on the dead-letter topic; either way it
//! is one per event and service, however many copies arrived. It is
//! *recovered* when the same service later handled the same event (a receipt
//! `acked` after it, or an emission caused by it after it): `choreo dlq
//! replay` republishes the event with its id, so a replay shows as exactly
//! that. Records no service could read are the [`poison`](super::poison)
//! module's.

use choreo_core::{EventId, Outcome};

use super::poison::is_malformed_reason;
use super::{Ctx, Raw, Scratch, plural};
use crate::finding::Rule;
use crate::model::{EMPTY, Sym};
use crate::store::FlowState;

/// One service's dead letter of one event.
#[derive(Debug)]
pub(crate) struct DeadLetter<'a> {
    /// The event's id.
    pub(crate) id: &'a EventId,
    /// The event (index in the flow), when the flow holds it.
    pub(crate) event: Option<usize>,
    /// The event's type, when known.
    pub(crate) ty: Sym,
    /// The service that gave up (`EMPTY`: a copy that does not say).
    pub(crate) service: Sym,
    pub(crate) reason: &'a str,
    pub(crate) attempts: u32,
    /// When it gave up, when known (µs).
    pub(crate) at: Option<i64>,
    /// Handled after a replay.
    pub(crate) recovered: bool,
}

/// The flow's dead letters.
#[derive(Debug, Default)]
pub(crate) struct DeadLetters<'a> {
    pub(crate) list: Vec<DeadLetter<'a>>,
}

impl DeadLetters<'_> {
    /// Whether `service` gave up on event `i` for good (not recovered).
    pub(crate) fn gave_up(&self, i: usize, service: Sym) -> bool {
        self.list.iter().any(|d| {
            !d.recovered && d.event == Some(i) && (d.service == service || d.service == EMPTY)
        })
    }

    /// Whether `service` dead-lettered event `i` and handled it after a replay.
    pub(crate) fn recovered(&self, i: usize, service: Sym) -> bool {
        self.list.iter().any(|d| {
            d.recovered && d.event == Some(i) && (d.service == service || d.service == EMPTY)
        })
    }

    /// Whether anything was dead-lettered and not recovered.
    pub(crate) fn any_lost(&self) -> bool {
        self.list.iter().any(|d| !d.recovered)
    }

    /// Whether a dead letter was recovered.
    pub(crate) fn any_recovered(&self) -> bool {
        self.list.iter().any(|d| d.recovered)
    }
}

/// Collects the flow's dead letters (one per event and service) and reports
/// each: `dead-lettered`, or `recovered`.
pub(crate) fn check<'f>(
    ctx: &Ctx<'_>,
    s: &Scratch,
    f: &'f FlowState,
    findings: &mut Vec<Raw>,
) -> DeadLetters<'f> {
    let mut out = DeadLetters::default();
    if f.dead.is_empty()
        && f.receipts
            .iter()
            .all(|r| r.outcome != Outcome::DeadLettered)
    {
        return out;
    }
    for r in f.receipts.iter().filter(|r| {
        r.outcome == Outcome::DeadLettered && !r.reason.as_deref().is_some_and(is_malformed_reason)
    }) {
        let at = r.started.saturating_add(r.duration_us as i64);
        note(
            &mut out,
            DeadLetter {
                id: &r.event,
                event: f.find(&r.event),
                ty: r.ty,
                service: r.service,
                reason: r.reason.as_deref().unwrap_or(""),
                attempts: r.attempts,
                at: Some(at),
                recovered: false,
            },
        );
    }
    for d in f.dead.iter().filter(|d| !d.malformed) {
        let i = f.find(&d.event);
        let ty = i.map_or(EMPTY, |i| f.events[i].ty);
        // A copy stands for the receipt of the same dead letter, when there is one.
        let known = out
            .list
            .iter()
            .any(|x| x.id == &d.event && (x.service == d.service || d.service == EMPTY));
        if !known {
            note(
                &mut out,
                DeadLetter {
                    id: &d.event,
                    event: i,
                    ty,
                    service: d.service,
                    reason: &d.reason,
                    attempts: d.attempts,
                    at: d.at,
                    recovered: false,
                },
            );
        }
    }
    for d in &mut out.list {
        d.recovered = d
            .event
            .is_some_and(|i| handled_after(s, f, i, d.service, d.at));
    }
    let syms = ctx.syms;
    for d in &out.list {
        let e = d.event.map(|i| &f.events[i]);
        let time = e.map_or(d.at.unwrap_or(0), |e| e.time);
        // The runtime's reason carries the count too ("handler failed after
        // 3 attempts: …"): said once, in the message's own words.
        let reason = without_count(d.reason, d.attempts);
        let message = if d.recovered {
            format!(
                "'{}' dead-lettered '{}' after {} attempt{} ({}), and handled it after it was replayed",
                syms.name(d.service),
                syms.name(d.ty),
                d.attempts,
                plural(d.attempts),
                reason
            )
        } else {
            format!(
                "'{}' dead-lettered '{}' after {} attempt{}: {}",
                syms.name(d.service),
                syms.name(d.ty),
                d.attempts,
                plural(d.attempts),
                reason
            )
        };
        findings.push(Raw {
            rule: if d.recovered {
                Rule::Recovered
            } else {
                Rule::DeadLettered
            },
            service: d.service,
            event_type: d.ty,
            event: d.event.map(|i| i as u32),
            time,
            message,
        });
    }
    out
}

/// Adds a dead letter, or keeps the latest of two for one event and service
/// (a dead letter replayed and dead-lettered again).
fn note<'f>(out: &mut DeadLetters<'f>, new: DeadLetter<'f>) {
    match out
        .list
        .iter_mut()
        .find(|d| d.id == new.id && d.service == new.service)
    {
        // The later one stands; equal times keep the larger reason, so the
        // order of the records does not matter.
        Some(d) => {
            if (new.at, new.reason, new.attempts) > (d.at, d.reason, d.attempts) {
                *d = new;
            }
        }
        None => out.list.push(new),
    }
}

/// Whether `service` handled event `i` after it gave up on it at `at`: an
/// acked receipt that started later, or an emission caused by it later.
fn handled_after(s: &Scratch, f: &FlowState, i: usize, service: Sym, at: Option<i64>) -> bool {
    let after = |t: i64| at.is_none_or(|at| t > at);
    let id = &f.events[i].id;
    f.receipts.iter().any(|r| {
        r.outcome == Outcome::Acked
            && &r.event == id
            && (r.service == service || service == EMPTY)
            && after(r.started)
    }) || s.kids(i).any(|k| {
        let kid = &f.events[k];
        (kid.source == service || service == EMPTY) && after(kid.time)
    })
}

/// `reason` without the ` after N attempt(s)` it may carry before its first
/// `: ` when N is `attempts` (the runtime's reasons do: "handler failed after
/// 3 attempts: boom" is "handler failed: boom" here).
fn without_count(reason: &str, attempts: u32) -> std::borrow::Cow<'_, str> {
    let count = format!(" after {attempts} attempt{}", plural(attempts));
    match (reason.find(&count), reason.find(": ")) {
        (Some(at), Some(colon)) if at + count.len() == colon => {
            format!("{}{}", &reason[..at], &reason[colon..]).into()
        }
        _ => reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use choreo_core::Outcome;

    use super::without_count;
    use crate::analysis::testing::{Fixture, ORDERS};
    use crate::finding::Rule;
    use crate::flow::FlowStatus;

    #[test]
    fn the_count_in_a_reason_is_dropped_when_it_is_the_one_the_message_says() {
        assert_eq!(
            without_count("handler failed after 3 attempts: boom: it broke", 3),
            "handler failed: boom: it broke"
        );
        assert_eq!(
            without_count("handler panicked after 1 attempt: oops", 1),
            "handler panicked: oops"
        );
        // Another count, or none: kept as it is.
        assert_eq!(
            without_count("handler failed after 5 attempts: boom", 3),
            "handler failed after 5 attempts: boom"
        );
        assert_eq!(
            without_count("decode error: not JSON", 1),
            "decode error: not JSON"
        );
    }

    fn reserved() -> Fixture {
        let mut f = Fixture::new(ORDERS);
        f.event("p", "OrderPlaced", "checkout", None, 0)
            .event("c", "PaymentCaptured", "payment", Some("p"), 10)
            .event("r", "StockReserved", "inventory", Some("c"), 20);
        f
    }

    #[test]
    fn a_receipt_and_its_copy_are_one_dead_letter() {
        let mut f = reserved();
        f.receipt(
            "shipping",
            "r",
            "StockReserved",
            Outcome::DeadLettered,
            0,
            21,
            5,
        )
        .dead("r", "shipping")
        .dead("r", "shipping");
        let j = f.judge(100);
        assert_eq!(j.rules(), [Rule::DeadLettered]);
        assert_eq!(j.status, FlowStatus::Failed);
    }

    #[test]
    fn handled_after_a_replay_is_recovered() {
        let mut f = reserved();
        f.receipt(
            "shipping",
            "r",
            "StockReserved",
            Outcome::DeadLettered,
            0,
            21,
            5,
        )
        .receipt("shipping", "r", "StockReserved", Outcome::Acked, 1, 500, 5)
        .event("s", "OrderShipped", "shipping", Some("r"), 505);
        let j = f.judge(600);
        assert_eq!(j.status, FlowStatus::Recovered);
        assert_eq!(
            j.findings,
            [(
                Rule::Recovered,
                "shipping".into(),
                "StockReserved".into(),
                Some("r".into())
            )]
        );
        assert!(!Rule::Recovered.is_violation());
    }

    #[test]
    fn without_receipts_a_later_emission_is_the_recovery() {
        let mut f = reserved();
        f.dead("r", "shipping")
            .event("s", "OrderShipped", "shipping", Some("r"), 505);
        assert_eq!(f.judge(600).status, FlowStatus::Recovered);
    }
}
