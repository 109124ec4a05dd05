//! Any record — topic, partition, offset, timestamp, key, value, headers —
//! through `choreo_kafka::record::envelope_from_record`, binary and
//! structured CloudEvents mode alike: it must never panic, and what it
//! returns must be a usable envelope (its headers and a record made from it
//! again). Input layout: `choreo_fuzz::Record`; seeds in
//! `corpus/record_to_envelope/`.

#![no_main]

use choreo_fuzz::Record;
use choreo_kafka::record::envelope_from_record;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let record = Record::decode(data);
    let env = record.with_parts(envelope_from_record);
    // The envelope is whole: ids, type and source are set, derived if need be.
    assert!(!env.id.to_string().is_empty());
    assert!(!env.correlation_id.to_string().is_empty());
    let _ = format!("{env:?}");
    // What was read can be written again (or is refused with an error).
    if let Ok(again) = record.carrying(&env) {
        let back = again.with_parts(envelope_from_record);
        assert_eq!(back.id, env.id, "a written envelope reads back with its id");
        assert_eq!(back.event_type, env.event_type);
        assert_eq!(back.data, env.data);
    }
});
