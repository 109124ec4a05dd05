//! With the `otel` feature: a PRODUCER span per publish and a CONSUMER span per
//! handling, joined into one trace across hops through the envelope.
//!
//! A binary of its own: it installs the process-wide OpenTelemetry tracer
//! provider, which would record the spans of every other test running
//! beside it in the same process (and this test would find theirs).
#![cfg(feature = "otel")]

#[path = "it/flow.rs"]
mod flow;

use choreo_bus::{Context, HandlerError, InProcessBus, Publisher, Service};
use choreo_core::Event;
use choreo_testkit::wait_until;
use flow::*;
use opentelemetry::trace::SpanKind;
use opentelemetry_sdk::trace::{InMemorySpanExporterBuilder, SdkTracerProvider};
use tokio_util::sync::CancellationToken;

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

#[tokio::test]
async fn one_trace_spans_every_hop_of_a_flow() {
    let exporter = InMemorySpanExporterBuilder::new().build();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());

    let bus = InProcessBus::new();
    let (_r, m) = metrics();
    let stop = CancellationToken::new();
    let payment = Service::new("payment")
        .on(pay)
        .receipts(None)
        .metrics(m.clone())
        .start(&bus, stop.clone())
        .await
        .unwrap();
    let shipping = Service::new("shipping")
        .on(ship)
        .receipts(None)
        .metrics(m.clone())
        .start(&bus, stop.clone())
        .await
        .unwrap();
    let flow = Publisher::new(&bus, "checkout")
        .metrics(m)
        .start_flow(&OrderPlaced { order_id: 1 })
        .await
        .unwrap();
    wait_until("the shipment", PATIENCE, || {
        events(&bus, OrderShipped::TOPIC).len() == 1
    })
    .await;
    stop.cancel();
    payment.await.unwrap();
    shipping.await.unwrap();
    let _ = provider.force_flush();

    let spans = exporter.get_finished_spans().unwrap();
    let find = |name: &str, kind: SpanKind| {
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
            "{} is in the flow's trace",
            s.name
        );
    }
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
    let attr = |s: &opentelemetry_sdk::trace::SpanData, k: &str| {
        s.attributes
            .iter()
            .find(|kv| kv.key.as_str() == k)
            .map(|kv| kv.value.to_string())
    };
    assert_eq!(
        attr(process_order, "messaging.destination.name").as_deref(),
        Some("orders")
    );
    assert_eq!(
        attr(process_order, "messaging.consumer.group.name").as_deref(),
        Some("payment")
    );
    assert_eq!(
        attr(process_order, "messaging.message.id"),
        Some(flow.to_string())
    );
    assert_eq!(
        attr(send_payment, "messaging.operation.type").as_deref(),
        Some("send")
    );

    // The envelope carries the producer span's context.
    let shipped = &events(&bus, OrderShipped::TOPIC)[0];
    let tp = shipped.traceparent.as_deref().unwrap();
    assert_eq!(
        tp,
        format!("00-{}-{}-01", trace, send_shipping.span_context.span_id())
    );
}
