//! The saga's events: typed, each on the topic the topology declares; JSON by
//! default, Avro with schemas derived from these types ([`crate::avro_codecs`]).

use apache_avro::AvroSchema;
use serde::{Deserialize, Serialize};

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
pub struct Item {
    /// Stock keeping unit.
    pub sku: String,
    /// How many.
    pub quantity: u32,
}

/// A customer checked out a cart. Starts a flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
pub struct OrderPlaced {
    /// The order.
    pub order_id: u64,
    /// Who ordered.
    pub customer: String,
    /// What.
    pub items: Vec<Item>,
    /// How much, in cents.
    pub total_cents: u64,
}
choreo::event!(OrderPlaced, topic = "orders");

/// The card was charged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
pub struct PaymentCaptured {
    /// The order.
    pub order_id: u64,
    /// The charge, for a refund.
    pub payment_id: String,
    /// Charged, in cents.
    pub amount_cents: u64,
    /// What to reserve.
    pub items: Vec<Item>,
}
choreo::event!(PaymentCaptured, topic = "payments");

/// The card was declined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
pub struct PaymentFailed {
    /// The order.
    pub order_id: u64,
    /// Why.
    pub reason: String,
}
choreo::event!(PaymentFailed, topic = "payments");

/// Every item is set aside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
pub struct StockReserved {
    /// The order.
    pub order_id: u64,
    /// The reservation.
    pub reservation_id: String,
}
choreo::event!(StockReserved, topic = "inventory");

/// An item is not in stock: the payment must be refunded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
pub struct OutOfStock {
    /// The order.
    pub order_id: u64,
    /// The missing item.
    pub sku: String,
    /// The charge to refund.
    pub payment_id: String,
    /// How much to refund.
    pub amount_cents: u64,
}
choreo::event!(OutOfStock, topic = "inventory");

/// The charge was refunded (compensation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
pub struct PaymentRefunded {
    /// The order.
    pub order_id: u64,
    /// The refunded charge.
    pub payment_id: String,
    /// Refunded, in cents.
    pub amount_cents: u64,
}
choreo::event!(PaymentRefunded, topic = "payments");

/// The parcel left the warehouse. Ends a flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
pub struct OrderShipped {
    /// The order.
    pub order_id: u64,
    /// Carrier tracking number.
    pub tracking: String,
}
choreo::event!(OrderShipped, topic = "shipping");

/// The order will not be fulfilled. Ends a flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
pub struct OrderCancelled {
    /// The order.
    pub order_id: u64,
    /// Why.
    pub reason: String,
}
choreo::event!(OrderCancelled, topic = "orders");
