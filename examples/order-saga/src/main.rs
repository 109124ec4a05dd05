//! Runs the order-fulfillment saga.
//!
//! ```text
//! cargo run -p order-saga -- --orders 20                      # all five services, in-process
//! cargo run -p order-saga -- --brokers localhost:9092 --service payment --service inventory
//! cargo run -p order-saga -- --brokers localhost:9092 --service checkout --rate 5
//! ```
//!
//! In-process (no `--brokers`), all five services run in this process, the
//! program places the orders, waits until every one is shipped or cancelled,
//! prints what happened to each, and shuts down gracefully.
//!
//! On Kafka, each process runs the services named with `--service` (all by
//! default) until ctrl-c or SIGTERM; a process running `checkout` also
//! places orders at `--rate` per second (`--orders` of them, or forever when
//! 0). Payloads are JSON, or Avro with `--avro-registry URL` (a
//! Confluent-compatible schema registry shared by every process).
//!
//! With `--postgres URL`, `payment` and `inventory` keep their state (the
//! ledger, the stock) in PostgreSQL and write their events through a
//! transactional outbox, with an inbox against redeliveries; each process
//! running one of them also runs its outbox's relay (see
//! `order_saga::stateful` and docs/postgres.md).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use choreo::avro::{HttpRegistry, MemoryRegistry};
use choreo::bus::{SubscribeOptions, Subscription};
use choreo::codec::Codecs;
use choreo::kafka::{KafkaBus, KafkaConfig};
use choreo::metrics::{Metrics, MetricsServer, Render, render};
use choreo::{Bus, CancellationToken, Event, InProcessBus, Publisher};
use clap::Parser;
use order_saga::crash_point::CrashPoint;
use order_saga::events::{OrderCancelled, OrderShipped};

/// The order-fulfillment saga, written with choreo.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// How many orders to place (on Kafka, 0 places orders until stopped).
    #[arg(long)]
    orders: Option<u64>,
    /// Kafka bootstrap servers; without them everything runs in this process.
    #[arg(long, value_name = "HOST:PORT")]
    brokers: Option<String>,
    /// On Kafka: the services this process runs (repeatable; default all).
    #[arg(long = "service", value_name = "NAME")]
    services: Vec<String>,
    /// On Kafka: orders placed per second by the checkout service.
    #[arg(long, default_value_t = 5.0)]
    rate: f64,
    /// Serve the services' metrics at this address (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<String>,
    /// Write payloads as Avro, registering schemas with this Confluent-compatible registry.
    #[arg(long, value_name = "URL")]
    avro_registry: Option<String>,
    /// In-process: write payloads as Avro with an in-memory schema registry.
    #[arg(long, conflicts_with_all = ["brokers", "avro_registry"])]
    avro: bool,
    /// In-process: give up waiting for the flows after this many seconds.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
    /// Keep payment's and inventory's state in PostgreSQL, with a
    /// transactional outbox and inbox (postgres://USER:PASSWORD@HOST:PORT/DB).
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,
    /// For the crash tests: the relays publish through
    /// `order_saga::crash_point::CrashPoint`, armed by writing `before` or
    /// `after` to this file.
    #[arg(long, value_name = "FILE", hide = true)]
    crash_point: Option<std::path::PathBuf>,
}

/// The saga's services, `payment` and `inventory` on PostgreSQL when a
/// store is given for them; and the relays of those stores' outboxes, to
/// start on the bus.
struct Saga {
    services: Vec<choreo::Service>,
    stores: Vec<choreo::postgres::PgStore>,
}

