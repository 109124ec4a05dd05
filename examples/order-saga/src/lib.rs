//! The order-fulfillment saga of `topologies/order-fulfillment.yaml`, written
//! with choreo: five services that choreograph an order from checkout to
//! shipment or cancellation (with a refund when the stock is out).
//!
//! Each service is a module with a `service()` function; [`services()`] returns
//! them all. Run them in one process on the in-process bus, or each in its own
//! process on Kafka (see the `order-saga` binary).

pub mod crash_point;
pub mod events;
pub mod services;
pub mod stateful;

use std::sync::Arc;

use choreo::avro::{AvroCodec, SchemaRegistry};
use choreo::codec::Codecs;
use choreo::{Bus, EventId, Publisher, Service};

use events::*;

/// Every service of the saga, by name.
pub fn services() -> Vec<Service> {
    vec![
        services::checkout::service(),
        services::payment::service(),
        services::inventory::service(),
        services::shipping::service(),
        services::notifications::service(),
    ]
}

/// Codecs that write every saga event as Avro (Confluent wire format, schemas
/// derived from the Rust types and registered in `registry` under
/// `<topic>-value`) and still read JSON.
pub fn avro_codecs(registry: impl SchemaRegistry) -> Codecs {
    let avro = AvroCodec::new(registry)
        .with::<OrderPlaced>()
        .with::<PaymentCaptured>()
        .with::<PaymentFailed>()
        .with::<StockReserved>()
        .with::<OutOfStock>()
        .with::<PaymentRefunded>()
        .with::<OrderShipped>()
        .with::<OrderCancelled>();
    Codecs::json().encode_with(Arc::new(avro))
}

/// The names of the saga's services.
pub const SERVICES: &[&str] = &[
    "checkout",
    "payment",
    "inventory",
    "shipping",
    "notifications",
];

/// The `n`th demo order: most are fine, some exceed the card limit, some ask
/// for the limited edition that runs out.
pub fn demo_order(n: u64) -> OrderPlaced {
    let mut items = vec![Item {
        sku: format!("sku-{}", n % 7),
        quantity: 1 + (n % 3) as u32,
    }];
    if n % 5 == 2 {
        items.push(Item {
            sku: "sku-limited-edition".into(),
            quantity: 1,
        });
    }
    let total_cents = if n % 6 == 5 {
        75_000
    } else {
        1_500 + 1_000 * (n % 20)
    };
    OrderPlaced {
        order_id: n,
        customer: format!("customer-{}", n % 11),
        items,
        total_cents,
    }
}

/// Places an order: the checkout service starts a flow. Returns its correlation id.
pub async fn place_order<B: Bus>(
    checkout: &Publisher<B>,
    order: &OrderPlaced,
) -> choreo::Result<EventId> {
    checkout.start_flow(order).await
}
