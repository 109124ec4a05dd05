//! One test per conformance rule: each finding names the flow, the service, the event and the rule.

use crate::helpers::*;
use choreo_core::{Envelope, Outcome, Timestamp};
use choreo_topology::Topology;
use choreo_trace::{Finding, FlowStatus, Rule, TracerConfig};

fn findings(topology: &Topology, envs: &[&Envelope], now: Option<Timestamp>) -> Vec<Finding> {
    let t = trace(Some(topology), &records(envs), now);
    let all: Vec<Finding> = t.kept().iter().flat_map(|f| f.findings.clone()).collect();
    // The report counts the same findings.
    let counted: u64 = t.report().findings.iter().map(|r| r.count).sum();
    assert_eq!(counted, all.len() as u64);
    all
}

fn only(fs: &[Finding], rule: Rule) -> &Finding {
    let hits: Vec<&Finding> = fs.iter().filter(|f| f.rule == rule).collect();
    assert_eq!(hits.len(), 1, "expected one {rule}, got {fs:#?}");
    hits[0]
}

#[test]
fn a_conforming_flow_has_no_findings() {
    let h = Hand::default();
    let placed = h.start("OrderPlaced", "checkout", 0);
    let captured = h.after(&placed, "PaymentCaptured", "payment", 10);
    let out = h.after(&captured, "OutOfStock", "inventory", 20);
    let refunded = h.after(&out, "PaymentRefunded", "payment", 30);
    let cancelled = h.after(&refunded, "OrderCancelled", "checkout", 40);
    let fs = findings(
        &order_fulfillment(),
        &[&placed, &captured, &out, &refunded, &cancelled],
        None,
    );
    assert!(fs.is_empty(), "{fs:#?}");
}

#[test]
fn unknown_event() {
    let h = Hand::default();
    let placed = h.start("OrderPlaced", "checkout", 0);
    let bogus = h.after(&placed, "FraudSuspected", "payment", 5);
    let fs = findings(&order_fulfillment(), &[&placed, &bogus], None);
    let f = only(&fs, Rule::UnknownEvent);
    assert_eq!(f.event_type, "FraudSuspected");
    assert_eq!(f.correlation_id, placed.id);
    assert_eq!(f.flow.as_deref(), Some("checkout"));
    assert_eq!(f.event_id.as_ref(), Some(&bogus.id));
}

#[test]
fn unknown_service() {
    let h = Hand::default();
    let placed = h.start("OrderPlaced", "checkout", 0);
    let captured = h.after(&placed, "PaymentCaptured", "payments-v2", 5);
    let fs = findings(&order_fulfillment(), &[&placed, &captured], None);
    let f = only(&fs, Rule::UnknownService);
    assert_eq!(f.service, "payments-v2");
    assert_eq!(f.event_type, "PaymentCaptured");
}

#[test]
fn undeclared_consume_from_emissions_and_receipts() {
    let h = Hand::default();
    let placed = h.start("OrderPlaced", "checkout", 0);
    // shipping reacts to OrderPlaced, which it declares no reaction to
    let shipped = h.after(&placed, "OrderShipped", "shipping", 5);
    let fs = findings(&order_fulfillment(), &[&placed, &shipped], None);
    let f = only(&fs, Rule::UndeclaredConsume);
    assert_eq!(
        (f.service.as_str(), f.event_type.as_str()),
        ("shipping", "OrderPlaced")
    );

    let receipt = h.receipt("inventory", &placed, Outcome::Acked, &[], 1, 1);
    let fs = findings(&order_fulfillment(), &[&placed, &receipt], None);
    let f = only(&fs, Rule::UndeclaredConsume);
    assert_eq!(
        (f.service.as_str(), f.event_type.as_str()),
        ("inventory", "OrderPlaced")
    );
    assert!(f.message.contains("acked"), "{}", f.message);
}

#[test]
fn undeclared_emit_in_a_reaction_and_on_its_own() {
    let h = Hand::default();
    let placed = h.start("OrderPlaced", "checkout", 0);
    let captured = h.after(&placed, "PaymentCaptured", "payment", 5);
    let refunded = h.after(&placed, "PaymentRefunded", "payment", 6);
    let fs = findings(&order_fulfillment(), &[&placed, &captured, &refunded], None);
    let f = only(&fs, Rule::UndeclaredEmit);
    assert_eq!(
        (f.service.as_str(), f.event_type.as_str()),
        ("payment", "PaymentRefunded")
    );
    assert!(
        f.message
            .contains("one of 'PaymentCaptured', 'PaymentFailed'"),
        "{}",
        f.message
    );

    // A flow's first event published by a service whose `emits` does not list it.
    let placed = h.start("OrderPlaced", "payment", 0);
    let fs = findings(&order_fulfillment(), &[&placed], None);
    let f = only(&fs, Rule::UndeclaredEmit);
    assert_eq!(
        (f.service.as_str(), f.event_type.as_str()),
        ("payment", "OrderPlaced")
    );
}

