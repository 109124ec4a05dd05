//! Test helpers and the bus conformance suite every choreo backend runs.
//!
//! - [`wait_until`] / [`recv`]: wait for a condition or a delivery with a
//!   deadline, never a blind sleep.
//! - [`conformance`]: the suite, and [`conformance_suite!`] to instantiate it
//!   for a backend.
//! - [`postgres`]: a throwaway PostgreSQL cluster.
//! - [`tansu`]: a real Kafka-protocol broker in its own process.
//! - [`worker`]: a consumer to run in a child process and kill.

pub mod conformance;
pub mod postgres;
pub mod tansu;
pub mod worker;

use std::future::Future;
use std::time::{Duration, Instant};

use choreo_core::{Delivery, Subscription};

/// A child process killed (and reaped) on drop, so a failing test leaves
/// nothing running behind it.
#[derive(Debug)]
pub struct Running {
    child: std::process::Child,
    name: String,
}

impl Running {
    /// Takes ownership of `child`, called `name` in messages.
    pub fn new(name: impl Into<String>, child: std::process::Child) -> Running {
        Running {
            child,
            name: name.into(),
        }
    }

    /// `None` while the process runs, else how it ended.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(None) => None,
            Ok(Some(status)) => Some(format!("{} exited: {status}", self.name)),
            Err(e) => Some(format!("{}: cannot wait for it: {e}", self.name)),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Only this child, by its own handle: never by name.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs Graphviz's `dot -Tsvg` on `dot` and returns the SVG, failing the
/// test when `dot` rejects the graph or warns about it; `None` when Graphviz
/// is not installed, unless `CHOREO_REQUIRE_GRAPHVIZ` is set
/// (scripts/test.sh sets it): then a missing `dot` fails the test.
pub fn graphviz(dot: &str) -> Option<String> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let child = Command::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if std::env::var_os("CHOREO_REQUIRE_GRAPHVIZ").is_some() => {
            panic!("Graphviz 'dot' is required (CHOREO_REQUIRE_GRAPHVIZ) but can't run: {e}")
        }
        Err(_) => {
            eprintln!("skipping the Graphviz check: 'dot' is not installed");
            return None;
        }
    };
    child
        .stdin
        .take()
        .expect("dot's stdin")
        .write_all(dot.as_bytes())
        .expect("writing to dot");
    let out = child.wait_with_output().expect("dot's output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "dot failed: {stderr}\n{dot}");
    assert!(stderr.trim().is_empty(), "dot warned: {stderr}\n{dot}");
    Some(String::from_utf8(out.stdout).expect("dot writes UTF-8 SVG"))
}

/// `GET path` on loopback `port` (HTTP/1.0): the whole answer, status line
/// and headers included, once something answered within `timeout` a read.
pub fn http_get(port: u16, path: &str, timeout: std::time::Duration) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// A loopback port free at the time of the call, for a server a test starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("no free loopback port")
        .port()
}

/// The sum of every series of metric `name` in `registry` whose labels
/// include `labels` (all series for `&[]`): a counter's or gauge's value, a
/// histogram's sample count. 0 when there is none.
pub fn metric(registry: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    use prometheus::proto::MetricType;
    let mut sum = 0.0;
    for family in registry.gather().iter().filter(|f| f.name() == name) {
        for m in family.get_metric() {
            let matches = labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            });
            if matches {
                sum += match family.get_field_type() {
                    MetricType::COUNTER => m.get_counter().get_value(),
                    MetricType::GAUGE => m.get_gauge().get_value(),
                    MetricType::HISTOGRAM => m.get_histogram().get_sample_count() as f64,
                    _ => 0.0,
                };
            }
        }
    }
    sum
}

/// Polls `cond` until it is true or `deadline` passes; panics with `what` on timeout.
pub async fn wait_until<F: FnMut() -> bool>(what: &str, deadline: Duration, mut cond: F) {
    let start = Instant::now();
    loop {
        if cond() {
            return;
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Like [`wait_until`] with an async condition.
pub async fn wait_until_async<F, Fut>(what: &str, deadline: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return;
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The next delivery of `sub`, or a panic naming `what` after `deadline`.
pub async fn recv<S: Subscription>(sub: &mut S, what: &str, deadline: Duration) -> Delivery {
    match tokio::time::timeout(deadline, sub.next()).await {
        Ok(Some(Ok(d))) => d,
        Ok(Some(Err(e))) => panic!("receiving {what} failed: {e}"),
        Ok(None) => panic!("subscription closed while waiting for {what}"),
        Err(_) => panic!("timed out after {deadline:?} waiting for {what}"),
    }
}

/// The next delivery of `sub` within `within`, or `None`.
pub async fn try_recv<S: Subscription>(sub: &mut S, within: Duration) -> Option<Delivery> {
    match tokio::time::timeout(within, sub.next()).await {
        Ok(Some(Ok(d))) => Some(d),
        Ok(Some(Err(e))) => panic!("receiving failed: {e}"),
        Ok(None) | Err(_) => None,
    }
}
