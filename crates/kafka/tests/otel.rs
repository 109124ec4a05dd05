//! OpenTelemetry context travels in the record headers (`traceparent`,
//! `tracestate`), so one trace spans producer and consumer processes: here
//! two buses, each its own Kafka client, stand for two processes. A trace
//! begun elsewhere and carried in the CloudEvents tracing extension
//! (`ce_traceparent`) is continued too.

use choreo_bus::{Context, HandlerError, Publisher, Service};
use choreo_core::{Bus, SubscribeOptions, Subscription};
// Only some of the helpers: the others serve the tests of `tests/it`.
#[allow(dead_code)]
#[path = "it/common/mod.rs"]
mod common;

use common::*;
use opentelemetry::trace::{SpanId, SpanKind, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporterBuilder, SdkTracerProvider, SpanData};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

impl Mock {
    /// Another bus on the same cluster (another "process").
    fn another_bus(&self) -> choreo_kafka::KafkaBus {
        choreo_kafka::KafkaBus::new(config(&self.brokers())).expect("bus")
    }
}

async fn pay(order: OrderPlaced, ctx: Context) -> Result<(), HandlerError> {
    ctx.emit(&PaymentCaptured {
        order_id: order.order_id,
    })?;
    Ok(())
}

async fn ship(p: PaymentCaptured, ctx: Context) -> Result<(), HandlerError> {
    ctx.emit(&OrderShipped {
        order_id: p.order_id,
    })?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_spans_producer_and_consumer_processes() {
    let exporter = InMemorySpanExporterBuilder::new().build();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());

    let mock = Mock::start(1);
    for t in ["orders", "payments", "shipping"] {
        mock.topic(t, 2).await;
    }
    // "Process" A publishes orders and ships; "process" B takes payments.
    let a = mock.bus.clone();
    let b = mock.another_bus();
    let (_r, m) = metrics();
    let stop = CancellationToken::new();
    let payment = Service::new("payment")
        .on(pay)
        .receipts(None)
        .metrics(m.clone())
        .start(&b, stop.clone())
        .await
        .unwrap();
    let shipping = Service::new("shipping")
        .on(ship)
        .receipts(None)
        .metrics(m.clone())
        .start(&a, stop.clone())
        .await
        .unwrap();
    let mut shipped = a
        .subscribe(SubscribeOptions::new("observer", ["shipping"]))
        .await
        .unwrap();
    Publisher::new(&a, "checkout")
        .metrics(m)
        .start_flow(&OrderPlaced { order_id: 1 })
        .await
        .unwrap();
    let last = collect(&mut shipped, 1, "the shipment").await.remove(0);

    // An order from a producer that knows choreo only as CloudEvents, in a
    // trace of its own carried in the tracing extension.
    let foreign: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", mock.brokers())
        .create()
        .unwrap();
    let mut headers = OwnedHeaders::new();
    for (key, value) in [
        ("ce_specversion", "1.0"),
        ("ce_id", "foreign-2"),
        ("ce_source", "https://shop.example.com/checkout"),
        ("ce_type", "OrderPlaced"),
        ("content-type", "application/json"),
        (
            "ce_traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
    ] {
        headers = headers.insert(Header {
            key,
            value: Some(value),
        });
    }
    foreign
        .send(
            FutureRecord::to("orders")
                .key("foreign-2")
                .payload(r#"{"order_id":2}"#)
                .headers(headers),
            std::time::Duration::from_secs(30),
        )
        .await
        .unwrap();
    let foreign_last = collect(&mut shipped, 1, "the foreign order's shipment")
        .await
        .remove(0);
    shipped.close().await.unwrap();
    stop.cancel();
    payment.await.unwrap();
    shipping.await.unwrap();
    let _ = provider.force_flush();

    let spans = exporter.get_finished_spans().unwrap();
    let find = |name: &str, kind: SpanKind| -> &SpanData {
        spans
            .iter()
            .find(|s| s.name == name && s.span_kind == kind)
            .unwrap_or_else(|| {
                panic!(
                    "no {kind:?} span '{name}' in {:?}",
                    spans.iter().map(|s| &s.name).collect::<Vec<_>>()
                )
            })
    };
    let send_order = find("send orders", SpanKind::Producer);
    let process_order = find("process orders", SpanKind::Consumer);
    let send_payment = find("send payments", SpanKind::Producer);
    let process_payment = find("process payments", SpanKind::Consumer);
    let send_shipping = find("send shipping", SpanKind::Producer);

    let trace = send_order.span_context.trace_id();
    for s in [process_order, send_payment, process_payment, send_shipping] {
        assert_eq!(
            s.span_context.trace_id(),
            trace,
            "{} is in the trace",
            s.name
        );
    }
    // Each hop's consumer span is a child of the producer span in the other
    // process: the context crossed Kafka in the record headers.
    assert_eq!(
        process_order.parent_span_id,
        send_order.span_context.span_id()
    );
    assert_eq!(
        send_payment.parent_span_id,
        process_order.span_context.span_id()
    );
    assert_eq!(
        process_payment.parent_span_id,
        send_payment.span_context.span_id()
    );
    assert_eq!(
        send_shipping.parent_span_id,
        process_payment.span_context.span_id()
    );
    assert_eq!(
        last.traceparent.as_deref(),
        Some(format!("00-{}-{}-01", trace, send_shipping.span_context.span_id()).as_str())
    );

    // The foreign trace: payment's CONSUMER span is a child of the foreign
    // span, and the whole chain stays in its trace.
    let foreign_trace = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
    let in_foreign: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.span_context.trace_id() == foreign_trace)
        .collect();
    let process = in_foreign
        .iter()
        .find(|s| s.name == "process orders" && s.span_kind == SpanKind::Consumer)
        .expect("the foreign order is processed in its trace");
    assert_eq!(
        process.parent_span_id,
        SpanId::from_hex("00f067aa0ba902b7").unwrap()
    );
    assert!(
        in_foreign
            .iter()
            .any(|s| s.name == "send shipping" && s.span_kind == SpanKind::Producer),
        "two services on, still the foreign trace"
    );
    let tp = foreign_last.traceparent.as_deref().unwrap();
    assert_eq!(
        tp.split('-').nth(1),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
}
