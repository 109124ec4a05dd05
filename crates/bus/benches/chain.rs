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
//! factor against the current-thread figure; beside it the bare chain on the
//! same 2-worker runtime, whose scaling factor is the baseline for that one
//! (a chain of tasks handing each item to the next loses to cross-thread
//! wake-ups, bare channels too).
//!
//! The last two lines are floors, with receipts and without: the events a
//! flow makes (payloads encoded and decoded, envelopes with their ids, times
//! and keys, and receipts), made in a plain loop with choreo's own types and
//! no bus and no runtime, with their ratio to bare and the share of each the
//! runtime reaches. A runtime on choreo's `Bus` contract, which carries those
//! envelopes, cannot handle events faster than it makes them.
//!
//! `CHOREO_BENCH_PROFILE=1` runs the chain once without receipts (`=receipts`:
//! with them; `=floor`, `=floor-off`: the floor with receipts, without;
//! `=bare`: the bare chain), for a profiler; `CHOREO_BENCH_WORKERS=N` runs
//! the chain or the bare chain on a multi-thread runtime of N worker threads.
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

/// Handled events per second through the same hops over bare tokio channels,
/// on a runtime of `workers` threads.
fn bare_chain(flows: u64, workers: usize) -> f64 {
    runtime(workers).block_on(async move {
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

/// The floor: the events a flow of the chain makes, made in a plain loop
/// with no bus, no tasks and no runtime, through the calls the runtime makes
/// and with choreo's own types. A's event, then B's and C's, each a shared
/// envelope with its id, time, key, flow and cause and its payload encoded;
/// B, C and D each decoding the payload they handle; with `receipts`, each
/// handling's clock readings at its start and end and its receipt, an event
/// too (its id, its JSON document begun with the route's text, its
/// envelope). Each event is kept until the next flow, as the bus keeps it
/// until it is handled. Nothing is published, stored, delivered, settled,
/// counted or traced. Returns handled events per second, counted as the chain
/// counts them: a runtime on choreo's `Bus` contract, which carries these
/// envelopes, cannot handle events faster than it makes them.
fn contract_floor(flows: u64, receipts: bool) -> f64 {
    use choreo_core::{
        Codecs, ContentType, Envelope, Event, EventId, Headers, Name, Outcome, ReceiptHead,
        ReceiptRef, Timestamp,
    };
    use std::hint::black_box;
    let codecs = Codecs::json();
    let service = Name::from_static("bench");
    let receipts_topic = Name::from_static(choreo_core::RECEIPTS_TOPIC);
    // B's, C's and D's routes.
    let heads = [
        (Step1::TYPE, Step1::TOPIC),
        (Step2::TYPE, Step2::TOPIC),
        (Step3::TYPE, Step3::TOPIC),
    ]
    .map(|(ty, topic)| {
        ReceiptHead::new(&service, &Name::from_static(ty), &Name::from_static(topic))
    });
    // An emitted event, stamped as a handler's context stamps it.
    let emit = |data: choreo_core::Result<bytes::Bytes>,
                ty: &'static str,
                topic: &'static str,
                cause: Option<&Envelope>| {
        let data = data.expect("encode");
        let time = Timestamp::now();
        let id = EventId::generate(time);
        let correlation_id = cause.map_or_else(|| id.clone(), |c| c.correlation_id.clone());
        Arc::new(Envelope {
            key: Some(correlation_id.to_key()),
            correlation_id,
            causation_id: cause.map(|c| c.id.clone()),
            id,
            event_type: Name::from_static(ty),
            source: service.clone(),
            topic: Name::from_static(topic),
            time,
            traceparent: None,
            tracestate: None,
            content_type: ContentType::Json,
            data,
            headers: Headers::new(),
        })
    };
    // A handling, `handle`, and with receipts its receipt, made from the
    // clock readings around it.
    let handled = |head: &ReceiptHead,
                   env: &Envelope,
                   handle: &mut dyn FnMut() -> Option<EventId>| {
        if !receipts {
            handle();
            return None;
        }
        let started = Timestamp::now();
        let emitted = handle();
        let ended = Timestamp::now();
        let r = ReceiptRef {
            service: &service,
            event_id: &env.id,
            event_type: &env.event_type,
            correlation_id: &env.correlation_id,
            topic: &env.topic,
            partition: 0,
            offset: 7,
            outcome: Outcome::Acked,
            attempts: 1,
            reason: None,
            started,
            duration_us: ended.micros_since(started).max(0) as u64,
            emitted: emitted.as_slice(),
        };
        Some(r.to_shared_envelope_with(head, EventId::generate(ended), receipts_topic.clone(), env))
    };
    let payload = |env: &Envelope| -> String {
        match env.topic.as_str() {
            Step1::TOPIC => codecs
                .decode::<Step1>(&env.content_type, &env.data)
                .map(|e| e.payload),
            Step2::TOPIC => codecs
                .decode::<Step2>(&env.content_type, &env.data)
                .map(|e| e.payload),
            _ => codecs
                .decode::<Step3>(&env.content_type, &env.data)
                .map(|e| e.payload),
        }
        .expect("decode")
    };
    // B's and C's handling: the payload handed on in the next step's event.
    let relay = |head: &ReceiptHead, cause: &Arc<Envelope>| {
        let mut next = None;
        let receipt = handled(head, cause, &mut || {
            let payload = payload(cause);
            let e = if cause.topic.as_str() == Step1::TOPIC {
                let data = codecs.encode(&Step2 { payload });
                emit(data, Step2::TYPE, Step2::TOPIC, Some(cause))
            } else {
                let data = codecs.encode(&Step3 { payload });
                emit(data, Step3::TYPE, Step3::TOPIC, Some(cause))
            };
            let id = e.id.clone();
            next = Some(e);
            Some(id)
        });
        (next.expect("emitted"), receipt)
    };
    let start = Instant::now();
    for _ in 0..flows {
        let a = emit(
            codecs.encode(&Step1 {
                payload: PAYLOAD.to_owned(),
            }),
            Step1::TYPE,
            Step1::TOPIC,
            None,
        );
        let (b, b_receipt) = relay(&heads[0], &a);
        let (c, c_receipt) = relay(&heads[1], &b);
        let d_receipt = handled(&heads[2], &c, &mut || {
            black_box(payload(&c));
            None
        });
        black_box((a, b, b_receipt, c, c_receipt, d_receipt));
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
    // (`CHOREO_BENCH_PROFILE=receipts`: with them; `=floor`, `=floor-off`:
    // the floor with receipts, without; `=bare`: the bare chain), on
    // `CHOREO_BENCH_WORKERS` threads (1, a current-thread runtime, if unset).
    if let Some(profile) = std::env::var_os("CHOREO_BENCH_PROFILE") {
        let workers = std::env::var("CHOREO_BENCH_WORKERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let rate = match profile.to_str() {
            Some(floor @ ("floor" | "floor-off")) => contract_floor(flows, floor == "floor"),
            Some("bare") => bare_chain(flows, workers),
            other => choreo_chain(flows, other == Some("receipts"), workers),
        };
        println!("{rate:.0} events/s");
        return;
    }
    // Warm-up: allocator, page faults, lazy statics.
    let _ = choreo_chain(flows / 10, true, 1);
    let _ = bare_chain(flows / 10, 1);
    let bare = best_of(3, || bare_chain(flows, 1));
    let full = best_of(3, || choreo_chain(flows, true, 1));
    let no_receipts = best_of(3, || choreo_chain(flows, false, 1));
    let _ = choreo_chain(flows / 10, true, 2);
    let two_workers = best_of(3, || choreo_chain(flows, true, 2));
    let _ = bare_chain(flows / 10, 2);
    let bare_two_workers = best_of(3, || bare_chain(flows, 2));
    let floor = best_of(3, || contract_floor(flows, true));
    let floor_off = best_of(3, || contract_floor(flows, false));
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
        "  bare tokio mpsc chain, 2-worker runtime    {:>12.0} events/s   scaling vs one core {:.2}; choreo scales {:.2} of it",
        bare_two_workers,
        bare_two_workers / bare,
        (two_workers / full) / (bare_two_workers / bare)
    );
    println!(
        "  floor: the events made, with receipts      {:>12.0} events/s   ratio to bare {:.3}; the runtime reaches {:.2} of it",
        floor,
        floor / bare,
        full / floor
    );
    println!(
        "  floor: the events made, receipts off       {:>12.0} events/s   ratio to bare {:.3}; the runtime reaches {:.2} of it",
        floor_off,
        floor_off / bare,
        no_receipts / floor_off
    );
}
