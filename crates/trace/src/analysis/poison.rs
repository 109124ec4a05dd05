//! Records no service can read: `malformed-record`, one finding per record, at its producer.
//!
//! A source that can only partly read a record (a Kafka record whose
//! CloudEvents headers are broken) delivers it with the
//! [`MALFORMED_HEADER`](choreo_core::MALFORMED_HEADER) header, and every
//! service that receives it — each consumer group subscribed to its topic —
//! dead-letters it at once with the reason `malformed record: …`. That is one
//! fault, its producer's: the services that dead-lettered it did their part,
//! so none of them is blamed (no `dead-lettered`, no `undeclared-consume`),
//! and none owes anything for it.

use choreo_core::{EventId, Outcome};

use super::{Ctx, Raw, Scratch};
use crate::finding::Rule;
use crate::model::{EMPTY, Sym};
use crate::store::FlowState;

/// How the runtime's reason for dead-lettering a malformed record starts
/// (`choreo_bus`'s service runtime; a test of this crate holds it to it).
pub(crate) const MALFORMED_REASON: &str = "malformed record:";

/// Whether a dead letter's `reason` says the record could not be read.
pub(crate) fn is_malformed_reason(reason: &str) -> bool {
    reason.starts_with(MALFORMED_REASON)
}

/// One record nobody could read, and what is known of it.
struct Poison<'a> {
    event: &'a EventId,
    /// The event type (from the record, or a receipt).
    ty: Sym,
    /// What is wrong with it.
    problem: Option<&'a str>,
    /// Its own record said so (the source's malformed mark).
    marked: bool,
    /// Who dead-lettered it.
    by: Vec<Sym>,
}

/// Marks the flow's unreadable events in `s.poison` and reports each once;
/// returns whether there were any.
pub(crate) fn check(
    ctx: &Ctx<'_>,
    s: &mut Scratch,
    f: &FlowState,
    findings: &mut Vec<Raw>,
) -> bool {
    s.poison.clear();
    s.poison.resize(f.events.len(), false);
    let malformed_receipts = f.receipts.iter().filter(|r| {
        r.outcome == Outcome::DeadLettered && r.reason.as_deref().is_some_and(is_malformed_reason)
    });
    if f.dead.iter().all(|d| !d.malformed) && malformed_receipts.clone().next().is_none() {
        return false;
    }
    let mut found: Vec<Poison<'_>> = Vec::new();
    for d in f.dead.iter().filter(|d| d.malformed) {
        let p = entry(&mut found, &d.event);
        if d.marker {
            // The source's own words about the record come first.
            p.marked = true;
            p.problem = Some(&d.reason);
        } else {
            push_unique(&mut p.by, d.service);
            if !p.marked {
                p.problem = least(p.problem, strip(&d.reason));
            }
        }
    }
    for r in malformed_receipts {
        let p = entry(&mut found, &r.event);
        if !p.marked {
            p.problem = least(p.problem, strip(r.reason.as_deref().unwrap_or("")));
        }
        p.ty = if p.ty == EMPTY { r.ty } else { p.ty };
        push_unique(&mut p.by, r.service);
    }
    let syms = ctx.syms;
    for p in found {
        let i = f.find(p.event);
        if let Some(i) = i {
            s.poison[i] = true;
        }
        let e = i.map(|i| &f.events[i]);
        let ty = e.map_or(p.ty, |e| e.ty);
        let producer = e.map_or(EMPTY, |e| e.source);
        let mut by: Vec<&str> =
            p.by.iter()
                .filter(|s| **s != EMPTY)
                .map(|s| syms.name(*s).as_str())
                .collect();
        by.sort_unstable();
        findings.push(Raw {
            rule: Rule::MalformedRecord,
            service: producer,
            event_type: ty,
            event: i.map(|i| i as u32),
            time: e.map_or(f.last_activity, |e| e.time),
            message: format!(
                "a '{}' record{} that no service could read ({}){}",
                syms.name(ty),
                if producer == EMPTY {
                    String::new()
                } else {
                    format!(" published by '{}'", syms.name(producer))
                },
                p.problem.unwrap_or("its metadata is broken").trim(),
                if by.is_empty() {
                    String::new()
                } else {
                    format!("; dead-lettered by '{}'", by.join("', '"))
                }
            ),
        });
    }
    true
}

fn entry<'a, 'b>(found: &'b mut Vec<Poison<'a>>, event: &'a EventId) -> &'b mut Poison<'a> {
    match found.iter().position(|p| p.event == event) {
        Some(i) => &mut found[i],
        None => {
            found.push(Poison {
                event,
                ty: EMPTY,
                problem: None,
                marked: false,
                by: Vec::new(),
            });
            found.last_mut().expect("just pushed")
        }
    }
}

fn push_unique(v: &mut Vec<Sym>, s: Sym) {
    if !v.contains(&s) {
        v.push(s);
    }
}

/// The smaller of two texts: the same one whatever order they came in.
fn least<'a>(a: Option<&'a str>, b: &'a str) -> Option<&'a str> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// The problem in a dead letter's reason, without the runtime's prefix.
fn strip(reason: &str) -> &str {
    reason
        .strip_prefix(MALFORMED_REASON)
        .unwrap_or(reason)
        .trim()
}

#[cfg(test)]
mod tests {
    use crate::analysis::testing::{Fixture, ORDERS};
    use crate::finding::Rule;
    use crate::flow::FlowStatus;

    #[test]
    fn every_groups_dead_letter_of_an_unreadable_record_is_one_finding_at_its_producer() {
        let mut f = Fixture::new(ORDERS);
        f.event("p", "OrderPlaced", "checkout", None, 0)
            .malformed("p", "header 'ce_time' is not RFC 3339")
            .dead_receipt(
                "payment",
                "p",
                "OrderPlaced",
                "malformed record: header 'ce_time' is not RFC 3339",
                1,
            )
            .dead_receipt(
                "notifications",
                "p",
                "OrderPlaced",
                "malformed record: header 'ce_time' is not RFC 3339",
                1,
            );
        let j = f.judge(120_000);
        assert_eq!(
            j.findings,
            [(
                Rule::MalformedRecord,
                "checkout".into(),
                "OrderPlaced".into(),
                Some("p".into())
            )]
        );
        assert!(
            j.messages[0].contains("dead-lettered by 'notifications', 'payment'"),
            "{}",
            j.messages[0]
        );
        assert_eq!(j.status, FlowStatus::Failed);
        assert!(j.owed.is_empty());
    }

    #[test]
    fn receipts_alone_tell_of_a_record_nobody_could_read() {
        let mut f = Fixture::new(ORDERS);
        f.event("p", "OrderPlaced", "checkout", None, 0)
            .dead_receipt(
                "notifications",
                "p",
                "OrderPlaced",
                "malformed record: not UTF-8",
                1,
            );
        let j = f.judge(10);
        assert_eq!(j.rules(), [Rule::MalformedRecord]);
        assert!(j.messages[0].contains("(not UTF-8)"), "{}", j.messages[0]);
    }
}
