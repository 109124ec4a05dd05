//! Names against the topology: `unknown-event`, `unknown-service`, `unknown-flow`, `wrong-topic`, and a first event its service may not emit.

use super::{Raw, Scratch};
use crate::finding::Rule;
use crate::model::{EMPTY, Model, Sym, Symbols};
use crate::store::FlowState;

/// The flow the events are a run of: the one the first event starts, else
/// one the first event takes part in, else one the earliest event that
/// belongs to a flow takes part in, else the one the flow's first record
/// suggested.
pub(crate) fn flow_name(
    m: &Model,
    s: &Scratch,
    f: &FlowState,
    root: Option<usize>,
) -> Option<usize> {
    root.and_then(|r| {
        let e = &f.events[r];
        if e.cause.is_none() {
            m.flow_started_by(e.ty)
        } else {
            None
        }
    })
    .or_else(|| root.and_then(|r| m.flow_of(f.events[r].ty)))
    .or_else(|| {
        s.order
            .iter()
            .find_map(|&i| m.flow_of(f.events[i as usize].ty))
    })
    .or(f.name)
}

/// Checks the names in the flow against the topology; marks the events
/// published on another topic than their type's in `s.misrouted`.
pub(crate) fn check(
    m: &Model,
    syms: &Symbols,
    s: &mut Scratch,
    f: &FlowState,
    root: Option<usize>,
    findings: &mut Vec<Raw>,
) {
    if let Some(r) = root {
        let e = &f.events[r];
        if e.cause.is_none() && m.event(e.ty).is_some() && m.flow_started_by(e.ty).is_none() {
            findings.push(Raw {
                rule: Rule::UnknownFlow,
                service: e.source,
                event_type: e.ty,
                event: Some(r as u32),
                time: e.time,
                message: format!(
                    "the flow starts with '{}', which is no flow's `starts_with`",
                    syms.name(e.ty)
                ),
            });
        }
    }
    unknown_names(m, syms, s, f, findings);
    topics(m, syms, s, f, findings);
    own_emissions(m, syms, s, f, findings);
}

/// An event on another topic than its type's: its publisher's fault. Its
/// consumers, subscribed to the declared topic, never see it, and owe
/// nothing for it.
fn topics(m: &Model, syms: &Symbols, s: &mut Scratch, f: &FlowState, findings: &mut Vec<Raw>) {
    s.misrouted.clear();
    s.misrouted.resize(f.events.len(), false);
    for (i, e) in f.events.iter().enumerate() {
        if s.poison[i] || e.topic == EMPTY {
            continue;
        }
        let Some(declared) = m.topic_of(e.ty) else {
            continue;
        };
        if e.topic != declared {
            s.misrouted[i] = true;
            findings.push(Raw {
                rule: Rule::WrongTopic,
                service: e.source,
                event_type: e.ty,
                event: Some(i as u32),
                time: e.time,
                message: format!(
                    "'{}' published '{}' on '{}', but the topology declares it on '{}', where its consumers read it",
                    syms.name(e.source),
                    syms.name(e.ty),
                    syms.name(e.topic),
                    syms.name(declared)
                ),
            });
        }
    }
}

/// Event types and services the topology does not declare, once per flow
/// each; an unknown type names its publisher. Unreadable records are the
/// poison rule's.
fn unknown_names(m: &Model, syms: &Symbols, s: &Scratch, f: &FlowState, findings: &mut Vec<Raw>) {
    let mut seen: Vec<(Rule, Sym)> = Vec::new();
    let mut note = |rule: Rule, sym: Sym, ty: Sym, by: Sym, ev: Option<u32>, time: i64| {
        if sym == EMPTY || seen.contains(&(rule, sym)) {
            return;
        }
        seen.push((rule, sym));
        let what = if rule == Rule::UnknownEvent {
            "event type"
        } else {
            "service"
        };
        findings.push(Raw {
            rule,
            service: by,
            event_type: ty,
            event: ev,
            time,
            message: format!(
                "{what} '{}' is not declared in topology '{}'",
                syms.name(sym),
                m.name
            ),
        });
    };
    // In time order: the first of several unknown events is the one named.
    for &i in &s.order {
        let i = i as usize;
        let e = &f.events[i];
        if s.poison[i] {
            continue;
        }
        if m.event(e.ty).is_none() {
            note(
                Rule::UnknownEvent,
                e.ty,
                e.ty,
                e.source,
                Some(i as u32),
                e.time,
            );
        }
        if m.service(e.source).is_none() {
            note(
                Rule::UnknownService,
                e.source,
                e.ty,
                e.source,
                Some(i as u32),
                e.time,
            );
        }
    }
    let mut receipts: Vec<&crate::store::Rc> = f
        .receipts
        .iter()
        .filter(|r| m.service(r.service).is_none())
        .collect();
    receipts.sort_by(|a, b| (a.started, &a.event).cmp(&(b.started, &b.event)));
    for r in receipts {
        let ev = f.find(&r.event);
        if ev.is_some_and(|i| s.poison[i]) {
            continue;
        }
        note(
            Rule::UnknownService,
            r.service,
            r.ty,
            r.service,
            ev.map(|i| i as u32),
            r.started,
        );
    }
}

