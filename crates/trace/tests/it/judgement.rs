//! The tracer's judgement on traffic shaped like production's: owed is not
//! missing until a bound passes, every finding names the service at fault,
//! and neither the order of the records nor their duplicates change a thing.

use choreo_core::{Envelope, MALFORMED_HEADER, Outcome, Timestamp};
use choreo_topology::Topology;
use choreo_trace::{Finding, FlowStatus, FlowTrace, Record, Rule};

use crate::helpers::*;

/// The one flow of a trace.
fn one(topology: &Topology, envs: &[&Envelope], now: Option<Timestamp>) -> FlowTrace {
    let t = trace(Some(topology), &records(envs), now);
    assert_eq!(t.kept().len(), 1, "one flow");
    t.kept()[0].clone()
}

/// (rule, service, event type) of each finding.
fn sites(flow: &FlowTrace) -> Vec<(Rule, &str, &str)> {
    flow.findings
        .iter()
        .map(|f| (f.rule, f.service.as_str(), f.event_type.as_str()))
        .collect()
}

#[test]
fn a_reaction_acked_without_its_emission_is_owed_until_its_bound_passes() {
    let h = Hand::default();
    let topology = order_fulfillment();
    let placed = h.start("OrderPlaced", "checkout", 0);
    // payment acked at once; its verdict comes later (a provider's callback).
    let receipt = h.receipt("payment", &placed, Outcome::Acked, &[], 1, 2);
    let flow = one(&topology, &[&placed, &receipt], Some(h.at(4_000)));
    assert_eq!(flow.status, FlowStatus::InProgress);
    assert!(flow.findings.is_empty(), "{:#?}", flow.findings);
    assert_eq!(flow.owed.len(), 1);
    assert_eq!(flow.owed[0].service, "payment");
    assert_eq!(flow.owed[0].deadline, Some(h.at(5_000)));

    // The callback came, 4 s after the ack: nothing wrong at all.
    let failed = h.after(&placed, "PaymentFailed", "payment", 4_000);
    let cancelled = h.after(&failed, "OrderCancelled", "checkout", 4_010);
    let told = h.receipt("notifications", &cancelled, Outcome::Acked, &[], 4_011, 1);
    let flow = one(
        &topology,
        &[&placed, &receipt, &failed, &cancelled, &told],
        Some(h.at(120_000)),
    );
    assert_eq!(flow.status, FlowStatus::Completed);
    assert!(flow.findings.is_empty(), "{:#?}", flow.findings);

    // It never came: once payment's 5 s have passed, payment is at fault, alone.
    let flow = one(&topology, &[&placed, &receipt], Some(h.at(5_001)));
    assert_eq!(flow.status, FlowStatus::Failed);
    assert_eq!(
        sites(&flow),
        [(Rule::MissingEmit, "payment", "OrderPlaced")]
    );
}

#[test]
fn a_day_long_reaction_is_in_progress_for_a_day() {
    let h = Hand::default();
    let topology = signup_kyc();
    let signup = h.start("SignupRequested", "web", 0);
    let created = h.after(&signup, "AccountCreated", "accounts", 10);
    let kyc = h.after(&signup, "KycRequested", "accounts", 10);
    let rejected = h.after(&kyc, "DocumentsRejected", "kyc", 1_000);
    let resubmit = h.after(&rejected, "ResubmissionRequested", "accounts", 1_100);
    // kyc acks the resubmission request; the customer uploads within 24 h.
    let receipt = h.receipt("kyc", &resubmit, Outcome::Acked, &[], 1_200, 5);
    let envs = [&signup, &created, &kyc, &rejected, &resubmit, &receipt];
    let hour = 3_600_000;
    let flow = one(&topology, &envs, Some(h.at(20 * hour)));
    assert_eq!(flow.status, FlowStatus::InProgress);
    assert!(flow.findings.is_empty(), "{:#?}", flow.findings);
    let flow = one(&topology, &envs, Some(h.at(25 * hour)));
    assert_eq!(
        sites(&flow),
        [(Rule::MissingEmit, "kyc", "ResubmissionRequested")]
    );
}

