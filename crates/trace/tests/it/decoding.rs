//! The report is the same however a capture is decoded: record by record
//! ([`drive`]) or cut into pieces decoded on several threads straight into
//! the tracer's compact records ([`drive_capture`]); in Avro or JSON lines;
//! with foreign records, duplicates, records out of order, payloads of every
//! shape, and damage.

use std::io::Write;
use std::path::{Path, PathBuf};

use choreo_core::{Envelope, EventId, Name, Outcome, Receipt, Timestamp, dlq_headers};
use choreo_topology::Topology;
use choreo_trace::capture::{Format, Reader, Writer};
use choreo_trace::{Record, Tracer, TracerConfig, drive, drive_capture};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::helpers::{order_fulfillment, root};

/// What a run gives: the report as JSON and as text, the records fed, the error.
#[derive(Debug, PartialEq)]
struct Outcome2 {
    json: String,
    text: String,
    records: u64,
    error: Option<String>,
}

fn run(path: &Path, topology: &Topology, lean: bool, pieces: bool) -> Outcome2 {
    let mut reader = Reader::open(path).unwrap();
    if lean {
        reader = reader.lean();
    }
    run_reader(reader, topology, pieces)
}

/// [`run`] on a reader already open.
fn run_reader(reader: Reader, topology: &Topology, pieces: bool) -> Outcome2 {
    let mut tracer = Tracer::new(TracerConfig::batch(), Some(topology));
    let drained = if pieces {
        drive_capture(reader, &mut tracer, |_| {})
    } else {
        drive(reader, &mut tracer, |_| {}, |_| {})
    };
    tracer.finish(None);
    let report = tracer.report();
    Outcome2 {
        json: serde_json::to_string_pretty(&report).unwrap(),
        text: report.summary(),
        records: drained.records,
        error: drained.error.map(|e| e.to_string()),
    }
}

/// Both ways, lean and not: the same outcome. Returns it.
fn same_both_ways(path: &Path, topology: &Topology) -> Outcome2 {
    let mut first = None;
    for lean in [true, false] {
        let old = run(path, topology, lean, false);
        let new = run(path, topology, lean, true);
        assert_eq!(
            old.error,
            new.error,
            "{}: the error (lean: {lean})",
            path.display()
        );
        assert_eq!(
            old.records,
            new.records,
            "{}: records (lean: {lean})",
            path.display()
        );
        assert_eq!(
            old.text,
            new.text,
            "{}: text (lean: {lean})",
            path.display()
        );
        assert_eq!(
            old.json,
            new.json,
            "{}: JSON (lean: {lean})",
            path.display()
        );
        first.get_or_insert(new);
    }
    first.unwrap()
}

