//! Helpers: a cluster with a database, stores on it, the saga-like events.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use choreo_bus::{Context, HandlerError, Service};
use choreo_postgres::{PgConfig, PgMetrics, PgStore, RelayConfig};
use choreo_testkit::postgres::Postgres;
use serde::{Deserialize, Serialize};

/// An order, as the tests' flows start.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OrderPlaced {
    pub order_id: i64,
    pub cents: i64,
}
choreo_core::event!(OrderPlaced, topic = "orders");

/// What the payment handler emits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PaymentCaptured {
    pub order_id: i64,
    pub seq: i64,
}
choreo_core::event!(PaymentCaptured, topic = "payments");

/// A cluster with database `svc`, and metrics on a registry of the test's own.
pub struct Db {
    pub pg: Postgres,
    pub registry: prometheus::Registry,
    pub metrics: PgMetrics,
}

impl Db {
    pub fn start() -> Db {
        let pg = Postgres::start();
        pg.create_database("svc");
        let registry = prometheus::Registry::new();
        let metrics = PgMetrics::new(&registry).expect("metrics");
        Db {
            pg,
            registry,
            metrics,
        }
    }

    pub fn url(&self) -> String {
        self.pg.url("svc")
    }

    pub fn config(&self) -> PgConfig {
        PgConfig::new(self.url())
            .metrics(self.metrics.clone())
            .connect_timeout(Duration::from_secs(5))
    }

    pub async fn store(&self) -> PgStore {
        PgStore::connect(self.config()).await.expect("connect")
    }

    /// A plain client for the test's own queries.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .expect("test client");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }

    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        choreo_testkit::metric(&self.registry, name, labels)
    }

    /// `SELECT count(*)` of `sql`'s rows.
    pub async fn count(&self, client: &tokio_postgres::Client, from: &str) -> i64 {
        client
            .query_one(&format!("SELECT count(*) FROM {from}"), &[])
            .await
            .unwrap_or_else(|e| panic!("count {from}: {e}"))
            .get(0)
    }
}

/// A relay that notices everything quickly.
pub fn quick_relay() -> RelayConfig {
    RelayConfig::default()
        .poll_interval(Duration::from_millis(200))
        .backoff(Duration::from_millis(20), Duration::from_millis(400))
        .metrics_interval(Duration::from_millis(50))
}

/// The ledger the payment handler writes.
pub async fn create_ledger(client: &tokio_postgres::Client) {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS ledger (entry bigserial PRIMARY KEY, order_id bigint NOT NULL, cents bigint NOT NULL)",
        )
        .await
        .expect("ledger");
}

/// The payment service: in one transaction, records the event in the
/// inbox, writes a ledger row and emits `PaymentCaptured` into the outbox.
pub fn payment(db: PgStore) -> Service {
    Service::new("payment").on(move |o: OrderPlaced, ctx: Context| {
        let db = db.clone();
        async move {
            let Some(tx) = db.begin(&ctx).await? else {
                return Ok(());
            };
            let row = tx
                .client()
                .query_one(
                    "INSERT INTO ledger (order_id, cents) VALUES ($1, $2) RETURNING entry",
                    &[&o.order_id, &o.cents],
                )
                .await?;
            ctx.emit(&PaymentCaptured {
                order_id: o.order_id,
                seq: row.get(0),
            })?;
            tx.commit().await?;
            Ok::<(), HandlerError>(())
        }
    })
}

/// Shares a value between a test and its handlers.
pub type Shared<T> = Arc<std::sync::Mutex<T>>;