#[test]
fn an_announced_emission_that_never_arrives_is_stuck_at_the_reactions_bound() {
    let h = Hand::default();
    let topology = signup_kyc();
    let signup = h.start("SignupRequested", "web", 0);
    // accounts' receipt lists two events; neither is in the input.
    let created = h.after(&signup, "AccountCreated", "accounts", 10);
    let kyc = h.after(&signup, "KycRequested", "accounts", 10);
    let receipt = h.receipt("accounts", &signup, Outcome::Acked, &[&created, &kyc], 1, 9);
    let flow = one(&topology, &[&signup, &receipt], Some(h.at(1_000)));
    assert_eq!(flow.status, FlowStatus::InProgress);
    // Past accounts' 2 s, long before the flow's 72 h.
    let flow = one(&topology, &[&signup, &receipt], Some(h.at(2_011)));
    assert_eq!(flow.status, FlowStatus::Stuck);
    assert_eq!(sites(&flow), [(Rule::Stuck, "accounts", "SignupRequested")]);
    let f = &flow.findings[0];
    assert!(
        f.message.contains("'AccountCreated', 'KycRequested'"),
        "{}",
        f.message
    );
    assert!(f.message.contains("announced 2"), "{}", f.message);
}

#[test]
fn an_undeclared_event_type_names_its_emitter() {
    let h = Hand::default();
    let placed = h.start("OrderPlaced", "checkout", 0);
    let bogus = h.after(&placed, "FraudSuspected", "payment", 5);
    let flow = one(&order_fulfillment(), &[&placed, &bogus], Some(h.at(10)));
    let f = flow
        .findings
        .iter()
        .find(|f| f.rule == Rule::UnknownEvent)
        .unwrap();
    assert_eq!(f.service, "payment");
}

#[test]
fn a_flow_stopped_by_a_missing_emission_blames_no_one_upstream() {
    let h = Hand::default();
    let placed = h.start("OrderPlaced", "checkout", 0);
    let captured = h.after(&placed, "PaymentCaptured", "payment", 10);
    let reserved = h.after(&captured, "StockReserved", "inventory", 20);
    let receipt = h.receipt("shipping", &reserved, Outcome::Acked, &[], 21, 1);
    let flow = one(
        &order_fulfillment(),
        &[&placed, &captured, &reserved, &receipt],
        Some(h.at(120_000)),
    );
    assert_eq!(flow.status, FlowStatus::Failed);
    assert_eq!(
        sites(&flow),
        [(Rule::MissingEmit, "shipping", "StockReserved")]
    );
}

#[test]
fn a_late_flow_names_the_service_that_took_the_time() {
    let h = Hand::default();
    let placed = h.start("OrderPlaced", "checkout", 0);
    let captured = h.after(&placed, "PaymentCaptured", "payment", 1_000);
    let reserved = h.after(&captured, "StockReserved", "inventory", 2_000);
    // The flow took 61 s of its minute: 59 s of them waiting for shipping.
    let shipped = h.after(&reserved, "OrderShipped", "shipping", 61_000);
    let flow = one(
        &order_fulfillment(),
        &[&placed, &captured, &reserved, &shipped],
        Some(h.at(61_000)),
    );
    let late: Vec<&Finding> = flow
        .findings
        .iter()
        .filter(|f| f.rule == Rule::FlowLate)
        .collect();
    assert_eq!(late.len(), 1, "{:#?}", flow.findings);
    assert_eq!(late[0].service, "shipping");
    assert_eq!(late[0].event_type, "StockReserved");
    assert!(
        late[0]
            .message
            .contains("took 1m01s (within 1m00s); 59.00s in 'shipping'"),
        "{}",
        late[0].message
    );
}

