//! `choreo simulate` and `choreo demo` at scale, as a new user runs them: with
//! their default options (32 deliveries at once per partition, 4 partitions,
//! the in-process bus's default bound of 1 024 events per partition) and far
//! more flows than the bus holds, every run finishes. Beyond ~25 000 flows
//! both used to hang for ever at 0 % CPU (services in a cycle each waited for
//! room the other held; signup-kyc's resubmission loop never ended).
//!
//! Run in release with the soak (the test command does):
//!
//!     cargo test --release -p choreo-cli --test it -- --ignored --nocapture simulate_scale::
//!
//! About 12 s (order-fulfillment), 25 s (signup-kyc) and 4 s (the demo) on a
//! 2-core machine; a debug build takes 31 s and 71 s for the first two.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Far more than a run needs (see above): a run that has not finished by then
/// hangs, and fails here instead of holding the test command up for ever.
const DEADLINE: Duration = Duration::from_secs(600);

/// Runs `choreo args…` from the repository root; returns its stdout once it
/// exits 0 within [`DEADLINE`], else kills it and fails.
fn finishes(args: &[&str]) -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut child = Command::new(env!("CARGO_BIN_EXE_choreo"))
        .args(args)
        .current_dir(root)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("choreo starts");
    let started = Instant::now();
    // Its output is a few lines (quiet, no progress bar): the pipes never
    // fill while it runs.
    let status = loop {
        if let Some(status) = child.try_wait().expect("choreo can be waited for") {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`choreo {}` has not finished after {DEADLINE:?}: it hangs",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = child.wait_with_output().expect("choreo's output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        status.success(),
        "`choreo {}` exited with {status}\nstdout:\n{stdout}\nstderr:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("`choreo {}` in {:.1?}", args.join(" "), started.elapsed());
    stdout
}

#[test]
#[ignore = "200 000 flows: run in release with --ignored (scripts/test.sh does)"]
fn order_fulfillment_simulates_200_000_flows_at_the_default_concurrency() {
    let out = finishes(&[
        "simulate",
        "topologies/order-fulfillment.yaml",
        "--flows",
        "200000",
        "--seed",
        "3",
        "-q",
    ]);
    assert!(
        out.contains("simulated 200000 flows of 'order-fulfillment'"),
        "{out}"
    );
}

#[test]
#[ignore = "200 000 flows: run in release with --ignored (scripts/test.sh does)"]
fn signup_kyc_simulates_200_000_flows_at_the_default_concurrency() {
    let out = finishes(&[
        "simulate",
        "topologies/signup-kyc.yaml",
        "--flows",
        "200000",
        "-q",
    ]);
    assert!(
        out.contains("simulated 200000 flows of 'signup-kyc'"),
        "{out}"
    );
}

#[test]
#[ignore = "50 000 flows: run in release with --ignored (scripts/test.sh does)"]
fn the_demo_finishes_with_many_flows_started_at_once() {
    let out = finishes(&["demo", "--flows", "50000", "--rate", "1000000"]);
    assert!(out.contains("A run of 50000 flows"), "{out}");
}
