//! Live mode: flows folded once settled, stuck flows reported and evicted, caps that bound memory.

use std::time::Duration;

use crate::helpers::*;
use choreo_core::Envelope;
use choreo_trace::{FlowStatus, Record, Tracer, TracerConfig};

fn live(config: impl FnOnce(&mut TracerConfig)) -> Tracer {
    let mut c = TracerConfig::live();
    config(&mut c);
    Tracer::new(c, Some(&order_fulfillment()))
}

fn happy(h: &Hand, at_ms: i64) -> Vec<Envelope> {
    let placed = h.start("OrderPlaced", "checkout", at_ms);
    let captured = h.after(&placed, "PaymentCaptured", "payment", at_ms + 10);
    let reserved = h.after(&captured, "StockReserved", "inventory", at_ms + 20);
    let shipped = h.after(&reserved, "OrderShipped", "shipping", at_ms + 30);
    vec![placed, captured, reserved, shipped]
}

#[test]
fn completed_flows_are_folded_once_settled_and_dropped() {
    let h = Hand::default();
    let mut t = live(|_| {});
    for e in happy(&h, 0) {
        t.ingest(&Record::new(e));
    }
    t.tick(h.at(1_000));
    assert_eq!(
        t.flows_in_flight(),
        1,
        "not settled yet: late receipts may still come"
    );
    t.tick(h.at(6_000));
    assert_eq!(t.flows_in_flight(), 0);
    assert_eq!(t.records_in_flight(), 0);
    let r = t.report();
    assert_eq!(r.flows.completed, 1);
    assert_eq!(r.edges.len(), 3, "{:?}", r.edges);
}

#[test]
fn stuck_flows_are_reported_evicted_and_their_late_records_counted() {
    let h = Hand::default();
    let mut t = live(|_| {});
    let placed = h.start("OrderPlaced", "checkout", 0);
    t.ingest(&Record::new(placed.clone()));
    t.tick(h.at(1_000));
    assert_eq!(t.flows_in_flight(), 1);
    assert_eq!(t.report().flows.in_flight, 1);
    t.tick(h.at(6_000)); // payment's 5 s are over
    assert_eq!(t.flows_in_flight(), 0);
    let r = t.report();
    assert_eq!(r.flows.stuck, 1);
    assert_eq!(r.input.evicted_stuck, 1);
    assert_eq!(r.listed[0].status, FlowStatus::Stuck);
    assert_eq!(r.listed[0].owed[0].service, "payment");
    // The payment finally comes: counted late, no new flow.
    t.ingest(&Record::new(h.after(
        &placed,
        "PaymentCaptured",
        "payment",
        7_000,
    )));
    assert_eq!(t.flows_in_flight(), 0);
    assert_eq!(t.report().input.late, 1);
    assert_eq!(t.report().flows.started, 1);
}

#[test]
fn in_progress_flows_wait_for_their_deadline() {
    let h = Hand::default();
    let mut t = live(|_| {});
    let placed = h.start("OrderPlaced", "checkout", 0);
    t.ingest(&Record::new(placed.clone()));
    t.tick(h.at(4_000));
    assert_eq!(t.flows_in_flight(), 1);
    t.ingest(&Record::new(h.after(
        &placed,
        "PaymentCaptured",
        "payment",
        4_500,
    )));
    // Inventory now has 3 s from 4.5 s.
    t.tick(h.at(7_000));
    assert_eq!(t.flows_in_flight(), 1);
    t.tick(h.at(7_600));
    assert_eq!(t.flows_in_flight(), 0);
    assert_eq!(t.report().flows.stuck, 1);
}

