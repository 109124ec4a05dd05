//! choreo and a service in another language on one real broker (tansu): a
//! Python peer writes events with the official CloudEvents SDK (binary and
//! structured mode, v1.0 and v0.3) and broken records with confluent-kafka;
//! choreo services handle what they can and dead-letter the rest; the peer
//! then reads choreo's events and its dead letters back with the SDK.
//!
//! The peer runs from the virtual environment `scripts/test.sh` makes
//! (`target/interop-venv`, or `$CHOREO_CLOUDEVENTS_PYTHON`); without it the
//! test is skipped, unless `CHOREO_REQUIRE_CLOUDEVENTS` is set (as
//! `scripts/test.sh` sets it).

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;
use choreo_bus::{Context, HandlerError, Retry, Service};
use choreo_core::{Timestamp, dlq_headers};
use choreo_kafka::dlq::replay_record;
use choreo_kafka::{RawRecord, ReaderOptions, RecordReader, Topics};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// The foreign trace the first event starts (W3C example ids).
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The Python with the CloudEvents SDK and confluent-kafka, if there is one.
fn peer_python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHOREO_CLOUDEVENTS_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let venv = workspace().join("target/interop-venv/bin/python");
    venv.exists().then_some(venv)
}

fn peer_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/cloudevents_peer.py")
}

