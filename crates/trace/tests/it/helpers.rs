//! Shared helpers: the order-fulfillment saga run by real services on the
//! in-process bus, and hand-built envelopes for the faults.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use choreo_bus::{Context, HandlerError, InProcessBus, Publisher, Retry, Service};
use choreo_core::{Envelope, EventId, Name, Outcome, Receipt, SubscribeOptions, Timestamp};
use choreo_topology::Topology;
use choreo_trace::{Record, Tracer, TracerConfig, tap, tap_topics};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub(crate) fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub(crate) fn order_fulfillment() -> Topology {
    Topology::from_path(root().join("topologies/order-fulfillment.yaml")).unwrap()
}

pub(crate) fn signup_kyc() -> Topology {
    Topology::from_path(root().join("topologies/signup-kyc.yaml")).unwrap()
}

/// Traces `records` in a batch against `topology`, judged at `now` (default: latest).
pub(crate) fn trace(
    topology: Option<&Topology>,
    records: &[Record],
    now: Option<Timestamp>,
) -> Tracer {
    let mut config = TracerConfig::batch();
    config.keep = choreo_trace::Keep::All;
    let mut t = Tracer::new(config, topology);
    for r in records {
        t.ingest(r);
    }
    t.finish(now);
    t
}

/// Hand-built events with controlled times (µs after a fixed epoch).
pub(crate) struct Hand {
    pub(crate) base: i64,
}

impl Default for Hand {
    fn default() -> Self {
        Hand {
            base: 1_764_000_000_000_000,
        }
    }
}

impl Hand {
    pub(crate) fn start(&self, ty: &str, source: &str, at_ms: i64) -> Envelope {
        let mut e = Envelope::new(Name::from(ty), topic_of(ty), "{}").with_source(source);
        e.time = Timestamp::from_micros(self.base + at_ms * 1000);
        e
    }

    pub(crate) fn after(&self, cause: &Envelope, ty: &str, source: &str, at_ms: i64) -> Envelope {
        let mut e = Envelope::new(Name::from(ty), topic_of(ty), "{}")
            .with_source(source)
            .caused_by(cause);
        e.time = Timestamp::from_micros(self.base + at_ms * 1000);
        e
    }

    /// The receipt envelope of `service` handling `handled`, started at `at_ms`, taking `took_ms`.
    pub(crate) fn receipt(
        &self,
        service: &str,
        handled: &Envelope,
        outcome: Outcome,
        emitted: &[&Envelope],
        at_ms: i64,
        took_ms: i64,
    ) -> Envelope {
        let r = Receipt {
            service: Name::from(service),
            event_id: handled.id.clone(),
            event_type: handled.event_type.clone(),
            correlation_id: handled.correlation_id.clone(),
            topic: handled.topic.clone(),
            partition: 0,
            offset: 0,
            outcome,
            attempts: if outcome == Outcome::DeadLettered {
                3
            } else {
                1
            },
            reason: (outcome == Outcome::DeadLettered).then(|| "card processor down".to_owned()),
            started: Timestamp::from_micros(self.base + at_ms * 1000),
            duration_us: (took_ms * 1000) as u64,
            emitted: emitted.iter().map(|e| e.id.clone()).collect(),
        };
        let mut env = r.to_envelope(Name::from_static(choreo_core::RECEIPTS_TOPIC), handled);
        env.time = Timestamp::from_micros(self.base + (at_ms + took_ms) * 1000);
        env
    }

    /// The receipt of `service` dead-lettering `handled` with `reason`, at `at_ms`.
    pub(crate) fn dead_receipt(
        &self,
        service: &str,
        handled: &Envelope,
        reason: &str,
        at_ms: i64,
    ) -> Envelope {
        let r = Receipt {
            service: Name::from(service),
            event_id: handled.id.clone(),
            event_type: handled.event_type.clone(),
            correlation_id: handled.correlation_id.clone(),
            topic: handled.topic.clone(),
            partition: 0,
            offset: 0,
            outcome: Outcome::DeadLettered,
            attempts: 0,
            reason: Some(reason.to_owned()),
            started: Timestamp::from_micros(self.base + at_ms * 1000),
            duration_us: 100,
            emitted: Vec::new(),
        };
        let mut env = r.to_envelope(Name::from_static(choreo_core::RECEIPTS_TOPIC), handled);
        env.time = Timestamp::from_micros(self.base + at_ms * 1000 + 100);
        env
    }