/// A run of the saga with every shape the tracer meets: many flows,
/// receipts (one redelivered), dead-letter copies, records without choreo
/// metadata, duplicates, records out of order.
fn saga(flows: usize, seed: u64) -> Vec<Record> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    let t0 = 1_764_000_000_000_000i64;
    let receipt = |rng: &mut rand::rngs::StdRng,
                   service: &str,
                   handled: &Envelope,
                   outcome: Outcome,
                   emitted: Vec<EventId>| {
        let r = Receipt {
            service: Name::from(service),
            event_id: handled.id.clone(),
            event_type: handled.event_type.clone(),
            correlation_id: handled.correlation_id.clone(),
            topic: handled.topic.clone(),
            partition: 0,
            offset: rng.random_range(0..1000),
            outcome,
            attempts: if outcome == Outcome::DeadLettered {
                3
            } else {
                1
            },
            reason: (outcome == Outcome::DeadLettered).then(|| "carrier \"down\"".to_owned()),
            started: handled.time,
            duration_us: rng.random_range(100..5_000),
            emitted,
        };
        let id = EventId::from_uuid(uuid::Uuid::from_u128(rng.random()));
        r.to_envelope_with_id(id, Name::from("choreo.receipts"), handled)
    };
    for f in 0..flows {
        let at = t0 + f as i64 * 700;
        let mut ev = |ty: &str, topic: &str, source: &str, dt: i64, cause: Option<&Envelope>| {
            let mut e = Envelope::new(
                ty.to_owned(),
                topic.to_owned(),
                format!("{{\"order_id\":{f},\"amount_cents\":{}}}", f * 7 % 1000),
            )
            .with_source(source.to_owned());
            e.id = EventId::from_uuid(uuid::Uuid::from_u128(rng.random()));
            e.time = Timestamp::from_micros(at + dt);
            match cause {
                Some(c) => e = e.caused_by(c),
                None => e.correlation_id = e.id.clone(),
            }
            e
        };
        let placed = ev("OrderPlaced", "orders", "checkout", 0, None);
        let captured = ev(
            "PaymentCaptured",
            "payments",
            "payment",
            1_000,
            Some(&placed),
        );
        let reserved = ev(
            "StockReserved",
            "inventory",
            "inventory",
            2_000,
            Some(&captured),
        );
        let shipped = ev(
            "OrderShipped",
            "shipping",
            "shipping",
            3_000,
            Some(&reserved),
        );
        let mut flow = vec![
            placed.clone(),
            receipt(
                &mut rng,
                "payment",
                &placed,
                Outcome::Acked,
                vec![captured.id.clone()],
            ),
            captured.clone(),
            receipt(
                &mut rng,
                "inventory",
                &captured,
                Outcome::Acked,
                vec![reserved.id.clone()],
            ),
            reserved.clone(),
        ];
        match f % 7 {
            0 => {
                // Shipping gives up: a dead-letter copy.
                flow.push(receipt(
                    &mut rng,
                    "shipping",
                    &reserved,
                    Outcome::DeadLettered,
                    vec![],
                ));
                let mut copy = reserved.clone();
                copy.topic = Name::from("inventory.dlq");
                copy.headers
                    .insert(dlq_headers::REASON, "carrier API timeout");
                copy.headers.insert(dlq_headers::ATTEMPTS, "3");
                copy.headers.insert(dlq_headers::SERVICE, "shipping");
                flow.push(copy);
            }
            1 => {
                // Redelivered: the same event and receipt twice.
                flow.push(shipped.clone());
                flow.push(shipped.clone());
                flow.push(receipt(
                    &mut rng,
                    "shipping",
                    &reserved,
                    Outcome::Redelivered,
                    vec![],
                ));
            }
            2 => {} // stuck: shipping never answers
            _ => {
                flow.push(receipt(
                    &mut rng,
                    "shipping",
                    &reserved,
                    Outcome::Acked,
                    vec![shipped.id.clone()],
                ));
                flow.push(shipped.clone());
                flow.push(receipt(
                    &mut rng,
                    "notifications",
                    &shipped,
                    Outcome::Acked,
                    vec![],
                ));
            }
        }
        if f % 11 == 0 {
            // Out of order within the flow.
            flow.reverse();
        }
        for (i, e) in flow.into_iter().enumerate() {
            out.push(Record::new(e).at((f % 4) as u32, (f * 16 + i) as u64));
        }
        if f % 13 == 0 {
            // A foreign record: no choreo metadata.
            let mut e = Envelope::new("", "orders", "{\"legacy\":true}");
            e.id = EventId::from_uuid(uuid::Uuid::from_u128(rng.random()));
            out.push(Record::unattributed(e));
        }
    }
    // Records roughly in time order, not exactly.
    for w in out.chunks_mut(5) {
        if rng.random_bool(0.3) {
            w.shuffle(&mut rng);
        }
    }
    out
}

fn write(path: &Path, records: &[Record]) {
    let mut w = Writer::create(path, Format::from_path(path)).unwrap();
    for r in records {
        w.write(r).unwrap();
    }
    w.finish().unwrap();
}

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

