//! Interoperability with code that knows nothing of choreo: records written
//! by plain rdkafka with CloudEvents headers are handled by choreo services,
//! choreo's records read correctly with plain rdkafka, and records without
//! any CloudEvents header are still delivered.

use std::time::Duration;

use crate::common::*;
use choreo_bus::{Context, HandlerError, Publisher, Service};
use choreo_core::{Bus, ContentType, Event, StartFrom, SubscribeOptions, Subscription, Timestamp};
use choreo_kafka::record::derived_id;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

fn plain_producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("plain producer")
}

async fn capture(o: OrderPlaced, ctx: Context) -> Result<(), HandlerError> {
    ctx.emit(&PaymentCaptured {
        order_id: o.order_id,
    })?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloudevent_written_by_plain_rdkafka_is_handled_by_a_choreo_service() {
    let mock = Mock::start(1);
    mock.topic("orders", 1).await;
    mock.topic("payments", 1).await;
    let stop = CancellationToken::new();
    let (_registry, m) = metrics();
    let payment = Service::new("payment")
        .on(capture)
        .receipts(None)
        .metrics(m)
        .start(&mock.bus, stop.clone())
        .await
        .unwrap();
    let mut observer = mock
        .bus
        .subscribe(SubscribeOptions::new("observer", ["payments"]))
        .await
        .unwrap();

    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "ce_specversion",
            value: Some("1.0"),
        })
        .insert(Header {
            key: "ce_id",
            value: Some("legacy-order-7"),
        })
        .insert(Header {
            key: "ce_source",
            value: Some("/legacy/checkout"),
        })
        .insert(Header {
            key: "ce_type",
            value: Some("OrderPlaced"),
        })
        .insert(Header {
            key: "ce_time",
            value: Some("2025-11-25T21:07:15Z"),
        })
        .insert(Header {
            key: "content-type",
            value: Some("application/json"),
        })
        .insert(Header {
            key: "ce_correlationid",
            value: Some("flow-7"),
        })
        // The CloudEvents tracing extension, as an SDK writes it.
        .insert(Header {
            key: "ce_traceparent",
            value: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        });
    plain_producer(&mock.brokers())
        .send(
            FutureRecord::to("orders")
                .key("flow-7")
                .payload(r#"{"order_id":7}"#)
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .expect("plain send");

    let got = collect(&mut observer, 1, "the payment").await;
    let captured = &got[0];
    assert_eq!(captured.event_type, PaymentCaptured::TYPE);
    assert_eq!(captured.source, "payment");
    assert_eq!(captured.correlation_id.to_string(), "flow-7");
    assert_eq!(
        captured.causation_id.as_ref().map(ToString::to_string),
        Some("legacy-order-7".to_owned())
    );
    assert_eq!(captured.key.as_deref(), Some(&b"flow-7"[..]));
    assert_eq!(&captured.data[..], br#"{"order_id":7}"#);
    // The foreign trace goes on in what the handler emitted.
    let tp = captured.traceparent.as_deref().expect("trace context");
    assert_eq!(
        tp.split('-').nth(1),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    observer.close().await.unwrap();
    stop.cancel();
    payment.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_choreo_event_is_read_correctly_by_plain_rdkafka() {
    let mock = Mock::start(1);
    mock.topic("orders", 3).await;
    let flow = Publisher::new(&mock.bus, "checkout")
        .start_flow(&OrderPlaced { order_id: 9 })
        .await
        .unwrap();

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", mock.brokers())
        .set("group.id", "plain")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&["orders"]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let m = loop {
        assert!(std::time::Instant::now() < deadline, "no record read");
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            break m.expect("a record").detach();
        }
    };
    let header = |name: &str| -> Option<String> {
        m.headers()?
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8(v.to_vec()).unwrap())
    };
    let id = flow.to_string();
    assert_eq!(header("ce_specversion").as_deref(), Some("1.0"));
    assert_eq!(header("ce_id"), Some(id.clone()));
    assert_eq!(header("ce_source").as_deref(), Some("checkout"));
    assert_eq!(header("ce_type").as_deref(), Some("OrderPlaced"));
    assert!(Timestamp::parse_rfc3339(&header("ce_time").unwrap()).is_some());
    assert_eq!(header("content-type").as_deref(), Some("application/json"));
    assert_eq!(header("ce_correlationid"), Some(id.clone()));
    assert_eq!(header("ce_causationid"), None);
    assert_eq!(m.key(), Some(id.as_bytes()), "keyed by the flow");
    assert_eq!(m.payload(), Some(&br#"{"order_id":9}"#[..]));
    // murmur2_random: the partition Kafka's Java client and the in-process bus pick.
    let expected = choreo_core::PartitionKey::Bytes(id.as_bytes()).partition(3);
    assert_eq!(m.partition() as u32, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_without_cloudevents_headers_is_delivered_with_what_can_be_derived() {
    let mock = Mock::start(1);
    mock.topic("legacy", 1).await;
    let mut sub = mock
        .bus
        .subscribe(SubscribeOptions::new("reader", ["legacy"]).start_from(StartFrom::Earliest))
        .await
        .unwrap();
    let headers = OwnedHeaders::new().insert(Header {
        key: "type",
        value: Some("InvoiceSent"),
    });
    let sent = plain_producer(&mock.brokers())
        .send(
            FutureRecord::to("legacy")
                .key("invoice-3")
                .payload("<invoice/>")
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .expect("plain send");
    plain_producer(&mock.brokers())
        .send(
            FutureRecord::<(), _>::to("legacy").payload("bare"),
            Duration::from_secs(10),
        )
        .await
        .expect("plain send");
    let got = collect(&mut sub, 2, "the foreign records").await;
    let first = &got[0];
    assert_eq!(first.id, derived_id("legacy", sent.partition, sent.offset));
    assert_eq!(first.correlation_id, first.id, "a flow of its own");
    assert_eq!(first.event_type, "InvoiceSent");
    assert_eq!(first.key.as_deref(), Some(&b"invoice-3"[..]));
    assert_eq!(&first.data[..], b"<invoice/>");
    assert_eq!(first.content_type, ContentType::Json);
    assert!(first.headers.get(choreo_core::MALFORMED_HEADER).is_none());
    let bare = &got[1];
    assert_eq!(bare.event_type, choreo_kafka::record::UNKNOWN_TYPE);
    assert_eq!(bare.key, None);
    assert_eq!(&bare.data[..], b"bare");
    sub.close().await.unwrap();
}