    pub(crate) fn at(&self, ms: i64) -> Timestamp {
        Timestamp::from_micros(self.base + ms * 1000)
    }
}

/// The topic the example topologies declare for `ty`; for the small
/// topologies written in tests (`A: {topic: a}`), the type in lower case.
pub(crate) fn topic_of(ty: &str) -> Name {
    Name::from(match ty {
        "OrderPlaced" | "OrderCancelled" => "orders",
        "PaymentCaptured" | "PaymentFailed" | "PaymentRefunded" => "payments",
        "StockReserved" | "OutOfStock" => "inventory",
        "OrderShipped" => "shipping",
        "SignupRequested" => "signups",
        "AccountCreated" | "AccountActivated" | "AccountClosed" => "accounts",
        "KycRequested" | "DocumentsVerified" | "DocumentsRejected" | "ResubmissionRequested" => {
            "kyc"
        }
        _ => return Name::from(ty.to_lowercase()),
    })
}

pub(crate) fn records(envs: &[&Envelope]) -> Vec<Record> {
    envs.iter().map(|e| Record::new((*e).clone())).collect()
}

// ---- the saga on the in-process bus ----------------------------------------

#[derive(Serialize, Deserialize)]
pub(crate) struct OrderPlaced {
    pub(crate) order_id: u64,
    /// 1 = payment fails, 2 = out of stock, 3 = shipping dead-letters, 4 = payment emits both branches.
    pub(crate) scenario: u8,
}
choreo_core::event!(OrderPlaced, topic = "orders");

#[derive(Serialize, Deserialize)]
pub(crate) struct PaymentCaptured {
    pub(crate) order_id: u64,
    pub(crate) scenario: u8,
}
choreo_core::event!(PaymentCaptured, topic = "payments");

#[derive(Serialize, Deserialize)]
pub(crate) struct PaymentFailed {
    pub(crate) order_id: u64,
}
choreo_core::event!(PaymentFailed, topic = "payments");

#[derive(Serialize, Deserialize)]
pub(crate) struct PaymentRefunded {
    pub(crate) order_id: u64,
}
choreo_core::event!(PaymentRefunded, topic = "payments");

#[derive(Serialize, Deserialize)]
pub(crate) struct StockReserved {
    pub(crate) order_id: u64,
    pub(crate) scenario: u8,
}
choreo_core::event!(StockReserved, topic = "inventory");

#[derive(Serialize, Deserialize)]
pub(crate) struct OutOfStock {
    pub(crate) order_id: u64,
}
choreo_core::event!(OutOfStock, topic = "inventory");

#[derive(Serialize, Deserialize)]
pub(crate) struct OrderShipped {
    pub(crate) order_id: u64,
}
choreo_core::event!(OrderShipped, topic = "shipping");

#[derive(Serialize, Deserialize)]
pub(crate) struct OrderCancelled {
    pub(crate) order_id: u64,
}
choreo_core::event!(OrderCancelled, topic = "orders");

async fn pay(o: OrderPlaced, ctx: Context) -> Result<(), HandlerError> {
    match o.scenario {
        1 => {
            ctx.emit(&PaymentFailed {
                order_id: o.order_id,
            })?;
        }
        4 => {
            ctx.emit(&PaymentCaptured {
                order_id: o.order_id,
                scenario: o.scenario,
            })?;
            ctx.emit(&PaymentFailed {
                order_id: o.order_id,
            })?;
        }
        s => {
            ctx.emit(&PaymentCaptured {
                order_id: o.order_id,
                scenario: s,
            })?;
        }
    }
    Ok(())
}