fn corpus() -> Vec<(PathBuf, Topology)> {
    let dir = root().join("crates/trace/tests/corpus");
    let shop = Topology::from_path(dir.join("shop.yaml")).unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    files.into_iter().map(|p| (p, shop.clone())).collect()
}

#[test]
fn the_corpus_reports_the_same_both_ways_in_both_formats() {
    let dir = tempfile::tempdir().unwrap();
    for (path, topology) in corpus() {
        let jsonl = same_both_ways(&path, &topology);
        assert!(
            jsonl.error.is_none(),
            "{}: {:?}",
            path.display(),
            jsonl.error
        );
        // The same records as Avro: the same report.
        let records: Vec<Record> = Reader::open(&path).unwrap().map(|r| r.unwrap()).collect();
        let avro = dir.path().join("c.avro");
        write(&avro, &records);
        let from_avro = same_both_ways(&avro, &topology);
        assert_eq!(
            from_avro.json,
            jsonl.json,
            "{}: Avro and JSON lines",
            path.display()
        );
    }
}

#[test]
fn a_large_run_reports_the_same_both_ways_in_both_formats() {
    let dir = tempfile::tempdir().unwrap();
    let topology = order_fulfillment();
    // Many pieces: several megabytes of JSON lines, hundreds of Avro blocks.
    let mut records = saga(6_000, 17);
    // Every record of a stretch again, later: at-least-once delivery.
    let again: Vec<Record> = records[1_000..3_000].to_vec();
    records.extend(again);
    let avro = dir.path().join("run.avro");
    let jsonl = dir.path().join("run.jsonl");
    write(&avro, &records);
    write(&jsonl, &records);
    assert!(std::fs::metadata(&jsonl).unwrap().len() > 8 << 20);
    let a = same_both_ways(&avro, &topology);
    let j = same_both_ways(&jsonl, &topology);
    assert_eq!(a, j, "Avro and JSON lines of the same run");
    assert_eq!(a.records, records.len() as u64);
    assert!(a.json.contains("\"duplicates\""), "{}", a.text);
}

