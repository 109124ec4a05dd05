//! A consumer to run in a child process and kill: for tests of what a crash
//! leaves behind. A test binary runs one of its own (ignored) tests as the
//! child ([`this_test_binary_running`]), and that test runs
//! [`logging_worker`] on the backend under test.

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use choreo_core::{Bus, SubscribeOptions, Subscription};

/// The error of a worker run.
pub type WorkerError = Box<dyn std::error::Error + Send + Sync>;

/// Joins group `worker` on topic `jobs` of `bus`, and for each delivery
/// appends `start <n>` and `done <n>` to the file `$CHOREO_TEST_LOG` before
/// acking it (`n` is the payload's `n`). With `CHOREO_TEST_HOLD=<n>`, job `n`
/// is started and never settled, like a handler stuck when the process dies.
/// Writes `joined` once subscribed. Returns when the subscription ends.
pub async fn logging_worker<B: Bus>(bus: B) -> Result<(), WorkerError> {
    let log_path = std::env::var("CHOREO_TEST_LOG")?;
    let hold: Option<u64> = match std::env::var("CHOREO_TEST_HOLD") {
        Ok(v) => Some(v.parse()?),
        Err(_) => None,
    };
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)?;
    let mut sub = bus
        .subscribe(SubscribeOptions::new("worker", ["jobs"]))
        .await?;
    writeln!(log, "joined")?;
    let mut held = Vec::new();
    while let Some(d) = sub.next().await {
        let Ok(d) = d else { continue };
        let n: u64 = serde_json::from_slice::<serde_json::Value>(&d.envelope().data)?["n"]
            .as_u64()
            .ok_or("a job without n")?;
        writeln!(log, "start {n}")?;
        if hold == Some(n) {
            held.push(d);
            continue;
        }
        // Some work, so that a kill lands mid-flow.
        tokio::time::sleep(Duration::from_millis(3)).await;
        writeln!(log, "done {n}")?;
        d.ack();
    }
    Ok(())
}

/// A command that runs this test binary again with only the ignored test
/// `test` (its full path, such as `consumer_crash::consumer_process`): a
/// child process that is the test's own code, with no binary of its own to
/// build and find.
pub fn this_test_binary_running(test: &str) -> Command {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut cmd = Command::new(exe);
    cmd.args([
        test,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    cmd
}
