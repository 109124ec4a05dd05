//! A real Prometheus on a free loopback port, with a temporary config and
//! storage, and a client of its HTTP API.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::process::{Running, tool};

/// How long Prometheus may take to start answering.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// One sample of a query result: its labels and its value as Prometheus
/// wrote it ("NaN" and "+Inf" included).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series' labels.
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: String,
}

/// A Prometheus process and its API.
#[derive(Debug)]
pub struct Prometheus {
    base: String,
    agent: ureq::Agent,
    log: PathBuf,
    // Dropped after the process (fields drop in order): the process is
    // killed before its storage goes.
    process: Running,
    _dir: tempfile::TempDir,
}

pub use choreo_testkit::free_port;

/// An HTTP agent with a bounded wait per request, that returns error
/// statuses instead of failing on them.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(20)))
        .http_status_as_error(false)
        .build()
        .into()
}

/// GET `url` and its body, or why not.
pub fn get(agent: &ureq::Agent, url: &str, query: &[(&str, &str)]) -> Result<String, String> {
    let mut req = agent.get(url);
    for (k, v) in query {
        req = req.query(*k, *v);
    }
    let mut resp = req.call().map_err(|e| format!("GET {url}: {e}"))?;
    let status = resp.status();
    let body = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("GET {url}: reading the body: {e}"))?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!("GET {url}: {status}: {body}"))
    }
}

impl Prometheus {
    /// Starts Prometheus with `config` (prometheus.yml text) on a free
    /// loopback port and waits until it is ready.
    pub fn start(config: &str) -> Result<Prometheus, String> {
        let binary = tool("prometheus");
        let mut last = String::new();
        for _attempt in 0..3 {
            let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
            let config_path = dir.path().join("prometheus.yml");
            std::fs::write(&config_path, config).map_err(|e| format!("writing config: {e}"))?;
            let log = dir.path().join("prometheus.log");
            let port = free_port();
            let child = Command::new(&binary)
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(File::create(&log).map_err(|e| format!("log file: {e}"))?)
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
            let mut p = Prometheus {
                base: format!("http://127.0.0.1:{port}"),
                agent: agent(),
                log,
                process: Running::new("prometheus", child),
                _dir: dir,
            };
            match p.wait_ready() {
                Ok(()) => return Ok(p),
                Err(e) => last = format!("{e}\n{}", p.log_tail()),
            }
        }
        Err(format!("Prometheus did not start: {last}"))
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(how) = self.process.exited() {
                return Err(how);
            }
            if get(&self.agent, &format!("{}/-/ready", self.base), &[]).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("not ready after {START_DEADLINE:?}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last lines Prometheus logged, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(20);
        format!("prometheus log (last lines):\n{}", lines[from..].join("\n"))
    }

    /// Whether the process still runs.
    pub fn check_running(&mut self) -> Result<(), String> {
        match self.process.exited() {
            None => Ok(()),
            Some(how) => Err(format!("{how}\n{}", self.log_tail())),
        }
    }

    /// `data` of an API response, or the API's error.
    pub fn api(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, String> {
        let body = get(&self.agent, &format!("{}{path}", self.base), query)?;
        let v: Value =
            serde_json::from_str(&body).map_err(|e| format!("{path}: not JSON ({e}): {body}"))?;
        if v["status"] != "success" {
            return Err(format!("{path}: {}: {}", v["errorType"], v["error"]));
        }
        Ok(v["data"].clone())
    }

    /// The result of an instant query evaluated at `time` (Unix seconds).
    pub fn query(&self, expr: &str, time: f64) -> Result<Vec<Sample>, String> {
        let time = format!("{time:.3}");
        let data = self
            .api("/api/v1/query", &[("query", expr), ("time", &time)])
            .map_err(|e| format!("{e}\n  query: {expr}"))?;
        let labels = |m: &Value| -> BTreeMap<String, String> {
            m.as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect()
                })
                .unwrap_or_default()
        };
        let value = |v: &Value| v[1].as_str().unwrap_or_default().to_owned();
        Ok(match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| Sample {
                    labels: labels(&s["metric"]),
                    value: value(&s["value"]),
                })
                .collect(),
            Some("scalar" | "string") => vec![Sample {
                labels: BTreeMap::new(),
                value: value(&data["result"]),
            }],
            Some("matrix") => data["result"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| Sample {
                    labels: labels(&s["metric"]),
                    value: s["values"]
                        .as_array()
                        .and_then(|v| v.last())
                        .map(value)
                        .unwrap_or_default(),
                })
                .collect(),
            other => return Err(format!("unknown result type {other:?} for {expr}")),
        })
    }

    /// The values of `label` on the series `matcher` selects
    /// (`label_values(matcher, label)` of Grafana's variables).
    pub fn label_values(&self, label: &str, matcher: &str) -> Result<Vec<String>, String> {
        let data = self.api(
            &format!("/api/v1/label/{label}/values"),
            &[("match[]", matcher)],
        )?;
        Ok(data
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect())
    }

    /// The server's clock, as "now" for queries (Unix seconds).
    pub fn now() -> f64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default()
    }
}

/// Runs `promtool` with `args` (and `stdin`), Ok with its output when it
/// succeeds and prints no problem.
pub fn promtool(args: &[&str], stdin: Option<&str>, cwd: &Path) -> Result<String, String> {
    use std::io::Write as _;
    let mut child = Command::new(tool("promtool"))
        .args(args)
        .current_dir(cwd)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run promtool: {e}"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| format!("promtool stdin: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("promtool: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "promtool {} failed ({}):\n{text}",
            args.join(" "),
            out.status
        ))
    }
}
