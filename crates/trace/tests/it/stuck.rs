//! Stuck flows: past a `within`, naming who owes what since when; "now" decides.

use crate::helpers::*;
use choreo_core::Outcome;
use choreo_trace::{FlowStatus, Rule};

#[test]
fn a_reaction_past_its_within_is_stuck_and_names_the_debtor() {
    let h = Hand::default();
    let placed = h.start("OrderPlaced", "checkout", 0);
    let captured = h.after(&placed, "PaymentCaptured", "payment", 100);
    let topology = order_fulfillment();
    let recs = records(&[&placed, &captured]);

    // 1 s later inventory is within its 3 s: in progress.
    let t = trace(Some(&topology), &recs, Some(h.at(1_000)));
    let flow = &t.kept()[0];
    assert_eq!(flow.status, FlowStatus::InProgress);
    assert_eq!(flow.owed.len(), 1);
    assert_eq!(t.report().flows.in_progress, 1);

    // 4 s later inventory is overdue.
    let t = trace(Some(&topology), &recs, Some(h.at(4_000)));
    let flow = &t.kept()[0];
    assert_eq!(flow.status, FlowStatus::Stuck);
    let owed = &flow.owed[0];
    assert_eq!(owed.service, "inventory");
    assert_eq!(owed.event_type, "PaymentCaptured");
    assert_eq!(owed.event_id, captured.id);
    assert_eq!(owed.owes, ["StockReserved", "OutOfStock"]);
    assert!(owed.one_of);
    assert_eq!(owed.since, captured.time);
    assert_eq!(owed.deadline, Some(h.at(3_100)));
    let f = flow
        .findings
        .iter()
        .find(|f| f.rule == Rule::Stuck)
        .unwrap();
    assert_eq!(f.service, "inventory");
    assert!(
        f.message
            .contains("owes one of 'StockReserved', 'OutOfStock'"),
        "{}",
        f.message
    );
    assert!(f.message.contains("by 900.0ms"), "{}", f.message);
    let report = t.report();
    assert_eq!(report.flows.stuck, 1);
    assert!(!report.ok);
    assert_eq!(report.listed[0].owed[0].service, "inventory");
    assert!(
        report
            .summary()
            .contains("'inventory' owes one of StockReserved, OutOfStock"),
        "{}",
        report.summary()
    );
    assert!(
        flow.timeline()
            .contains("'inventory' owes one of StockReserved, OutOfStock for PaymentCaptured")
    );
}

#[test]
fn the_flow_within_makes_a_flow_stuck_even_when_reactions_have_none() {
    let t = choreo_topology::Topology::parse(
        "name: t\nevents:\n  A: {topic: a}\n  B: {topic: b}\nservices:\n  s:\n    emits: [A]\n  r:\n    on:\n      A: {emit: [B]}\nflows:\n  f: {starts_with: A, ends_with: [B], within: 10s}\n",
        "t.yaml",
    )
    .unwrap();
    let h = Hand::default();
    let a = h.start("A", "s", 0);
    let tr = trace(Some(&t), &records(&[&a]), Some(h.at(9_000)));
    assert_eq!(tr.kept()[0].status, FlowStatus::InProgress);
    let tr = trace(Some(&t), &records(&[&a]), Some(h.at(11_000)));
    let flow = &tr.kept()[0];
    assert_eq!(flow.status, FlowStatus::Stuck);
    assert_eq!(flow.owed[0].service, "r");
    assert_eq!(flow.owed[0].deadline, None);
    assert!(
        flow.findings[0].message.contains("the flow is overdue"),
        "{}",
        flow.findings[0].message
    );
}

#[test]
fn now_defaults_to_the_latest_timestamp_in_the_input() {
    let h = Hand::default();
    let stuck = h.start("OrderPlaced", "checkout", 0);
    // Another flow, 10 s later, moves "now" past payment's 5 s for the first.
    let later = h.start("OrderPlaced", "checkout", 10_000);
    let paid = h.after(&later, "PaymentFailed", "payment", 10_001);
    let cancelled = h.after(&paid, "OrderCancelled", "checkout", 10_002);
    let t = trace(
        Some(&order_fulfillment()),
        &records(&[&stuck, &later, &paid, &cancelled]),
        None,
    );
    let report = t.report();
    assert_eq!(report.now, Some(h.at(10_002)));
    assert_eq!(report.flows.stuck, 1);
    assert_eq!(report.flows.completed, 1);
}

#[test]
fn sinks_owe_receipts_only_when_receipts_are_captured() {
    let h = Hand::default();
    let placed = h.start("OrderPlaced", "checkout", 0);
    let failed = h.after(&placed, "PaymentFailed", "payment", 10);
    let cancelled = h.after(&failed, "OrderCancelled", "checkout", 20);
    let r1 = h.receipt("payment", &placed, Outcome::Acked, &[&failed], 1, 5);
    let topology = order_fulfillment();
    // With receipts in the capture, notifications owes one for OrderCancelled,
    // but the flow already completed: completion is about the end event.
    let t = trace(
        Some(&topology),
        &records(&[&placed, &failed, &cancelled, &r1]),
        Some(h.at(60_000)),
    );
    let flow = &t.kept()[0];
    assert_eq!(flow.status, FlowStatus::Completed);
    assert!(
        flow.owed
            .iter()
            .any(|o| o.service == "notifications" && o.owes.is_empty())
    );
}
