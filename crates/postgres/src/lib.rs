//! Nothing lost between a service's database and the bus: a transactional
//! outbox and inbox on PostgreSQL.
//!
//! A handler that writes to its database *and* emits an event makes two
//! writes; if the process dies between them, either the event is lost (the
//! flow is stuck) or the world hears of something that never happened. With
//! this crate both go in one database transaction: the handler's writes,
//! the events it emits (to an **outbox** table) and the fact that it handled
//! the event (to an **inbox** table) commit together or not at all. A
//! **relay** then publishes the committed events to the bus, in order per
//! key, at least once.
//!
//! ```no_run
//! use choreo_bus::{Context, HandlerError, InProcessBus, Service};
//! use choreo_postgres::{PgConfig, PgStore};
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Serialize, Deserialize)] struct OrderPlaced { order_id: i64, total_cents: i64 }
//! # choreo_core::event!(OrderPlaced, topic = "orders");
//! # #[derive(Serialize, Deserialize)] struct PaymentCaptured { order_id: i64 }
//! # choreo_core::event!(PaymentCaptured, topic = "payments");
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let bus = InProcessBus::new();
//! let db = PgStore::connect(PgConfig::new("postgres://payment@localhost/payment")).await?;
//! let shutdown = tokio_util::sync::CancellationToken::new();
//!
//! // Publishes what handlers commit to the outbox.
//! let relay = db.relay(&bus).start(shutdown.clone());
//!
//! let store = db.clone();
//! let payment = Service::new("payment")
//!     .idempotency(db.inbox()) // an event in the inbox is skipped
//!     .on(move |order: OrderPlaced, ctx: Context| {
//!         let db = store.clone();
//!         async move {
//!             // Records the event in the inbox; None: a redelivery of an event already handled.
//!             let Some(tx) = db.begin(&ctx).await? else { return Ok(()) };
//!             tx.client()
//!                 .execute("INSERT INTO ledger (order_id, cents) VALUES ($1, $2)",
//!                          &[&order.order_id, &order.total_cents])
//!                 .await?;
//!             ctx.emit(&PaymentCaptured { order_id: order.order_id })?; // into the outbox, in `tx`
//!             tx.commit().await?;
//!             Ok::<(), HandlerError>(())
//!         }
//!     })
//!     .start(&bus, shutdown.clone())
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # Concepts
//!
//! - [`PgStore`]: the service's database — a connection pool
//!   (`deadpool-postgres`), the schema (created by versioned
//!   [`migrations`](MIGRATIONS) at connect), the outbox and the inbox.
//! - [`PgStore::begin`]: a handler's [`Transaction`]. It records the event in
//!   the inbox first (returning `None` for an event already handled), and
//!   diverts the handler's `ctx.emit` into the outbox in the same
//!   transaction (through the runtime's
//!   [`EmissionSink`](choreo_bus::EmissionSink) hook): the events keep the
//!   id, correlation, causation, time and trace context the context stamped.
//! - [`PgStore::transaction`]: the same outside handlers, with
//!   [`Transaction::start_flow`] and [`Transaction::publish_caused_by`] as a
//!   [`Publisher`](choreo_bus::Publisher) would; [`OutboxBus`] makes any
//!   `Publisher` write through the outbox.
//! - [`PgStore::inbox`]: the inbox as the service's
//!   [`Idempotency`](choreo_bus::Idempotency) store.
//! - [`Relay`]: publishes committed rows, in order per key (lanes locked with
//!   `FOR UPDATE SKIP LOCKED`), woken by `LISTEN/NOTIFY` with polling as a
//!   fallback; several may run; rows that no longer decode are moved aside
//!   with the reason; sent rows and old inbox rows are pruned.
//!
//! # Why tokio-postgres
//!
//! `tokio-postgres` with `deadpool-postgres` rather than `sqlx`: a smaller
//! dependency tree (no query macros, no second pool, no migration runner we
//! would not use), statements pipelined on one connection (a handler's
//! `BEGIN` and inbox row, and its outbox rows and `COMMIT`, each go in one
//! round trip), and notifications read straight from the connection. The
//! handler gets a plain `tokio_postgres` client (re-exported here) for its
//! own statements.
//!
//! # Metrics
//!
//! [`METRICS`] (backlog rows and oldest age, relayed, failures, moved aside,
//! relay lag, pruned, inbox hits), on a registry of your choice through
//! [`PgMetrics`]. docs/postgres.md documents the schema, the migrations,
//! the configuration and the failure behaviour.

mod bus;
mod config;
mod error;
mod inbox;
mod metrics;
mod relay;
mod row;
mod schema;
mod store;
mod transaction;

pub use bus::OutboxBus;
pub use config::{PgConfig, Tables, redact};
pub use error::{Error, Result};
pub use metrics::{LAG_BUCKETS, METRICS, PgMetrics};
pub use relay::{BatchReport, Pruned, Relay, RelayConfig};
pub use schema::{MIGRATIONS, Migration, migrations, migrations_table_sql};
pub use store::{Backlog, PgStore};
pub use transaction::Transaction;

/// The PostgreSQL client this crate uses, for the service's own statements.
pub use deadpool_postgres;
/// The PostgreSQL client this crate uses, for the service's own statements.
pub use tokio_postgres;
