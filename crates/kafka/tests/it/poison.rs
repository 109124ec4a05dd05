//! Poison records — a value that is not the event, CloudEvents headers that
//! cannot be read, an Avro payload whose schema id no registry knows — are
//! dead-lettered by the runtime with the reason, counted in metrics, and the
//! consumer goes on with the records after them.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use choreo_avro::{AvroCodec, MemoryRegistry};
use choreo_bus::{Context, HandlerError, Publisher, Service};
use choreo_core::{Bus, Codecs, Event, SubscribeOptions, Subscription, dlq_headers};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

async fn capture(o: OrderPlaced, ctx: Context) -> Result<(), HandlerError> {
    ctx.emit(&PaymentCaptured {
        order_id: o.order_id,
    })?;
    Ok(())
}

fn ce_headers(id: &[u8], time: &str, content_type: &str) -> OwnedHeaders {
    OwnedHeaders::new()
        .insert(Header {
            key: "ce_specversion",
            value: Some("1.0"),
        })
        .insert(Header {
            key: "ce_id",
            value: Some(id),
        })
        .insert(Header {
            key: "ce_source",
            value: Some("legacy"),
        })
        .insert(Header {
            key: "ce_type",
            value: Some(OrderPlaced::TYPE),
        })
        .insert(Header {
            key: "ce_time",
            value: Some(time),
        })
        .insert(Header {
            key: "content-type",
            value: Some(content_type),
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_are_dead_lettered_with_the_reason_and_the_consumer_goes_on() {
    let mock = Mock::start(1);
    for t in ["orders", "payments", "orders.dlq"] {
        mock.topic(t, 1).await;
    }
    let (registry, m) = metrics();
    mock.bus.register_metrics(&registry).unwrap();
    let avro = Arc::new(AvroCodec::new(MemoryRegistry::new()).with::<OrderPlaced>());
    avro.register_metrics(&registry).unwrap();
    let stop = CancellationToken::new();
    let payment = Service::new("payment")
        .on(capture)
        .codecs(Codecs::json().decode_also(avro.clone()))
        .receipts(None)
        .metrics(m.clone())
        .start(&mock.bus, stop.clone())
        .await
        .unwrap();
    let mut payments = mock
        .bus
        .subscribe(SubscribeOptions::new("observer", ["payments"]))
        .await
        .unwrap();
    let mut dead = mock
        .bus
        .subscribe(SubscribeOptions::new("observer", ["orders.dlq"]))
        .await
        .unwrap();

    let plain: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", mock.brokers())
        .create()
        .unwrap();
    let send = |value: Vec<u8>, headers: OwnedHeaders| {
        let plain = plain.clone();
        async move {
            plain
                .send(
                    FutureRecord::to("orders")
                        .key("k")
                        .payload(&value)
                        .headers(headers),
                    Duration::from_secs(10),
                )
                .await
                .expect("plain send");
        }
    };
    let now = "2025-11-25T21:07:15Z";
    // 1. A value that is not an OrderPlaced.
    send(
        b"{\"order\": [".to_vec(),
        ce_headers(b"garbage-1", now, "application/json"),
    )
    .await;
    // 2. Headers that cannot be read: an id that is not UTF-8, a time that is not a time.
    send(
        br#"{"order_id": 2}"#.to_vec(),
        ce_headers(b"\xff\xfe", "yesterday", "application/json"),
    )
    .await;
    // 3. An Avro payload written with a schema no registry knows.
    send(
        vec![0, 0, 0, 0x10, 0x92, 0x02, 0x04],
        ce_headers(b"avro-unknown-3", now, "application/avro"),
    )
    .await;
    // The consumer goes on: a good Avro event and a good JSON event.
    let avro_publisher = Publisher::new(&mock.bus, "checkout")
        .codecs(Codecs::json().encode_with(avro.clone()))
        .metrics(m.clone());
    avro_publisher
        .start_flow(&OrderPlaced { order_id: 4 })
        .await
        .unwrap();
    Publisher::new(&mock.bus, "checkout")
        .metrics(m)
        .start_flow(&OrderPlaced { order_id: 5 })
        .await
        .unwrap();

    let captured = collect(&mut payments, 2, "the two good orders").await;
    let mut ids: Vec<u64> = captured
        .iter()
        .map(|e| {
            serde_json::from_slice::<PaymentCaptured>(&e.data)
                .unwrap()
                .order_id
        })
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![4, 5]);

    let dlq = collect(&mut dead, 3, "three dead letters").await;
    let reasons: Vec<&str> = dlq
        .iter()
        .map(|e| e.headers.get_str(dlq_headers::REASON).expect("a reason"))
        .collect();
    assert!(
        reasons[0]
            .starts_with("decode error: payload of 'OrderPlaced' is not valid application/json"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].starts_with("malformed record: header 'ce_id' is not UTF-8")
            && reasons[1].contains("header 'ce_time' is not an RFC 3339 time: 'yesterday'"),
        "{reasons:?}"
    );
    assert!(
        reasons[2].starts_with("decode error:") && reasons[2].contains("schema id 4242"),
        "{reasons:?}"
    );
    for e in &dlq {
        assert_eq!(e.headers.get_str(dlq_headers::SERVICE), Some("payment"));
        assert_eq!(e.headers.get_str(dlq_headers::TOPIC), Some("orders"));
    }
    // Only the record that could not be read is marked so; its dead letter
    // is the record as received (its broken id and time still broken), read
    // back as the event the service was delivered.
    let marked: Vec<bool> = dlq
        .iter()
        .map(|e| e.headers.get(dlq_headers::MALFORMED).is_some())
        .collect();
    assert_eq!(marked, vec![false, true, false]);
    let offset: i64 = dlq[1]
        .headers
        .get_str(dlq_headers::OFFSET)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        dlq[1].id,
        choreo_kafka::record::derived_id("orders", 0, offset)
    );
    assert!(
        dlq[1].headers.get(choreo_core::MALFORMED_HEADER).is_some(),
        "still unreadable: {:?}",
        dlq[1].headers
    );

    assert_eq!(
        metric(
            &registry,
            "choreo_events_dead_lettered_total",
            &[("service", "payment"), ("topic", "orders")]
        ),
        3.0
    );
    assert_eq!(
        metric(
            &registry,
            "choreo_kafka_malformed_records_total",
            &[("topic", "orders")]
        ),
        1.0
    );
    assert_eq!(avro.decode_failures("orders", "unknown_schema"), 1);

    payments.close().await.unwrap();
    dead.close().await.unwrap();
    stop.cancel();
    payment.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emission_too_large_for_kafka_dead_letters_its_cause_instead_of_looping() {
    let mock = Mock::start(1);
    for t in ["orders", "payments", "orders.dlq"] {
        mock.topic(t, 1).await;
    }
    // The service's client takes records up to 2 000 bytes; its handler
    // emits 3 000 (within choreo's own limit of 1 MiB).
    let small =
        choreo_kafka::KafkaBus::new(config(&mock.brokers()).set("message.max.bytes", "2000"))
            .unwrap();
    for t in ["orders", "payments", "orders.dlq"] {
        small.create_topic(t, 1).await.unwrap();
    }
    let (_registry, m) = metrics();
    let stop = CancellationToken::new();
    let payment = Service::new("payment")
        .on(|_: OrderPlaced, ctx: Context| async move {
            ctx.emit_raw("Scan", "payments", vec![b'x'; 3_000])?;
            Ok::<(), HandlerError>(())
        })
        .receipts(None)
        .metrics(m.clone())
        .start(&small, stop.clone())
        .await
        .unwrap();
    let mut dead = mock
        .bus
        .subscribe(SubscribeOptions::new("observer", ["orders.dlq"]))
        .await
        .unwrap();
    Publisher::new(&mock.bus, "checkout")
        .metrics(m)
        .start_flow(&OrderPlaced { order_id: 7 })
        .await
        .unwrap();
    let dlq = collect(&mut dead, 1, "the dead letter").await;
    let reason = dlq[0].headers.get_str(dlq_headers::REASON).unwrap();
    assert!(
        reason.starts_with(
            "publishing the handler's events failed: event 'Scan' on 'payments' is refused: \
             the record (a payload of 3000 bytes, with its headers) is over the producer's \
             message.max.bytes"
        ),
        "{reason}"
    );
    assert_eq!(dlq[0].headers.get_str(dlq_headers::ATTEMPTS), Some("1"));
    dead.close().await.unwrap();
    stop.cancel();
    payment.await.unwrap();
}
