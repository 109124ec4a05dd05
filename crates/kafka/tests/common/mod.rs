//! Test helpers: librdkafka's mock cluster and tansu brokers as conformance
//! harnesses, and the test configuration.

#![allow(dead_code, unreachable_pub)]

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
pub fn config(brokers: &str) -> KafkaConfig {
    KafkaConfig {
        session_timeout: Some(Duration::from_millis(3000)),
        commit_interval: Duration::from_millis(50),
        lag_interval: Some(Duration::from_millis(200)),
        join_timeout: Duration::from_secs(60),
        ..KafkaConfig::new(brokers)
    }
    .set("fetch.wait.max.ms", "50")
    .set("topic.metadata.refresh.interval.ms", "1000")
}

/// librdkafka's in-process mock cluster (not `Send`: keep it in the test body).
pub struct Mock {
    pub cluster: MockCluster<'static, DefaultProducerContext>,
    pub bus: KafkaBus,
}

impl Mock {
    /// A mock cluster of `brokers` brokers and a bus on it.
    pub fn start(brokers: i32) -> Mock {
        let cluster = MockCluster::new(brokers).expect("mock cluster");
        let bus = KafkaBus::new(config(&cluster.bootstrap_servers())).expect("bus");
        Mock { cluster, bus }
    }

    /// Another bus on the same cluster (another "process").
    pub fn another_bus(&self) -> KafkaBus {
        KafkaBus::new(config(&self.cluster.bootstrap_servers())).expect("bus")
    }

    pub fn brokers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// Creates a topic on the mock (it has no admin API) and lets the bus know.
    pub async fn topic(&self, name: &str, partitions: u32) {
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
            counts_attempts: true,
        }
    }
}

/// How to install tansu, for the failure message.
pub const INSTALL_TANSU: &str =
    "cargo install tansu --version 0.6.0 --locked --features dynostore,libsql";

/// The tansu binary: `$CHOREO_TANSU`, else `tansu` on the PATH, else
/// `~/.cargo/bin/tansu`. Panics with the install command when there is none:
/// these tests must not pass silently without a broker.
pub fn tansu_binary() -> PathBuf {
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

/// A free loopback port (free when asked: tansu binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A tansu broker in its own process, on a free loopback port, with sqlite
/// storage in a temporary directory. Killed when dropped.
pub struct Tansu {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub bus: KafkaBus,
}

impl Tansu {
    /// Starts a broker and a bus on it.
    pub async fn start() -> Tansu {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            match spawn_tansu(dir.path(), port) {
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

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Another bus on the same broker (another "process").
    pub fn another_bus(&self) -> KafkaBus {
        KafkaBus::new(config(&self.brokers())).expect("bus")
    }

    /// `kill -9` the broker.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the broker again on the same port and storage.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "kill it first");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match spawn_tansu(self.dir.path(), self.port) {
                Ok(c) => {
                    self.child = Some(c);
                    return;
                }
                // The port may linger a moment after the kill.
                Err(e) if Instant::now() < deadline => {
                    eprintln!("restarting tansu: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("tansu did not restart: {e}"),
            }
        }
    }

    /// Creates a topic with tansu's CLI and lets the bus know.
    pub async fn topic(&self, name: &str, partitions: u32) {
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

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default()
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn spawn_tansu(dir: &Path, port: u16) -> Result<Child, String> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("tansu.log"))
        .map_err(|e| e.to_string())?;
    let url = format!("tcp://127.0.0.1:{port}");
    // sqlite paths are relative to the working directory.
    let mut child = Command::new(tansu_binary())
        .current_dir(dir)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", "sqlite://tansu.db"])
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
            counts_attempts: true,
        }
    }
}

/// A name no other test uses.
pub fn unique(base: &str) -> String {
    format!("{base}-{}", uuid_suffix())
}

fn uuid_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