#[test]
fn a_service_that_acks_one_event_twice_failed_its_idempotency() {
    let h = Hand::default();
    let placed = h.start("OrderPlaced", "checkout", 0);
    let failed = h.after(&placed, "PaymentFailed", "payment", 10);
    let cancelled = h.after(&failed, "OrderCancelled", "checkout", 20);
    let first = h.receipt("payment", &placed, Outcome::Acked, &[&failed], 1, 9);
    // Redelivered after a restart, handled again (two charges), same id.
    let again = h.receipt("payment", &placed, Outcome::Acked, &[], 500, 9);
    let told = h.receipt("notifications", &cancelled, Outcome::Acked, &[], 21, 1);
    let envs = [&placed, &failed, &cancelled, &first, &again, &told];
    let flow = one(&order_fulfillment(), &envs, Some(h.at(120_000)));
    assert_eq!(
        sites(&flow),
        [(Rule::HandledTwice, "payment", "OrderPlaced")]
    );
    assert_eq!(flow.findings[0].event_id.as_ref(), Some(&placed.id));
    // The same receipt delivered twice is one handling.
    let envs = [&placed, &failed, &cancelled, &first, &first, &told];
    let flow = one(&order_fulfillment(), &envs, Some(h.at(120_000)));
    assert!(flow.findings.is_empty(), "{:#?}", flow.findings);
}

#[test]
fn a_reaction_emitted_twice_under_new_ids_is_double_handling() {
    let h = Hand::default();
    let placed = h.start("OrderPlaced", "checkout", 0);
    let captured = h.after(&placed, "PaymentCaptured", "payment", 10);
    // inventory was killed after publishing, restarted, forgot, and did it again.
    let reserved = h.after(&captured, "StockReserved", "inventory", 20);
    let reserved_again = h.after(&captured, "StockReserved", "inventory", 900);
    let shipped = h.after(&reserved, "OrderShipped", "shipping", 30);
    let shipped_again = h.after(&reserved_again, "OrderShipped", "shipping", 910);
    let envs = [
        &placed,
        &captured,
        &reserved,
        &reserved_again,
        &shipped,
        &shipped_again,
    ];
    let flow = one(&order_fulfillment(), &envs, Some(h.at(120_000)));
    assert_eq!(
        sites(&flow),
        [(Rule::HandledTwice, "inventory", "PaymentCaptured")]
    );
    assert!(
        flow.findings[0].message.contains("'StockReserved' twice"),
        "{}",
        flow.findings[0].message
    );
}

#[test]
fn an_event_on_another_topic_than_its_types_blames_its_publisher_not_its_consumer() {
    let h = Hand::default();
    let placed = h.start("OrderPlaced", "checkout", 0);
    let mut captured = h.after(&placed, "PaymentCaptured", "payment", 10);
    captured.topic = "orders".into();
    let flow = one(
        &order_fulfillment(),
        &[&placed, &captured],
        Some(h.at(120_000)),
    );
    assert_eq!(
        sites(&flow),
        [(Rule::WrongTopic, "payment", "PaymentCaptured")]
    );
    assert!(
        flow.findings[0].message.contains("'orders'")
            && flow.findings[0].message.contains("'payments'"),
        "{}",
        flow.findings[0].message
    );
    assert_eq!(flow.status, FlowStatus::Failed);
    assert!(flow.owed.iter().all(|o| o.service != "inventory"));
}

