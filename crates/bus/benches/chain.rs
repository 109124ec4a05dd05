//! A 4-service chain on the in-process bus against the same hops over bare
//! tokio mpsc channels, on one core (a current-thread runtime).
//!
//! A publishes → B handles and publishes → C handles and publishes → D handles.
//! Prints handled events per second for both, and the ratio.
//!
//!     cargo bench -p choreo-bus --bench chain [-- FLOWS]
//!
//! The multi-thread picture: the same chain with receipts on a 2-worker
//! runtime (the services' tasks may run on either thread), and its scaling
//! factor against the current-thread figure.
//!
//! The last line is a floor: what the chain's contract asks of each flow
//! (payloads decoded and encoded, ids, clock readings, receipts written) done
//! in a plain loop, with no bus and no runtime, and its ratio to bare. No
//! runtime that keeps the contract can be faster than it on the machine.
//!
//! `CHOREO_BENCH_PROFILE=1` runs the chain once without receipts (`=receipts`:
//! with them; `=floor`: the floor), for a profiler.
//!
//! `CHOREO_BENCH_RETENTION=N` bounds the bus's partitions at N events instead
//! of the default 1 024 (as many as the bare chain's channels hold).
//!
//! "Full runtime" means what a service gets by default: envelopes with UUID v7
//! ids and timestamps, JSON payloads, routing, retry and timeout middleware,
//! idempotency, metrics (published/handled counters, duration and queue
//! histograms, in-flight gauge) and tracing spans (no subscriber installed).
//! It is measured twice: with receipts (the default, one extra event per
//! handled event) and without.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use choreo_bus::{
    Context, HandlerError, InProcessBus, InProcessConfig, Metrics, Publisher, Retention, Service,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Serialize, Deserialize)]
struct Step1 {
    payload: String,
}
choreo_core::event!(Step1, topic = "bench.s1");

#[derive(Serialize, Deserialize)]
struct Step2 {
    payload: String,
}
choreo_core::event!(Step2, topic = "bench.s2");

#[derive(Serialize, Deserialize)]
struct Step3 {
    payload: String,
}
choreo_core::event!(Step3, topic = "bench.s3");

const PAYLOAD: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A current-thread runtime for `workers` 1, else a multi-thread one with
/// that many worker threads.
fn runtime(workers: usize) -> tokio::runtime::Runtime {
    let mut builder = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    builder.enable_all().build().expect("runtime")
}

/// Handled events per second through the chain with the full runtime, on a
/// runtime of `workers` threads.
fn choreo_chain(flows: u64, receipts: bool, workers: usize) -> f64 {
    runtime(workers).block_on(async move {
        let mut config = InProcessConfig::default().partitions(1);
        if let Some(n) = std::env::var("CHOREO_BENCH_RETENTION")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            config = config.retention(Retention::default().max_events_per_partition(n));
        }
        let bus = InProcessBus::with_config(config);
        let registry = prometheus::Registry::new();
        let metrics = Metrics::new(&registry).expect("metrics");
        let done = Arc::new(AtomicU64::new(0));
        let finished = Arc::new(Notify::new());
        let stop = CancellationToken::new();
        let receipts_topic = if receipts {
            Some("choreo.receipts")
        } else {
            None
        };
        let b = Service::new("b")
            .on(|e: Step1, ctx: Context| async move {
                ctx.emit(&Step2 { payload: e.payload })?;
                Ok::<(), HandlerError>(())
            })
            .receipts(receipts_topic)
            .metrics(metrics.clone())
            .start(&bus, stop.clone())
            .await
            .expect("start");
        let c = Service::new("c")
            .on(|e: Step2, ctx: Context| async move {
                ctx.emit(&Step3 { payload: e.payload })?;
                Ok::<(), HandlerError>(())
            })
            .receipts(receipts_topic)
            .metrics(metrics.clone())
            .start(&bus, stop.clone())
            .await
            .expect("start");
        let (d_done, d_finished) = (done.clone(), finished.clone());
        let d = Service::new("d")
            .on(move |e: Step3, _ctx: Context| {
                debug_assert_eq!(e.payload.len(), 64);
                if d_done.fetch_add(1, Ordering::Relaxed) + 1 == flows {
                    d_finished.notify_one();
                }
                std::future::ready(Ok::<(), HandlerError>(()))
            })
            .receipts(receipts_topic)
            .metrics(metrics.clone())
            .start(&bus, stop.clone())
            .await
            .expect("start");
        let a = Publisher::new(&bus, "a").metrics(metrics.clone());
        let start = Instant::now();
        for _ in 0..flows {
            a.start_flow(&Step1 {
                payload: PAYLOAD.to_owned(),
            })
            .await
            .expect("publish");
        }
        finished.notified().await;
        let elapsed = start.elapsed();
        stop.cancel();
        for s in [b, c, d] {
            s.await.expect("service");
        }
        (flows * 3) as f64 / elapsed.as_secs_f64()
    })
}

/// Handled events per second through the same hops over bare tokio channels.
fn bare_chain(flows: u64) -> f64 {
    runtime(1).block_on(async move {
        let (tx1, mut rx1) = tokio::sync::mpsc::channel::<Vec<u8>>(1024);
        let (tx2, mut rx2) = tokio::sync::mpsc::channel::<Vec<u8>>(1024);
        let (tx3, mut rx3) = tokio::sync::mpsc::channel::<Vec<u8>>(1024);
        let b = tokio::spawn(async move {
            while let Some(p) = rx1.recv().await {
                if tx2.send(p).await.is_err() {
                    break;
                }
            }
        });
        let c = tokio::spawn(async move {
            while let Some(p) = rx2.recv().await {
                if tx3.send(p).await.is_err() {
                    break;
                }
            }
        });
        let d = tokio::spawn(async move {
            let mut n = 0u64;
            while let Some(p) = rx3.recv().await {
                debug_assert_eq!(p.len(), 64);
                n += 1;
            }
            n
        });
        let start = Instant::now();
        for _ in 0..flows {
            tx1.send(PAYLOAD.as_bytes().to_vec()).await.expect("send");
        }
        drop(tx1);
        let n = d.await.expect("join");
        let elapsed = start.elapsed();
        b.await.expect("join");
        c.await.expect("join");
        assert_eq!(n, flows);
        (flows * 3) as f64 / elapsed.as_secs_f64()
    })
}

