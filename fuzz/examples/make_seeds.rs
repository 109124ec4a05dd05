//! Writes the seed corpora of the fuzz targets from real data made by the
//! code itself: records the Kafka backend writes (binary mode) and a
//! structured CloudEvent, Avro payloads the codec encodes, and the example
//! topologies. The capture seeds come from `crates/trace/examples/gen_capture.rs`.
//! Deterministic: a rerun writes the same bytes.
//!
//! ```sh
//! cargo run --manifest-path fuzz/Cargo.toml --example make_seeds
//! ```

use std::path::{Path, PathBuf};

use choreo_core::{Codec, Envelope, EventId, PayloadMeta, Timestamp};
use choreo_fuzz::{AVRO_TYPES, Record};
use serde_json::json;

fn corpus(target: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).expect("corpus dir");
    dir
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let path = corpus(target).join(name);
    std::fs::write(&path, bytes).expect("write seed");
    println!("{} ({} bytes)", path.display(), bytes.len());
}

/// The record the Kafka backend writes for `env`.
fn record_of(env: &Envelope, offset: i64) -> Record {
    Record {
        topic: env.topic.to_string(),
        partition: 1,
        offset,
        timestamp_ms: Some(env.time.as_millis()),
        ..Record::default()
    }
    .carrying(env)
    .expect("a valid envelope")
}

/// `env` with a fixed id and time instead of fresh ones, so rerunning this
/// program rewrites the seeds byte for byte. A flow's first event keeps its
/// correlation id and key equal to its id.
fn fixed(mut env: Envelope, id: &str, micros: i64) -> Envelope {
    let id = EventId::parse(id).expect("a UUID");
    if env.causation_id.is_none() {
        env.correlation_id = id.clone();
        env.key = Some(id.to_key());
    }
    env.id = id;
    env.time = Timestamp::from_micros(micros);
    env
}

fn records() {
    let placed = fixed(
        Envelope::new("OrderPlaced", "orders", r#"{"order_id":42,"total":19.5}"#)
            .with_source("checkout"),
        "019ab697-e802-7029-acce-be1067d5b17e",
        1_764_000_000_000_000,
    );
    let mut captured = fixed(
        Envelope::new("PaymentCaptured", "payments", r#"{"order_id":42}"#)
            .with_source("payment")
            .caused_by(&placed),
        "019ab697-e807-7d06-b8e8-ebad37e9a894",
        1_764_000_000_012_345,
    );
    captured.traceparent =
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned());
    captured.tracestate = Some("vendor=1".to_owned());
    captured.headers.insert("choreo-attempt", "2");
    write(
        "record_to_envelope",
        "binary-flow-start",
        &record_of(&placed, 7).encode(),
    );
    write(
        "record_to_envelope",
        "binary-caused",
        &record_of(&captured, 8).encode(),
    );
    // A record from a producer that knows nothing of CloudEvents.
    let foreign = Record {
        topic: "legacy".into(),
        partition: 0,
        offset: 3,
        timestamp_ms: Some(1_764_000_000_000),
        key: Some(b"customer-9".to_vec()),
        value: Some(b"plain bytes".to_vec()),
        headers: vec![("x-origin".into(), Some(b"batch".to_vec()))],
    };
    write("record_to_envelope", "foreign", &foreign.encode());
    // Structured content mode: the whole CloudEvent in the value.
    let structured = json!({
        "specversion": "1.0", "id": "e-1", "source": "payment", "type": "PaymentCaptured",
        "time": "2025-11-25T21:07:15.123456Z", "datacontenttype": "application/json",
        "correlationid": "flow-1", "causationid": "e-0",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "subject": "order-7", "data": {"order_id": 7}
    });
    let structured = Record {
        topic: "payments".into(),
        partition: 2,
        offset: 11,
        timestamp_ms: None,
        key: Some(b"flow-1".to_vec()),
        value: Some(structured.to_string().into_bytes()),
        headers: vec![(
            "content-type".into(),
            Some(b"application/cloudevents+json; charset=utf-8".to_vec()),
        )],
    };
    write("record_to_envelope", "structured", &structured.encode());
    let base64 = Record {
        value: Some(
            json!({"specversion": "1.0", "id": "e-2", "source": "s", "type": "T",
                   "data_base64": "AAECAw=="})
            .to_string()
            .into_bytes(),
        ),
        ..structured
    };
    write("record_to_envelope", "structured-base64", &base64.encode());
}

fn avro() {
    let codec = choreo_fuzz::avro_writer_codec();
    let values = [
        json!({"order_id": 42, "customer": "c-7", "items": [
            {"sku": "A-1", "qty": 2, "price": 9.75}, {"sku": "B-2", "qty": 1, "price": 0.5}],
            "note": "gift", "tags": {"channel": "web"}}),
        json!({"order_id": 42, "amount": "\u{0}\u{19}d", "currency": "EUR", "card": "4242",
            "at": 1_764_000_000_000_000i64, "id": "0193a6f0-8d2c-7c1e-9b1a-0c2d3e4f5a6b"}),
        json!({"label": "root", "children": [{"label": "leaf", "children": [], "weight": 0.5}],
            "weight": true}),
    ];
    for (i, ((name, _, _), value)) in AVRO_TYPES.iter().zip(values).enumerate() {
        let meta = PayloadMeta {
            event_type: name,
            topic: "fuzz",
        };
        let payload = codec
            .encode(meta, &value)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        // The first byte picks the event type the target decodes as.
        let mut seed = vec![i as u8];
        seed.extend_from_slice(&payload);
        write("confluent_avro", &format!("{name}.avro"), &seed);
    }
}

fn topologies() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../topologies");
    for dir in [root.clone(), root.join("fixtures")] {
        for entry in std::fs::read_dir(&dir).expect("topologies") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                write(
                    "topology_loader",
                    &name,
                    &std::fs::read(&path).expect("read"),
                );
            }
        }
    }
}

fn main() {
    records();
    avro();
    topologies();
}
