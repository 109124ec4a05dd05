//! The metrics endpoint binds to loopback unless told otherwise: `choreo
//! trace --follow` without `--metrics-addr` serves on 127.0.0.1:9464, and the
//! kernel's socket table shows that listening socket on 127.0.0.1 only (not
//! 0.0.0.0, not ::).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use choreo_kafka::mock::MockKafka;
use choreo_testkit::Running;

const DEFAULT_PORT: u16 = 9464;

/// The local addresses of the listening TCP sockets on `port`, as written in
/// /proc/net/tcp and tcp6 (hex, e.g. `0100007F` for 127.0.0.1).
fn listeners_on(port: u16) -> Vec<String> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st ...; st 0A is LISTEN.
            let (Some(local), Some(state)) = (cols.get(1), cols.get(3)) else {
                continue;
            };
            let Some((addr, p)) = local.split_once(':') else {
                continue;
            };
            if *state == "0A" && u16::from_str_radix(p, 16) == Ok(port) {
                out.push(addr.to_owned());
            }
        }
    }
    out
}

fn get_metrics(port: u16) -> Option<String> {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

#[test]
fn live_tracing_serves_metrics_on_loopback_by_default() {
    // The default port must be free first (another test binary may just
    // have released it).
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpListener::bind((Ipv4Addr::UNSPECIFIED, DEFAULT_PORT)).is_err() {
        assert!(
            Instant::now() < deadline,
            "port {DEFAULT_PORT} stays busy: {:?}",
            listeners_on(DEFAULT_PORT)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let kafka = MockKafka::start(1).unwrap();
    kafka.create_topic("orders", 1).unwrap();
    let _tracer = Running::new(
        "choreo trace --follow",
        Command::new(env!("CARGO_BIN_EXE_choreo"))
            .args(["trace", "--brokers", &kafka.bootstrap_servers()])
            .args(["--follow", "--topics", "orders", "--quiet"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("choreo runs"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let body = loop {
        if let Some(body) = get_metrics(DEFAULT_PORT).filter(|b| b.starts_with("HTTP/1.1 200")) {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "choreo trace --follow did not serve metrics on 127.0.0.1:{DEFAULT_PORT}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(body.contains("choreo_"), "{body}");
    // 127.0.0.1 in /proc's little-endian hex; nothing on 0.0.0.0 or ::.
    assert_eq!(listeners_on(DEFAULT_PORT), vec!["0100007F".to_owned()]);
}