/// What the chain's contract asks of every flow, done in a plain loop with
/// no bus, no tasks and no runtime: the payloads decoded and encoded (A
/// encodes, B and C decode and encode, D decodes), each emitted event's id,
/// time and key, and each handling's receipt (its start and end read from
/// the clock, its id, its JSON document). The bytes each makes are kept
/// until the next flow, as an event's are until it is handled. Returns
/// handled events per second, counted as the chain counts them: the floor
/// below which no runtime that keeps the contract can go on this machine.
fn contract_floor(flows: u64) -> f64 {
    use choreo_core::{EventId, Name, Outcome, ReceiptHead, ReceiptRef, Timestamp};
    use std::hint::black_box;
    let service = Name::from_static("bench-b");
    let (event_type, topic) = (Name::from_static("Step1"), Name::from_static("bench.s1"));
    let head = ReceiptHead::new(&service, &event_type, &topic);
    let emit = |payload: String| -> (bytes::Bytes, EventId, bytes::Bytes) {
        let data = bytes::Bytes::from(serde_json::to_vec(&Step2 { payload }).expect("encode"));
        let time = Timestamp::now();
        let id = EventId::generate(time);
        let key = id.to_key();
        (data, id, key)
    };
    let receipt = |handled: &EventId, flow: &EventId, emitted: &[EventId]| -> bytes::Bytes {
        let started = Timestamp::now();
        let ended = Timestamp::now();
        let r = ReceiptRef {
            service: &service,
            event_id: handled,
            event_type: &event_type,
            correlation_id: flow,
            topic: &topic,
            partition: 0,
            offset: 7,
            outcome: Outcome::Acked,
            attempts: 1,
            reason: None,
            started,
            duration_us: ended.micros_since(started).max(0) as u64,
            emitted,
        };
        let mut doc = Vec::with_capacity(400);
        r.write_json_with(&head, &mut doc);
        black_box(EventId::generate(ended));
        bytes::Bytes::from(doc)
    };
    let decode = |data: &[u8]| -> String {
        serde_json::from_slice::<Step1>(data)
            .expect("decode")
            .payload
    };
    let start = Instant::now();
    for _ in 0..flows {
        // A starts the flow.
        let (a, flow, a_key) = emit(PAYLOAD.to_owned());
        // B and C each decode, emit and write a receipt; D decodes and writes one.
        let (b, b_id, b_key) = emit(decode(&a));
        let b_receipt = receipt(&flow, &flow, std::slice::from_ref(&b_id));
        let (c, c_id, c_key) = emit(decode(&b));
        let c_receipt = receipt(&b_id, &flow, std::slice::from_ref(&c_id));
        black_box(decode(&c));
        let d_receipt = receipt(&c_id, &flow, &[]);
        black_box((
            a, a_key, b, b_key, b_receipt, c, c_key, c_receipt, d_receipt,
        ));
    }
    (flows * 3) as f64 / start.elapsed().as_secs_f64()
}

fn best_of(runs: usize, f: impl Fn() -> f64) -> f64 {
    (0..runs).map(|_| f()).fold(0.0, f64::max)
}

fn main() {
    let flows: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200_000);
    // For profilers (callgrind, perf): one run of the chain, without receipts
    // (`CHOREO_BENCH_PROFILE=receipts`: with them).
    if let Some(profile) = std::env::var_os("CHOREO_BENCH_PROFILE") {
        if profile == "floor" {
            println!("{:.0} events/s", contract_floor(flows));
            return;
        }
        println!(
            "{:.0} events/s",
            choreo_chain(flows, profile == "receipts", 1)
        );
        return;
    }
    // Warm-up: allocator, page faults, lazy statics.
    let _ = choreo_chain(flows / 10, true, 1);
    let _ = bare_chain(flows / 10);
    let bare = best_of(3, || bare_chain(flows));
    let full = best_of(3, || choreo_chain(flows, true, 1));
    let no_receipts = best_of(3, || choreo_chain(flows, false, 1));
    let _ = choreo_chain(flows / 10, true, 2);
    let two_workers = best_of(3, || choreo_chain(flows, true, 2));
    let floor = best_of(3, || contract_floor(flows));
    println!(
        "4-service chain, {flows} flows, {} handled events per run, one core (current-thread runtime)",
        flows * 3
    );
    println!(
        "  bare tokio mpsc chain (64-byte payload)    {:>12.0} events/s",
        bare
    );
    println!(
        "  choreo, full runtime with receipts         {:>12.0} events/s   ratio to bare {:.3}",
        full,
        full / bare
    );
    println!(
        "  choreo, full runtime, receipts off         {:>12.0} events/s   ratio to bare {:.3}",
        no_receipts,
        no_receipts / bare
    );
    println!(
        "  choreo, with receipts, 2-worker runtime    {:>12.0} events/s   scaling vs one core {:.2}",
        two_workers,
        two_workers / full
    );
    println!(
        "  the contract's own work, no runtime        {:>12.0} events/s   ratio to bare {:.3}; the runtime with receipts reaches {:.2} of it",
        floor,
        floor / bare,
        full / floor
    );
}
