//! Damaged, truncated and foreign capture files: what was read, where the damage is, never a panic.

use crate::helpers::*;
use choreo_core::Envelope;
use choreo_trace::capture::{Format, Reader, Writer};
use choreo_trace::{Error, Record};
use proptest::prelude::*;

fn sample(n: usize) -> Vec<Record> {
    let h = Hand::default();
    let mut out = Vec::new();
    for i in 0..n {
        let placed = h.start("OrderPlaced", "checkout", i as i64);
        let paid = h.after(&placed, "PaymentCaptured", "payment", i as i64 + 1);
        out.push(Record::new(placed).at(0, 2 * i as u64));
        out.push(Record::new(paid).at(1, 2 * i as u64 + 1));
    }
    out
}

fn write(records: &[Record], format: Format) -> Vec<u8> {
    let mut w = Writer::new(Vec::new(), format).unwrap();
    for r in records {
        w.write(r).unwrap();
    }
    w.finish().unwrap()
}

/// Reads everything: the records, and the error that ended the read, if any.
fn read(bytes: Vec<u8>) -> (Vec<Record>, Option<Error>) {
    let reader = match Reader::from_read("t", std::io::Cursor::new(bytes)) {
        Ok(r) => r,
        Err(e) => return (Vec::new(), Some(e)),
    };
    let mut ok = Vec::new();
    let mut err = None;
    for r in reader {
        match r {
            Ok(r) => ok.push(r),
            Err(e) => {
                assert!(err.is_none(), "one error at most");
                err = Some(e);
            }
        }
    }
    (ok, err)
}

/// The offset, record count and reason of a `Damaged` error; panics (naming
/// `context`) on anything else.
fn damage(err: Option<Error>, context: impl std::fmt::Display) -> (u64, u64, String) {
    match err {
        Some(Error::Damaged {
            offset,
            records,
            reason,
            ..
        }) => (offset, records, reason),
        other => panic!("{context}: expected damage, got {other:?}"),
    }
}

/// Breaks the length prefix of the 31st record's id in a 50-record Avro
/// capture with `corrupt`, then checks that the first 30 records are read and
/// the damage is reported at that prefix with `why` in its reason.
fn damaged_at_the_31st_id(corrupt: impl FnOnce(&mut Vec<u8>, usize), why: &str) {
    let records = sample(50);
    let mut bytes = write(&records, Format::Avro);
    let id = records[30].envelope.id.to_string();
    let prefix = bytes
        .windows(id.len())
        .position(|w| w == id.as_bytes())
        .unwrap()
        - 1;
    corrupt(&mut bytes, prefix);
    let (got, err) = read(bytes);
    assert_eq!(got[..], records[..30]);
    let (offset, n, reason) = damage(err, "");
    assert_eq!(n, 30);
    assert_eq!(offset, prefix as u64, "{reason}");
    assert!(reason.contains(why), "{reason}");
}

#[test]
fn a_truncated_avro_capture_yields_the_records_before_the_cut() {
    let records = sample(1000); // 2000 records: several 64 KiB blocks
    let bytes = write(&records, Format::Avro);
    let cut = bytes.len() * 2 / 3;
    let (got, err) = read(bytes[..cut].to_vec());
    assert!(got.len() > 1000 && got.len() < 2000, "{}", got.len());
    assert_eq!(got[..], records[..got.len()]);
    let (offset, n, reason) = damage(err, "");
    assert_eq!(n, got.len() as u64);
    assert!(
        offset <= cut as u64 && offset > (cut as u64).saturating_sub(2_000),
        "{offset} vs {cut}"
    );
    assert!(reason.contains("truncated"), "{reason}");
}

#[test]
fn a_corrupt_byte_is_reported_at_its_record() {
    // The 31st record's id gets a length of -64.
    damaged_at_the_31st_id(|bytes, prefix| bytes[prefix] = 0x7f, "corrupt");
}