#[test]
fn json_lines_of_every_shape_report_the_same_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let topology = order_fulfillment();
    let path = dir.path().join("shapes.jsonl");
    write(&path, &saga(300, 3));
    let (corr, placed) = (
        "019ab697-e800-74fb-a038-00ff07da3298",
        "019ab697-e800-74fb-a038-00ff07da3299",
    );
    let receipt = format!(
        r#"{{"service":"payment","event_id":"{placed}","event_type":"OrderPlaced","correlation_id":"{corr}","topic":"orders","partition":0,"offset":2,"outcome":"acked","attempts":1,"started":1764000000000795,"duration_us":1291}}"#
    );
    let lines = [
        // An event written by another tool: keys in another order, spaces.
        format!(
            r#"{{ "type": "OrderPlaced", "id": "{placed}", "correlation_id": "{corr}", "source": "checkout", "topic": "orders", "time": 1764000000000000, "data": {{"order_id": 1}} }}"#
        ),
        // Its receipt, the payload embedded as JSON (and again as text, and with a -0).
        format!(
            r#"{{"id":"019ab697-e801-7000-8000-000000000001","type":"choreo.Receipt","source":"payment","topic":"choreo.receipts","correlation_id":"{corr}","causation_id":"{placed}","time":"2025-11-24T16:00:00.002086Z","data":{receipt}}}"#
        ),
        format!(
            r#"{{"id":"019ab697-e801-7000-8000-000000000002","type":"choreo.Receipt","source":"payment","topic":"choreo.receipts","correlation_id":"{corr}","time":1764000000002000,"data":{}}}"#,
            receipt.replace("\"attempts\":1", "\"attempts\":-0")
        ),
        format!(
            r#"{{"id":"019ab697-e801-7000-8000-000000000003","type":"choreo.Receipt","source":"payment","topic":"choreo.receipts","correlation_id":"{corr}","time":1764000000002000,"data":{}}}"#,
            serde_json::Value::from(receipt.clone())
        ),
        // A receipt whose payload is not one; an escape in a name; a number for an id.
        format!(
            r#"{{"id":"019ab697-e801-7000-8000-000000000004","type":"choreo.Receipt","source":"payment","topic":"choreo.receipts","correlation_id":"{corr}","time":1764000000002000,"data":{{"service":"x"}}}}"#
        ),
        format!(
            r#"{{"id":"019ab697-e801-7000-8000-000000000005","type":"Order\u0053hipped","source":"shipping","topic":"shipping","correlation_id":"{corr}","causation_id":"{placed}","time":1764000000003000}}"#
        ),
        format!(
            r#"{{"id":42,"type":"OrderShipped","source":"shipping","topic":"shipping","correlation_id":"{corr}","time":1764000000003000}}"#
        ),
        // Foreign records: no choreo metadata, or no correlation id; blank lines.
        r#"{"hello":"world","n":[1,2,{"deep":null}]}"#.to_owned(),
        String::new(),
        "   ".to_owned(),
        r#"{"id":"legacy-7","type":"OrderPlaced","topic":"orders","key_base64":"AAEC","data_base64":"eyJ4IjoxfQ=="}"#.to_owned(),
        // Deep payloads, near and past serde_json's nesting limit.
        format!(
            r#"{{"id":"019ab697-e801-7000-8000-000000000006","type":"OrderPlaced","source":"checkout","topic":"orders","correlation_id":"019ab697-e801-7000-8000-000000000006","time":1,"data":{}1{}}}"#,
            "[".repeat(100),
            "]".repeat(100)
        ),
        // The old spellings of keys, and headers.
        format!(
            r#"{{"id":"019ab697-e801-7000-8000-000000000008","type":"PaymentFailed","source":"payment","topic":"payments","correlationid":"{corr}","causationid":"{placed}","datacontenttype":"text/plain","time":"2025-11-24T16:00:00Z","headers":[["x-a","b"]]}}"#
        ),
    ];
    append(&path, &(lines.join("\n") + "\n"));
    let clean = same_both_ways(&path, &topology);
    assert!(clean.error.is_none(), "{:?}", clean.error);
    // A payload nested past the limit, a bad time, bad base64, not JSON, a
    // key twice, a line cut short: each stops the reading where it is, the same way.
    let bad = [
        format!(
            r#"{{"id":"019ab697-e801-7000-8000-000000000009","type":"OrderPlaced","source":"checkout","topic":"orders","correlation_id":"{corr}","time":1,"data":{}1{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        ),
        format!(r#"{{"id":"{placed}","type":"OrderPlaced","correlation_id":"{corr}","time":1.5}}"#),
        format!(
            r#"{{"id":"{placed}","type":"OrderPlaced","correlation_id":"{corr}","time":"yesterday"}}"#
        ),
        format!(
            r#"{{"id":"{placed}","type":"OrderPlaced","correlation_id":"{corr}","data_base64":"%%%"}}"#
        ),
        r#"{"id": "x", "type": tru}"#.to_owned(),
        format!(
            r#"{{"id":"019ab697-e801-7000-8000-000000000007","type":"OrderPlaced","type":"PaymentFailed","source":"payment","topic":"payments","correlationid":"{corr}","time":5}}"#
        ),
        "not json at all".to_owned(),
    ];
    let whole = std::fs::read(&path).unwrap();
    for (i, line) in bad.iter().enumerate() {
        let damaged = dir.path().join(format!("damaged-{i}.jsonl"));
        let mut bytes = whole.clone();
        // Mid-file: what follows must not be read.
        let middle = bytes.len() / 2;
        let cut = middle + bytes[middle..].iter().position(|&b| b == b'\n').unwrap() + 1;
        let tail = bytes.split_off(cut);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        bytes.extend_from_slice(&tail);
        std::fs::write(&damaged, &bytes).unwrap();
        let out = same_both_ways(&damaged, &topology);
        assert!(out.error.is_some(), "line {i} is not damage: {line}");
    }
    // The last line cut short.
    let cut_short = dir.path().join("cut.jsonl");
    std::fs::write(&cut_short, &whole[..whole.len() - 40]).unwrap();
    assert!(same_both_ways(&cut_short, &topology).error.is_some());
}

/// Pieces number their lines from 1 and the tracer adds the lines before
/// them: damage past the first piece is named by its line in the file, as
/// record by record. Records without an id there are renamed after their
/// line too; they are never attributed to a flow, so what shows of them is
/// their count, which the renaming must leave alone.
#[test]
fn json_lines_past_the_first_piece_are_numbered_as_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let topology = order_fulfillment();
    let path = dir.path().join("run.jsonl");
    write(&path, &saga(4_000, 5));
    let unattributed = |text: &str| -> u64 {
        let at = text.find(" unattributed").expect("counted");
        let digits = text[..at].rsplit(' ').next().unwrap();
        digits.parse().unwrap()
    };
    let before = unattributed(&same_both_ways(&path, &topology).text);
    let mut data = std::fs::read(&path).unwrap();
    let piece = 512 << 10;
    assert!(data.len() > 3 * piece, "several pieces");
    let boundary = |data: &[u8], near: usize| {
        near + data[near..].iter().position(|&b| b == b'\n').unwrap() + 1
    };
    // Records without an id in the second and third pieces.
    for near in [piece + 5_000, 2 * piece + 9_000] {
        let at = boundary(&data, near);
        let line = br#"{"type":"OrderPlaced","topic":"orders","correlation_id":"019ab697-e801-7000-8000-00000000000a","time":1}"#;
        data.splice(at..at, line.iter().copied().chain([b'\n']));
    }
    std::fs::write(&path, &data).unwrap();
    let clean = same_both_ways(&path, &topology);
    assert!(clean.error.is_none(), "{:?}", clean.error);
    assert_eq!(unattributed(&clean.text), before + 2, "{}", clean.text);
    // Damage in the third piece: named by its line in the file.
    let at = boundary(&data, 2 * piece + 30_000);
    let line_number = data[..at].iter().filter(|&&b| b == b'\n').count() + 1;
    data.splice(at..at, b"not json at all\n".iter().copied());
    let damaged = dir.path().join("damaged.jsonl");
    std::fs::write(&damaged, &data).unwrap();
    let out = same_both_ways(&damaged, &topology);
    let error = out.error.unwrap();
    assert!(
        error.contains(&format!("line {line_number}:")),
        "line {line_number}: {error}"
    );
}

