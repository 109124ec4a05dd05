//! Runs the order-fulfillment saga.
//!
//! ```text
//! cargo run -p order-saga -- --orders 20
//! ```
//!
//! All five services run in this process on the in-process bus; the program
//! places the orders, waits until every one is shipped or cancelled, prints
//! what happened to each, and shuts the services down gracefully.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, bail};
use choreo::{
    Bus, CancellationToken, Event, InProcessBus, Publisher, SubscribeOptions, Subscription,
};
use clap::Parser;
use order_saga::events::{OrderCancelled, OrderShipped};

/// The order-fulfillment saga, written with choreo.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// How many orders to place.
    #[arg(long, default_value_t = 20)]
    orders: u64,
    /// Give up waiting for the flows after this many seconds.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bus = InProcessBus::new();
    let shutdown = CancellationToken::new();

    // A reader of the flows' ends, to know when we are done (and what happened).
    let mut ends = bus
        .subscribe(SubscribeOptions::new(
            "order-saga-report",
            [OrderShipped::TOPIC, OrderCancelled::TOPIC],
        ))
        .await
        .context("subscribing to the ends of the flows")?;

    let mut running = Vec::new();
    for service in order_saga::services() {
        running.push(service.start(&bus, shutdown.clone()).await?);
    }
    println!(
        "order-saga: {} services on the in-process bus: {}",
        running.len(),
        order_saga::SERVICES.join(", ")
    );

    let checkout = Publisher::new(&bus, "checkout");
    for n in 1..=args.orders {
        order_saga::place_order(&checkout, &order_saga::demo_order(n)).await?;
    }
    println!("placed {} orders", args.orders);

    let mut outcome: BTreeMap<u64, String> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout_secs);
    while (outcome.len() as u64) < args.orders {
        let next = tokio::time::timeout_at(deadline, ends.next()).await;
        let Ok(Some(Ok(d))) = next else {
            bail!(
                "only {} of {} orders finished within {}s",
                outcome.len(),
                args.orders,
                args.timeout_secs
            );
        };
        let env = d.envelope();
        match env.event_type.as_str() {
            t if t == OrderShipped::TYPE => {
                let e: OrderShipped = serde_json::from_slice(&env.data)?;
                outcome.insert(e.order_id, format!("shipped ({})", e.tracking));
            }
            t if t == OrderCancelled::TYPE => {
                let e: OrderCancelled = serde_json::from_slice(&env.data)?;
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
    ends.close().await?;
    Ok(())
}