#[test]
fn a_broken_sync_marker_is_damage_after_the_blocks_records() {
    let records = sample(5);
    let mut bytes = write(&records, Format::Avro);
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    let (got, err) = read(bytes.clone());
    assert_eq!(got.len(), 10);
    match err {
        Some(Error::Damaged { offset, .. }) => assert_eq!(offset, (bytes.len() - 16) as u64),
        other => panic!("expected damage, got {other:?}"),
    }
}

#[test]
fn a_truncated_json_lines_capture() {
    let records = sample(10);
    let bytes = write(&records, Format::JsonLines);
    let text = String::from_utf8(bytes.clone()).unwrap();
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(text.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let cut = line_starts[7] + 20;
    let (got, err) = read(bytes[..cut].to_vec());
    assert_eq!(got.len(), 7);
    assert_eq!(got[..], records[..7]);
    let (offset, records, reason) = damage(err, "");
    assert_eq!(offset, line_starts[7] as u64);
    assert_eq!(records, 7);
    assert!(
        reason.contains("line 8") && reason.contains("truncated"),
        "{reason}"
    );
}

#[test]
fn unknown_content_is_refused_and_empty_is_empty() {
    let (got, err) = read(b"PK\x03\x04 a zip file".to_vec());
    assert!(got.is_empty());
    assert!(matches!(err, Some(Error::UnknownFormat { .. })), "{err:?}");
    let (got, err) = read(Vec::new());
    assert!(got.is_empty() && err.is_none());
}

#[test]
fn json_lines_accept_cloudevents_names_and_missing_metadata() {
    let text = concat!(
        "{\"id\":\"a-1\",\"type\":\"OrderPlaced\",\"source\":\"checkout\",\"topic\":\"orders\",\"correlationid\":\"a-1\",\"time\":\"2026-01-01T00:00:00Z\",\"datacontenttype\":\"application/json\",\"data\":{\"order_id\":1}}\n",
        "\n",
        "{\"id\":\"b-1\",\"type\":\"Foreign\",\"time\":1767225600000000,\"data_base64\":\"AAEC\"}\n",
    );
    let (got, err) = read(text.as_bytes().to_vec());
    assert!(err.is_none(), "{err:?}");
    assert_eq!(got.len(), 2);
    assert!(got[0].attributed);
    assert_eq!(got[0].envelope.correlation_id.to_string(), "a-1");
    assert_eq!(&got[0].envelope.data[..], b"{\"order_id\":1}");
    assert!(!got[1].attributed, "no correlation id: unattributed");
    assert_eq!(&got[1].envelope.data[..], &[0, 1, 2]);
    assert_eq!(got[1].envelope.time, got[0].envelope.time);
}

#[test]
fn avro_written_by_apache_avro_with_another_schema_and_codec_is_read() {
    // An older writer schema: no traceparent/tracestate/headers/partition/offset, deflate codec.
    let schema = apache_avro::Schema::parse_str(
        r#"{"type":"record","name":"Record","namespace":"choreo.capture","fields":[
            {"name":"id","type":"string"},{"name":"type","type":"string"},
            {"name":"source","type":"string"},{"name":"topic","type":"string"},
            {"name":"key","type":["null","bytes"]},
            {"name":"correlation_id","type":["null","string"]},
            {"name":"causation_id","type":["null","string"]},
            {"name":"time","type":"long"},
            {"name":"content_type","type":"string"},{"name":"data","type":"bytes"}]}"#,
    )
    .unwrap();
    let env = Envelope::new("OrderPlaced", "orders", "{}").with_source("checkout");
    let mut w = apache_avro::Writer::with_codec(
        &schema,
        Vec::new(),
        apache_avro::Codec::Deflate(apache_avro::DeflateSettings::default()),
    )
    .unwrap();
    use apache_avro::types::Value;
    let rec = Value::Record(vec![
        ("id".into(), Value::String(env.id.to_string())),
        ("type".into(), Value::String("OrderPlaced".into())),
        ("source".into(), Value::String("checkout".into())),
        ("topic".into(), Value::String("orders".into())),
        ("key".into(), Value::Union(0, Box::new(Value::Null))),
        (
            "correlation_id".into(),
            Value::Union(1, Box::new(Value::String(env.id.to_string()))),
        ),
        (
            "causation_id".into(),
            Value::Union(0, Box::new(Value::Null)),
        ),
        ("time".into(), Value::Long(env.time.as_micros())),
        (
            "content_type".into(),
            Value::String("application/json".into()),
        ),
        ("data".into(), Value::Bytes(b"{}".to_vec())),
    ]);
    w.append_value(rec).unwrap();
    let bytes = w.into_inner().unwrap();
    let (got, err) = read(bytes);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].envelope.id, env.id);
    assert_eq!(got[0].envelope.time, env.time);
    assert!(got[0].attributed);
}

