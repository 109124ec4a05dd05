//! A tracer holding flows of every kind (completed, stuck, failed, in
//! progress, and one whose names carry markup), its viewer served on
//! loopback, and a plain HTTP client.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use choreo_core::{Envelope, EventId, Name, Outcome, Receipt, Timestamp};
use choreo_topology::Topology;
use choreo_trace::{Receipts, Record, Tracer, TracerConfig};
use choreo_ui::Viewer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Long enough for any answer on a loaded machine.
pub(crate) const PATIENCE: Duration = Duration::from_secs(20);

/// The text a hostile event type carries: it must show as text, never run.
pub(crate) const HOSTILE_TYPE: &str = "<script>window.__pwned=1</script>";
/// The payload a hostile event carries.
pub(crate) const HOSTILE_PAYLOAD: &str = r#"{"note":"<script>window.__pwned=3</script>"}"#;
/// The source a hostile event carries.
pub(crate) const HOSTILE_SOURCE: &str = "<img src=x onerror=\"window.__pwned=2\">";

/// The flows the scenario holds, by what they are.
pub(crate) struct Scenario {
    pub(crate) tracer: Arc<Mutex<Tracer>>,
    pub(crate) completed: EventId,
    /// Order 42: shipping owes OrderShipped past its 10 s.
    pub(crate) stuck: EventId,
    /// Inventory dead-lettered its PaymentCaptured.
    pub(crate) failed: EventId,
    /// The PaymentCaptured that was dead-lettered.
    pub(crate) dead_event: EventId,
    /// Started now: payment owes its answer, within 5 s.
    pub(crate) in_progress: EventId,
    pub(crate) hostile: EventId,
}

/// topologies/order-fulfillment.yaml.
pub(crate) fn topology() -> Topology {
    Topology::from_path(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../topologies/order-fulfillment.yaml"
    ))
    .expect("the example topology")
}

fn topic_of(ty: &str) -> &'static str {
    match ty {
        "OrderPlaced" | "OrderCancelled" => "orders",
        "PaymentCaptured" | "PaymentFailed" | "PaymentRefunded" => "payments",
        "StockReserved" | "OutOfStock" => "inventory",
        "OrderShipped" => "shipping",
        _ => "other",
    }
}

/// Builds events at times relative to a base.
struct Clock {
    base: i64,
}

impl Clock {
    fn at(&self, ms: i64) -> Timestamp {
        Timestamp::from_micros(self.base + ms * 1000)
    }

