//! What the live tracer holds in memory per event in flight, and that its
//! caps stop the growth: measured from the process's resident memory, so
//! run alone (`cargo test --release -p choreo-trace --test it -- --ignored
//! --test-threads=1 memory::`); the figures are in docs/tracing.md.

use crate::helpers::*;
use choreo_trace::{Record, Tracer, TracerConfig};

/// Resident memory of this process, bytes (Linux).
fn rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Ingests `flows` order flows (four events each: placed, captured,
/// reserved, shipped — a shipped flow is settled only by a tick, and none
/// comes), the `n`th starting at `first + n` ms.
fn ingest(t: &mut Tracer, h: &Hand, first: i64, flows: i64) {
    for i in first..first + flows {
        let placed = h.start("OrderPlaced", "checkout", i);
        let captured = h.after(&placed, "PaymentCaptured", "payment", i + 1);
        let reserved = h.after(&captured, "StockReserved", "inventory", i + 2);
        let shipped = h.after(&reserved, "OrderShipped", "shipping", i + 3);
        for (offset, e) in [placed, captured, reserved, shipped]
            .into_iter()
            .enumerate()
        {
            t.ingest(&Record::new(e).at(0, (i * 4) as u64 + offset as u64));
        }
    }
}

#[test]
#[ignore]
fn a_live_tracer_holds_under_300_bytes_per_event_in_flight_and_stops_growing_at_its_caps() {
    let h = Hand::default();
    let mut config = TracerConfig::live();
    config.max_flows = 100_000;
    let mut t = Tracer::new(config, Some(&order_fulfillment()));
    // Symbols and the first allocations out of the way.
    ingest(&mut t, &h, 0, 1_000);
    let Some(before) = rss() else {
        eprintln!("no /proc/self/statm: nothing measured");
        return;
    };
    ingest(&mut t, &h, 1_000, 99_000);
    let held = rss().unwrap();
    let events = t.records_in_flight() as f64;
    assert_eq!(t.flows_in_flight(), 100_000);
    let per_event = (held.saturating_sub(before)) as f64 / (events - 4_000.0);
    println!(
        "live tracer: {per_event:.0} bytes per event in flight ({} events in {} flows, {:.1} MiB resident)",
        t.records_in_flight(),
        t.flows_in_flight(),
        held as f64 / (1 << 20) as f64
    );
    assert!(
        per_event <= 300.0,
        "{per_event:.0} bytes per event in flight, over the 300 the docs promise"
    );

    // Four times as many flows again: the flow cap evicts the oldest, so what
    // is held stays what it was (plus the evicted flows' remembered ids,
    // `remember_evicted`, 100 000 by default).
    ingest(&mut t, &h, 100_000, 400_000);
    let capped = rss().unwrap();
    assert_eq!(t.flows_in_flight(), 100_000);
    assert_eq!(t.report().input.evicted_flow_cap, 400_000);
    let growth = capped.saturating_sub(held) as f64 / held.saturating_sub(before) as f64;
    println!(
        "past the flow cap: 400 000 flows more, {:.1} MiB resident ({:+.0} % of what the flows in flight took)",
        capped as f64 / (1 << 20) as f64,
        growth * 100.0
    );
    assert!(
        growth < 0.5,
        "memory kept growing past the caps: {held} -> {capped} bytes"
    );
}
