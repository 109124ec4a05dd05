//! Names against the topology: `unknown-event`, `unknown-service`, `unknown-flow`, and a first event its service may not emit.

use super::Raw;
use crate::finding::Rule;
use crate::model::{EMPTY, Model, Sym, Symbols};
use crate::store::FlowState;

/// The flow the events are a run of: the one the first event starts, else
/// one the first event takes part in, else the one the flow's first record
/// suggested.
pub(crate) fn flow_name(m: &Model, f: &FlowState, root: Option<usize>) -> Option<usize> {
    root.and_then(|r| {
        let e = &f.events[r];
        if e.cause.is_none() {
            m.flow_started_by(e.ty)
        } else {
            None
        }
    })
    .or_else(|| root.and_then(|r| m.flow_of(f.events[r].ty)))
    .or(f.name)
}

/// Checks the names in the flow against the topology.
pub(crate) fn check(
    m: &Model,
    syms: &Symbols,
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
    unknown_names(m, syms, f, findings);
    own_emissions(m, syms, f, findings);
}

/// Event types and services the topology does not declare, once per flow each.
fn unknown_names(m: &Model, syms: &Symbols, f: &FlowState, findings: &mut Vec<Raw>) {
    let mut seen: Vec<(Rule, Sym)> = Vec::new();
    let mut note = |rule: Rule, sym: Sym, ty: Sym, ev: Option<u32>, time: i64| {
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
            service: if rule == Rule::UnknownService {
                sym
            } else {
                EMPTY
            },
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
    for (i, e) in f.events.iter().enumerate() {
        if m.event(e.ty).is_none() {
            note(Rule::UnknownEvent, e.ty, e.ty, Some(i as u32), e.time);
        }
        if m.service(e.source).is_none() {
            note(Rule::UnknownService, e.source, e.ty, Some(i as u32), e.time);
        }
    }
    for r in &f.receipts {
        if m.service(r.service).is_none() {
            let ev = f.find(&r.event).map(|i| i as u32);
            note(Rule::UnknownService, r.service, r.ty, ev, r.started);
        }
    }
}

/// Events published on a service's own (no cause) must be in its `emits`.
fn own_emissions(m: &Model, syms: &Symbols, f: &FlowState, findings: &mut Vec<Raw>) {
    for (i, e) in f.events.iter().enumerate() {
        if e.cause.is_some() {
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
}