#[test]
fn missing_emit_is_attributed_with_the_receipt() {
    let h = Hand::default();
    let placed = h.start("OrderPlaced", "checkout", 0);
    // payment acked OrderPlaced and emitted nothing, and its 5 s have passed
    let receipt = h.receipt("payment", &placed, Outcome::Acked, &[], 1, 2);
    let fs = findings(
        &order_fulfillment(),
        &[&placed, &receipt],
        Some(h.at(5_001)),
    );
    let f = only(&fs, Rule::MissingEmit);
    assert_eq!(
        (f.service.as_str(), f.event_type.as_str()),
        ("payment", "OrderPlaced")
    );
    assert!(
        f.message.contains("its receipt says it emitted 0"),
        "{}",
        f.message
    );
    // ...and so the flow came to rest without an end, which is payment's
    // fault alone: no bad-end names anyone else.
    assert_eq!(fs.len(), 1, "{fs:#?}");

    // Without a receipt, nothing can be said yet: payment owes, the flow is in progress.
    let t = trace(Some(&order_fulfillment()), &records(&[&placed]), None);
    assert_eq!(t.kept()[0].status, FlowStatus::InProgress);
    assert!(t.kept()[0].findings.is_empty());
}

#[test]
fn both_branches_of_a_one_of() {
    let h = Hand::default();
    let placed = h.start("OrderPlaced", "checkout", 0);
    let captured = h.after(&placed, "PaymentCaptured", "payment", 5);
    let failed = h.after(&placed, "PaymentFailed", "payment", 5);
    let fs = findings(&order_fulfillment(), &[&placed, &captured, &failed], None);
    let f = only(&fs, Rule::BothBranches);
    assert_eq!(
        (f.service.as_str(), f.event_type.as_str()),
        ("payment", "OrderPlaced")
    );
    assert!(
        f.message.contains("'PaymentCaptured', 'PaymentFailed'"),
        "{}",
        f.message
    );
}

#[test]
fn reaction_late_and_flow_late() {
    let h = Hand::default();
    let placed = h.start("OrderPlaced", "checkout", 0);
    // payment must react within 5 s: it took 6 s
    let failed = h.after(&placed, "PaymentFailed", "payment", 6_000);
    // checkout within 2 s: it took 70 s, and the flow (within 1 m) took 76 s
    let cancelled = h.after(&failed, "OrderCancelled", "checkout", 76_000);
    let fs = findings(&order_fulfillment(), &[&placed, &failed, &cancelled], None);
    let late: Vec<&Finding> = fs.iter().filter(|f| f.rule == Rule::ReactionLate).collect();
    assert_eq!(late.len(), 2, "{fs:#?}");
    assert_eq!(
        (late[0].service.as_str(), late[0].event_type.as_str()),
        ("payment", "OrderPlaced")
    );
    assert!(
        late[0].message.contains("took 6.00s"),
        "{}",
        late[0].message
    );
    let f = only(&fs, Rule::FlowLate);
    assert_eq!(f.flow.as_deref(), Some("checkout"));
    assert!(f.message.contains("took 1m16s"), "{}", f.message);
}

#[test]
fn resting_on_a_non_end_is_a_bad_end() {
    let t = Topology::parse(
        "name: t\nevents:\n  A: {topic: a}\n  B: {topic: b}\n  C: {topic: c}\nservices:\n  s:\n    emits: [A]\n  r:\n    on:\n      A: {emit: [B]}\n  sink:\n    on:\n      B: {}\n  other:\n    emits: [C]\nflows:\n  f: {starts_with: A, ends_with: [C]}\n",
        "t.yaml",
    )
    .unwrap();
    let h = Hand::default();
    let a = h.start("A", "s", 0);
    let b = h.after(&a, "B", "r", 5);
    let receipt = h.receipt("sink", &b, Outcome::Acked, &[], 6, 1);
    let tr = trace(Some(&t), &records(&[&a, &b, &receipt]), None);
    let flow = &tr.kept()[0];
    assert_eq!(flow.status, FlowStatus::Failed);
    let f = only(&flow.findings, Rule::BadEnd);
    assert!(f.message.contains("came to rest on 'B'"), "{}", f.message);
    assert!(f.message.contains("'C'"), "{}", f.message);
}

#[test]
fn a_first_event_that_starts_no_flow() {
    let h = Hand::default();
    let captured = h.start("PaymentCaptured", "payment", 0);
    let fs = findings(&order_fulfillment(), &[&captured], None);
    let f = only(&fs, Rule::UnknownFlow);
    assert_eq!(
        (f.service.as_str(), f.event_type.as_str()),
        ("payment", "PaymentCaptured")
    );
}

