//! Test helpers: librdkafka's mock cluster and tansu brokers as conformance
//! harnesses, and the test configuration.

pub(crate) mod secure;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use choreo_kafka::{KafkaBus, KafkaConfig};
use choreo_testkit::conformance::{Features, Harness};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

/// The configuration the tests use: short group timeouts (the mock cluster
/// waits session timeout − 1 s for members to rejoin), quick commits and lag.
pub(crate) fn config(brokers: &str) -> KafkaConfig {
    KafkaConfig::new(brokers)
        .session_timeout(Duration::from_millis(3000))
        .commit_interval(Duration::from_millis(50))
        .lag_interval(Duration::from_millis(200))
        .join_timeout(Duration::from_secs(60))
        .set("fetch.wait.max.ms", "50")
        .set("topic.metadata.refresh.interval.ms", "1000")
}

/// librdkafka's in-process mock cluster (not `Send`: keep it in the test body).
pub(crate) struct Mock {
    pub(crate) cluster: MockCluster<'static, DefaultProducerContext>,
    pub(crate) bus: KafkaBus,
}

impl Mock {
    /// A mock cluster of `brokers` brokers and a bus on it.
    pub(crate) fn start(brokers: i32) -> Mock {
        let cluster = MockCluster::new(brokers).expect("mock cluster");
        let bus = KafkaBus::new(config(&cluster.bootstrap_servers())).expect("bus");
        Mock { cluster, bus }
    }

    pub(crate) fn brokers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// Creates a topic on the mock (it has no admin API) and lets the bus know.
    pub(crate) async fn topic(&self, name: &str, partitions: u32) {
        self.cluster
            .create_topic(name, partitions as i32, 1)
            .expect("mock topic");
        self.bus
            .create_topic(name, partitions)
            .await
            .expect("topic visible");
    }
}

impl Harness for Mock {
    type Bus = KafkaBus;

    fn bus(&self) -> KafkaBus {
        self.bus.clone()
    }

    async fn create_topic(&self, name: &str, partitions: u32) {
        self.topic(name, partitions).await;
    }

    fn features(&self) -> Features {
        Features {
            patience: Duration::from_secs(30),
            ..Features::default()
        }
    }
}

/// How to install tansu, for the failure message.
pub(crate) const INSTALL_TANSU: &str =
    "cargo install tansu --version 0.6.0 --locked --features dynostore,libsql";

/// The tansu binary: `$CHOREO_TANSU`, else `tansu` on the PATH, else
/// `~/.cargo/bin/tansu`. Panics with the install command when there is none:
/// these tests must not pass silently without a broker.
pub(crate) fn tansu_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("CHOREO_TANSU") {
        return PathBuf::from(p);
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("tansu")).collect())
        .unwrap_or_default();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    if let Some(home) = cargo_home {
        candidates.push(home.join("bin").join("tansu"));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "tansu is not installed, and the Kafka tests on a real broker need it: install it with `{INSTALL_TANSU}` (./scripts/test.sh does this when it is missing), or point CHOREO_TANSU at the binary"
            )
        })
}

pub(crate) use choreo_testkit::free_port;

/// A tansu broker in its own process, on a free loopback port, with sqlite
/// storage in a temporary directory. Killed when dropped.
pub(crate) struct Tansu {
    child: Option<Child>,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) port: u16,
    pub(crate) bus: KafkaBus,
}

/// Where tansu keeps its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Storage {
    /// sqlite in the broker's directory: durable across `kill -9`, slower as
    /// it grows.
    Sqlite,
    /// In memory (`memory://`, the `dynostore` feature): fast, lost when the
    /// broker stops, and it can report a partition's high watermark below
    /// what it stored (a reader then sees the newest records only once more
    /// arrive).
    #[allow(dead_code)] // the throughput benchmark's; the tests want durability
    Memory,
}

impl Storage {
    fn engine(self) -> &'static str {
        match self {
            // sqlite paths are relative to the working directory.
            Storage::Sqlite => "sqlite://tansu.db",
            Storage::Memory => "memory://tansu/",
        }
    }
}

impl Tansu {
    /// Starts a broker (sqlite storage) and a bus on it.
    pub(crate) async fn start() -> Tansu {
        Tansu::start_with(Storage::Sqlite).await
    }

