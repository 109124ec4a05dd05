//! Any bytes as a Confluent-framed Avro payload (magic byte 0, 4-byte
//! big-endian schema id, datum) through `AvroCodec::decode`, with a registry
//! holding a few schemas (records, arrays, maps, unions, enums, fixed,
//! decimals, a recursive type) and reader schemas that differ from the
//! writer's: decoding must fail cleanly or return a value, never panic. The
//! first byte picks the event type (one the codec has a reader schema for,
//! or not). Seeds in `corpus/confluent_avro/`: payloads the codec encoded.

#![no_main]

use std::sync::OnceLock;

use choreo_avro::AvroCodec;
use choreo_core::{Codec, PayloadMeta};
use libfuzzer_sys::fuzz_target;

fn codec() -> &'static AvroCodec {
    static C: OnceLock<AvroCodec> = OnceLock::new();
    C.get_or_init(choreo_fuzz::avro_codec)
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let types = choreo_fuzz::AVRO_TYPES;
    let event_type = types
        .get(pick as usize % (types.len() + 1))
        .map_or("Unregistered", |t| t.0);
    let meta = PayloadMeta {
        event_type,
        topic: "fuzz",
    };
    match codec().decode(meta, payload) {
        Ok(value) => {
            let _ = value.to_string();
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
