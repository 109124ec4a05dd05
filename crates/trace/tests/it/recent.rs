//! What the tracer holds for a viewer: the newest finished flows (in a batch
//! finished on two threads too) and a search window over the newest events,
//! both within their caps, both off by default.

use choreo_core::{Envelope, EventId, Timestamp};
use choreo_trace::{FlowStatus, Query, Record, Tracer, TracerConfig};

/// `n` one-event flows, in time order, with `order_id` = their index.
fn orders(n: u64) -> Vec<Envelope> {
    let base = Timestamp::now().as_micros();
    (0..n)
        .map(|i| {
            let mut e = Envelope::new("OrderPlaced", "orders", format!(r#"{{"order_id":{i}}}"#))
                .with_source("checkout");
            e.time = Timestamp::from_micros(base + i as i64);
            e
        })
        .collect()
}

#[test]
fn a_batch_holds_the_newest_finished_flows_on_one_thread_and_on_two() {
    for (n, parallel) in [(100, false), (5000, true)] {
        let mut config = TracerConfig::batch();
        config.recent_flows = 3;
        config.parallel = parallel;
        let mut tracer = Tracer::new(config, None);
        let events = orders(n);
        let newest: Vec<EventId> = events[events.len() - 3..]
            .iter()
            .map(|e| e.correlation_id.clone())
            .collect();
        for e in events {
            tracer.ingest(&Record::new(e));
        }
        tracer.finish(None);
        let held: Vec<EventId> = tracer.recent().map(|f| f.correlation_id.clone()).collect();
        assert_eq!(held, newest, "{n} flows, parallel {parallel}");
        assert!(tracer.recent().all(|f| f.status == FlowStatus::Completed));
        // And each is a flow the tracer can give whole.
        assert!(tracer.flow(&newest[0]).is_some());
    }
}

#[test]
fn nothing_is_held_by_default() {
    let mut tracer = Tracer::new(TracerConfig::batch(), None);
    let events = orders(10);
    let first = events[0].correlation_id.clone();
    for e in events {
        tracer.ingest(&Record::new(e));
    }
    tracer.finish(None);
    assert_eq!(tracer.recent().count(), 0);
    assert!(tracer.flow(&first).is_none());
    assert!(
        tracer
            .find(&Query::parse("order_id=3").unwrap(), 10)
            .is_empty(),
        "no payload is held without a search window"
    );
}

#[test]
fn live_flows_are_found_in_flight_and_after_they_are_folded() {
    let mut config = TracerConfig::live();
    config.recent_flows = 10;
    config.search_bytes = 1 << 20;
    let mut tracer = Tracer::new(config, None);
    let events = orders(5);
    let ids: Vec<EventId> = events.iter().map(|e| e.correlation_id.clone()).collect();
    for e in events {
        tracer.ingest(&Record::new(e));
    }
    let q = Query::parse("order_id=3").unwrap();
    assert_eq!(tracer.find(&q, 10), vec![ids[3].clone()], "in flight");
    assert_eq!(
        tracer.in_flight(2).len(),
        2,
        "a page of the flows in flight"
    );
    assert_eq!(tracer.in_flight(100).len(), 5);
    // Without a topology, quiet flows settle and are folded.
    tracer.tick(Timestamp::from_micros(
        Timestamp::now().as_micros() + 60_000_000,
    ));
    assert_eq!(tracer.flows_in_flight(), 0);
    assert_eq!(tracer.recent().count(), 5);
    assert_eq!(tracer.find(&q, 10), vec![ids[3].clone()], "folded");
    let by_id = Query::parse(&ids[1].to_string()).unwrap();
    assert_eq!(tracer.find(&by_id, 10), vec![ids[1].clone()]);
    assert_eq!(
        tracer.flow(&ids[3]).map(|f| f.correlation_id),
        Some(ids[3].clone())
    );
}
