//! choreo's contract: the event envelope, ids, codecs, receipts and the [`Bus`] traits.
//!
//! ```
//! use choreo_core::{Codecs, Envelope, Event};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct OrderPlaced { order_id: u64 }
//! choreo_core::event!(OrderPlaced, topic = "orders");
//!
//! let data = Codecs::json().encode(&OrderPlaced { order_id: 42 }).unwrap();
//! let first = Envelope::new(OrderPlaced::TYPE, OrderPlaced::TOPIC, data).with_source("checkout");
//! assert_eq!(first.correlation_id, first.id); // a flow's first event names the flow
//! assert!(first.causation_id.is_none());
//! ```
//!
//! # Concepts
//!
//! - [`Envelope`]: the metadata and payload every event travels with, on every
//!   backend: id, type, source, topic, key, correlation id (the flow), causation
//!   id (the event that caused this one), time, trace context, content type.
//! - [`Event`]: a Rust type with a type name and a topic.
//! - [`Codec`] / [`Codecs`]: how payloads are encoded; JSON is built in.
//! - [`Bus`] / [`Subscription`] / [`Delivery`]: the backend contract, written out
//!   in the [`bus`] module docs.
//! - [`Receipt`]: what a service did with a delivery, for the tracer.
//!
//! Backends: `choreo-bus` (in-process, the default) and `choreo-kafka`.
//! Services use the `choreo` facade crate rather than this one.

#[doc(hidden)]
pub mod base64;
pub mod bus;
mod codec;
mod envelope;
mod error;
mod event;
mod id;
mod limits;
mod name;
mod receipt;
mod time;

pub use bus::{
    Bus, DeadLetter, Delivery, MALFORMED_HEADER, RELAYED_AT_HEADER, Settle, Settlement, StartFrom,
    SubscribeOptions, Subscription, dead_letter_envelope, dead_letter_topic, dlq_headers,
};
pub use codec::{Codec, Codecs, JsonCodec, PayloadMeta};
pub use envelope::{ContentType, Envelope, Headers, PartitionKey, murmur2};
pub use error::{Error, Result};
pub use event::Event;
pub use id::{EmptyId, EventId};
pub use limits::Limits;
pub use name::Name;
pub use receipt::{Outcome, RECEIPT_TYPE, RECEIPTS_TOPIC, Receipt, ReceiptHead, ReceiptRef};
pub use time::Timestamp;
