//! Handled events per second of a handler that writes one row and emits one
//! event through the outbox, against the same handler writing the row
//! outside a transaction and emitting with a plain publish, on the same
//! database; and the relay's added latency.
//!
//! ```text
//! cargo bench -p choreo-postgres --bench outbox            # [-- EVENTS], default 4000
//! ```
//!
//! Starts a throwaway PostgreSQL cluster (`choreo_testkit::postgres`). Each
//! round runs the baseline and the outbox one after the other (interleaved
//! A/B), on the in-process bus with 4 partitions (4 handlings at once):
//!
//! - **throughput**: `EVENTS` orders waiting on the bus, the service started,
//!   the clock stopped when the last emitted event is on the bus (for the
//!   outbox: relayed);
//! - **latency**: 400 orders at 200/s, each emitted event's time on the bus
//!   minus the time the handler emitted it (for the baseline: the runtime's
//!   publish after the handler; for the outbox: commit, `NOTIFY`, the relay's
//!   batch).

use std::sync::Arc;
use std::time::{Duration, Instant};

use choreo_bus::{
    Context, HandlerError, InProcessBus, InProcessConfig, Metrics, Publisher, Service,
};
use choreo_core::{Bus, SubscribeOptions, Subscription, Timestamp};
use choreo_postgres::{PgConfig, PgMetrics, PgStore, RelayConfig, Tables};
use choreo_testkit::postgres::Postgres;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

#[derive(Serialize, Deserialize)]
struct OrderPlaced {
    order_id: i64,
    cents: i64,
}
choreo_core::event!(OrderPlaced, topic = "orders");

#[derive(Serialize, Deserialize)]
struct PaymentCaptured {
    order_id: i64,
}
choreo_core::event!(PaymentCaptured, topic = "payments");

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Plain,
    Outbox,
    /// The outbox, with the runtime's in-memory idempotency instead of the
    /// inbox lookup before each handling (`begin`'s inbox row still guards).
    OutboxNoLookup,
}

fn service(mode: Mode, store: PgStore, metrics: Metrics) -> Service {
    let svc = Service::new("payment").metrics(metrics).receipts(None);
    match mode {
        Mode::Plain => svc.on(move |o: OrderPlaced, ctx: Context| {
            let db = store.clone();
            async move {
                let client = db.pool().get().await?;
                client
                    .execute(
                        "INSERT INTO ledger (order_id, cents) VALUES ($1, $2)",
                        &[&o.order_id, &o.cents],
                    )
                    .await?;
                ctx.emit(&PaymentCaptured {
                    order_id: o.order_id,
                })?;
                Ok::<(), HandlerError>(())
            }
        }),
        Mode::Outbox | Mode::OutboxNoLookup => {
            let svc = if mode == Mode::Outbox {
                svc.idempotency(store.inbox())
            } else {
                svc
            };
            svc.on(move |o: OrderPlaced, ctx: Context| {
                let db = store.clone();
                async move {
                    let Some(tx) = db.begin(&ctx).await? else {
                        return Ok(());
                    };
                    tx.client()
                        .execute(
                            "INSERT INTO ledger (order_id, cents) VALUES ($1, $2)",
                            &[&o.order_id, &o.cents],
                        )
                        .await?;
                    ctx.emit(&PaymentCaptured {
                        order_id: o.order_id,
                    })?;
                    tx.commit().await?;
                    Ok::<(), HandlerError>(())
                }
            })
        }
    }
}

struct Setup {
    bus: InProcessBus,
    shutdown: CancellationToken,
    running: Vec<tokio::task::JoinHandle<()>>,
    handle: Option<choreo_bus::ServiceHandle>,
}

async fn setup(url: &str, round: usize, mode: Mode, start_service: bool) -> (Setup, PgStore) {
    let registry = prometheus::Registry::new();
    let prefix = format!(
        "r{round}_{}_",
        if mode == Mode::Plain {
            "plain"
        } else {
            "outbox"
        }
    );
    let store = PgStore::connect(
        PgConfig::new(url)
            .tables(Tables::prefixed(&prefix))
            .metrics(PgMetrics::new(&registry).unwrap()),
    )
    .await
    .unwrap();
    // Room for every order of a round, waiting before any group reads them.
    let mut config = InProcessConfig::default();
    config.retention.max_events_per_partition = 1_000_000;
    let bus = InProcessBus::with_config(config);
    bus.create_topic("orders", 4);
    bus.create_topic("payments", 4);
    let shutdown = CancellationToken::new();
    let mut running = Vec::new();
    if mode != Mode::Plain {
        running.push(
            store
                .relay(&bus)
                .config(RelayConfig::default().poll_interval(Duration::from_millis(200)))
                .start(shutdown.clone()),
        );
    }
    let mut s = Setup {
        bus,
        shutdown,
        running,
        handle: None,
    };
    if start_service {
        s.handle = Some(start(&s, mode, &store).await);
    }
    (s, store)
}

async fn start(s: &Setup, mode: Mode, store: &PgStore) -> choreo_bus::ServiceHandle {
    service(
        mode,
        store.clone(),
        Metrics::new(&prometheus::Registry::new()).unwrap(),
    )
    .start(&s.bus, s.shutdown.clone())
    .await
    .unwrap()
}

