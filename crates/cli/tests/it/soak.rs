//! Soak: a million flows of the example saga through the in-process bus with
//! faults injected, traced live. Every flow is accounted for — completed, or
//! failed with each of its dead-lettered events in the dead-letter topic — and
//! the tracer's memory stays under its caps throughout (measured at every tick).
//!
//! Run in release (the test command does):
//!
//!     cargo test --release -p choreo-cli --test soak -- --ignored --nocapture
//!
//! `CHOREO_SOAK_FLOWS` sets the number of flows (default 1,000,000).

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use choreo_bus::{InProcessBus, Metrics};
use choreo_core::{SubscribeOptions, Timestamp, dlq_headers};
use choreo_sim::{Fault, Latency, SimConfig, Simulation};
use choreo_topology::Topology;
use choreo_trace::{Tracer, TracerConfig};
use tokio_util::sync::CancellationToken;

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[test]
#[ignore = "a soak: run in release with --ignored (scripts/test.sh does)"]
fn a_million_flows_are_all_accounted_for_within_the_tracer_caps() {
    let flows: u64 = std::env::var("CHOREO_SOAK_FLOWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let topology =
            Topology::from_path(concat!(env!("CARGO_MANIFEST_DIR"), "/../../topologies/order-fulfillment.yaml")).unwrap();
        let faults = vec![
            Fault::parse("fail", "inventory=0.1").unwrap(),
            Fault::parse("fail", "payment:OrderPlaced=0.05").unwrap(),
            Fault::parse("duplicate", "0.01").unwrap(),
            Fault::parse("extra", "shipping=0.001").unwrap(),
        ];
        let config = SimConfig {
            flows,
            // Steady load rather than one burst: flows start at a rate the
            // runtime and the tracer sustain on a 2-core machine.
            rate: Some(12_000.0),
            latency: Latency::Fixed(Duration::ZERO),
            concurrency: 32,
            faults,
            seed: 2026,
            ..SimConfig::default()
        };
        let sim = Simulation::new(topology.clone(), config).unwrap();
        let bus = InProcessBus::new();
        let metrics = Metrics::new(&prometheus::Registry::new()).unwrap();

        // The tracer, live: bounded, completed flows folded in as they settle.
        let mut tcfg = TracerConfig::live();
        tcfg.settle = Duration::from_millis(500);
        let (max_flows, max_records) = (tcfg.max_flows, tcfg.max_records);
        let tracer = Arc::new(Mutex::new(Tracer::new(tcfg, Some(&topology))));
        let dead_flows: Arc<Mutex<HashSet<String>>> = Arc::default();
        let shutdown = CancellationToken::new();
        let (t, dead) = (tracer.clone(), dead_flows.clone());
        let tap = choreo_trace::tap(&bus, SubscribeOptions::new("soak-tracer", sim.topics()), shutdown.clone(), move |r| {
            if r.envelope.headers.get(dlq_headers::REASON).is_some() {
                dead.lock().unwrap().insert(r.envelope.correlation_id.to_string());
            }
            t.lock().unwrap().ingest(&r);
        })
        .await
        .unwrap();

        // Measure the tracer at every tick.
        let peak_flows = Arc::new(AtomicUsize::new(0));
        let peak_records = Arc::new(AtomicUsize::new(0));
        let (t, pf, pr, stop) = (tracer.clone(), peak_flows.clone(), peak_records.clone(), shutdown.clone());
        let ticker = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = every.tick() => {
                        let mut t = t.lock().unwrap();
                        t.tick(Timestamp::now());
                        let (f, r) = (t.flows_in_flight(), t.records_in_flight());
                        assert!(f <= max_flows, "{f} flows in flight, over the cap of {max_flows}");
                        assert!(r <= max_records, "{r} records in flight, over the cap of {max_records}");
                        pf.fetch_max(f, Ordering::Relaxed);
                        pr.fetch_max(r, Ordering::Relaxed);
                    }
                }
            }
        });

        let started = Instant::now();
        let truth = sim.run(&bus, &metrics, &|_| {}).await.unwrap();
        choreo_sim::wait_quiet(&bus, &["soak-tracer".to_owned()]).await;
        let elapsed = started.elapsed();
        shutdown.cancel();
        ticker.await.unwrap();
        let records = tap.await.unwrap().unwrap();

        let mut tracer = tracer.lock().unwrap();
        tracer.finish(Some(Timestamp::now().saturating_add(Duration::from_secs(120))));
        let report = tracer.report();
        let f = &report.flows;

        // Every flow accounted for.
        assert_eq!(f.started, flows, "every flow was seen");
        assert_eq!(f.completed + f.failed, flows, "{f:?}");
        assert_eq!(f.stuck + f.in_progress, 0, "{f:?}");
        let injected_dead: HashSet<String> =
            truth.of_kind("fail").filter(|i| i.dead_lettered).map(|i| i.correlation_id.clone()).collect();
        let dead = dead_flows.lock().unwrap();
        assert_eq!(*dead, injected_dead, "the dead-letter topic holds exactly the events that failed every attempt");
        assert_eq!(f.failed as usize, dead.len(), "the failed flows are the flows with dead letters");
        let evicted = report.input.evicted_flow_cap
            + report.input.evicted_record_cap
            + report.input.evicted_flow_record_cap
            + report.input.evicted_idle;
        assert_eq!(evicted, 0, "no flow evicted by a cap: {:?}", report.input);

        println!(
            "soak: {flows} flows, {} events published, {records} records traced in {:.1}s ({:.0} flows/s); \
             {} failed with their events dead-lettered, {} duplicates collapsed; \
             tracer peak {} flows / {} records in flight (caps {max_flows} / {max_records}); peak RSS {:.0} MiB",
            truth.events_published,
            elapsed.as_secs_f64(),
            flows as f64 / elapsed.as_secs_f64(),
            f.failed,
            report.input.duplicates,
            peak_flows.load(Ordering::Relaxed),
            peak_records.load(Ordering::Relaxed),
            peak_rss_mib().unwrap_or(f64::NAN),
        );
    });
}