/// Connects the stores of the stateful services among `wanted`.
async fn saga(
    args: &Args,
    wanted: &[&str],
    registry: &prometheus::Registry,
) -> anyhow::Result<Saga> {
    let mut stores = Vec::new();
    let mut services = Vec::new();
    let metrics = match &args.postgres {
        Some(_) => Some(choreo::postgres::PgMetrics::new(registry)?),
        None => None,
    };
    for service in order_saga::services() {
        let name = service.name().to_owned();
        if !wanted.contains(&name.as_str()) {
            continue;
        }
        match (&args.postgres, name.as_str()) {
            (Some(url), "payment" | "inventory") => {
                let store = order_saga::stateful::connect(&name, url, metrics.clone())
                    .await
                    .with_context(|| format!("{name}'s database"))?;
                services.push(if name == "payment" {
                    order_saga::stateful::payment(store.clone())
                } else {
                    order_saga::stateful::inventory(store.clone())
                });
                stores.push(store);
            }
            _ => services.push(service),
        }
    }
    Ok(Saga { services, stores })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    for s in &args.services {
        if !order_saga::SERVICES.contains(&s.as_str()) {
            bail!(
                "unknown service '{s}': the saga's services are {}",
                order_saga::SERVICES.join(", ")
            );
        }
    }
    let codecs = match (&args.avro_registry, args.avro) {
        (Some(url), _) => order_saga::avro_codecs(HttpRegistry::new(url.clone())),
        (None, true) => order_saga::avro_codecs(MemoryRegistry::new()),
        (None, false) => Codecs::json(),
    };
    let registry = prometheus::Registry::new();
    let metrics = Metrics::new(&registry)?;
    match &args.brokers {
        None => in_process(&args, codecs, metrics, registry).await,
        Some(brokers) => on_kafka(&args, brokers, codecs, metrics, registry).await,
    }
}

async fn serve(
    addr: &Option<String>,
    registry: prometheus::Registry,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    if let Some(addr) = addr {
        let registries = Arc::new(vec![registry]);
        let text: Render = Arc::new(move || render(&registries));
        let server = MetricsServer::start(addr, text, shutdown.clone()).await?;
        eprintln!(
            "order-saga: metrics at http://{}/metrics",
            server.local_addr()
        );
    }
    Ok(())
}

async fn in_process(
    args: &Args,
    codecs: Codecs,
    metrics: Metrics,
    registry: prometheus::Registry,
) -> anyhow::Result<()> {
    let orders = args.orders.unwrap_or(20);
    let bus = InProcessBus::new();
    bus.register_metrics(&registry)?;
    let shutdown = CancellationToken::new();
    let saga = saga(args, order_saga::SERVICES, &registry).await?;
    serve(&args.metrics_addr, registry, &shutdown).await?;

    // A reader of the flows' ends, to know when we are done (and what happened).
    let mut ends = bus
        .subscribe(SubscribeOptions::new(
            "order-saga-report",
            [OrderShipped::TOPIC, OrderCancelled::TOPIC],
        ))
        .await
        .context("subscribing to the ends of the flows")?;

    let relays: Vec<_> = saga
        .stores
        .iter()
        .map(|s| match &args.crash_point {
            Some(file) => s
                .relay(&CrashPoint::new(bus.clone(), file))
                .start(shutdown.clone()),
            None => s.relay(&bus).start(shutdown.clone()),
        })
        .collect();
    let mut running = Vec::new();
    for service in saga.services {
        running.push(
            service
                .codecs(codecs.clone())
                .metrics(metrics.clone())
                .start(&bus, shutdown.clone())
                .await?,
        );
    }
    println!(
        "order-saga: {} services on the in-process bus ({}{}): {}",
        running.len(),
        codecs.content_type(),
        if relays.is_empty() {
            ""
        } else {
            ", payment and inventory on PostgreSQL"
        },
        order_saga::SERVICES.join(", ")
    );

    let checkout = Publisher::new(&bus, "checkout")
        .codecs(codecs.clone())
        .metrics(metrics);
    for n in 1..=orders {
        order_saga::place_order(&checkout, &order_saga::demo_order(n)).await?;
    }
    println!("placed {orders} orders");

    let mut outcome: BTreeMap<u64, String> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout_secs);
    while (outcome.len() as u64) < orders {
        let next = tokio::time::timeout_at(deadline, ends.next()).await;
        let Ok(Some(Ok(d))) = next else {
            bail!(
                "only {} of {orders} orders finished within {}s",
                outcome.len(),
                args.timeout_secs
            );
        };
        let env = d.envelope();
        match env.event_type.as_str() {
            t if t == OrderShipped::TYPE => {
                let e: OrderShipped = codecs.decode(&env.content_type, &env.data)?;
                outcome.insert(e.order_id, format!("shipped ({})", e.tracking));
            }
            t if t == OrderCancelled::TYPE => {
                let e: OrderCancelled = codecs.decode(&env.content_type, &env.data)?;
                outcome.insert(e.order_id, format!("cancelled: {}", e.reason));
            }
            _ => {}
        }
        d.ack();
    }
    for (order, what) in &outcome {
        println!("  order {order:>3}  {what}");
    }
    let shipped = outcome
        .values()
        .filter(|w| w.starts_with("shipped"))
        .count();
    println!("{shipped} shipped, {} cancelled", outcome.len() - shipped);

    shutdown.cancel();
    for r in running {
        r.await?;
    }
    for r in relays {
        r.await?;
    }
    ends.close().await?;
    Ok(())
}

