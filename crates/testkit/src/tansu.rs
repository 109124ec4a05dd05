//! A tansu broker (a Kafka-protocol broker in one binary) in its own
//! process, for tests of the `choreo` command on a real broker.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Running, free_port};

/// How to install tansu, for the failure message.
pub const INSTALL: &str =
    "cargo install tansu --version 0.6.0 --locked --features dynostore,libsql";

/// The tansu binary: `$CHOREO_TANSU`, else `tansu` on the PATH, else
/// `~/.cargo/bin/tansu`. Panics with the install command when there is none:
/// a test on a real broker must not pass silently without one.
pub fn binary() -> PathBuf {
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
    candidates.into_iter().find(|p| p.is_file()).unwrap_or_else(|| {
        panic!(
            "tansu is not installed, and this test needs a real broker: install it with `{INSTALL}` (./scripts/test.sh does), or point CHOREO_TANSU at the binary"
        )
    })
}

/// A fresh broker on a free loopback port, with sqlite storage in a
/// temporary directory; no topic exists until one is created. Killed when
/// dropped.
#[derive(Debug)]
pub struct Tansu {
    process: Option<Running>,
    dir: tempfile::TempDir,
    port: u16,
    storage: String,
}

impl Tansu {
    /// Starts a broker and waits until it listens (up to 20 s per try).
    pub fn start() -> Tansu {
        Tansu::start_with("sqlite://tansu.db")
    }

    /// Starts a broker that keeps everything in memory (tansu's object-store
    /// engine on an in-memory store): faster under a steady load than
    /// sqlite, and gone with the process.
    pub fn in_memory() -> Tansu {
        Tansu::start_with("memory://tansu/")
    }

    /// Starts a broker on the storage engine `storage` (a tansu URL).
    fn start_with(storage: &str) -> Tansu {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            match spawn(dir.path(), port, storage) {
                Ok(process) => {
                    return Tansu {
                        process: Some(process),
                        dir,
                        port,
                        storage: storage.to_owned(),
                    };
                }
                Err(how) => last = how,
            }
        }
        panic!("tansu did not start: {last}");
    }

    /// `kill -9`: the broker dies where it stands; what its storage kept
    /// survives (sqlite does, memory does not).
    pub fn kill(&mut self) {
        // Dropping `Running` kills and reaps it.
        self.process = None;
    }

    /// Starts the broker again on the same port and storage, after
    /// [`kill`](Tansu::kill), and waits until it listens (up to 60 s: the
    /// port may still be held by the dead broker's connections).
    pub fn restart(&mut self) {
        assert!(self.process.is_none(), "tansu is running: kill it first");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match spawn(self.dir.path(), self.port, &self.storage) {
                Ok(process) => {
                    self.process = Some(process);
                    return;
                }
                Err(how) => assert!(
                    Instant::now() < deadline,
                    "tansu did not start again on port {}: {how}: {}",
                    self.port,
                    self.log()
                ),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Creates a topic with tansu's own command.
    pub fn create_topic(&self, name: &str, partitions: u32) {
        let out = Command::new(binary())
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
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default()
    }
}

/// Starts tansu in `dir` on `port` with `storage`, and waits until it
/// listens (up to 20 s); how it failed otherwise.
fn spawn(dir: &std::path::Path, port: u16, storage: &str) -> Result<Running, String> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("tansu.log"))
        .expect("log file");
    let url = format!("tcp://127.0.0.1:{port}");
    let child = Command::new(binary())
        .current_dir(dir)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", storage])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn()
        .expect("tansu runs");
    let mut process = Running::new("tansu", child);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(how) = process.exited() {
            return Err(how);
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(process);
        }
        if Instant::now() > deadline {
            return Err("tansu did not listen within 20 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