#[test]
fn dead_letters_fail_the_flow_from_a_receipt_or_a_copy() {
    let h = Hand::default();
    let placed = h.start("OrderPlaced", "checkout", 0);
    let receipt = h.receipt("payment", &placed, Outcome::DeadLettered, &[], 1, 30);
    let t = trace(
        Some(&order_fulfillment()),
        &records(&[&placed, &receipt]),
        None,
    );
    let flow = &t.kept()[0];
    assert_eq!(flow.status, FlowStatus::Failed);
    let f = only(&flow.findings, Rule::DeadLettered);
    assert_eq!(
        (f.service.as_str(), f.event_type.as_str()),
        ("payment", "OrderPlaced")
    );
    assert!(f.message.contains("card processor down"));

    // Only the dead-letter topic's copy was captured (no receipts).
    let mut copy = placed.clone();
    copy.topic = "orders.dlq".into();
    copy.headers
        .insert(choreo_core::dlq_headers::REASON, "decode error: bad json");
    copy.headers
        .insert(choreo_core::dlq_headers::SERVICE, "payment");
    copy.headers.insert(choreo_core::dlq_headers::ATTEMPTS, "1");
    let t = trace(
        Some(&order_fulfillment()),
        &records(&[&placed, &copy]),
        None,
    );
    let flow = &t.kept()[0];
    assert_eq!(flow.status, FlowStatus::Failed);
    assert_eq!(flow.graph.node_count(), 1, "the copy is not a second event");
    let f = only(&flow.findings, Rule::DeadLettered);
    assert!(f.message.contains("decode error: bad json"));
    assert_eq!(t.report().input.dead_letters, 1);
}

#[test]
fn a_loop_repeated_past_the_bound() {
    let topology = signup_kyc();
    let h = Hand::default();
    let signup = h.start("SignupRequested", "web", 0);
    let created = h.after(&signup, "AccountCreated", "accounts", 1);
    let mut envs = vec![signup.clone(), created];
    let mut kyc = h.after(&signup, "KycRequested", "accounts", 1);
    for round in 0..4 {
        let t0 = 10 + round * 10;
        let rejected = h.after(&kyc, "DocumentsRejected", "kyc", t0);
        let again = h.after(&rejected, "ResubmissionRequested", "accounts", t0 + 1);
        envs.push(kyc.clone());
        envs.push(rejected);
        envs.push(again.clone());
        kyc = h.after(&again, "KycRequested", "kyc", t0 + 2);
    }
    let verified = h.after(&kyc, "DocumentsVerified", "kyc", 100);
    let active = h.after(&verified, "AccountActivated", "accounts", 101);
    envs.push(kyc);
    envs.push(verified);
    envs.push(active);
    let refs: Vec<&Envelope> = envs.iter().collect();
    let fs = findings(&topology, &refs, None);
    let cycle: Vec<&Finding> = fs.iter().filter(|f| f.rule == Rule::CycleBound).collect();
    assert!(!cycle.is_empty(), "{fs:#?}");
    assert!(
        cycle
            .iter()
            .any(|f| f.event_type == "KycRequested" && f.message.contains("5 times"))
    );
    assert!(fs.iter().all(|f| f.rule == Rule::CycleBound), "{fs:#?}");

    // A higher bound forgives it.
    let mut config = TracerConfig::batch();
    config.cycle_bound = 5;
    let mut t = choreo_trace::Tracer::new(config, Some(&topology));
    for e in &envs {
        t.ingest_envelope(e, None);
    }
    t.finish(None);
    assert!(t.report().findings.is_empty());
}

#[test]
fn clock_skew() {
    let h = Hand::default();
    let placed = h.start("OrderPlaced", "checkout", 100);
    let failed = h.after(&placed, "PaymentFailed", "payment", 40);
    let cancelled = h.after(&failed, "OrderCancelled", "checkout", 150);
    let fs = findings(&order_fulfillment(), &[&placed, &failed, &cancelled], None);
    let f = only(&fs, Rule::ClockSkew);
    assert_eq!(
        (f.service.as_str(), f.event_type.as_str()),
        ("payment", "PaymentFailed")
    );
    assert!(f.message.contains("60.0ms earlier"), "{}", f.message);
}

#[test]
fn causation_loops() {
    let h = Hand::default();
    let placed = h.start("OrderPlaced", "checkout", 0);
    let mut a = h.after(&placed, "PaymentCaptured", "payment", 1);
    let mut b = h.after(&placed, "StockReserved", "inventory", 2);
    a.causation_id = Some(b.id.clone());
    b.causation_id = Some(a.id.clone());
    let mut selfish = h.after(&placed, "PaymentFailed", "payment", 3);
    selfish.causation_id = Some(selfish.id.clone());
    let fs = findings(&order_fulfillment(), &[&placed, &a, &b, &selfish], None);
    let loops: Vec<&Finding> = fs.iter().filter(|f| f.rule == Rule::CausalLoop).collect();
    assert_eq!(loops.len(), 2, "{fs:#?}");
}

#[test]
fn every_rule_has_a_code_and_summary() {
    for r in Rule::ALL {
        assert!(!r.code().is_empty() && !r.summary().is_empty());
        assert!(r.code().chars().all(|c| c.is_ascii_lowercase() || c == '-'));
    }
    assert_eq!(Rule::ALL.len(), 21);
}