#[test]
fn the_flow_cap_evicts_the_oldest_flows() {
    let h = Hand::default();
    let mut t = live(|c| c.max_flows = 3);
    let mut starts = Vec::new();
    for i in 0..5 {
        let e = h.start("OrderPlaced", "checkout", i);
        starts.push(e.clone());
        t.ingest(&Record::new(e));
    }
    assert_eq!(t.flows_in_flight(), 3);
    let r = t.report();
    assert_eq!(r.input.evicted_flow_cap, 2);
    assert_eq!(r.flows.evicted, 2);
    // The evicted ones were the first two: their records are now late.
    t.ingest(&Record::new(h.after(
        &starts[0],
        "PaymentFailed",
        "payment",
        10,
    )));
    assert_eq!(t.report().input.late, 1);
    t.ingest(&Record::new(h.after(
        &starts[4],
        "PaymentFailed",
        "payment",
        10,
    )));
    assert_eq!(t.report().input.late, 1);
    assert_eq!(t.flows_in_flight(), 3);
}

#[test]
fn the_record_caps_bound_memory() {
    let h = Hand::default();
    let mut t = live(|c| {
        c.max_records = 10;
        c.max_records_per_flow = 6;
    });
    for i in 0..10 {
        for e in happy(&h, i * 100) {
            t.ingest(&Record::new(e));
            assert!(t.records_in_flight() <= 10);
        }
    }
    let r = t.report();
    assert!(r.input.evicted_record_cap >= 7, "{:?}", r.input);
    // A runaway flow: one event type repeated past the per-flow cap.
    let placed = h.start("OrderPlaced", "checkout", 5_000);
    t.ingest(&Record::new(placed.clone()));
    let mut cause = placed;
    for i in 0..7 {
        let next = h.after(&cause, "PaymentCaptured", "payment", 5_001 + i);
        t.ingest(&Record::new(next.clone()));
        cause = next;
    }
    assert_eq!(t.report().input.evicted_flow_record_cap, 1);
}

#[test]
fn idle_flows_are_evicted() {
    let t_cfg = |c: &mut TracerConfig| c.idle = Duration::from_secs(60);
    let h = Hand::default();
    let mut t = Tracer::new(
        {
            let mut c = TracerConfig::live();
            t_cfg(&mut c);
            c
        },
        None,
    );
    // Without a topology nothing is owed or due: only the idle timeout ends a
    // flow that keeps no end in sight — here, settle does it first.
    t.ingest(&Record::new(h.start("X", "s", 0)));
    t.tick(h.at(10_000));
    assert_eq!(t.flows_in_flight(), 0);
    assert_eq!(t.report().flows.completed, 1);

    let mut t = live(|c| {
        c.idle = Duration::from_secs(60);
        c.settle = Duration::from_secs(600);
    });
    let signup = h.start("OrderPlaced", "checkout", 0);
    let mut r = Record::new(signup);
    r.envelope.event_type = "OrderPlaced".into();
    t.ingest(&r);
    t.tick(h.at(61_000));
    assert_eq!(t.flows_in_flight(), 0);
    assert_eq!(
        t.report().input.evicted_idle + t.report().input.evicted_stuck,
        1
    );
}

