//! Declaring a Rust type as an event.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A Rust type that travels as an event: its type name and the topic it is
/// published to are part of the type.
///
/// Implement it by hand, or with the [`event!`](crate::event!) macro:
///
/// ```
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct OrderPlaced { order_id: u64, total_cents: u64 }
///
/// // type name "OrderPlaced", topic "orders"
/// choreo_core::event!(OrderPlaced, topic = "orders");
///
/// #[derive(Serialize, Deserialize)]
/// struct Refunded { order_id: u64 }
/// // an explicit type name, when the wire name differs from the Rust name
/// choreo_core::event!(Refunded, topic = "payments", name = "payment.refunded");
///
/// use choreo_core::Event;
/// assert_eq!(OrderPlaced::TYPE, "OrderPlaced");
/// assert_eq!(Refunded::TOPIC, "payments");
/// ```
///
/// The payload is serialized with serde by the service's codec (JSON unless the
/// service chooses another one).
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The event type name on the wire (`type` in the envelope, `ce_type` on Kafka).
    const TYPE: &'static str;
    /// The topic events of this type are published to.
    const TOPIC: &'static str;

    /// The partition key, when it should be something other than the flow's
    /// correlation id. Keep the default unless you know why: keying by
    /// correlation id keeps a flow on one partition per topic, which is what lets
    /// several tracer instances each see whole flows.
    fn key(&self) -> Option<String> {
        None
    }
}

/// Implements [`Event`] for a type: `event!(Type, topic = "orders")`, optionally
/// with `name = "wire.name"` for a type name other than the Rust identifier.
#[macro_export]
macro_rules! event {
    ($ty:ident, topic = $topic:expr) => {
        impl $crate::Event for $ty {
            const TYPE: &'static str = stringify!($ty);
            const TOPIC: &'static str = $topic;
        }
    };
    ($ty:ident, topic = $topic:expr, name = $name:expr) => {
        impl $crate::Event for $ty {
            const TYPE: &'static str = $name;
            const TOPIC: &'static str = $topic;
        }
    };
}