/// Runs the peer with `args`, `input` on its stdin; its JSON lines.
fn peer(python: &PathBuf, args: &[&str], input: Option<&Value>) -> Vec<Value> {
    let mut child = Command::new(python)
        .arg(peer_script())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the CloudEvents peer starts");
    {
        let mut stdin = child.stdin.take().unwrap();
        if let Some(v) = input {
            stdin.write_all(v.to_string().as_bytes()).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "cloudevents_peer.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(h: &str) -> Vec<u8> {
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
        .collect()
}

/// A record's headers as the peer prints them: `[name, hex or null]`.
fn headers_of(record: &Value) -> Vec<(String, Option<Vec<u8>>)> {
    record["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h[0].as_str().unwrap().to_owned(), h[1].as_str().map(unhex)))
        .collect()
}

fn header(record: &Value, name: &str) -> Option<String> {
    headers_of(record)
        .into_iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| String::from_utf8(v?).ok())
}

fn raw_headers(r: &RawRecord) -> Vec<(String, Option<Vec<u8>>)> {
    r.headers()
        .map(|h| (h.name.to_owned(), h.value.map(<[u8]>::to_vec)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloudevents_sdk_peer_and_choreo_services_read_each_others_events_and_dead_letters() {
    let Some(python) = peer_python() else {
        assert!(
            std::env::var_os("CHOREO_REQUIRE_CLOUDEVENTS").is_none(),
            "CHOREO_REQUIRE_CLOUDEVENTS is set but there is no Python with the CloudEvents SDK: run scripts/test.sh"
        );
        eprintln!(
            "skipped: no CloudEvents SDK (scripts/test.sh installs it into target/interop-venv)"
        );
        return;
    };
    let tansu = Tansu::start().await;
    let brokers = tansu.brokers();
    for t in ["orders", "payments", "shipping"] {
        tansu.topic(t, 1).await;
    }
    // The dead-letter topic is not made here: choreo creates it with the
    // first dead letter, and the reader below waits for it.

    let (_registry, m) = metrics();
    let stop = CancellationToken::new();
    let retry = Retry::default()
        .max_attempts(2)
        .backoff(Duration::from_millis(5), Duration::from_millis(10));
    let payment = Service::new("payment")
        .on(|o: OrderPlaced, ctx: Context| async move {
            if o.order_id == 13 {
                return Err(HandlerError::msg("card declined"));
            }
            ctx.emit(&PaymentCaptured {
                order_id: o.order_id,
            })?;
            Ok(())
        })
        .retry(retry.clone())
        .receipts(None)
        .metrics(m.clone())
        .start(&tansu.another_bus(), stop.clone())
        .await
        .unwrap();
    let shipping = Service::new("shipping")
        .on(|p: PaymentCaptured, ctx: Context| async move {
            ctx.emit(&OrderShipped {
                order_id: p.order_id,
            })?;
            Ok(())
        })
        .retry(retry)
        .receipts(None)
        .metrics(m)
        .start(&tansu.another_bus(), stop.clone())
        .await
        .unwrap();

    let shop = "https://shop.example.com/checkout";
    let broken_binary = json!({"mode": "raw", "topic": "orders", "key": hex(b"order-6"),
    "value": hex(br#"{"order_id": 6}"#),
    "headers": [
        ["ce_specversion", hex(b"1.0")],
        ["ce_id", hex(b"\xff\xfe")],
        ["ce_source", hex(shop.as_bytes())],
        ["ce_type", hex(b"OrderPlaced")],
        ["ce_time", hex(b"yesterday")],
        ["content-type", hex(b"application/json")],
        ["x-null", null],
        ["x-empty", ""],
    ]});
    let broken_structured = json!({"mode": "raw", "topic": "orders", "key": null,
        "value": hex(br#"{"specversion":"1.0","id":"s-7","source":"/legacy","type":"OrderPlaced","time":"not a time","data":{"order_id":7}}"#),
        "headers": [["content-type", hex(b"application/cloudevents+json")]]});
    let records = json!([
        // 1. Binary, with the correlation and tracing extensions.
        {"mode": "binary", "topic": "orders", "data": {"order_id": 1},
         "attributes": {"type": "OrderPlaced", "source": shop, "datacontenttype": "application/json",
                        "correlationid": "flow-py-1", "partitionkey": "flow-py-1",
                        "traceparent": TRACEPARENT, "tracestate": "vendor=py"}},
        // 2. Structured, no choreo extension at all.
        {"mode": "structured", "topic": "orders", "data": {"order_id": 2},
         "attributes": {"type": "OrderPlaced", "source": "/legacy/checkout",
                        "datacontenttype": "application/json", "partitionkey": "order-2"}},
        // 3. Binary; the handler fails it: dead-lettered after 2 attempts.
        {"mode": "binary", "topic": "orders", "data": {"order_id": 13},
         "attributes": {"type": "OrderPlaced", "source": shop, "datacontenttype": "application/json",
                        "partitionkey": "order-13", "subject": "order-13"}},
        // 4. Structured, with a payload that is no OrderPlaced: a decode error.
        {"mode": "structured", "topic": "orders", "data": {"order": "four"},
         "attributes": {"type": "OrderPlaced", "source": shop, "datacontenttype": "application/json"}},
        // 5. CloudEvents 0.3: valid, but not the version choreo reads.
        {"mode": "binary", "topic": "orders", "data": {"order_id": 5}, "specversion03": true,
         "attributes": {"type": "OrderPlaced", "source": shop, "specversion": "0.3",
                        "datacontenttype": "application/json"}},
        // 6. Broken headers: an id that is not UTF-8, a time that is no time.
        broken_binary,
        // 7. A structured event with a time that is no time.
        broken_structured,
    ]);
    let sent = peer(&python, &["produce", &brokers], Some(&records));
    assert_eq!(sent.len(), 7);

    // The dead letters, read as they arrive (the topic appears with the first).
    let mut reader = RecordReader::open(
        &config(&brokers),
        ReaderOptions {
            refresh: Duration::from_millis(500),
            ..ReaderOptions::new(Topics::optional(["orders.dlq"])).follow()
        },
    )
    .await
    .unwrap();
    let mut dead = Vec::new();
    while dead.len() < 5 {
        let r = tokio::time::timeout(Duration::from_secs(120), reader.next())
            .await
            .expect("five dead letters within 120 s")
            .expect("the reader follows")
            .unwrap();
        dead.push(r);
    }
    reader.close().await.unwrap();

    // What the peer reads back: the two flows' events and the dead letters.
    let read = peer(
        &python,
        &[
            "consume",
            &brokers,
            "9",
            "payments",
            "shipping",
            "orders.dlq",
        ],
        None,
    );
    let on = |topic: &str| -> Vec<&Value> { read.iter().filter(|r| r["topic"] == topic).collect() };
    assert_eq!((on("payments").len(), on("shipping").len()), (2, 2));

    // choreo's events are CloudEvents to the SDK, stamped with the flow.
    let structured_id = {
        // The structured event's id, chosen by the SDK: its flow's id.
        let v = unhex(sent[1]["value"].as_str().unwrap());
        serde_json::from_slice::<Value>(&v).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    for r in on("payments").into_iter().chain(on("shipping")) {
        let event = &r["event"];
        assert!(r["error"].is_null(), "the SDK refused choreo's event: {r}");
        let a = &event["attributes"];
        assert_eq!(a["specversion"], "1.0");
        assert!(a["source"] == "payment" || a["source"] == "shipping", "{a}");
        assert!(
            a["time"]
                .as_str()
                .is_some_and(|t| Timestamp::parse_rfc3339(t).is_some())
        );
        assert_eq!(a["datacontenttype"], "application/json");
        assert!(a["causationid"].as_str().is_some(), "{a}");
        let order = event["data"]["order_id"].as_u64().unwrap();
        let flow = a["correlationid"].as_str().unwrap();
        match order {
            1 => {
                assert_eq!(
                    flow, "flow-py-1",
                    "the peer's correlation extension is the flow"
                );
                // The foreign trace goes on through both services.
                let tp = header(r, "traceparent").expect("a traceparent");
                assert_eq!(tp.split('-').nth(1), Some(TRACE_ID), "{tp}");
                assert_eq!(header(r, "tracestate").as_deref(), Some("vendor=py"));
            }
            2 => assert_eq!(flow, structured_id, "a foreign event starts its own flow"),
            other => panic!("unexpected order {other}"),
        }
    }

    // Every dead letter is the record as it was sent, then choreo's headers.
    let by_offset: HashMap<u64, &choreo_kafka::ReadRecord> = dead
        .iter()
        .map(|r| {
            let o = r.original.header(dlq_headers::OFFSET).flatten().unwrap();
            (std::str::from_utf8(o).unwrap().parse().unwrap(), r)
        })
        .collect();
    let reasons = [
        (
            2,
            "handler failed after 2 attempts: card declined",
            "2",
            false,
        ),
        (3, "decode error: payload of 'OrderPlaced'", "1", false),
        (
            4,
            "malformed record: unsupported CloudEvents spec version '0.3'",
            "0",
            true,
        ),
        (
            5,
            "malformed record: header 'ce_id' is not UTF-8",
            "0",
            true,
        ),
        (
            6,
            "malformed record: structured CloudEvent attribute 'time' is not an RFC 3339 time",
            "0",
            true,
        ),
    ];
    for (i, reason, attempts, malformed) in reasons {
        let sent = &sent[i];
        let offset = sent["offset"].as_u64().unwrap();
        let r = by_offset
            .get(&offset)
            .unwrap_or_else(|| panic!("no dead letter of offset {offset}"));
        let d = &r.original;
        let what = format!("dead letter of record {}: {d:?}", i + 1);
        assert_eq!(
            d.key().map(|k| hex(k)),
            sent["key"].as_str().map(str::to_owned),
            "{what}"
        );
        assert_eq!(
            d.value().map(|v| hex(v)),
            sent["value"].as_str().map(str::to_owned),
            "{what}"
        );
        let sent_headers = headers_of(sent);
        let all = raw_headers(d);
        assert_eq!(
            &all[..sent_headers.len()],
            &sent_headers[..],
            "byte for byte: {what}"
        );
        let ours: HashMap<&str, String> = all[sent_headers.len()..]
            .iter()
            .map(|(n, v)| (n.as_str(), String::from_utf8(v.clone().unwrap()).unwrap()))
            .collect();
        assert!(ours[dlq_headers::REASON].starts_with(reason), "{what}");
        assert_eq!(ours[dlq_headers::SERVICE], "payment", "{what}");
        assert_eq!(ours[dlq_headers::ATTEMPTS], attempts, "{what}");
        assert_eq!(ours[dlq_headers::TOPIC], "orders", "{what}");
        assert_eq!(ours[dlq_headers::OFFSET], offset.to_string(), "{what}");
        assert!(Timestamp::parse_rfc3339(&ours[dlq_headers::TIME]).is_some());
        assert_eq!(
            ours.contains_key(dlq_headers::MALFORMED),
            malformed,
            "{what}"
        );
        assert_eq!(ours.len(), 7 + usize::from(malformed), "{what}");
    }

    // To the SDK, a dead letter of a valid CloudEvent is that CloudEvent.
    let dlq_read: HashMap<u64, &Value> = on("orders.dlq")
        .into_iter()
        .map(|r| (header(r, dlq_headers::OFFSET).unwrap().parse().unwrap(), r))
        .collect();
    for i in [2, 3, 4] {
        let r = dlq_read[&sent[i]["offset"].as_u64().unwrap()];
        assert!(
            r["error"].is_null(),
            "the SDK refused the dead letter of record {}: {r}",
            i + 1
        );
        let a = &r["event"]["attributes"];
        assert_eq!(a["source"], shop, "{r}");
        assert_eq!(a["type"], "OrderPlaced", "{r}");
        let spec = if i == 4 { "0.3" } else { "1.0" };
        assert_eq!(a["specversion"], spec, "{r}");
    }
    assert_eq!(
        dlq_read[&sent[2]["offset"].as_u64().unwrap()]["event"]["attributes"]["subject"],
        "order-13"
    );
    // The broken ones stay as broken as they arrived.
    for i in [5, 6] {
        let r = dlq_read[&sent[i]["offset"].as_u64().unwrap()];
        assert!(r["error"].is_string(), "{r}");
    }

    // A replay publishes the original again, with a replay count.
    let failed = by_offset[&sent[2]["offset"].as_u64().unwrap()];
    let again = replay_record(&failed.original, 0);
    tansu.bus.publish_record("orders", &again, 0).await.unwrap();
    let mut reader = RecordReader::open(
        &config(&brokers),
        ReaderOptions::new(Topics::names(["orders"])),
    )
    .await
    .unwrap();
    let mut replayed = None;
    while let Some(r) = reader.next().await {
        let r = r.unwrap();
        if r.original.header(dlq_headers::REPLAYS).is_some() {
            replayed = Some(r);
        }
    }
    let replayed = replayed.expect("the replay is on orders");
    let mut expected = headers_of(&sent[2]);
    expected.push((dlq_headers::REPLAYS.to_owned(), Some(b"1".to_vec())));
    assert_eq!(raw_headers(&replayed.original), expected);
    assert_eq!(replayed.original.value(), failed.original.value());
    assert_eq!(replayed.original.key(), failed.original.key());
    assert_eq!(replayed.envelope.id, failed.envelope.id);

    stop.cancel();
    payment.await.unwrap();
    shipping.await.unwrap();
}