async fn on_kafka(
    args: &Args,
    brokers: &str,
    codecs: Codecs,
    metrics: Metrics,
    registry: prometheus::Registry,
) -> anyhow::Result<()> {
    let config = KafkaConfig::from_env_with_brokers(Some(brokers))?;
    let bus = KafkaBus::new(config)?;
    bus.register_metrics(&registry)?;
    let wanted: Vec<&str> = if args.services.is_empty() {
        order_saga::SERVICES.to_vec()
    } else {
        args.services.iter().map(String::as_str).collect()
    };
    let saga = saga(args, &wanted, &registry).await?;
    let shutdown = CancellationToken::new();
    serve(&args.metrics_addr, registry, &shutdown).await?;

    let relays: Vec<_> = saga
        .stores
        .iter()
        .map(|s| match &args.crash_point {
            Some(file) => s
                .relay(&CrashPoint::new(bus.clone(), file))
                .start(shutdown.clone()),
            None => s.relay(&bus).start(shutdown.clone()),
        })
        .collect();
    let mut running = Vec::new();
    for service in saga.services {
        let name = service.name().to_owned();
        let handle = service
            .codecs(codecs.clone())
            .metrics(metrics.clone())
            .start(&bus, shutdown.clone())
            .await
            .with_context(|| format!("starting {name}"))?;
        running.push(handle);
    }
    eprintln!(
        "order-saga: running {} on Kafka at {brokers}",
        wanted.join(", ")
    );

    let placing = if wanted.contains(&"checkout") && args.rate > 0.0 {
        let checkout = Publisher::new(&bus, "checkout")
            .codecs(codecs)
            .metrics(metrics);
        let (limit, rate, stop) = (args.orders.unwrap_or(0), args.rate, shutdown.clone());
        Some(tokio::spawn(async move {
            // Orders are placed at the rate whatever the broker's latency: up
            // to PLACING orders await their acknowledgement at once (each is
            // its own flow: their order does not matter).
            const PLACING: usize = 256;
            let mut placing = tokio::task::JoinSet::new();
            let mut every = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            let mut n = 0u64;
            while limit == 0 || n < limit {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = every.tick() => {
                        n += 1;
                        while placing.try_join_next().is_some() {}
                        if placing.len() >= PLACING {
                            placing.join_next().await;
                        }
                        let checkout = checkout.clone();
                        placing.spawn(async move {
                            if let Err(e) = order_saga::place_order(&checkout, &order_saga::demo_order(n)).await {
                                tracing::warn!(error = %e, order = n, "placing an order failed");
                            }
                        });
                    }
                }
            }
            while placing.join_next().await.is_some() {}
        }))
    } else {
        None
    };

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    eprintln!("order-saga: shutting down");
    shutdown.cancel();
    if let Some(p) = placing {
        let _ = p.await;
    }
    for r in running {
        r.await?;
    }
    for r in relays {
        r.await?;
    }
    bus.flush(Duration::from_secs(10)).await?;
    Ok(())
}