    /// Starts a broker with this storage and a bus on it.
    pub(crate) async fn start_with(storage: Storage) -> Tansu {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            match spawn_tansu_storage(dir.path(), port, port, &[], storage) {
                Ok(child) => {
                    let bus = KafkaBus::new(config(&format!("127.0.0.1:{port}"))).expect("bus");
                    return Tansu {
                        child: Some(child),
                        dir,
                        port,
                        bus,
                    };
                }
                Err(e) => last = e,
            }
        }
        panic!("tansu did not start: {last}");
    }

    pub(crate) fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Another bus on the same broker (another "process").
    pub(crate) fn another_bus(&self) -> KafkaBus {
        KafkaBus::new(config(&self.brokers())).expect("bus")
    }

    /// `kill -9` the broker.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the broker again on the same port and storage.
    pub(crate) fn restart(&mut self) {
        assert!(self.child.is_none(), "kill it first");
        self.child = Some(spawn_tansu_on_released_port(
            self.dir.path(),
            self.port,
            self.port,
            &[],
        ));
    }

    /// Creates a topic with tansu's CLI and lets the bus know.
    pub(crate) async fn topic(&self, name: &str, partitions: u32) {
        let out = Command::new(tansu_binary())
            .args(["topic", "create", name, "--broker"])
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .args(["--partitions", &partitions.to_string()])
            .output()
            .expect("tansu topic create");
        assert!(
            out.status.success(),
            "tansu topic create {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.bus
            .create_topic(name, partitions)
            .await
            .expect("topic visible");
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Like [`spawn_tansu_with`], on a port a killed broker listened on a moment
/// ago: retries for up to 30 s while the port lingers, then panics.
pub(crate) fn spawn_tansu_on_released_port(
    dir: &Path,
    port: u16,
    advertised: u16,
    extra: &[&str],
) -> Child {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match spawn_tansu_with(dir, port, advertised, extra) {
            Ok(c) => return c,
            Err(e) if Instant::now() < deadline => {
                eprintln!("starting tansu on port {port}: {e}; retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("tansu did not start on port {port}: {e}"),
        }
    }
}

/// Starts tansu on `port` with sqlite storage in `dir`, advertising
/// `127.0.0.1:advertised` (another port when a proxy stands in front of it),
/// with `extra` arguments (e.g. `--authentication`). Waits until it listens.
pub(crate) fn spawn_tansu_with(
    dir: &Path,
    port: u16,
    advertised: u16,
    extra: &[&str],
) -> Result<Child, String> {
    spawn_tansu_storage(dir, port, advertised, extra, Storage::Sqlite)
}

/// [`spawn_tansu_with`] on this storage.
fn spawn_tansu_storage(
    dir: &Path,
    port: u16,
    advertised: u16,
    extra: &[&str],
    storage: Storage,
) -> Result<Child, String> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("tansu.log"))
        .map_err(|e| e.to_string())?;
    let url = format!("tcp://127.0.0.1:{port}");
    let advertised = format!("tcp://127.0.0.1:{advertised}");
    let mut child = Command::new(tansu_binary())
        .current_dir(dir)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &advertised,
        ])
        .args(["--storage-engine", storage.engine()])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", tansu_binary().display()))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(dir.join("tansu.log")).unwrap_or_default();
            return Err(format!("tansu exited with {status}: {log}"));
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(child);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err("tansu did not listen within 20 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Harness for Tansu {
    type Bus = KafkaBus;

    fn bus(&self) -> KafkaBus {
        self.bus.clone()
    }

    async fn create_topic(&self, name: &str, partitions: u32) {
        self.topic(name, partitions).await;
    }

    fn features(&self) -> Features {
        Features {
            patience: Duration::from_secs(30),
            ..Features::default()
        }
    }
}

// ---- the order saga the flow tests run ----

/// The next `n` deliveries of `sub`, acked.
pub(crate) async fn collect(
    sub: &mut choreo_kafka::KafkaSubscription,
    n: usize,
    what: &str,
) -> Vec<choreo_core::Envelope> {
    let mut out = Vec::new();
    while out.len() < n {
        let d = choreo_testkit::recv(sub, what, Duration::from_secs(60)).await;
        out.push((**d.envelope()).clone());
        d.ack();
    }
    out
}

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use choreo_bus::{Context, HandlerError, Metrics, Publisher, Retry, Service, ServiceHandle};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, apache_avro::AvroSchema)]
pub(crate) struct OrderPlaced {
    pub(crate) order_id: u64,
}
choreo_core::event!(OrderPlaced, topic = "orders");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct PaymentCaptured {
    pub(crate) order_id: u64,
}
choreo_core::event!(PaymentCaptured, topic = "payments");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct OrderShipped {
    pub(crate) order_id: u64,
}
choreo_core::event!(OrderShipped, topic = "shipping");

/// Metrics on a private registry, so tests don't share counters.
pub(crate) fn metrics() -> (prometheus::Registry, Metrics) {
    let registry = prometheus::Registry::new();
    let metrics = Metrics::new(&registry).expect("metrics");
    (registry, metrics)
}

