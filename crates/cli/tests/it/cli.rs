//! The `choreo` binary end to end: output, formats and exit codes.

use std::path::PathBuf;

use assert_cmd::Command;
use predicates::prelude::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn choreo() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_choreo"));
    cmd.current_dir(root());
    cmd
}

#[test]
fn version_says_which_choreo_this_is() {
    choreo()
        .arg("--version")
        .assert()
        .code(0)
        .stdout(format!("choreo {}\n", env!("CARGO_PKG_VERSION")));
    // Every command says it too.
    choreo()
        .args(["check", "--version"])
        .assert()
        .code(0)
        .stdout(format!("choreo-check {}\n", env!("CARGO_PKG_VERSION")));
}

#[test]
fn check_clean_topologies_exits_0() {
    choreo()
        .args([
            "check",
            "topologies/order-fulfillment.yaml",
            "topologies/signup-kyc.yaml",
        ])
        .assert()
        .code(0)
        .stdout(predicate::str::contains(
            "topologies/order-fulfillment.yaml: ok (8 events, 5 services, 1 flow)",
        ))
        .stdout(predicate::str::contains("note[cycle]"));
}

#[test]
fn check_broken_exits_1_with_every_finding() {
    let expected =
        std::fs::read_to_string(root().join("topologies/fixtures/broken.expected")).unwrap();
    let out = choreo()
        .args(["check", "topologies/fixtures/broken.yaml"])
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let out = String::from_utf8(out).unwrap();
    assert!(out.starts_with(&expected), "{out}");
    assert!(out.ends_with(
        "topologies/fixtures/broken.yaml: 9 errors, 8 warnings, 1 note (12 events, 8 services, 3 flows)\n"
    ));
}

#[test]
fn allow_warnings_only_forgives_warnings() {
    let dir = tempdir();
    let file = dir.join("warn.yaml");
    std::fs::write(
        &file,
        "name: w\nevents:\n  A: {topic: a}\n  B: {topic: b}\nservices:\n  s:\n    emits: [A]\n    on:\n      A: {emit: [B]}\nflows:\n  f: {starts_with: A, ends_with: [A]}\n",
    )
    .unwrap();
    choreo()
        .arg("check")
        .arg(&file)
        .assert()
        .code(1)
        .stdout(predicate::str::contains("warning[unconsumed-event]"));
    choreo()
        .arg("check")
        .arg(&file)
        .arg("--allow-warnings")
        .assert()
        .code(0);
    choreo()
        .args([
            "check",
            "topologies/fixtures/broken.yaml",
            "--allow-warnings",
        ])
        .assert()
        .code(1);
}

#[test]
fn invalid_or_missing_input_exits_2() {
    choreo()
        .args(["check", "topologies/fixtures/invalid.yaml"])
        .assert()
        .code(2)
        .stdout(predicate::str::contains(
            "unknown event 'OrderShiped' — did you mean 'OrderShipped'?",
        ));
    choreo()
        .args(["check", "no/such/file.yaml"])
        .assert()
        .code(2)
        .stdout(predicate::str::contains("cannot read 'no/such/file.yaml'"));
    // An input error wins over findings in another file.
    choreo()
        .args([
            "check",
            "topologies/fixtures/broken.yaml",
            "topologies/fixtures/not-yaml.yaml",
        ])
        .assert()
        .code(2);
    choreo()
        .args(["graph", "topologies/fixtures/invalid.yaml"])
        .assert()
        .code(2)
        .stderr(predicate::str::starts_with(
            "choreo: topologies/fixtures/invalid.yaml is not a valid topology (16 problems):",
        ));
}

#[test]
fn usage_errors_exit_2() {
    choreo().args(["check"]).assert().code(2);
    choreo()
        .args(["graph", "x.yaml", "--format", "png"])
        .assert()
        .code(2);
    choreo().args(["frobnicate"]).assert().code(2);
    choreo()
        .args([
            "check",
            "topologies/signup-kyc.yaml",
            "--paths",
            "--max-paths",
            "0",
        ])
        .assert()
        .code(2)
        .stderr("choreo: --max-paths must be at least 1\n");
}

#[test]
fn help_documents_the_exit_codes() {
    choreo()
        .arg("--help")
        .assert()
        .code(0)
        .stdout(predicate::str::contains("Exit codes: 0 ok; 1 findings"));
}

