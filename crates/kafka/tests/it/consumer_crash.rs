//! A consumer process killed with `kill -9` mid-flow: after a restart of the
//! process, the deliveries it had not settled are delivered again and
//! handled, and what it had settled and committed is not all redone.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use choreo_core::{Bus, Envelope};
use choreo_testkit::{wait_until, worker};

const JOBS: u64 = 200;
const HELD: u64 = 17;
const PATIENCE: Duration = Duration::from_secs(90);
/// The name of [`consumer_process`] in this test binary: its module path
/// without the binary's name.
fn consumer_process_name() -> String {
    match module_path!().split_once("::") {
        Some((_, module)) => format!("{module}::consumer_process"),
        None => "consumer_process".to_owned(),
    }
}

/// Not a test of its own: the consumer process the crash test starts and
/// kills, which is this test binary run again with only this test.
#[test]
#[ignore = "the child process of the crash test, configured by it"]
fn consumer_process() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let run = async {
        let bus = choreo_kafka::KafkaBus::from_env()?;
        worker::logging_worker(bus).await
    };
    if let Err(e) = runtime.block_on(run) {
        panic!("the test consumer failed: {e}");
    }
}

fn consumer(brokers: &str, log: &Path, hold: Option<u64>) -> Child {
    let mut cmd = worker::this_test_binary_running(&consumer_process_name());
    cmd.env("CHOREO_KAFKA_BROKERS", brokers)
        .env("CHOREO_KAFKA_SESSION_TIMEOUT_MS", "3000")
        .env("CHOREO_KAFKA_COMMIT_INTERVAL_MS", "50")
        .env("CHOREO_KAFKA_OPTIONS", "fetch.wait.max.ms=50")
        .env("CHOREO_TEST_LOG", log)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if let Some(n) = hold {
        cmd.env("CHOREO_TEST_HOLD", n.to_string());
    }
    cmd.spawn().expect("the test consumer")
}

/// The jobs a run logged as `what` (`start` or `done`).
fn logged(log: &Path, what: &str) -> Vec<u64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix(what)?.trim().parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_consumer_process_gets_its_unsettled_deliveries_again_after_a_restart() {
    let mock = Mock::start(1);
    mock.topic("jobs", 2).await;
    for n in 0..JOBS {
        let mut env = Envelope::new("Job", "jobs", format!("{{\"n\":{n}}}"));
        env.key = Some(Bytes::from(format!("job-{n}")));
        mock.bus.publish(env).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let (first_log, second_log) = (dir.path().join("first.log"), dir.path().join("second.log"));

    let mut first = consumer(&mock.brokers(), &first_log, Some(HELD));
    wait_until(
        "the first run to hold its job and settle others",
        PATIENCE,
        || logged(&first_log, "start").contains(&HELD) && logged(&first_log, "done").len() >= 60,
    )
    .await;
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let done_first: HashSet<u64> = logged(&first_log, "done").into_iter().collect();
    assert!(!done_first.contains(&HELD));
    assert!(
        done_first.len() < JOBS as usize,
        "the kill should land mid-flow"
    );

    let mut second = consumer(&mock.brokers(), &second_log, None);
    wait_until("every job to be done across both runs", PATIENCE, || {
        let mut all = done_first.clone();
        all.extend(logged(&second_log, "done"));
        all.len() == JOBS as usize
    })
    .await;
    second.kill().unwrap();
    second.wait().unwrap();

    let done_second = logged(&second_log, "done");
    assert!(
        done_second.contains(&HELD),
        "the job the first run never settled is handled by the second"
    );
    assert!(
        done_second.len() < JOBS as usize,
        "what the first run settled and committed is not all redone ({} of {JOBS} again)",
        done_second.len()
    );
}