#[allow(unused_imports)] // not every test binary reads metrics
pub(crate) use choreo_testkit::metric;

/// Three services of an order saga: payment (OrderPlaced → PaymentCaptured),
/// shipping (PaymentCaptured → OrderShipped) and ledger (records each
/// shipped order: the flow's effect). Each with the default in-memory
/// idempotency, so duplicate deliveries have no effect.
pub(crate) struct Saga {
    /// Order ids the ledger recorded, in order (duplicates would show here).
    pub(crate) ledger: Arc<Mutex<Vec<u64>>>,
    /// Handler runs per service (duplicates allowed: at least once).
    pub(crate) runs: Arc<Mutex<HashMap<&'static str, u64>>>,
    pub(crate) stop: CancellationToken,
    handles: Vec<ServiceHandle>,
}

impl Saga {
    /// Starts the three services, each on its own bus from `bus_for`.
    pub(crate) async fn start(bus_for: impl Fn(&str) -> KafkaBus, metrics: &Metrics) -> Saga {
        let ledger: Arc<Mutex<Vec<u64>>> = Arc::default();
        let runs: Arc<Mutex<HashMap<&'static str, u64>>> = Arc::default();
        let stop = CancellationToken::new();
        let retry = Retry::default()
            .max_attempts(100)
            .backoff(Duration::from_millis(5), Duration::from_millis(200));
        let count = |runs: &Arc<Mutex<HashMap<&'static str, u64>>>, who: &'static str| {
            *runs.lock().unwrap().entry(who).or_default() += 1;
        };
        let r = runs.clone();
        let payment = Service::new("payment")
            .on(move |o: OrderPlaced, ctx: Context| {
                count(&r, "payment");
                async move {
                    ctx.emit(&PaymentCaptured {
                        order_id: o.order_id,
                    })?;
                    Ok::<(), HandlerError>(())
                }
            })
            .receipts(None)
            .retry(retry.clone())
            .metrics(metrics.clone());
        let r = runs.clone();
        let shipping = Service::new("shipping")
            .on(move |p: PaymentCaptured, ctx: Context| {
                count(&r, "shipping");
                async move {
                    ctx.emit(&OrderShipped {
                        order_id: p.order_id,
                    })?;
                    Ok::<(), HandlerError>(())
                }
            })
            .receipts(None)
            .retry(retry.clone())
            .metrics(metrics.clone());
        let r = runs.clone();
        let l = ledger.clone();
        let ledger_svc = Service::new("ledger")
            .on(move |s: OrderShipped, _ctx: Context| {
                count(&r, "ledger");
                l.lock().unwrap().push(s.order_id);
                async { Ok::<(), HandlerError>(()) }
            })
            .receipts(None)
            .retry(retry)
            .metrics(metrics.clone());
        let (pb, sb, lb) = (bus_for("payment"), bus_for("shipping"), bus_for("ledger"));
        let (a, b, c) = tokio::join!(
            payment.start(&pb, stop.clone()),
            shipping.start(&sb, stop.clone()),
            ledger_svc.start(&lb, stop.clone()),
        );
        Saga {
            ledger,
            runs,
            stop,
            handles: vec![
                a.expect("payment"),
                b.expect("shipping"),
                c.expect("ledger"),
            ],
        }
    }

    /// Starts flows `range` from `bus`.
    pub(crate) async fn place(bus: &KafkaBus, range: std::ops::Range<u64>) {
        let p = Publisher::new(bus, "checkout");
        let all = range.map(|order_id| {
            let p = p.clone();
            async move { p.start_flow(&OrderPlaced { order_id }).await }
        });
        for r in futures_util::future::join_all(all).await {
            r.expect("start a flow");
        }
    }

    /// How many distinct orders the ledger recorded.
    pub(crate) fn shipped(&self) -> usize {
        let l = self.ledger.lock().unwrap();
        l.iter().collect::<std::collections::HashSet<_>>().len()
    }

    /// Waits until every order of `0..n` is in the ledger.
    pub(crate) async fn wait_all(&self, n: u64, deadline: Duration) {
        choreo_testkit::wait_until(&format!("{n} flows to complete"), deadline, || {
            self.shipped() >= n as usize
        })
        .await;
    }

    /// Stops the services and checks the effect: every order once.
    pub(crate) async fn finish(self, n: u64) -> HashMap<&'static str, u64> {
        self.stop.cancel();
        for h in self.handles {
            h.await.expect("service stopped cleanly");
        }
        let mut ledger = self.ledger.lock().unwrap().clone();
        ledger.sort_unstable();
        assert_eq!(
            ledger,
            (0..n).collect::<Vec<_>>(),
            "every flow's effect exactly once"
        );
        self.runs.lock().unwrap().clone()
    }
}