#[test]
fn a_consumer_that_never_handled_an_event_is_found_once_its_bound_passes() {
    let h = Hand::default();
    let topology = order_fulfillment();
    // Flow 1: notifications handled its OrderCancelled (so it does write receipts).
    let p1 = h.start("OrderPlaced", "checkout", 0);
    let f1 = h.after(&p1, "PaymentFailed", "payment", 10);
    let c1 = h.after(&f1, "OrderCancelled", "checkout", 20);
    let r1 = [
        h.receipt("payment", &p1, Outcome::Acked, &[&f1], 1, 9),
        h.receipt("checkout", &f1, Outcome::Acked, &[&c1], 11, 9),
        h.receipt("notifications", &c1, Outcome::Acked, &[], 21, 1),
    ];
    // Flow 2: shipped, but notifications never handled OrderShipped.
    let p2 = h.start("OrderPlaced", "checkout", 100);
    let c2 = h.after(&p2, "PaymentCaptured", "payment", 110);
    let s2 = h.after(&c2, "StockReserved", "inventory", 120);
    let o2 = h.after(&s2, "OrderShipped", "shipping", 130);
    let r2 = [
        h.receipt("payment", &p2, Outcome::Acked, &[&c2], 101, 9),
        h.receipt("inventory", &c2, Outcome::Acked, &[&s2], 111, 9),
        h.receipt("shipping", &s2, Outcome::Acked, &[&o2], 121, 9),
    ];
    let mut envs = vec![&p1, &f1, &c1, &p2, &c2, &s2, &o2];
    envs.extend(r1.iter().chain(&r2));
    let judge = |now| {
        let t = trace(Some(&topology), &records(&envs), Some(now));
        t.kept()
            .iter()
            .find(|f| f.correlation_id == p2.id)
            .unwrap()
            .clone()
    };
    // Within the flow's minute: it may still come.
    let flow = judge(h.at(30_000));
    assert_eq!(flow.status, FlowStatus::Completed);
    assert!(flow.findings.is_empty(), "{:#?}", flow.findings);
    let flow = judge(h.at(61_000));
    assert_eq!(flow.status, FlowStatus::Completed);
    assert_eq!(
        sites(&flow),
        [(Rule::NeverHandled, "notifications", "OrderShipped")]
    );
    assert_eq!(flow.findings[0].event_id.as_ref(), Some(&o2.id));
}

#[test]
fn a_dead_letter_replayed_into_a_completed_flow_is_recovered() {
    let h = Hand::default();
    let placed = h.start("OrderPlaced", "checkout", 0);
    let captured = h.after(&placed, "PaymentCaptured", "payment", 10);
    let reserved = h.after(&captured, "StockReserved", "inventory", 20);
    let dead = h.receipt("shipping", &reserved, Outcome::DeadLettered, &[], 21, 50);
    // `choreo dlq replay` an hour later: the same event, handled.
    let replayed = reserved.clone();
    let shipped = h.after(&reserved, "OrderShipped", "shipping", 3_600_010);
    let acked = h.receipt(
        "shipping",
        &reserved,
        Outcome::Acked,
        &[&shipped],
        3_600_000,
        10,
    );
    let told = h.receipt("notifications", &shipped, Outcome::Acked, &[], 3_600_011, 1);
    let envs = [
        &placed, &captured, &reserved, &dead, &replayed, &shipped, &acked, &told,
    ];
    let t = trace(Some(&order_fulfillment()), &records(&envs), None);
    let flow = &t.kept()[0];
    assert_eq!(flow.status, FlowStatus::Recovered);
    // The hour the replay took is the dead letter's, not a late reaction's.
    assert_eq!(
        sites(flow),
        [(Rule::Recovered, "shipping", "StockReserved")]
    );
    // Its history keeps the dead letter.
    let handled: Vec<Outcome> = flow
        .events()
        .find(|e| e.id == reserved.id)
        .unwrap()
        .handled
        .iter()
        .map(|h| h.outcome)
        .collect();
    assert_eq!(handled, [Outcome::DeadLettered, Outcome::Acked]);
    let report = t.report();
    assert!(report.ok, "{}", report.summary());
    assert_eq!(report.flows.recovered, 1);
    // Not replayed (yet): failed.
    let t = trace(
        Some(&order_fulfillment()),
        &records(&[&placed, &captured, &reserved, &dead]),
        None,
    );
    assert_eq!(t.kept()[0].status, FlowStatus::Failed);
}

