//! The HTTP endpoint: metrics, HEAD, clear 404 and 405, routes added beside
//! the metrics, and the bounds on connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use choreo_bus::{MetricsServer, Render, ServerBuilder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

/// Long enough for any answer on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(10);

fn render() -> Render {
    Arc::new(|| "choreo_test_total 7\n".to_owned())
}

/// Sends `request` on a new connection and reads the whole answer.
async fn ask(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    timeout(PATIENCE, s.read_to_string(&mut out))
        .await
        .expect("an answer within the patience")
        .unwrap();
    out
}

/// Starts `server` on a free loopback port; cancel the token to stop it.
async fn serving(server: ServerBuilder) -> (SocketAddr, CancellationToken) {
    let stop = CancellationToken::new();
    let server = server.start("127.0.0.1:0", stop.clone()).await.unwrap();
    (server.local_addr(), stop)
}

/// Asserts that `answer` has the status `status` and ends with `end`.
fn assert_answer(answer: &str, status: &str, end: &str) {
    assert!(
        answer.starts_with(&format!("HTTP/1.1 {status}\r\n")),
        "{answer}"
    );
    assert!(answer.ends_with(end), "{answer}");
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
}

#[tokio::test]
async fn metrics_are_served_with_head_and_clear_answers_to_the_rest() {
    let stop = CancellationToken::new();
    let server = MetricsServer::start("127.0.0.1:0", render(), stop.clone())
        .await
        .unwrap();
    let addr = server.local_addr();

    let metrics = ask(addr, &get("/metrics")).await;
    assert_answer(&metrics, "200 OK", "\r\n\r\nchoreo_test_total 7\n");
    assert!(
        metrics.contains("content-type: text/plain; version=0.0.4; charset=utf-8\r\n"),
        "{metrics}"
    );

    let head = ask(
        addr,
        "HEAD /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
    )
    .await;
    // No body after the head.
    assert_answer(&head, "200 OK", "\r\n\r\n");

    let health = ask(addr, &get("/health")).await;
    assert_answer(&health, "200 OK", "ok: metrics at /metrics\n");

    let missing = ask(addr, &get("/metric")).await;
    assert_answer(
        &missing,
        "404 Not Found",
        "not found: metrics are at /metrics\n",
    );

    let posted = ask(
        addr,
        "POST /metrics HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_answer(
        &posted,
        "405 Method Not Allowed",
        "this endpoint serves GET and HEAD\n",
    );
    stop.cancel();
}

#[tokio::test]
async fn routes_added_are_served_on_the_same_port_and_may_take_the_root() {
    let viewer = MetricsServer::builder(render())
        .route("/", axum::routing::get(|| async { "the flow viewer\n" }))
        .route(
            "/flows/{id}",
            axum::routing::get(
                |axum::extract::Path(id): axum::extract::Path<String>| async move {
                    format!("flow {id}\n")
                },
            ),
        );
    let (addr, stop) = serving(viewer).await;
    assert!(ask(addr, &get("/")).await.ends_with("the flow viewer\n"));
    assert!(ask(addr, &get("/flows/42")).await.ends_with("flow 42\n"));
    assert!(
        ask(addr, &get("/metrics"))
            .await
            .ends_with("choreo_test_total 7\n")
    );
    stop.cancel();
}

#[tokio::test]
async fn connections_beyond_the_bound_wait_until_one_closes() {
    let (addr, stop) = serving(MetricsServer::builder(render()).max_connections(2)).await;
    // Two clients hold a connection each without asking anything.
    let first = TcpStream::connect(addr).await.unwrap();
    let _second = TcpStream::connect(addr).await.unwrap();
    let mut third = TcpStream::connect(addr).await.unwrap();
    third.write_all(get("/metrics").as_bytes()).await.unwrap();
    let mut answer = String::new();
    // While both are open, the third is not taken in: no answer comes.
    let waited = timeout(
        Duration::from_millis(500),
        third.read_to_string(&mut answer),
    )
    .await;
    assert!(waited.is_err(), "answered beyond the bound: {answer}");
    // One closes: the third is served.
    drop(first);
    timeout(PATIENCE, third.read_to_string(&mut answer))
        .await
        .expect("served once a connection closed")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    stop.cancel();
}

#[tokio::test]
async fn a_client_that_sends_no_request_is_disconnected() {
    let (addr, stop) =
        serving(MetricsServer::builder(render()).header_timeout(Duration::from_millis(200))).await;
    let mut idle = TcpStream::connect(addr).await.unwrap();
    // Half a request line, then nothing.
    idle.write_all(b"GET /met").await.unwrap();
    let mut rest = Vec::new();
    let closed = timeout(PATIENCE, idle.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "still open after the header timeout passed many times over"
    );
    stop.cancel();
}

#[tokio::test]
async fn a_kept_alive_connection_is_closed_after_its_lifetime() {
    let (addr, stop) =
        serving(MetricsServer::builder(render()).connection_lifetime(Duration::from_millis(300)))
            .await;
    let mut kept = TcpStream::connect(addr).await.unwrap();
    kept.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut all = Vec::new();
    timeout(PATIENCE, kept.read_to_end(&mut all))
        .await
        .expect("closed after its lifetime")
        .unwrap();
    let text = String::from_utf8(all).unwrap();
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\n") && text.ends_with("choreo_test_total 7\n"),
        "the response, then the close: {text}"
    );
    stop.cancel();
}

#[tokio::test]
async fn the_health_check_can_say_not_ready() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let ready = Arc::new(AtomicBool::new(false));
    let flag = ready.clone();
    let health: choreo_bus::Health = Arc::new(move || {
        if flag.load(Ordering::Relaxed) {
            Ok("ok: ready\n".to_owned())
        } else {
            Err("restoring\n".to_owned())
        }
    });
    let (addr, stop) = serving(MetricsServer::builder(render()).health(health)).await;
    assert_answer(
        &ask(addr, &get("/health")).await,
        "503 Service Unavailable",
        "restoring\n",
    );
    assert_answer(
        &ask(addr, &get("/")).await,
        "503 Service Unavailable",
        "restoring\n",
    );
    // The metrics answer meanwhile: a liveness probe reads them.
    assert_answer(
        &ask(addr, &get("/metrics")).await,
        "200 OK",
        "choreo_test_total 7\n",
    );
    ready.store(true, Ordering::Relaxed);
    assert_answer(&ask(addr, &get("/health")).await, "200 OK", "ok: ready\n");
    stop.cancel();
}