#[test]
fn memory_stays_bounded_over_a_long_stream() {
    let h = Hand::default();
    let mut t = live(|c| c.settle = Duration::from_secs(1));
    let mut peak = 0;
    for i in 0..2_000i64 {
        let at = i * 50; // a flow every 50 ms, each lasting 30 ms
        for e in happy(&h, at) {
            t.ingest(&Record::new(e));
        }
        if i % 20 == 0 {
            t.tick(h.at(at));
        }
        peak = peak.max(t.flows_in_flight());
    }
    t.tick(h.at(2_000 * 50 + 5_000));
    assert!(peak <= 60, "peak {peak} flows in flight");
    assert_eq!(t.flows_in_flight(), 0);
    assert_eq!(t.report().flows.completed, 2_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tapped_bus_feeds_a_live_tracer() {
    let run = run_saga(&[0, 0, 1], 4 + 4 + 3).await;
    let mut t = live(|_| {});
    for r in &run.records {
        t.ingest(r);
    }
    let latest = t.latest().unwrap();
    t.tick(latest.saturating_add(Duration::from_secs(10)));
    let r = t.report();
    assert_eq!(r.flows.completed, 3, "{}", r.summary());
    assert_eq!(r.flows.in_flight, 0);
    assert!(r.ok, "{}", r.summary());
}

#[test]
fn a_new_event_brings_its_earlier_deadline_forward() {
    let h = Hand::default();
    let mut t = live(|_| {});
    let placed = h.start("OrderPlaced", "checkout", 0);
    t.ingest(&Record::new(placed.clone()));
    t.tick(h.at(500)); // next deadline: payment's, at 5 s
    t.ingest(&Record::new(h.after(
        &placed,
        "PaymentCaptured",
        "payment",
        1_000,
    )));
    // inventory's 3 s run out at 4 s, before payment's old deadline
    t.tick(h.at(4_500));
    assert_eq!(t.flows_in_flight(), 0);
    let r = t.report();
    assert_eq!(r.flows.stuck, 1);
    assert_eq!(r.listed[0].owed[0].service, "inventory");
}

#[test]
fn a_completed_flow_waits_for_its_sinks_receipt_until_its_bound() {
    use choreo_core::Outcome;
    let h = Hand::default();
    let mut t = live(|_| {});
    let envs = happy(&h, 0);
    let receipts = [
        h.receipt("payment", &envs[0], Outcome::Acked, &[&envs[1]], 1, 9),
        h.receipt("inventory", &envs[1], Outcome::Acked, &[&envs[2]], 11, 9),
        h.receipt("shipping", &envs[2], Outcome::Acked, &[&envs[3]], 21, 9),
    ];
    for e in envs.iter().chain(&receipts) {
        t.ingest(&Record::new(e.clone()));
    }
    // Settled, but notifications has until the flow's minute to handle OrderShipped.
    t.tick(h.at(1_000));
    t.tick(h.at(10_000));
    assert_eq!(t.flows_in_flight(), 1);
    assert!(t.report().findings.is_empty());
    t.tick(h.at(60_002));
    assert_eq!(t.flows_in_flight(), 0);
    let r = t.report();
    assert_eq!(r.flows.completed, 1);
    assert_eq!(r.findings.len(), 1, "{:#?}", r.findings);
    assert_eq!(r.findings[0].rule, choreo_trace::Rule::NeverHandled);
    assert_eq!(r.findings[0].by[0].service, "notifications");
}

#[test]
fn an_asynchronous_reaction_is_waited_for_live() {
    use choreo_core::Outcome;
    let h = Hand::default();
    let mut t = live(|_| {});
    let placed = h.start("OrderPlaced", "checkout", 0);
    t.ingest(&Record::new(placed.clone()));
    t.ingest(&Record::new(h.receipt(
        "payment",
        &placed,
        Outcome::Acked,
        &[],
        1,
        2,
    )));
    t.tick(h.at(1_000));
    t.tick(h.at(4_000));
    assert_eq!(t.flows_in_flight(), 1, "payment has until 5 s");
    // The provider's callback, published with publish_caused_by.
    let failed = h.after(&placed, "PaymentFailed", "payment", 4_500);
    let cancelled = h.after(&failed, "OrderCancelled", "checkout", 4_510);
    t.ingest(&Record::new(failed));
    t.ingest(&Record::new(cancelled.clone()));
    t.ingest(&Record::new(h.receipt(
        "notifications",
        &cancelled,
        Outcome::Acked,
        &[],
        4_511,
        1,
    )));
    t.tick(h.at(5_001));
    t.tick(h.at(10_000));
    assert_eq!(t.flows_in_flight(), 0);
    let r = t.report();
    assert_eq!(r.flows.completed, 1);
    assert!(r.findings.is_empty(), "{:#?}", r.findings);
}