#[test]
fn a_record_no_service_can_read_is_one_finding_at_its_producer() {
    let h = Hand::default();
    let mut placed = h.start("OrderPlaced", "checkout", 0);
    placed.headers.insert(
        MALFORMED_HEADER,
        "header 'ce_time' is not RFC 3339: 'yesterday'",
    );
    // Every group subscribed to `orders` dead-letters it: payment (which
    // reacts to OrderPlaced) and notifications (which reads `orders` for
    // OrderCancelled).
    let reason = "malformed record: header 'ce_time' is not RFC 3339: 'yesterday'";
    let by_payment = h.dead_receipt("payment", &placed, reason, 1);
    let by_notifications = h.dead_receipt("notifications", &placed, reason, 2);
    let mut copies = Vec::new();
    for service in ["payment", "notifications"] {
        let mut copy = placed.clone();
        copy.topic = "orders.dlq".into();
        copy.headers
            .insert(choreo_core::dlq_headers::REASON, reason.to_owned());
        copy.headers
            .insert(choreo_core::dlq_headers::SERVICE, service.to_owned());
        copies.push(copy);
    }
    let flow = one(
        &order_fulfillment(),
        &[
            &placed,
            &by_payment,
            &by_notifications,
            &copies[0],
            &copies[1],
        ],
        Some(h.at(120_000)),
    );
    assert_eq!(
        sites(&flow),
        [(Rule::MalformedRecord, "checkout", "OrderPlaced")]
    );
    assert!(
        flow.findings[0].message.contains("ce_time"),
        "{}",
        flow.findings[0].message
    );
    assert_eq!(flow.status, FlowStatus::Failed);
}