#[test]
fn check_paths_lists_executions() {
    choreo()
        .args(["check", "topologies/signup-kyc.yaml", "--paths", "--max-paths", "2"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("flow 'signup': 5 paths"))
        .stdout(predicate::str::contains(
            "  1. SignupRequested -> [AccountCreated, KycRequested -> DocumentsVerified -> AccountActivated]  (ends: AccountActivated)",
        ))
        .stdout(predicate::str::contains("  ... and 3 more"));
}

#[test]
fn check_json_is_one_stable_document() {
    let out = choreo()
        .args([
            "check",
            "topologies/fixtures/broken.yaml",
            "topologies/order-fulfillment.yaml",
            "topologies/fixtures/invalid.yaml",
            "--format",
            "json",
            "--paths",
        ])
        .assert()
        .code(2)
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["format"], "choreo-check");
    assert_eq!(v["version"], 1);
    assert_eq!(v["exit_code"], 2);
    let files = v["files"].as_array().unwrap();
    assert_eq!(files[0]["status"], "verified");
    assert_eq!(files[0]["summary"]["errors"], 9);
    let first = &files[0]["diagnostics"][0];
    assert_eq!(first["code"], "unconsumed-event");
    assert_eq!(first["severity"], "warning");
    assert_eq!(
        (first["line"].as_u64(), first["column"].as_u64()),
        (Some(12), Some(3))
    );
    assert_eq!(files[1]["paths"][0]["flow"], "checkout");
    assert_eq!(files[1]["paths"][0]["count"], 3);
    assert_eq!(files[1]["paths"][0]["executions"][0]["outcome"], "ended");
    assert_eq!(files[2]["status"], "invalid");
    assert_eq!(v["summary"]["errors"], 9 + 16);
}

#[test]
fn graph_formats() {
    choreo()
        .args(["graph", "topologies/order-fulfillment.yaml"])
        .assert()
        .code(0)
        .stdout(predicate::str::starts_with(
            "digraph \"order-fulfillment\" {",
        ));
    choreo()
        .args([
            "graph",
            "topologies/order-fulfillment.yaml",
            "--format",
            "mermaid",
            "--topics",
        ])
        .assert()
        .code(0)
        .stdout(predicate::str::starts_with("flowchart LR\n"))
        .stdout(predicate::str::contains("[(\"orders\")]"));
    let out = choreo()
        .args(["graph", "topologies/signup-kyc.yaml", "--format", "json"])
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["topology"], "signup-kyc");
}

#[test]
fn export_asyncapi_embeds_declared_schemas() {
    let dir = tempdir();
    let out = dir.join("of.json");
    choreo()
        .args([
            "export",
            "asyncapi",
            "topologies/order-fulfillment.yaml",
            "-o",
        ])
        .arg(&out)
        .assert()
        .code(0)
        .stdout("");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(v["asyncapi"], "3.0.0");
    assert_eq!(v["channels"]["orders"]["address"], "orders");
    let placed = &v["components"]["messages"]["OrderPlaced"]["payload"];
    assert_eq!(placed["required"][0], "order_id", "schema file embedded");
    assert_eq!(
        v["components"]["messages"]["PaymentFailed"]["payload"]["type"],
        "object"
    );
    assert_eq!(
        v["operations"]["payment.receive.OrderPlaced"]["action"],
        "receive"
    );
    assert_eq!(
        v["operations"]["payment.send.PaymentCaptured"]["channel"]["$ref"],
        "#/channels/payments"
    );
}

#[test]
fn export_reports_a_missing_schema_file() {
    let dir = tempdir();
    let file = dir.join("t.yaml");
    std::fs::write(
        &file,
        "name: t\nevents:\n  A: {topic: a, schema: nope.json}\nservices:\n  s: {emits: [A]}\nflows:\n  f: {starts_with: A, ends_with: [A]}\n",
    )
    .unwrap();
    choreo()
        .args(["export", "asyncapi"])
        .arg(&file)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "schema 'nope.json' of event 'A' is unusable",
        ));
}

#[test]
fn a_closed_pipe_is_not_an_error() {
    // `choreo graph … | head -1`: the reader goes away early.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_choreo"))
        .current_dir(root())
        .args([
            "check",
            "topologies/signup-kyc.yaml",
            "--paths",
            "--max-paths",
            "1000",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fresh directory under the target dir (no extra dev-dependency needed).
fn tempdir() -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "cli-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
