//! The JSON API over real HTTP on loopback: the flows list with its filters
//! and search, one flow, the graphs, the service graph, clear errors, and
//! markup from events kept as data.

use serde_json::Value;

use crate::fixture::{HOSTILE_SOURCE, HOSTILE_TYPE, Scenario, get};

fn ids(list: &Value) -> Vec<String> {
    list["flows"]
        .as_array()
        .expect("a list of flows")
        .iter()
        .map(|f| f["correlation_id"].as_str().unwrap().to_owned())
        .collect()
}

fn row<'a>(list: &'a Value, id: &choreo_core::EventId) -> &'a Value {
    list["flows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["correlation_id"] == id.to_string())
        .unwrap_or_else(|| panic!("{id} is not listed: {list}"))
}

#[tokio::test]
async fn the_list_shows_every_held_flow_with_its_status_and_who_owes() {
    let s = Scenario::new();
    let (addr, _stop) = s.serve().await;
    let a = get(addr, "/api/flows").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("content-type"), Some("application/json"));
    let list = a.json();
    assert_eq!(list["live"], true);
    assert_eq!(list["held"]["in_flight"], 1, "{list}");
    assert_eq!(list["held"]["recent"], 4, "{list}");
    let stuck = row(&list, &s.stuck);
    assert_eq!(stuck["status"], "stuck");
    assert_eq!(stuck["flow"], "checkout");
    assert_eq!(stuck["owing"], serde_json::json!(["shipping"]));
    assert_eq!(stuck["held"], "recent");
    assert!(stuck["duration_us"].as_u64().unwrap() > 0);
    assert_eq!(row(&list, &s.completed)["status"], "completed");
    let failed = row(&list, &s.failed);
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["owing"], serde_json::json!(["inventory"]));
    let live = row(&list, &s.in_progress);
    assert_eq!(live["status"], "in_progress");
    assert_eq!(live["held"], "in_flight");
    assert_eq!(live["owing"], serde_json::json!(["payment"]));
    assert_eq!(live["ended"], Value::Null);
    // Newest first: the order placed now leads.
    assert_eq!(ids(&list)[0], s.in_progress.to_string());
    assert_eq!(list["totals"]["started"], 5);
}

#[tokio::test]
async fn filters_narrow_the_list() {
    let s = Scenario::new();
    let (addr, _stop) = s.serve().await;
    let only = |path: &'static str| async move { ids(&get(addr, path).await.json()) };
    assert_eq!(
        only("/api/flows?status=stuck").await,
        vec![s.stuck.to_string()]
    );
    let mut bad = only("/api/flows?status=stuck,failed").await;
    bad.sort();
    let mut want = vec![s.stuck.to_string(), s.failed.to_string()];
    want.sort();
    assert_eq!(bad, want);
    let shipping = only("/api/flows?service=shipping").await;
    assert!(
        shipping.contains(&s.stuck.to_string()),
        "shipping owes in it"
    );
    assert!(
        shipping.contains(&s.completed.to_string()),
        "shipping shipped it"
    );
    assert!(!shipping.contains(&s.failed.to_string()));
    assert_eq!(
        only("/api/flows?flow=unknown").await,
        vec![s.hostile.to_string()]
    );
    assert_eq!(
        only("/api/flows?window=1m").await,
        vec![s.in_progress.to_string()],
        "only the order placed now started in the last minute"
    );
    assert_eq!(only("/api/flows?limit=2").await.len(), 2);
    assert_eq!(
        get(addr, "/api/flows?limit=2").await.json()["truncated"],
        true
    );
}

#[tokio::test]
async fn search_finds_flows_by_payload_field_id_and_key() {
    let s = Scenario::new();
    let (addr, _stop) = s.serve().await;
    let found = ids(&get(addr, "/api/flows?q=order_id%3D42").await.json());
    assert_eq!(found, vec![s.stuck.to_string()]);
    let found = ids(&get(addr, "/api/flows?q=customer.id%3Dc-7").await.json());
    assert_eq!(found, vec![s.failed.to_string()], "a dotted path");
    let by_event = format!("/api/flows?q={}", s.dead_event);
    assert_eq!(
        ids(&get(addr, &by_event).await.json()),
        vec![s.failed.to_string()]
    );
    let by_flow = format!("/api/flows?q={}", s.in_progress);
    assert_eq!(
        ids(&get(addr, &by_flow).await.json()),
        vec![s.in_progress.to_string()]
    );
    // Search and filters together.
    let q = "/api/flows?q=order_id%3D42&status=completed";
    assert!(ids(&get(addr, q).await.json()).is_empty());
    assert!(ids(&get(addr, "/api/flows?q=order_id%3D4242").await.json()).is_empty());
}