/// Every flow's status and findings, independent of how they were found.
fn verdicts(records: &[Record], now: Timestamp) -> Vec<(String, FlowStatus, Vec<String>)> {
    let t = trace(Some(&order_fulfillment()), records, Some(now));
    let mut v: Vec<(String, FlowStatus, Vec<String>)> = t
        .kept()
        .iter()
        .map(|f| {
            let mut findings: Vec<String> = f
                .findings
                .iter()
                .map(|x| {
                    format!(
                        "{} {} {} {:?} {}",
                        x.rule, x.service, x.event_type, x.event_id, x.message
                    )
                })
                .collect();
            findings.sort();
            (f.correlation_id.to_string(), f.status, findings)
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn neither_the_order_of_the_records_nor_their_duplicates_change_the_verdict() {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    let h = Hand::default();
    let mut envs: Vec<Envelope> = Vec::new();
    // A shipped flow with receipts; one with both branches; one stuck; one
    // with two events at the same microsecond; one dead-lettered.
    let p = h.start("OrderPlaced", "checkout", 0);
    let c = h.after(&p, "PaymentCaptured", "payment", 10);
    let r = h.after(&c, "StockReserved", "inventory", 20);
    let s = h.after(&r, "OrderShipped", "shipping", 30);
    envs.extend([
        h.receipt("payment", &p, Outcome::Acked, &[&c], 1, 9),
        h.receipt("inventory", &c, Outcome::Acked, &[&r], 11, 9),
        h.receipt("shipping", &r, Outcome::Acked, &[&s], 21, 9),
        h.receipt("notifications", &s, Outcome::Acked, &[], 31, 1),
    ]);
    envs.extend([p, c, r, s]);
    let p = h.start("OrderPlaced", "checkout", 100);
    let a = h.after(&p, "PaymentCaptured", "payment", 110);
    let b = h.after(&p, "PaymentFailed", "payment", 110);
    let x = h.after(&b, "OrderCancelled", "checkout", 120);
    envs.extend([p, a, b, x]);
    let p = h.start("OrderPlaced", "checkout", 200);
    let c = h.after(&p, "PaymentCaptured", "payment", 210);
    envs.extend([p, c]);
    let p = h.start("OrderPlaced", "checkout", 300);
    let c = h.after(&p, "PaymentCaptured", "payment", 300);
    let o = h.after(&c, "OutOfStock", "inventory", 300);
    let f = h.after(&o, "PaymentRefunded", "payment", 300);
    let k = h.after(&f, "OrderCancelled", "checkout", 300);
    envs.extend([p, c, o, f, k]);
    let p = h.start("OrderPlaced", "checkout", 400);
    envs.push(h.receipt("payment", &p, Outcome::DeadLettered, &[], 401, 9));
    envs.push(p);

    let base: Vec<Record> = envs.iter().cloned().map(Record::new).collect();
    for now in [h.at(1_000), h.at(120_000)] {
        let expected = verdicts(&base, now);
        let mut reversed = base.clone();
        reversed.reverse();
        assert_eq!(verdicts(&reversed, now), expected, "reversed");
        let mut twice: Vec<Record> = base.iter().flat_map(|r| [r.clone(), r.clone()]).collect();
        assert_eq!(verdicts(&twice, now), expected, "every record twice");
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for round in 0..20 {
            twice.shuffle(&mut rng);
            assert_eq!(verdicts(&twice, now), expected, "shuffle {round}");
        }
    }
}

#[test]
fn a_producer_known_by_its_cloudevents_source_is_the_declared_service() {
    let text = std::fs::read_to_string(root().join("topologies/order-fulfillment.yaml"))
        .unwrap()
        .replace(
            "    emits: [OrderPlaced]",
            "    emits: [OrderPlaced]\n    sources: [\"https://shop.example.com/checkout\"]",
        );
    let topology = Topology::parse(&text, "order-fulfillment.yaml").unwrap();
    let h = Hand::default();
    let placed = h.start("OrderPlaced", "https://shop.example.com/checkout", 0);
    let bogus = h.start("OrderCancelled", "https://shop.example.com/checkout", 5);
    let t = trace(
        Some(&topology),
        &records(&[&placed, &bogus]),
        Some(h.at(10)),
    );
    let findings: Vec<Finding> = t.kept().iter().flat_map(|f| f.findings.clone()).collect();
    assert!(
        findings.iter().all(|f| f.rule != Rule::UnknownService),
        "{findings:#?}"
    );
    // A finding about the foreign producer names the declared service.
    let undeclared = findings
        .iter()
        .find(|f| f.rule == Rule::UndeclaredEmit)
        .unwrap();
    assert_eq!(undeclared.service, "checkout");
}

#[test]
fn a_record_a_service_ignored_is_not_a_consumption() {
    let h = Hand::default();
    let placed = h.start("OrderPlaced", "checkout", 0);
    let failed = h.after(&placed, "PaymentFailed", "payment", 10);
    let cancelled = h.after(&failed, "OrderCancelled", "checkout", 20);
    // notifications reads `orders` for OrderCancelled; OrderPlaced it routes
    // nowhere, and says so with an `ignored` receipt.
    let mut ignored = h.receipt("notifications", &placed, Outcome::Acked, &[], 1, 0);
    let text = String::from_utf8(ignored.data.to_vec()).unwrap();
    ignored.data = text
        .replace("\"outcome\":\"acked\"", "\"outcome\":\"ignored\"")
        .into_bytes()
        .into();
    let told = h.receipt("notifications", &cancelled, Outcome::Acked, &[], 21, 1);
    let t = trace(
        Some(&order_fulfillment()),
        &records(&[&placed, &failed, &cancelled, &ignored, &told]),
        Some(h.at(120_000)),
    );
    let flow = &t.kept()[0];
    assert!(flow.findings.is_empty(), "{:#?}", flow.findings);
    assert_eq!(flow.status, FlowStatus::Completed);
    let report = t.report();
    assert_eq!(report.input.ignored, 1);
    assert_eq!(report.input.bad_receipts, 0);
}
