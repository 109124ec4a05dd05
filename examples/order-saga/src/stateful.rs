//! `payment` and `inventory` keeping their state in PostgreSQL, through the
//! transactional outbox and inbox of `choreo::postgres` (the binary's
//! `--postgres URL` flag).
//!
//! Each handler does its work in one database transaction: it records the
//! event in the service's inbox (skipping it when an earlier delivery
//! already committed), writes the service's own rows, and emits its events
//! into the service's outbox; a relay in the same process publishes what was
//! committed. A crash at any point neither loses an event nor repeats a
//! charge (`tests/postgres_crash.rs` kills `payment` with `kill -9` to show it).
//!
//! Both services can share one database: their tables have their own
//! prefixes (`payment_…`, `inventory_…`).

use choreo::postgres::{PgConfig, PgMetrics, PgStore, Tables};
use choreo::{Context, HandlerError, Service};

use crate::events::{
    OrderPlaced, OutOfStock, PaymentCaptured, PaymentFailed, PaymentRefunded, StockReserved,
};
use crate::services::payment::CARD_LIMIT_CENTS;

/// The payment service's ledger: one row per charge, decline and refund.
/// Deliberately without a unique constraint on the order: the inbox, not
/// the schema, is what keeps a redelivered order from being charged twice.
pub const PAYMENT_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS payment_ledger (
    entry        bigserial   PRIMARY KEY,
    order_id     bigint      NOT NULL,
    kind         text        NOT NULL CHECK (kind IN ('charge', 'decline', 'refund')),
    amount_cents bigint      NOT NULL,
    event_id     text        NOT NULL,
    at           timestamptz NOT NULL DEFAULT now()
);";

/// The inventory service's stock and reservations. SKUs not in
/// `inventory_stock` are unlimited.
pub const INVENTORY_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS inventory_stock (
    sku        text    PRIMARY KEY,
    units_left integer NOT NULL CHECK (units_left >= 0)
);
INSERT INTO inventory_stock (sku, units_left) VALUES ('sku-limited-edition', 3) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS inventory_reservations (
    order_id bigint  NOT NULL,
    sku      text    NOT NULL,
    quantity integer NOT NULL,
    event_id text    NOT NULL
);";

/// Connects `service`'s store (`payment` or `inventory`) at `url`, with the
/// service's table prefix and application name, and creates its own tables.
pub async fn connect(
    service: &str,
    url: &str,
    metrics: Option<PgMetrics>,
) -> Result<PgStore, choreo::postgres::Error> {
    let mut config = PgConfig::new(url)
        .tables(Tables::prefixed(&format!("{service}_")))
        .application_name(service);
    if let Some(m) = metrics {
        config = config.metrics(m);
    }
    let store = PgStore::connect(config).await?;
    let schema = if service == "payment" {
        PAYMENT_SCHEMA
    } else {
        INVENTORY_SCHEMA
    };
    let client = store
        .pool()
        .get()
        .await
        .map_err(|e| choreo::postgres::Error::Pool {
            url: store.tables().to_string(),
            reason: e.to_string(),
        })?;
    // Under an advisory lock: processes starting together create them once.
    client
        .batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock(hashtext('order-saga {service} schema')); {schema} COMMIT;"
        ))
        .await
        .map_err(|e| choreo::postgres::Error::Db {
            what: format!("creating the {service} tables"),
            reason: e.to_string(),
            error: e,
        })?;
    Ok(store)
}