#[tokio::test]
async fn bad_parameters_are_answered_with_the_fix() {
    let s = Scenario::new();
    let (addr, _stop) = s.serve().await;
    for (path, says) in [
        ("/api/flows?status=late", "in_progress, completed"),
        ("/api/flows?window=soon", "15m"),
        ("/api/flows?since=yesterday", "RFC 3339"),
        ("/api/flows?limit=0", "1 to 1000"),
        ("/api/flows?q=%3D42", "FIELD=VALUE"),
    ] {
        let a = get(addr, path).await;
        assert_eq!(a.status, 400, "{path}: {}", a.body);
        let error = a.json()["error"].as_str().unwrap().to_owned();
        assert!(error.contains(says), "{path}: {error}");
    }
}

#[tokio::test]
async fn one_flow_has_its_timeline_receipts_dead_letters_and_graphs() {
    let s = Scenario::new();
    let (addr, _stop) = s.serve().await;
    let flow = get(addr, &format!("/api/flows/{}", s.stuck)).await.json();
    assert_eq!(flow["summary"]["status"], "stuck");
    assert_eq!(flow["owed"][0]["service"], "shipping");
    assert_eq!(flow["owed"][0]["owes"], serde_json::json!(["OrderShipped"]));
    assert_eq!(flow["events"].as_array().unwrap().len(), 3);
    let timeline = flow["timeline"].as_str().unwrap();
    assert!(
        timeline.contains("'shipping' owes OrderShipped"),
        "{timeline}"
    );
    assert!(flow["dot"].as_str().unwrap().starts_with("digraph"));
    assert!(flow["mermaid"].as_str().unwrap().starts_with("flowchart"));
    let svg_path = flow["graph_svg"].as_str().unwrap().to_owned();
    let svg = get(addr, &svg_path).await;
    assert_eq!(svg.status, 200);
    assert_eq!(svg.header("content-type"), Some("image/svg+xml"));
    assert!(svg.body.starts_with("<svg"), "{}", svg.body);
    assert!(
        svg.body.contains("shipping owes"),
        "the owed event is drawn"
    );

    let flow = get(addr, &format!("/api/flows/{}", s.failed)).await.json();
    let dead = &flow["dead_letters"][0];
    assert_eq!(dead["service"], "inventory");
    assert_eq!(dead["attempts"], 3);
    assert_eq!(dead["dlq_topic"], "payments.dlq");
    assert_eq!(
        dead["replay"],
        format!("choreo dlq replay {} --topic payments.dlq", s.dead_event)
    );
    assert_eq!(
        dead["show"],
        format!("choreo dlq show {} --topic payments.dlq", s.dead_event)
    );
    let receipt = &flow["receipts"][0];
    assert_eq!(receipt["outcome"], "dead_lettered");
    assert_eq!(receipt["duration_us"], 2000);
    assert!(receipt["reason"].as_str().unwrap().contains("unreachable"));

    // A flow still in flight is judged as it stands.
    let flow = get(addr, &format!("/api/flows/{}", s.in_progress))
        .await
        .json();
    assert_eq!(flow["summary"]["status"], "in_progress");
    assert_eq!(flow["summary"]["held"], "in_flight");
}