    fn order(&self, order_id: u64, ms: i64) -> Envelope {
        let mut e = Envelope::new(
            "OrderPlaced",
            "orders",
            format!(r#"{{"order_id":{order_id},"customer":{{"id":"c-{order_id}"}}}}"#),
        )
        .with_source("checkout");
        e.time = self.at(ms);
        e
    }

    fn after(&self, cause: &Envelope, ty: &str, source: &str, ms: i64) -> Envelope {
        let mut e = Envelope::new(Name::from(ty), topic_of(ty), "{}")
            .with_source(source)
            .caused_by(cause);
        e.time = self.at(ms);
        e
    }

    fn receipt(&self, service: &str, handled: &Envelope, outcome: Outcome, ms: i64) -> Envelope {
        let dead = outcome == Outcome::DeadLettered;
        let r = Receipt {
            service: Name::from(service),
            event_id: handled.id.clone(),
            event_type: handled.event_type.clone(),
            correlation_id: handled.correlation_id.clone(),
            topic: handled.topic.clone(),
            partition: 0,
            offset: 0,
            outcome,
            attempts: if dead { 3 } else { 1 },
            reason: dead.then(|| "stock service unreachable <b>bold</b>".to_owned()),
            started: self.at(ms),
            duration_us: 2_000,
            emitted: Vec::new(),
        };
        let mut env = r.to_envelope(Name::from_static(choreo_core::RECEIPTS_TOPIC), handled);
        env.time = self.at(ms + 2);
        env
    }
}

impl Scenario {
    /// Ten minutes of history, judged as of now: every deadline of the
    /// finished flows has passed, so they are folded into the recent flows.
    pub(crate) fn new() -> Scenario {
        let mut config = TracerConfig::live();
        config.receipts = Receipts::Absent;
        Viewer::prepare(&mut config);
        let mut tracer = Tracer::new(config, Some(&topology()));
        let clock = Clock {
            base: Timestamp::now().as_micros() - 600_000_000,
        };
        let mut feed = |e: Envelope| tracer.ingest(&Record::new(e));

        let placed = clock.order(1, 0);
        let captured = clock.after(&placed, "PaymentCaptured", "payment", 10);
        let reserved = clock.after(&captured, "StockReserved", "inventory", 20);
        let shipped = clock.after(&reserved, "OrderShipped", "shipping", 30);
        let completed = placed.correlation_id.clone();
        for e in [placed, captured, reserved, shipped] {
            feed(e);
        }

        let placed = clock.order(42, 1000);
        let captured = clock.after(&placed, "PaymentCaptured", "payment", 1010);
        let reserved = clock.after(&captured, "StockReserved", "inventory", 1020);
        let stuck = placed.correlation_id.clone();
        for e in [placed, captured, reserved] {
            feed(e);
        }

        let placed = clock.order(7, 2000);
        let captured = clock.after(&placed, "PaymentCaptured", "payment", 2010);
        let dead = clock.receipt("inventory", &captured, Outcome::DeadLettered, 2020);
        let failed = placed.correlation_id.clone();
        let dead_event = captured.id.clone();
        for e in [placed, captured, dead] {
            feed(e);
        }

        let mut hostile = Envelope::new(Name::from(HOSTILE_TYPE), "orders", HOSTILE_PAYLOAD)
            .with_source(HOSTILE_SOURCE);
        hostile.time = clock.at(3000);
        let hostile_id = hostile.correlation_id.clone();
        feed(hostile);

        tracer.tick(Timestamp::now());
        let scenario = Scenario {
            tracer: Arc::new(Mutex::new(tracer)),
            completed,
            stuck,
            failed,
            dead_event,
            in_progress: EventId::new(),
            hostile: hostile_id,
        };
        let in_progress = scenario.start_order(99);
        Scenario {
            in_progress,
            ..scenario
        }
    }

    /// The tracer, locked.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Tracer> {
        self.tracer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new order placed now, as a live tracer would read it: in flight.
    pub(crate) fn start_order(&self, order_id: u64) -> EventId {
        let clock = Clock {
            base: Timestamp::now().as_micros(),
        };
        let placed = clock.order(order_id, 0);
        let id = placed.correlation_id.clone();
        self.lock().ingest(&Record::new(placed));
        id
    }

    /// Serves the viewer (live) with the tracer's metrics on a free loopback port.
    pub(crate) async fn serve(&self) -> (SocketAddr, CancellationToken) {
        serve(&self.tracer, false).await
    }

    /// [`Scenario::serve`], showing payloads (`--ui-show-payloads`).
    pub(crate) async fn serve_showing_payloads(&self) -> (SocketAddr, CancellationToken) {
        serve(&self.tracer, true).await
    }
}

/// Serves a viewer of `tracer` (live) with its metrics on a free loopback port.
pub(crate) async fn serve(
    tracer: &Arc<Mutex<Tracer>>,
    show_payloads: bool,
) -> (SocketAddr, CancellationToken) {
    let registry = prometheus::Registry::new();
    tracer
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .register_metrics(&registry)
        .expect("the tracer's metrics");
    let registries = Arc::new(vec![registry]);
    let render: choreo_bus::Render = Arc::new(move || choreo_bus::render(&registries));
    let stop = CancellationToken::new();
    let server = Viewer::new(tracer.clone())
        .live(true)
        .show_payloads(show_payloads)
        .routes(choreo_bus::MetricsServer::builder(render))
        .start("127.0.0.1:0", stop.clone())
        .await
        .expect("the viewer serves on loopback");
    (server.local_addr(), stop)
}

/// An answer: status, headers (lowercase names), body.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: String,
    pub(crate) body: String,
}

impl Answer {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// `GET path` on a new connection, the whole answer read within [`PATIENCE`].
pub(crate) async fn get(addr: SocketAddr, path: &str) -> Answer {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("send");
    let mut raw = String::new();
    tokio::time::timeout(PATIENCE, s.read_to_string(&mut raw))
        .await
        .expect("an answer within the patience")
        .expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a head and a body");
    let (status_line, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    Answer {
        status,
        headers: headers.to_owned(),
        body: body.to_owned(),
    }
}