/// Lines longer than the half megabyte a piece is cut at (the piece grows
/// for them), between ordinary ones, the last without its newline.
#[test]
fn json_lines_longer_than_a_piece_report_the_same_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let topology = order_fulfillment();
    let path = dir.path().join("long.jsonl");
    let records = saga(2_000, 5);
    write(&path, &records[..1_000]);
    let corr = "019ab697-e800-74fb-a038-00ff07da3298";
    let long = |n: usize, k: usize| {
        format!(
            r#"{{"id":"019ab697-e801-7000-8000-00000000000{k}","type":"OrderPlaced","source":"checkout","topic":"orders","correlation_id":"{corr}","time":{k},"data_base64":"{}"}}"#,
            "QUJD".repeat(n / 4)
        )
    };
    // 0.6, 1.3 and 2.1 MB: longer than a piece (half a megabyte), than a
    // buffer (one), than two.
    append(
        &path,
        &format!("{}\n{}\n", long(600_000, 1), long(1_300_000, 2)),
    );
    let tail = dir.path().join("tail.jsonl");
    write(&tail, &records[1_000..]);
    append(
        &path,
        &String::from_utf8(std::fs::read(&tail).unwrap()).unwrap(),
    );
    append(&path, &long(2_100_000, 3));
    let out = same_both_ways(&path, &topology);
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!(out.records, records.len() as u64 + 3);
    // A damaged line after a long one stops the reading there, the same way.
    let damaged = dir.path().join("damaged.jsonl");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(b"\nnot json at all\n");
    bytes.extend_from_slice(&std::fs::read(&tail).unwrap());
    std::fs::write(&damaged, &bytes).unwrap();
    let out = same_both_ways(&damaged, &topology);
    assert!(out.error.is_some());
    assert_eq!(out.records, records.len() as u64 + 3);
}