/// Charges cards and refunds them, keeping the ledger in PostgreSQL.
pub fn payment(db: PgStore) -> Service {
    let refunds = db.clone();
    Service::new("payment")
        .idempotency(db.inbox())
        .on(move |o: OrderPlaced, ctx: Context| {
            let db = db.clone();
            async move {
                let Some(tx) = db.begin(&ctx).await? else {
                    return Ok(()); // an earlier delivery committed it
                };
                let declined = o.total_cents > CARD_LIMIT_CENTS;
                tx.client()
                    .execute(
                        "INSERT INTO payment_ledger (order_id, kind, amount_cents, event_id) VALUES ($1, $2, $3, $4)",
                        &[
                            &(o.order_id as i64),
                            &if declined { "decline" } else { "charge" },
                            &(o.total_cents as i64),
                            &ctx.event().id.to_string(),
                        ],
                    )
                    .await?;
                if declined {
                    ctx.emit(&PaymentFailed {
                        order_id: o.order_id,
                        reason: format!("{} cents is above the card limit", o.total_cents),
                    })?;
                } else {
                    ctx.emit(&PaymentCaptured {
                        order_id: o.order_id,
                        payment_id: format!("pay-{}", o.order_id),
                        amount_cents: o.total_cents,
                        items: o.items,
                    })?;
                }
                tx.commit().await?;
                Ok::<(), HandlerError>(())
            }
        })
        .on(move |e: OutOfStock, ctx: Context| {
            let db = refunds.clone();
            async move {
                let Some(tx) = db.begin(&ctx).await? else {
                    return Ok(());
                };
                tx.client()
                    .execute(
                        "INSERT INTO payment_ledger (order_id, kind, amount_cents, event_id) VALUES ($1, 'refund', $2, $3)",
                        &[&(e.order_id as i64), &(e.amount_cents as i64), &ctx.event().id.to_string()],
                    )
                    .await?;
                ctx.emit(&PaymentRefunded {
                    order_id: e.order_id,
                    payment_id: e.payment_id,
                    amount_cents: e.amount_cents,
                })?;
                tx.commit().await?;
                Ok::<(), HandlerError>(())
            }
        })
}

/// Reserves stock, keeping it in PostgreSQL.
pub fn inventory(db: PgStore) -> Service {
    Service::new("inventory")
        .idempotency(db.inbox())
        .on(move |p: PaymentCaptured, ctx: Context| {
            let db = db.clone();
            async move {
                let Some(tx) = db.begin(&ctx).await? else {
                    return Ok(());
                };
                let skus: Vec<String> = p.items.iter().map(|i| i.sku.clone()).collect();
                // Locks the limited SKUs of this order until commit.
                let rows = tx
                    .client()
                    .query(
                        "SELECT sku, units_left FROM inventory_stock WHERE sku = ANY($1) ORDER BY sku FOR UPDATE",
                        &[&skus],
                    )
                    .await?;
                let left = |sku: &str| {
                    rows.iter()
                        .find(|r| r.get::<_, &str>(0) == sku)
                        .map(|r| r.get::<_, i32>(1))
                };
                let missing = p
                    .items
                    .iter()
                    .find(|i| left(&i.sku).is_some_and(|n| (n as u32) < i.quantity));
                match missing {
                    Some(item) => {
                        ctx.emit(&OutOfStock {
                            order_id: p.order_id,
                            sku: item.sku.clone(),
                            payment_id: p.payment_id,
                            amount_cents: p.amount_cents,
                        })?;
                    }
                    None => {
                        for i in &p.items {
                            tx.client()
                                .execute(
                                    "UPDATE inventory_stock SET units_left = units_left - $2 WHERE sku = $1",
                                    &[&i.sku, &(i.quantity as i32)],
                                )
                                .await?;
                            tx.client()
                                .execute(
                                    "INSERT INTO inventory_reservations (order_id, sku, quantity, event_id) VALUES ($1, $2, $3, $4)",
                                    &[&(p.order_id as i64), &i.sku, &(i.quantity as i32), &ctx.event().id.to_string()],
                                )
                                .await?;
                        }
                        ctx.emit(&StockReserved {
                            order_id: p.order_id,
                            reservation_id: format!("res-{}", p.order_id),
                        })?;
                    }
                }
                tx.commit().await?;
                Ok::<(), HandlerError>(())
            }
        })
}