#[test]
fn apache_avro_reads_what_the_writer_writes() {
    let records = sample(3);
    let bytes = write(&records, Format::Avro);
    let reader = apache_avro::Reader::new(std::io::Cursor::new(bytes)).unwrap();
    let values: Vec<_> = reader.map(Result::unwrap).collect();
    assert_eq!(values.len(), 6);
    let apache_avro::types::Value::Record(fields) = &values[1] else {
        panic!("a record")
    };
    let get = |name: &str| fields.iter().find(|(n, _)| n == name).unwrap().1.clone();
    assert_eq!(
        get("type"),
        apache_avro::types::Value::String("PaymentCaptured".into())
    );
    assert_eq!(
        get("partition"),
        apache_avro::types::Value::Union(1, Box::new(apache_avro::types::Value::Int(1)))
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096), avro_magic in any::<bool>()) {
        let mut input = if avro_magic { b"Obj\x01".to_vec() } else { Vec::new() };
        input.extend(bytes);
        let _ = read(input);
    }

    #[test]
    fn mutated_captures_never_panic_and_keep_a_prefix(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
        json in any::<bool>(),
    ) {
        let records = sample(20);
        let mut bytes = write(&records, if json { Format::JsonLines } else { Format::Avro });
        for (at, v) in flips {
            let i = at % bytes.len();
            bytes[i] ^= v;
        }
        bytes.truncate(cut % (bytes.len() + 1));
        let (got, _) = read(bytes);
        prop_assert!(got.len() <= records.len() + 1);
    }
}

#[test]
fn a_malformed_writer_schema_is_refused_not_a_panic() {
    // Found by the fuzzer: a field attribute `"symbols": null` made
    // apache-avro panic while computing the schema's canonical form.
    let bytes =
        std::fs::read(root().join("crates/trace/tests/data/schema-attribute-null.avro")).unwrap();
    let (got, err) = read(bytes);
    assert!(got.is_empty());
    match err {
        Some(Error::Schema { reason, .. }) => assert!(reason.contains("'symbols'"), "{reason}"),
        other => panic!("expected a schema error, got {other:?}"),
    }
}

#[test]
fn driving_a_damaged_capture_traces_everything_before_the_damage() {
    let records = sample(1000);
    let bytes = write(&records, Format::Avro);
    let cut = bytes.len() / 2;
    let (expected, _) = read(bytes[..cut].to_vec());
    let reader =
        Reader::from_read("half.avro", std::io::Cursor::new(bytes[..cut].to_vec())).unwrap();
    let mut tracer = choreo_trace::Tracer::new(choreo_trace::TracerConfig::batch(), None);
    let mut seen = 0u64;
    let drained = choreo_trace::drive(reader, &mut tracer, |_| seen += 1, |_| {});
    assert_eq!(drained.records, expected.len() as u64);
    assert_eq!(seen, expected.len() as u64);
    assert!(
        matches!(drained.error, Some(Error::Damaged { .. })),
        "{:?}",
        drained.error
    );
    tracer.finish(None);
    assert_eq!(tracer.report().input.records, expected.len() as u64);
}

