//! Schema evolution: a consumer whose event type gained a field with a
//! default reads records written with the old schema, and an old consumer
//! reads records written with the new one.

use std::sync::Arc;

use apache_avro::AvroSchema;
use choreo_avro::{AvroCodec, MemoryRegistry, SchemaRegistry};
use choreo_core::Codecs;
use serde::{Deserialize, Serialize};

mod v1 {
    use super::*;
    /// The first version.
    #[derive(Debug, Serialize, Deserialize, AvroSchema)]
    #[serde(rename = "OrderPlaced")]
    pub(crate) struct OrderPlaced {
        pub(crate) order_id: u64,
        pub(crate) total_cents: i64,
    }
    choreo_core::event!(OrderPlaced, topic = "orders");
}

mod v2 {
    use super::*;
    /// The second version: a currency, defaulting to EUR for old records.
    #[derive(Debug, Serialize, Deserialize, AvroSchema)]
    #[serde(rename = "OrderPlaced")]
    pub(crate) struct OrderPlaced {
        pub(crate) order_id: u64,
        pub(crate) total_cents: i64,
        #[avro(default = r#""EUR""#)]
        pub(crate) currency: String,
    }
    choreo_core::event!(OrderPlaced, topic = "orders");
}

#[test]
fn a_newer_reader_fills_the_added_field_from_its_default() {
    let registry: Arc<dyn SchemaRegistry> = Arc::new(MemoryRegistry::new());
    let old = Codecs::json().encode_with(Arc::new(
        AvroCodec::with_registry(registry.clone()).with::<v1::OrderPlaced>(),
    ));
    let new = Codecs::json().encode_with(Arc::new(
        AvroCodec::with_registry(registry.clone()).with::<v2::OrderPlaced>(),
    ));

    let written = old
        .encode(&v1::OrderPlaced {
            order_id: 7,
            total_cents: 995,
        })
        .unwrap();
    let read: v2::OrderPlaced = new.decode(&new.content_type(), &written).unwrap();
    assert_eq!(read.order_id, 7);
    assert_eq!(read.total_cents, 995);
    assert_eq!(read.currency, "EUR");

    // And the other way: an old reader ignores the field it does not know.
    let written = new
        .encode(&v2::OrderPlaced {
            order_id: 8,
            total_cents: 100,
            currency: "USD".into(),
        })
        .unwrap();
    let read: v1::OrderPlaced = old.decode(&old.content_type(), &written).unwrap();
    assert_eq!((read.order_id, read.total_cents), (8, 100));
}

#[test]
fn both_versions_are_registered_under_the_topic_subject_with_their_own_ids() {
    let registry = Arc::new(MemoryRegistry::new());
    let shared: Arc<dyn SchemaRegistry> = registry.clone();
    let v1 = AvroCodec::with_registry(shared.clone()).with::<v1::OrderPlaced>();
    let v2 = AvroCodec::with_registry(shared).with::<v2::OrderPlaced>();
    v1.register([("OrderPlaced", "orders")]).unwrap();
    v2.register([("OrderPlaced", "orders")]).unwrap();
    let versions = registry.versions("orders-value");
    assert_eq!(versions.len(), 2);
    assert_ne!(versions[0], versions[1]);
    // u64 is written as a portable Avro long.
    let schema = registry.schema(versions[0]).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&schema).unwrap();
    assert_eq!(parsed["fields"][0]["name"], "order_id");
    assert_eq!(parsed["fields"][0]["type"], "long", "{schema}");
}
