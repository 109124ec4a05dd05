//! Prometheus series: Grafana's service-graph names and labels, choreo's own, no clash with the SDK's.

use std::io::{Read, Write};
use std::sync::Arc;

use crate::helpers::*;
use choreo_core::Outcome;
use choreo_trace::{METRICS, Record, Tracer, TracerConfig};

fn traced(registry: &prometheus::Registry) -> Tracer {
    let h = Hand::default();
    let placed = h.start("OrderPlaced", "checkout", 0);
    let captured = h.after(&placed, "PaymentCaptured", "payment", 10);
    let r1 = h.receipt("payment", &placed, Outcome::Acked, &[&captured], 2, 5);
    let r2 = h.receipt("inventory", &captured, Outcome::DeadLettered, &[], 12, 30);
    let other = h.start("OrderPlaced", "checkout", 100);
    let mut t = Tracer::new(TracerConfig::live(), Some(&order_fulfillment()));
    t.register_metrics(registry).unwrap();
    for e in [placed, captured, r1, r2, other] {
        t.ingest(&Record::new(e));
    }
    t.tick(h.at(60_000));
    t
}

#[test]
fn service_graph_series_carry_grafanas_labels() {
    let registry = prometheus::Registry::new();
    let _t = traced(&registry);
    let text = choreo_bus::render(&[registry]);
    for line in [
        "traces_service_graph_request_total{client=\"checkout\",connection_type=\"messaging_system\",server=\"payment\"} 1",
        "traces_service_graph_request_failed_total{client=\"payment\",connection_type=\"messaging_system\",server=\"inventory\"} 1",
        "traces_service_graph_request_server_seconds_count{client=\"checkout\",connection_type=\"messaging_system\",server=\"payment\"} 1",
        "traces_service_graph_request_client_seconds_count{client=\"checkout\",connection_type=\"messaging_system\",server=\"payment\"} 1",
        "choreo_trace_edge_total{consumer=\"payment\",event_type=\"OrderPlaced\",producer=\"checkout\"} 1",
        "choreo_flow_started_total{flow=\"checkout\"} 2",
        "choreo_flow_failed_total{flow=\"checkout\"} 1",
        "choreo_flow_stuck_total{flow=\"checkout\"} 1",
        "choreo_trace_violations_total{rule=\"dead-lettered\",service=\"inventory\"} 1",
        "choreo_trace_violations_total{rule=\"stuck\",service=\"payment\"} 1",
        "choreo_trace_records_total{kind=\"receipt\"} 2",
        "choreo_trace_records_total{kind=\"event\"} 3",
        "choreo_trace_evictions_total{reason=\"stuck\"} 1",
        "choreo_trace_cap{cap=\"flows\"} 100000",
        "choreo_trace_records_in_flight 0",
    ] {
        assert!(text.contains(line), "missing {line}\n{text}");
    }
    // The server histogram holds the receipt's handler time: 5 ms.
    assert!(text.contains(
        "traces_service_graph_request_server_seconds_sum{client=\"checkout\",connection_type=\"messaging_system\",server=\"payment\"} 0.005"
    ), "{text}");
}

#[test]
fn every_documented_family_is_exported_and_none_clashes_with_the_sdk() {
    let registry = prometheus::Registry::new();
    let _t = traced(&registry);
    let families: Vec<String> = registry
        .gather()
        .iter()
        .map(|f| f.name().to_owned())
        .collect();
    for (name, kind, _, help) in METRICS {
        assert!(
            families.iter().any(|f| f == name),
            "{name} not exported: {families:?}"
        );
        assert!(["counter", "gauge", "histogram"].contains(kind));
        assert!(!help.is_empty());
    }
    assert_eq!(families.len(), METRICS.len(), "{families:?}");
    // The SDK's families register on the same registry without a clash.
    choreo_bus::Metrics::new(&registry).expect("no name clash with the SDK's metrics");
    let sdk = prometheus::Registry::new();
    choreo_bus::Metrics::new(&sdk).unwrap();
    for f in sdk.gather() {
        assert!(
            !METRICS.iter().any(|m| m.0 == f.name()),
            "{} clashes",
            f.name()
        );
    }
    // Registering the tracer twice on one registry is an error, not a panic.
    let mut again = Tracer::new(TracerConfig::live(), None);
    assert!(again.register_metrics(&registry).is_err());
}

#[tokio::test]
async fn metrics_are_served_over_http() {
    let registry = prometheus::Registry::new();
    let _t = traced(&registry);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let registries = Arc::new(vec![registry]);
    let render: choreo_bus::Render = Arc::new(move || choreo_bus::render(&registries));
    let server = choreo_bus::MetricsServer::start("127.0.0.1:0", render, shutdown.clone())
        .await
        .unwrap();
    let addr = server.local_addr();
    let body = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
    .await
    .unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(
        body.contains("traces_service_graph_request_total"),
        "{body}"
    );
    shutdown.cancel();
    server.stop();
}