#[test]
fn a_number_longer_than_ten_bytes_is_corrupt() {
    // The 31st record's id length prefix and the id text after it become
    // one endless varint (every byte has its continuation bit set).
    damaged_at_the_31st_id(
        |bytes, prefix| bytes[prefix..prefix + 12].fill(0xff),
        "longer than 10 bytes",
    );
}

#[test]
fn a_cut_anywhere_in_the_last_block_is_truncation_at_or_before_it() {
    // Cuts inside ids, names, multi-byte numbers (times, offsets), the
    // block's sync marker: each yields a prefix of the records and names
    // the damage no later than the cut.
    let records = sample(40);
    let bytes = write(&records, Format::Avro);
    for cut in bytes.len() - 600..bytes.len() {
        let (got, err) = read(bytes[..cut].to_vec());
        assert_eq!(got[..], records[..got.len()], "cut at {cut}");
        let (offset, n, reason) = damage(err, format!("cut at {cut}"));
        assert_eq!(n, got.len() as u64);
        assert!(offset <= cut as u64, "cut at {cut}: {offset}");
        assert!(
            reason.contains("truncated") || reason.contains("sync marker"),
            "cut at {cut}: {reason}"
        );
    }
}

#[test]
fn a_bad_sync_marker_between_blocks_ends_the_read_there() {
    let records = sample(1000); // several blocks
    let mut bytes = write(&records, Format::Avro);
    let sync: [u8; 16] = bytes[bytes.len() - 16..].try_into().unwrap();
    // The header ends with the marker; the second occurrence ends block 1.
    let ends: Vec<usize> = bytes
        .windows(16)
        .enumerate()
        .filter(|(_, w)| *w == sync)
        .map(|(i, _)| i)
        .collect();
    assert!(ends.len() > 3, "{}", ends.len());
    let first_block_end = ends[1];
    bytes[first_block_end + 7] ^= 0x01;
    let (got, err) = read(bytes);
    assert!(!got.is_empty() && got.len() < records.len());
    assert_eq!(got[..], records[..got.len()]);
    let (offset, n, reason) = damage(err, "");
    assert_eq!(n, got.len() as u64);
    assert_eq!(offset, first_block_end as u64, "{reason}");
    assert!(reason.contains("sync marker"), "{reason}");
}

#[test]
fn ids_that_are_not_canonical_uuid_text_read_back_as_written() {
    // The decoder's fast path takes only lower-case hyphenated UUIDs; the
    // rest must come back exactly, as text.
    let ids = [
        "order-42",
        "0123ABCD-4567-89ef-0a1b-2c3d4e5f6789",
        "0123abcd-4567-89ef-0a1b-2c3d4e5f678g",
        "{0123abcd-4567-89ef-0a1b-2c3d4e5f6789}",
        "0123abcd456789ef0a1b2c3d4e5f6789",
        "\u{e9}t\u{e9}-2026",
    ];
    let mut records = Vec::new();
    for (i, text) in ids.iter().enumerate() {
        let mut e = Envelope::new("OrderPlaced", "orders", "{}").with_source("checkout");
        e.id = choreo_core::EventId::parse(text).unwrap();
        e.correlation_id = e.id.clone();
        let child = Envelope::new("PaymentCaptured", "payments", "{}")
            .with_source("payment")
            .caused_by(&e);
        records.push(Record::new(e).at(0, i as u64));
        records.push(Record::new(child));
    }
    let (got, err) = read(write(&records, Format::Avro));
    assert!(err.is_none(), "{err:?}");
    assert_eq!(got, records);
    for (r, text) in got.iter().step_by(2).zip(ids) {
        assert_eq!(r.envelope.id.to_string(), text);
    }
}
