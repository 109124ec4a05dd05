//! Restoring a tracer from replayed records: what a consumer-group member
//! does with a partition it is given. A tracer that replays what its
//! predecessor read and is told the predecessor's clock says, from then on,
//! exactly what the predecessor would have said, and nothing it said already.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use crate::helpers::*;
use choreo_core::Envelope;
use choreo_trace::{FlowWriter, Horizon, Record, Tracer, TracerConfig};

/// A writer whose bytes the test reads back.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Shared {
    /// The flows' lines so far, by correlation id: (status, rule codes, before_horizon).
    fn verdicts(&self) -> BTreeMap<String, (String, Vec<String>, bool)> {
        let bytes = self.0.lock().unwrap().clone();
        let mut out = BTreeMap::new();
        for line in String::from_utf8(bytes).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let rules = v["findings"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["rule"].as_str().unwrap().to_owned())
                .collect();
            let id = v["correlation_id"].as_str().unwrap().to_owned();
            let before = out.insert(
                id.clone(),
                (
                    v["status"].as_str().unwrap().to_owned(),
                    rules,
                    v["before_horizon"] == true,
                ),
            );
            assert!(before.is_none(), "flow {id} judged twice");
        }
        out
    }
}

fn live_tracer() -> (Tracer, Shared) {
    let out = Shared::default();
    let mut t = Tracer::new(TracerConfig::live(), Some(&order_fulfillment()));
    // Flushed after each flow's line, so the test sees every line at once.
    t.export_flows(FlowWriter::new(out.clone()));
    (t, out)
}

/// Records on partition 0 at increasing offsets.
fn on_partition(envs: Vec<Envelope>, partition: u32) -> Vec<Record> {
    envs.into_iter()
        .enumerate()
        .map(|(i, e)| Record::new(e).at(partition, i as u64))
        .collect()
}

/// A run: A done long before the checkpoint, B done just before it (not
/// settled), C stuck before it, D in progress across it.
fn run(h: &Hand) -> (Vec<Envelope>, Vec<Envelope>) {
    let a = happy(h, 0);
    let c = h.start("OrderPlaced", "checkout", 1_000); // payment never answers: stuck at 6 s
    let b = happy(h, 8_000);
    let d_placed = h.start("OrderPlaced", "checkout", 9_000);
    let d_paid = h.after(&d_placed, "PaymentCaptured", "payment", 11_000);
    let d_reserved = h.after(&d_paid, "StockReserved", "inventory", 12_000);
    let d_shipped = h.after(&d_reserved, "OrderShipped", "shipping", 13_000);
    let mut before = a;
    before.push(c);
    before.extend(b);
    before.push(d_placed);
    (before, vec![d_paid, d_reserved, d_shipped])
}

fn happy(h: &Hand, at_ms: i64) -> Vec<Envelope> {
    let placed = h.start("OrderPlaced", "checkout", at_ms);
    let captured = h.after(&placed, "PaymentCaptured", "payment", at_ms + 10);
    let reserved = h.after(&captured, "StockReserved", "inventory", at_ms + 20);
    let shipped = h.after(&reserved, "OrderShipped", "shipping", at_ms + 30);
    vec![placed, captured, reserved, shipped]
}

/// Ticks every second from `from_s` to `to_s` (inclusive), ingesting each
/// record once its time has come.
fn live(t: &mut Tracer, h: &Hand, records: &[Record], from_s: i64, to_s: i64) {
    let mut i = 0;
    for s in from_s..=to_s {
        let now = h.at(s * 1000);
        while i < records.len() && records[i].envelope.time <= now {
            t.ingest(&records[i]);
            i += 1;
        }
        t.tick(now);
    }
}