async fn finish(s: Setup) {
    s.shutdown.cancel();
    if let Some(h) = s.handle {
        h.await.unwrap();
    }
    for r in s.running {
        r.await.unwrap();
    }
}

/// Handled events per second with `n` orders waiting.
async fn throughput(url: &str, round: usize, mode: Mode, n: usize) -> f64 {
    let (mut s, store) = setup(url, round, mode, false).await;
    let mut out = s
        .bus
        .subscribe(SubscribeOptions::new("bench", ["payments"]))
        .await
        .unwrap();
    let checkout = Publisher::new(&s.bus, "checkout")
        .metrics(Metrics::new(&prometheus::Registry::new()).unwrap());
    for i in 0..n {
        checkout
            .start_flow(&OrderPlaced {
                order_id: i as i64,
                cents: 100,
            })
            .await
            .unwrap();
    }
    let started = Instant::now();
    s.handle = Some(start(&s, mode, &store).await);
    for i in 0..n {
        match tokio::time::timeout(Duration::from_secs(60), out.next()).await {
            Ok(Some(Ok(d))) => d.ack(),
            other => panic!("event {i} of {n} did not arrive within 60 s: {other:?}"),
        }
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    out.close().await.unwrap();
    finish(s).await;
    rate
}

/// Emission to arrival on the bus, in µs, of `n` orders at `rate` per second.
async fn latency(url: &str, round: usize, mode: Mode, n: usize, rate: f64) -> Vec<i64> {
    let (s, _store) = setup(url, round + 1000, mode, true).await;
    let mut out = s
        .bus
        .subscribe(SubscribeOptions::new("bench", ["payments"]))
        .await
        .unwrap();
    let bus = s.bus.clone();
    let placing = tokio::spawn(async move {
        let checkout = Publisher::new(&bus, "checkout")
            .metrics(Metrics::new(&prometheus::Registry::new()).unwrap());
        let mut every = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        for i in 0..n {
            every.tick().await;
            checkout
                .start_flow(&OrderPlaced {
                    order_id: i as i64,
                    cents: 100,
                })
                .await
                .unwrap();
        }
    });
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let d = match tokio::time::timeout(Duration::from_secs(60), out.next()).await {
            Ok(Some(Ok(d))) => d,
            other => panic!("event {i} of {n} did not arrive within 60 s: {other:?}"),
        };
        lat.push(Timestamp::now().micros_since(d.envelope().time));
        d.ack();
    }
    placing.await.unwrap();
    out.close().await.unwrap();
    finish(s).await;
    lat.sort();
    lat
}

fn pct(sorted: &[i64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(4000);
    let pg = Postgres::start();
    pg.create_database("bench");
    let url = Arc::new(pg.url("bench"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = {
            let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(async move {
                let _ = conn.await;
            });
            c
        };
        client
            .batch_execute("CREATE TABLE ledger (entry bigserial PRIMARY KEY, order_id bigint NOT NULL, cents bigint NOT NULL)")
            .await
            .unwrap();
        // Warm-up (connections, plans, the cluster's caches).
        throughput(&url, 99, Mode::Plain, n / 4).await;
        throughput(&url, 99, Mode::Outbox, n / 4).await;
        throughput(&url, 98, Mode::OutboxNoLookup, n / 4).await;
        let (mut plain, mut outbox, mut nolookup) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..3 {
            plain.push(throughput(&url, round, Mode::Plain, n).await);
            outbox.push(throughput(&url, round, Mode::Outbox, n).await);
            nolookup.push(throughput(&url, round, Mode::OutboxNoLookup, n).await);
            println!(
                "round {round}: plain {:.0} handled/s, outbox {:.0} handled/s, outbox without the inbox lookup {:.0} handled/s",
                plain[round], outbox[round], nolookup[round]
            );
        }
        let (p, o, l) = (median(plain), median(outbox), median(nolookup));
        println!("throughput, {n} events, medians of 3 interleaved rounds:");
        println!("  plain publish, row outside a transaction: {p:>8.0} handled events/s");
        println!("  outbox (inbox + row + outbox in one transaction, relayed): {o:>8.0} handled events/s");
        println!("  outbox, in-memory idempotency instead of the inbox lookup: {l:>8.0} handled events/s");
        println!("  ratio outbox / plain: {:.2}; without the lookup: {:.2}", o / p, l / p);

        let plain = latency(&url, 0, Mode::Plain, 400, 200.0).await;
        let outbox = latency(&url, 0, Mode::Outbox, 400, 200.0).await;
        println!("emission to arrival on the bus, 400 events at 200/s:");
        println!("  plain:  p50 {:.2} ms, p99 {:.2} ms", pct(&plain, 0.5), pct(&plain, 0.99));
        println!("  outbox: p50 {:.2} ms, p99 {:.2} ms", pct(&outbox, 0.5), pct(&outbox, 0.99));
        println!(
            "  added by the outbox: p50 {:.2} ms, p99 {:.2} ms",
            pct(&outbox, 0.5) - pct(&plain, 0.5),
            pct(&outbox, 0.99) - pct(&plain, 0.99)
        );
    });
}