#[tokio::test]
async fn unknown_flows_are_404_with_a_search_box() {
    let s = Scenario::new();
    let (addr, _stop) = s.serve().await;
    let unknown = choreo_core::EventId::new();
    let a = get(addr, &format!("/api/flows/{unknown}")).await;
    assert_eq!(a.status, 404);
    assert!(a.json()["error"].as_str().unwrap().contains("search"));
    let a = get(addr, &format!("/flows/{unknown}")).await;
    assert_eq!(a.status, 404);
    assert!(a.header("content-type").unwrap().starts_with("text/html"));
    assert!(a.body.contains(r#"<input id="q" name="q""#), "{}", a.body);
    let a = get(addr, "/flows/%20").await;
    assert_eq!(a.status, 404);
    assert!(a.body.contains("is not a correlation id"), "{}", a.body);
    assert_eq!(
        get(addr, &format!("/api/flows/{unknown}/graph.svg"))
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn the_service_graph_has_counts_failures_and_latencies() {
    let s = Scenario::new();
    let (addr, _stop) = s.serve().await;
    let page = get(addr, "/api/services").await.json();
    let inventory = page["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "inventory")
        .expect("inventory is in the graph");
    assert_eq!(inventory["failed"], 1, "{page}");
    let edge = page["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["producer"] == "payment" && e["consumer"] == "inventory")
        .expect("payment → inventory");
    assert_eq!(edge["failed"], 1);
    assert!(edge["count"].as_u64().unwrap() >= 1);
    assert!(edge["latency"]["p50_us"].is_u64() && edge["latency"]["p99_us"].is_u64());
    let svg = get(addr, "/api/services/graph.svg").await;
    assert_eq!(svg.status, 200);
    assert!(svg.body.contains(">inventory</text>"), "{}", svg.body);
}

#[tokio::test]
async fn pages_metrics_and_assets_share_the_port() {
    let s = Scenario::new();
    let (addr, _stop) = s.serve().await;
    for page in ["/", "/services", &format!("/flows/{}", s.stuck)] {
        let a = get(addr, page).await;
        assert_eq!(a.status, 200, "{page}");
        let csp = a.header("content-security-policy").expect("a CSP");
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(
            a.body
                .contains(r#"<script src="/ui/app.js" defer></script>"#)
        );
    }
    assert_eq!(get(addr, "/ui/app.js").await.status, 200);
    assert_eq!(get(addr, "/ui/app.css").await.status, 200);
    let metrics = get(addr, "/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(metrics.body.contains("choreo_trace_"), "{}", metrics.body);
}

#[tokio::test]
async fn markup_from_events_stays_data() {
    let s = Scenario::new();
    let (addr, _stop) = s.serve().await;
    // JSON carries it as it is: data, for the script to show as text.
    let flow = get(addr, &format!("/api/flows/{}", s.hostile)).await.json();
    assert_eq!(flow["events"][0]["event_type"], HOSTILE_TYPE);
    assert_eq!(flow["events"][0]["source"], HOSTILE_SOURCE);
    // The page and the graph escape it.
    let page = get(addr, &format!("/flows/{}", s.hostile)).await;
    assert!(!page.body.contains("__pwned"), "{}", page.body);
    let svg = get(addr, &format!("/api/flows/{}/graph.svg", s.hostile)).await;
    assert!(!svg.body.contains("<script"), "{}", svg.body);
    assert!(!svg.body.contains("<img"), "{}", svg.body);
    assert!(svg.body.contains("&lt;script&gt;"), "{}", svg.body);
    let failed = get(addr, &format!("/api/flows/{}/graph.svg", s.failed)).await;
    assert!(!failed.body.contains("<b>"), "{}", failed.body);
}

#[tokio::test]
async fn a_flow_ingested_after_the_start_is_listed() {
    let s = Scenario::new();
    let (addr, _stop) = s.serve().await;
    let before = ids(&get(addr, "/api/flows").await.json());
    let new = s.start_order(77);
    assert!(!before.contains(&new.to_string()));
    let after = get(addr, "/api/flows?q=order_id%3D77").await.json();
    assert_eq!(ids(&after), vec![new.to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_do_not_hold_the_tracer() {
    use tokio::io::AsyncWriteExt;
    let s = Scenario::new();
    for i in 0..300 {
        s.start_order(1000 + i);
    }
    let (addr, _stop) = s.serve().await;
    // Clients that ask for a large list and never read it, and clients that
    // never finish asking.
    let mut clients = Vec::new();
    for i in 0..80 {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let ask: &[u8] = if i % 2 == 0 {
            b"GET /api/flows?limit=1000 HTTP/1.1\r\nHost: t\r\n\r\n"
        } else {
            b"GET /api/fl"
        };
        c.write_all(ask).await.unwrap();
        clients.push(c);
    }
    // Meanwhile the tracer takes records, each within the deadline.
    for i in 0..100 {
        let deadline = std::time::Instant::now() + crate::fixture::PATIENCE;
        loop {
            match s.tracer.try_lock() {
                Ok(guard) => {
                    drop(guard);
                    s.start_order(5000 + i);
                    break;
                }
                Err(_) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the tracer stayed locked while clients were slow"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            }
        }
    }
    assert_eq!(s.lock().flows_in_flight(), 401);
    drop(clients);
}

#[tokio::test]
async fn a_search_names_the_flows_it_found_that_are_no_longer_held() {
    use choreo_core::{Envelope, Timestamp};
    use choreo_trace::{Record, Tracer, TracerConfig};
    let mut config = TracerConfig::live();
    config.recent_flows = 2;
    config.search_bytes = 1 << 20;
    let mut tracer = Tracer::new(config, None);
    let mut orders = Vec::new();
    for i in 0..5 {
        let e = Envelope::new("OrderPlaced", "orders", format!(r#"{{"order_id":{i}}}"#));
        orders.push(e.correlation_id.to_string());
        tracer.ingest(&Record::new(e));
    }
    // Quiet for a minute: every flow is folded; the newest two are held.
    tracer.tick(Timestamp::from_micros(
        Timestamp::now().as_micros() + 60_000_000,
    ));
    let tracer = std::sync::Arc::new(std::sync::Mutex::new(tracer));
    let (addr, _stop) = crate::fixture::serve(&tracer, false).await;
    let old = get(addr, "/api/flows?q=order_id%3D0").await.json();
    assert!(ids(&old).is_empty());
    assert_eq!(old["found_not_held"], serde_json::json!([orders[0]]));
    let new = get(addr, "/api/flows?q=order_id%3D4").await.json();
    assert_eq!(ids(&new), vec![orders[4].clone()]);
    assert_eq!(new["found_not_held"], serde_json::json!([]));
}

#[tokio::test]
async fn a_capture_viewer_shows_dead_letters_from_the_capture() {
    let s = Scenario::new();
    let registries = std::sync::Arc::new(Vec::<prometheus::Registry>::new());
    let render: choreo_bus::Render = std::sync::Arc::new(move || choreo_bus::render(&registries));
    let stop = tokio_util::sync::CancellationToken::new();
    let server = choreo_ui::Viewer::new(s.tracer.clone())
        .captures(["run.avro"])
        .routes(choreo_bus::MetricsServer::builder(render))
        .start("127.0.0.1:0", stop.clone())
        .await
        .unwrap();
    let flow = get(server.local_addr(), &format!("/api/flows/{}", s.failed))
        .await
        .json();
    assert_eq!(flow["live"], false);
    let dead = &flow["dead_letters"][0];
    assert_eq!(
        dead["show"],
        format!("choreo dlq show {} --capture run.avro", s.dead_event)
    );
    assert_eq!(
        dead["replay"],
        format!("choreo dlq replay {} --topic payments.dlq", s.dead_event),
        "a replay publishes on Kafka"
    );
    stop.cancel();
}

#[tokio::test]
async fn payloads_are_shown_only_when_asked() {
    let s = Scenario::new();
    let (addr, _stop) = s.serve().await;
    let flow = get(addr, &format!("/api/flows/{}", s.stuck)).await.json();
    assert_eq!(flow["payloads_shown"], false);
    assert!(
        flow["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e.get("payload").is_none()),
        "{flow}"
    );
    let (addr, _stop) = s.serve_showing_payloads().await;
    let flow = get(addr, &format!("/api/flows/{}", s.stuck)).await.json();
    assert_eq!(flow["payloads_shown"], true);
    assert_eq!(
        flow["events"][0]["payload"],
        r#"{"order_id":42,"customer":{"id":"c-42"}}"#
    );
    let hostile = get(addr, &format!("/api/flows/{}", s.hostile)).await.json();
    assert_eq!(
        hostile["events"][0]["payload"],
        crate::fixture::HOSTILE_PAYLOAD,
        "data, for the page to show as text"
    );
}