/// An input read in short, uneven reads that fails at byte `fail`, or
/// (`pause`) says once that it has ended there and then goes on, as a
/// terminal does.
struct Flaky {
    data: Vec<u8>,
    pos: usize,
    fail: Option<usize>,
    pause: Option<usize>,
    reads: usize,
}

impl std::io::Read for Flaky {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.reads += 1;
        if self.reads.is_multiple_of(3) {
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        if self.fail.is_some_and(|at| self.pos >= at) {
            return Err(std::io::Error::other("the disk went away"));
        }
        if self.pause == Some(self.pos) {
            self.pause = None;
            return Ok(0);
        }
        let stop = [self.fail, self.pause]
            .into_iter()
            .flatten()
            .filter(|&at| at > self.pos)
            .fold(self.data.len(), usize::min);
        let n = buf.len().min(stop - self.pos).min(100_003);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// An input that fails, or pauses, mid-file: the records before it, then
/// the same error (or the same end), in pieces as record by record.
#[test]
fn json_lines_that_fail_or_pause_midway_report_the_same_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.jsonl");
    write(&path, &saga(4_000, 9));
    let (data, topology) = (std::fs::read(&path).unwrap(), order_fulfillment());
    assert!(data.len() > 3 << 19, "several pieces");
    let run = |fail: Option<usize>, pause: Option<usize>, pieces: bool| {
        let input = Flaky {
            data: data.clone(),
            pos: 0,
            fail,
            pause,
            reads: 0,
        };
        let reader = Reader::from_read("flaky.jsonl", input).unwrap();
        run_reader(reader, &topology, pieces)
    };
    let boundary = |near: usize| near + data[near..].iter().position(|&b| b == b'\n').unwrap() + 1;
    let piece = 512 << 10;
    let places = [
        1_000,
        piece - 1,
        piece,
        piece + 100_000,
        boundary(piece + 100_000),
        2 * piece + 7,
        boundary(2 * piece),
    ];
    for at in places {
        let failed = run(Some(at), None, false);
        assert!(failed.error.is_some(), "at {at}: no error");
        assert!(failed.records > 0, "at {at}: nothing before the error");
        assert_eq!(run(Some(at), None, true), failed, "failing at byte {at}");
        let paused = run(None, Some(at), false);
        assert_eq!(run(None, Some(at), true), paused, "pausing at byte {at}");
    }
}

#[test]
fn damaged_avro_reports_the_same_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let topology = order_fulfillment();
    let path = dir.path().join("run.avro");
    write(&path, &saga(2_000, 5));
    let whole = std::fs::read(&path).unwrap();
    let clean = same_both_ways(&path, &topology);
    assert!(clean.error.is_none());
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    for round in 0..12 {
        let mut bytes = whole.clone();
        let damaged = dir.path().join(format!("damaged-{round}.avro"));
        if round % 3 == 0 {
            // Cut short.
            bytes.truncate(rng.random_range(bytes.len() / 4..bytes.len()));
        } else {
            // Flipped bytes past the header.
            for _ in 0..round {
                let at = rng.random_range(2_000..bytes.len());
                bytes[at] = rng.random();
            }
        }
        std::fs::write(&damaged, &bytes).unwrap();
        same_both_ways(&damaged, &topology);
    }
    // A file with no records at all, and an empty JSON-lines file.
    let empty = dir.path().join("empty.avro");
    write(&empty, &[]);
    same_both_ways(&empty, &topology);
    let nothing = dir.path().join("nothing.jsonl");
    std::fs::write(&nothing, b"").unwrap();
    same_both_ways(&nothing, &topology);
}