/// Events published on a service's own (no cause) must be in its `emits`.
fn own_emissions(m: &Model, syms: &Symbols, s: &Scratch, f: &FlowState, findings: &mut Vec<Raw>) {
    for (i, e) in f.events.iter().enumerate() {
        if e.cause.is_some() || s.poison[i] {
            continue;
        }
        if let (Some(svc), Some(_)) = (m.service(e.source), m.event(e.ty))
            && !svc.emits.contains(&e.ty)
        {
            findings.push(Raw {
                rule: Rule::UndeclaredEmit,
                service: e.source,
                event_type: e.ty,
                event: Some(i as u32),
                time: e.time,
                message: format!(
                    "'{}' published '{}' on its own, but its `emits` does not list it",
                    syms.name(e.source),
                    syms.name(e.ty)
                ),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::analysis::testing::{Fixture, ORDERS};
    use crate::finding::Rule;

    #[test]
    fn unknown_types_and_services_are_reported_once_per_flow() {
        let mut f = Fixture::new(ORDERS);
        f.event("p", "OrderPlaced", "checkout", None, 0)
            .event("x", "FraudSuspected", "fraud", Some("p"), 1)
            .event("y", "FraudSuspected", "fraud", Some("p"), 2);
        let j = f.judge(2);
        assert_eq!(j.of(Rule::UnknownEvent).len(), 1);
        assert_eq!(
            j.of(Rule::UnknownService),
            [&(
                Rule::UnknownService,
                "fraud".into(),
                "FraudSuspected".into(),
                Some("x".into())
            )]
        );
    }

    #[test]
    fn a_first_event_that_starts_no_flow_or_is_not_in_its_services_emits() {
        let mut f = Fixture::new(ORDERS);
        f.event("c", "PaymentCaptured", "payment", None, 0);
        let j = f.judge(0);
        assert_eq!(
            j.of(Rule::UnknownFlow),
            [&(
                Rule::UnknownFlow,
                "payment".into(),
                "PaymentCaptured".into(),
                Some("c".into())
            )]
        );
        assert_eq!(j.of(Rule::UndeclaredEmit).len(), 1, "{j:?}");
        let mut f = Fixture::new(ORDERS);
        f.event("p", "OrderPlaced", "payment", None, 0);
        let j = f.judge(0);
        assert_eq!(
            j.of(Rule::UndeclaredEmit),
            [&(
                Rule::UndeclaredEmit,
                "payment".into(),
                "OrderPlaced".into(),
                Some("p".into())
            )]
        );
    }

    #[test]
    fn an_event_on_another_topic_than_its_types_names_its_publisher() {
        let mut f = Fixture::new(ORDERS);
        f.event("p", "OrderPlaced", "checkout", None, 0)
            .event("c", "PaymentCaptured", "payment", Some("p"), 10)
            .on_topic("orders");
        let j = f.judge(120_000);
        assert_eq!(
            j.findings,
            [(
                Rule::WrongTopic,
                "payment".into(),
                "PaymentCaptured".into(),
                Some("c".into())
            )]
        );
        assert!(j.owed.is_empty(), "inventory never sees it: {:?}", j.owed);
    }

    #[test]
    fn an_unknown_type_names_its_publisher() {
        let mut f = Fixture::new(ORDERS);
        f.event("p", "OrderPlaced", "checkout", None, 0).event(
            "x",
            "Refund",
            "payment",
            Some("p"),
            1,
        );
        assert_eq!(
            f.judge(1).of(Rule::UnknownEvent),
            [&(
                Rule::UnknownEvent,
                "payment".into(),
                "Refund".into(),
                Some("x".into())
            )]
        );
    }
}
