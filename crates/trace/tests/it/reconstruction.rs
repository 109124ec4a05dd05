//! Flows rebuilt from what real services on the in-process bus publish.

use crate::helpers::*;
use choreo_core::Outcome;
use choreo_trace::capture::{Format, Reader, Writer};
use choreo_trace::{FlowStatus, Record, Rule};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_flows_are_rebuilt_with_receipts_and_statuses() {
    // happy, payment fails, out of stock (refund), shipping dead-letters, both branches
    let run = run_saga(&[0, 1, 2, 3, 4], 4 + 3 + 5 + 3 + 6).await;
    let topology = order_fulfillment();
    let tracer = trace(Some(&topology), &run.records, None);
    let report = tracer.report();
    assert_eq!(report.input.receipts, 21, "{:?}", report.input);
    assert_eq!(report.input.dead_letters, 1);
    assert_eq!(report.input.unattributed, 0);
    assert_eq!(report.flows.started, 5);
    let status = |i: usize| {
        tracer
            .kept()
            .iter()
            .find(|f| f.correlation_id == run.flows[i])
            .unwrap_or_else(|| panic!("flow {i} kept"))
            .clone()
    };
    let happy = status(0);
    assert_eq!(happy.status, FlowStatus::Completed, "{}", happy.timeline());
    assert!(happy.findings.is_empty(), "{}", happy.timeline());
    assert_eq!(happy.flow.as_deref(), Some("checkout"));
    let types: Vec<&str> = happy.events().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "OrderPlaced",
            "PaymentCaptured",
            "StockReserved",
            "OrderShipped"
        ]
    );
    // Receipts are attached to the events they handled.
    let placed = happy.events().next().unwrap();
    assert_eq!(placed.handled.len(), 1);
    assert_eq!(placed.handled[0].service, "payment");
    assert_eq!(placed.handled[0].outcome, Outcome::Acked);
    assert_eq!(placed.handled[0].emitted, 1);
    assert!(placed.partition.is_some() && placed.offset.is_some());
    // A causal chain: each event's only child is the next.
    let roots = happy.roots();
    assert_eq!(roots.len(), 1);
    assert_eq!(happy.children(roots[0]).len(), 1);

    assert_eq!(status(1).status, FlowStatus::Completed);
    assert_eq!(status(2).status, FlowStatus::Completed);
    let dead = status(3);
    assert_eq!(dead.status, FlowStatus::Failed, "{}", dead.timeline());
    let f = dead
        .findings
        .iter()
        .find(|f| f.rule == Rule::DeadLettered)
        .unwrap();
    assert_eq!(f.service, "shipping");
    assert_eq!(f.event_type, "StockReserved");
    // The count said once, though the runtime's reason carries it too.
    assert_eq!(
        f.message,
        "'shipping' dead-lettered 'StockReserved' after 2 attempts: handler failed: carrier API unavailable"
    );
    let both = status(4);
    assert!(
        both.findings
            .iter()
            .any(|f| f.rule == Rule::BothBranches && f.service == "payment")
    );

    // The service graph, from receipts: payment handled 5 OrderPlaced from checkout.
    let edge = report
        .edges
        .iter()
        .find(|e| {
            e.producer == "checkout" && e.event_type == "OrderPlaced" && e.consumer == "payment"
        })
        .unwrap();
    assert_eq!(edge.count, 5);
    assert_eq!(edge.inferred, 0);
    assert_eq!(edge.queue.count, 5);
    let shipping = report
        .edges
        .iter()
        .find(|e| e.event_type == "StockReserved" && e.consumer == "shipping")
        .unwrap();
    assert_eq!(shipping.failed, 1);
    // Timeline shows service, topic/partition/offset and outcome.
    let text = happy.timeline();
    assert!(
        text.contains("OrderPlaced by checkout on orders/"),
        "{text}"
    );
    assert!(text.contains("payment acked"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_file_traces_like_the_live_records() {
    let run = run_saga(&[0, 2, 3], 4 + 5 + 3).await;
    let topology = order_fulfillment();
    let direct = trace(Some(&topology), &run.records, None).report();
    for format in [Format::Avro, Format::JsonLines] {
        let mut w = Writer::new(Vec::new(), format).unwrap();
        for r in &run.records {
            w.write(r).unwrap();
        }
        let bytes = w.finish().unwrap();
        let back: Vec<Record> = Reader::from_read("run", std::io::Cursor::new(bytes))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(back.len(), run.records.len());
        for (a, b) in run.records.iter().zip(&back) {
            assert_eq!(a.envelope, b.envelope, "{format:?}");
            assert_eq!((a.partition, a.offset), (b.partition, b.offset));
        }
        let again = trace(Some(&topology), &back, None).report();
        assert_eq!(
            serde_json::to_value(&again).unwrap(),
            serde_json::to_value(&direct).unwrap(),
            "{format:?}"
        );
    }
}

#[test]
fn out_of_order_arrival_is_placed_in_causal_order() {
    let h = Hand::default();
    let placed = h.start("OrderPlaced", "checkout", 0);
    let captured = h.after(&placed, "PaymentCaptured", "payment", 10);
    let reserved = h.after(&captured, "StockReserved", "inventory", 20);
    let shipped = h.after(&reserved, "OrderShipped", "shipping", 30);
    let topology = order_fulfillment();
    // Effects before causes, receipts before their events.
    let shuffled = records(&[&shipped, &reserved, &placed, &captured]);
    let t = trace(Some(&topology), &shuffled, None);
    let flow = &t.kept()[0];
    assert_eq!(flow.status, FlowStatus::Completed);
    assert!(flow.findings.is_empty(), "{:?}", flow.findings);
    let order: Vec<&str> = flow.events().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        order,
        [
            "OrderPlaced",
            "PaymentCaptured",
            "StockReserved",
            "OrderShipped"
        ]
    );
    assert_eq!(flow.roots().len(), 1);
    let in_order = trace(
        Some(&topology),
        &records(&[&placed, &captured, &reserved, &shipped]),
        None,
    );
    assert_eq!(
        serde_json::to_value(t.report()).unwrap(),
        serde_json::to_value(in_order.report()).unwrap()
    );
}

#[test]
fn duplicates_collapse() {
    let h = Hand::default();
    let placed = h.start("OrderPlaced", "checkout", 0);
    let failed = h.after(&placed, "PaymentFailed", "payment", 10);
    let cancelled = h.after(&failed, "OrderCancelled", "checkout", 20);
    let topology = order_fulfillment();
    // At-least-once: every event delivered (and captured) twice, the second
    // copy with a position the first lacked.
    let mut recs = records(&[&placed, &failed, &placed, &cancelled, &failed, &cancelled]);
    recs[2] = recs[2].clone().at(3, 99);
    let t = trace(Some(&topology), &recs, None);
    let report = t.report();
    assert_eq!(report.input.duplicates, 3);
    assert_eq!(report.flows.started, 1);
    assert_eq!(report.flows.completed, 1);
    let flow = &t.kept()[0];
    assert_eq!(flow.graph.node_count(), 3);
    assert_eq!(flow.duplicates, 3);
    let first = flow.events().next().unwrap();
    assert_eq!((first.partition, first.offset), (Some(3), Some(99)));
    assert!(report.findings.is_empty(), "{:?}", report.findings);
}

#[test]
fn a_missing_cause_is_owed_until_its_reaction_s_bound_passes() {
    // A capture cut from a running system: StockReserved's partition was
    // read up to a later point than PaymentCaptured's, so the effect is in
    // the capture and its cause is not (yet).
    let h = Hand::default();
    let placed = h.start("OrderPlaced", "checkout", 0);
    let captured = h.after(&placed, "PaymentCaptured", "payment", 10);
    let reserved = h.after(&captured, "StockReserved", "inventory", 20);
    let input = records(&[&placed, &reserved]);
    let order = order_fulfillment();
    let within = |ms| {
        let t = trace(Some(&order), &input, Some(h.at(ms)));
        let r = t.report();
        (r.input.orphans, r.findings.len(), r.flows.in_progress)
    };
    assert_eq!(within(100), (0, 0, 1), "right after: still on its way");
    let (orphans, findings, _) = within(60_000);
    assert_eq!(
        (orphans, findings > 0),
        (1, true),
        "a minute later: an orphan"
    );
    // The cause arriving later in the input settles it.
    let all = records(&[&placed, &reserved, &captured]);
    let t = trace(Some(&order), &all, Some(h.at(60_000)));
    assert_eq!(t.report().input.orphans, 0);
}

#[test]
fn orphans_are_reported_not_fatal() {
    let h = Hand::default();
    let placed = h.start("OrderPlaced", "checkout", 0);
    let captured = h.after(&placed, "PaymentCaptured", "payment", 10);
    let reserved = h.after(&captured, "StockReserved", "inventory", 20);
    let shipped = h.after(&reserved, "OrderShipped", "shipping", 30);
    // PaymentCaptured was never captured: StockReserved's cause is unknown,
    // and a minute later it can no longer be on its way.
    let t = trace(
        Some(&order_fulfillment()),
        &records(&[&placed, &reserved, &shipped]),
        Some(h.at(60_000)),
    );
    let report = t.report();
    assert_eq!(report.input.orphans, 1);
    let flow = &t.kept()[0];
    let orphan = flow
        .findings
        .iter()
        .find(|f| f.rule == Rule::Orphan)
        .unwrap();
    assert_eq!(orphan.event_type, "StockReserved");
    assert_eq!(orphan.service, "inventory");
    assert_eq!(orphan.event_id.as_ref(), Some(&reserved.id));
    assert!(flow.events().any(|e| e.orphan && e.id == reserved.id));
    assert_eq!(flow.roots().len(), 2);
    assert!(flow.timeline().contains("orphan"));
}

#[test]
fn records_without_metadata_are_unattributed() {
    let h = Hand::default();
    let placed = h.start("OrderPlaced", "checkout", 0);
    let foreign = Record::unattributed(h.start("SomethingElse", "", 1));
    let mut no_type = Record::new(h.start("", "", 2));
    no_type.partition = Some(1);
    let mut bad_receipt = h.after(&placed, choreo_core::RECEIPT_TYPE, "payment", 3);
    bad_receipt.data = bytes::Bytes::from_static(b"not json");
    let recs = vec![
        Record::new(placed),
        foreign,
        no_type,
        Record::new(bad_receipt),
    ];
    let report = trace(Some(&order_fulfillment()), &recs, None).report();
    assert_eq!(report.input.records, 4);
    assert_eq!(report.input.unattributed, 3);
    assert_eq!(report.input.bad_receipts, 1);
    assert_eq!(report.flows.started, 1);
}

#[test]
fn a_large_batch_gives_the_same_report_on_one_thread_and_two() {
    let h = Hand::default();
    let mut recs = Vec::new();
    for i in 0..6_000i64 {
        let t = i * 3;
        let placed = h.start("OrderPlaced", "checkout", t);
        recs.push(Record::new(placed.clone()));
        match i % 7 {
            0 => {
                // both branches
                recs.push(Record::new(h.after(
                    &placed,
                    "PaymentCaptured",
                    "payment",
                    t + 1,
                )));
                recs.push(Record::new(h.after(
                    &placed,
                    "PaymentFailed",
                    "payment",
                    t + 1,
                )));
            }
            1 => {
                let r = h.receipt(
                    "payment",
                    &placed,
                    choreo_core::Outcome::DeadLettered,
                    &[],
                    t + 1,
                    2,
                );
                recs.push(Record::new(r));
            }
            2 => {} // in progress, or stuck near the start
            _ => {
                let failed = h.after(&placed, "PaymentFailed", "payment", t + 1);
                let cancelled = h.after(&failed, "OrderCancelled", "checkout", t + 2);
                recs.push(Record::new(failed));
                recs.push(Record::new(cancelled));
            }
        }
    }
    let topology = order_fulfillment();
    let run = |parallel: bool| {
        let mut config = choreo_trace::TracerConfig::batch();
        config.parallel = parallel;
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        struct W(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for W {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut t = choreo_trace::Tracer::new(config, Some(&topology));
        t.export_log(
            choreo_trace::LogWriter::new(W(log.clone()), choreo_trace::LogFormat::Csv).unwrap(),
        );
        for r in &recs {
            t.ingest(r);
        }
        t.finish(None);
        t.finish_log().unwrap().unwrap();
        let text = log.lock().unwrap().clone();
        (serde_json::to_value(t.report()).unwrap(), text)
    };
    let (one, log_one) = run(false);
    let (two, log_two) = run(true);
    assert_eq!(one, two);
    assert_eq!(log_one, log_two);
    assert_eq!(one["flows"]["started"], 6_000);
    assert_eq!(one["flows"]["failed"], 857);
    let both = one["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["rule"] == "both-branches")
        .unwrap();
    assert_eq!(both["count"], 858);
    assert_eq!(both["examples"].as_array().unwrap().len(), 5);
}

#[test]
fn a_flow_is_counted_under_its_real_name_whatever_arrives_first() {
    let t = choreo_topology::Topology::parse(
        "name: t\nevents:\n  A: {topic: a}\n  C: {topic: c}\n  B: {topic: b}\nservices:\n  s:\n    emits: [A, C]\n  r:\n    on:\n      A: {emit: [B]}\n      C: {emit: [B]}\nflows:\n  first: {starts_with: A, ends_with: [B]}\n  second: {starts_with: C, ends_with: [B]}\n",
        "t.yaml",
    )
    .unwrap();
    let h = Hand::default();
    let c = h.start("C", "s", 0);
    let b = h.after(&c, "B", "r", 5);
    // B arrives first: on its own it suggests the first flow.
    let tracer = trace(Some(&t), &records(&[&b, &c]), None);
    let report = tracer.report();
    assert_eq!(report.by_flow.len(), 1, "{:?}", report.by_flow);
    assert_eq!(report.by_flow[0].flow, "second");
    assert_eq!(report.by_flow[0].totals.started, 1);
    assert_eq!(report.by_flow[0].totals.completed, 1);
    assert_eq!(report.flows.started, 1);
}