async fn refund(o: OutOfStock, ctx: Context) -> Result<(), HandlerError> {
    ctx.emit(&PaymentRefunded {
        order_id: o.order_id,
    })?;
    Ok(())
}

async fn reserve(p: PaymentCaptured, ctx: Context) -> Result<(), HandlerError> {
    if p.scenario == 2 {
        ctx.emit(&OutOfStock {
            order_id: p.order_id,
        })?;
    } else {
        ctx.emit(&StockReserved {
            order_id: p.order_id,
            scenario: p.scenario,
        })?;
    }
    Ok(())
}

async fn ship(s: StockReserved, ctx: Context) -> Result<(), HandlerError> {
    if s.scenario == 3 {
        return Err(HandlerError::msg("carrier API unavailable"));
    }
    ctx.emit(&OrderShipped {
        order_id: s.order_id,
    })?;
    Ok(())
}

async fn cancel_failed(p: PaymentFailed, ctx: Context) -> Result<(), HandlerError> {
    ctx.emit(&OrderCancelled {
        order_id: p.order_id,
    })?;
    Ok(())
}

async fn cancel_refunded(p: PaymentRefunded, ctx: Context) -> Result<(), HandlerError> {
    ctx.emit(&OrderCancelled {
        order_id: p.order_id,
    })?;
    Ok(())
}

async fn notify_shipped(_: OrderShipped, _: Context) -> Result<(), HandlerError> {
    Ok(())
}

async fn notify_cancelled(_: OrderCancelled, _: Context) -> Result<(), HandlerError> {
    Ok(())
}

/// What running the saga captured.
pub(crate) struct Run {
    pub(crate) records: Vec<Record>,
    pub(crate) flows: Vec<EventId>,
}

/// Runs the order-fulfillment services on an in-process bus, starts one flow
/// per scenario in `scenarios`, and captures everything through a tap until
/// `receipts` receipts have been seen (or 20 s pass, which fails the test).
pub(crate) async fn run_saga(scenarios: &[u8], receipts: usize) -> Run {
    let topology = order_fulfillment();
    let bus = InProcessBus::new();
    let shutdown = CancellationToken::new();
    let captured: Arc<Mutex<Vec<Record>>> = Arc::default();
    let sink = captured.clone();
    let tap_task = tap(
        &bus,
        SubscribeOptions::new("test-tracer", tap_topics(&topology)),
        shutdown.clone(),
        move |r| sink.lock().unwrap().push(r),
    )
    .await
    .unwrap();
    let fast = Retry::default()
        .max_attempts(2)
        .backoff(Duration::from_millis(1), Duration::from_millis(2));
    let mut handles = Vec::new();
    for svc in [
        Service::new("payment").on(pay).on(refund),
        Service::new("inventory").on(reserve),
        Service::new("shipping").on(ship).retry(fast.clone()),
        Service::new("checkout")
            .on(cancel_failed)
            .on(cancel_refunded),
        Service::new("notifications")
            .on(notify_shipped)
            .on(notify_cancelled),
    ] {
        handles.push(
            svc.retry(fast.clone())
                .start(&bus, shutdown.clone())
                .await
                .unwrap(),
        );
    }
    let publisher = Publisher::new(&bus, "checkout");
    let mut flows = Vec::new();
    for (i, s) in scenarios.iter().enumerate() {
        flows.push(
            publisher
                .start_flow(&OrderPlaced {
                    order_id: i as u64,
                    scenario: *s,
                })
                .await
                .unwrap(),
        );
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let seen = captured
            .lock()
            .unwrap()
            .iter()
            // Receipts of handlings: a service also writes one, `ignored`,
            // for each record of its topics it routes no handler for.
            .filter_map(|r| Receipt::from_envelope(&r.envelope))
            .filter(|r| r.outcome != Outcome::Ignored)
            .count();
        if seen >= receipts {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {seen} of {receipts} receipts arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shutdown.cancel();
    for h in handles {
        h.await.unwrap();
    }
    tap_task.await.unwrap().unwrap();
    let records = captured.lock().unwrap().clone();
    Run { records, flows }
}