#[test]
fn a_restored_tracer_says_what_its_predecessor_would_have_and_nothing_it_said() {
    let h = Hand::default();
    let (before, after) = run(&h);
    let before = on_partition(before, 0);
    let after = on_partition(after, 0);

    // The tracer that never stops.
    let (mut one, one_out) = live_tracer();
    live(&mut one, &h, &before, 0, 10);
    let said_by_10 = one_out.verdicts();
    live(&mut one, &h, &after, 11, 40);
    let whole = one_out.verdicts();

    // Its predecessor said these by its checkpoint at 10 s, then crashed.
    assert_eq!(said_by_10.len(), 2, "A settled and C stuck: {said_by_10:?}");
    // The successor replays what the predecessor read, then is told its clock.
    let (mut two, two_out) = live_tracer();
    for r in &before {
        two.ingest_replayed(r);
    }
    assert_eq!(
        two.report().input.records,
        0,
        "replayed records are not counted again"
    );
    let restored = two.restored(h.at(12_000), |p| {
        assert_eq!(p, 0);
        Horizon {
            clock: Some(h.at(10_000)),
            cut: false,
        }
    });
    assert_eq!(
        (restored.adopted, restored.judged_before),
        (2, 2),
        "{restored:?}"
    );
    assert_eq!(restored.before_horizon, 0);
    live(&mut two, &h, &after, 11, 40);
    let said_after = two_out.verdicts();

    let mut union = said_by_10.clone();
    for (id, v) in &said_after {
        assert!(!said_by_10.contains_key(id), "flow {id} said twice");
        union.insert(id.clone(), v.clone());
    }
    assert_eq!(
        union, whole,
        "together they say what the one that never stopped says"
    );
    assert_eq!(
        two.report().flows.started,
        2,
        "the adopted flows start here"
    );
    // A record of a flow the predecessor judged is late, as it was for it.
    let c_late = h.after(&before[4].envelope, "PaymentCaptured", "payment", 41_000);
    two.ingest(&Record::new(c_late).at(0, 99));
    assert_eq!(two.report().input.late, 1);
}

#[test]
fn a_flow_older_than_the_look_back_is_marked_before_the_horizon_not_orphaned() {
    let h = Hand::default();
    let placed = h.start("OrderPlaced", "checkout", 0);
    let paid = h.after(&placed, "PaymentCaptured", "payment", 60_000);
    let reserved = h.after(&paid, "StockReserved", "inventory", 61_000);
    let shipped = h.after(&reserved, "OrderShipped", "shipping", 62_000);
    let (mut t, out) = live_tracer();
    // The look-back reached back to the payment, not to the order.
    t.ingest_replayed(&Record::new(paid).at(0, 1));
    let restored = t.restored(h.at(60_500), |_| Horizon {
        clock: Some(h.at(60_500)),
        cut: true,
    });
    assert_eq!((restored.adopted, restored.before_horizon), (1, 1));
    t.ingest(&Record::new(reserved).at(0, 2));
    t.ingest(&Record::new(shipped).at(0, 3));
    t.tick(h.at(70_000));
    let verdicts = out.verdicts();
    let (status, rules, before_horizon) = verdicts.values().next().unwrap();
    assert!(before_horizon, "{verdicts:?}");
    assert!(!rules.contains(&"orphan".to_owned()), "{rules:?}");
    assert_eq!(status, "completed");
    assert_eq!(t.report().input.orphans, 0);
    assert_eq!(t.report().input.before_horizon, 1);
}

#[test]
fn flows_of_a_partition_given_away_are_handed_over_unjudged() {
    let h = Hand::default();
    let (mut t, out) = live_tracer();
    for (i, e) in happy(&h, 0).into_iter().enumerate() {
        t.ingest(&Record::new(e).at(1, i as u64));
    }
    t.ingest(&Record::new(h.start("OrderPlaced", "checkout", 0)).at(0, 0));
    assert_eq!(t.hand_over(|p| p == 1), 1);
    assert_eq!(t.flows_in_flight(), 1);
    assert_eq!(t.records_in_flight(), 1);
    t.tick(h.at(20_000));
    let verdicts = out.verdicts();
    assert_eq!(verdicts.len(), 1, "only partition 0's flow is judged here");
    assert_eq!(t.report().input.handed_over, 1);
}

#[test]
fn a_restore_never_holds_more_than_the_caps() {
    let h = Hand::default();
    let mut config = TracerConfig::live();
    config.max_flows = 10;
    let mut t = Tracer::new(config, Some(&order_fulfillment()));
    let out = Shared::default();
    t.export_flows(FlowWriter::new(out.clone()));
    for i in 0..50 {
        t.ingest_replayed(&Record::new(h.start("OrderPlaced", "checkout", i)).at(0, i as u64));
        assert!(t.flows_in_flight() <= 10);
    }
    let restored = t.restored(h.at(100), |_| Horizon::default());
    assert_eq!(restored.adopted, 10, "the newest ten");
    assert!(
        out.verdicts().is_empty(),
        "flows dropped while restoring are not judged"
    );
    assert_eq!(
        t.report().input.evicted_flow_cap,
        0,
        "nor counted as this tracer's evictions"
    );
}
