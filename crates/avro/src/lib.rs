//! Avro payloads for choreo: schemas derived from Rust types, the Confluent
//! wire format, and schema registries.
//!
//! ```
//! use std::sync::Arc;
//! use apache_avro::AvroSchema;
//! use choreo_avro::{AvroCodec, MemoryRegistry};
//! use choreo_core::Codecs;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, AvroSchema)]
//! struct OrderPlaced { order_id: u64, total_cents: u64 }
//! choreo_core::event!(OrderPlaced, topic = "orders");
//!
//! // Give the codecs to a service (`Service::codecs`) or a publisher.
//! let avro = AvroCodec::new(MemoryRegistry::new()).with::<OrderPlaced>();
//! let codecs = Codecs::json().encode_with(Arc::new(avro));
//! let payload = codecs.encode(&OrderPlaced { order_id: 1, total_cents: 995 }).unwrap();
//! let back: OrderPlaced = codecs.decode(&codecs.content_type(), &payload).unwrap();
//! assert_eq!(back.total_cents, 995);
//! ```
//!
//! # Concepts
//!
//! - [`AvroCodec`]: a [`Codec`](choreo_core::Codec) for `application/avro`.
//!   Each event type gets a schema derived from its Rust type
//!   (`#[derive(AvroSchema)]`, [`AvroCodec::with`]); payloads use the
//!   Confluent wire format: magic byte 0, the schema id as 4 big-endian
//!   bytes, the Avro binary datum. Readers resolve the writer's schema
//!   against their own, so adding a field with a default is compatible.
//! - [`SchemaRegistry`]: where schemas get ids, under the subject
//!   `<topic>-value`. [`MemoryRegistry`] keeps them in the process;
//!   [`HttpRegistry`] is a client of Confluent-compatible registries.
//!
//! This crate links no Kafka client: the codec works on any backend (the
//! in-process bus too), and tools such as the tracer can decode Avro
//! payloads without building librdkafka.
//!
//! # Feature flags
//!
//! - `tls`: `https` registry URLs (rustls).

mod codec;
mod error;
mod registry;

pub use codec::{AvroCodec, MAGIC, SubjectNaming};
pub use error::{Error, Result};
pub use registry::{HttpRegistry, MemoryRegistry, SchemaRegistry};

/// Re-exported so services derive schemas with the same version of the crate.
pub use apache_avro;
