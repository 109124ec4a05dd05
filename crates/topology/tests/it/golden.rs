//! Golden tests over `topologies/`: the example topologies verify cleanly and
//! the fixtures' diagnostics are exactly those in their `.expected` files.
//!
//! To accept a deliberate change of wording: `UPDATE_GOLDEN=1 cargo test -p
//! choreo-topology --test golden`, then review the diff.

use std::path::{Path, PathBuf};

use choreo_topology::{Code, Diagnostic, Error, PathLimits, Severity, Topology};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Loads `rel` (relative to the repository) with that relative label, so the
/// expected files do not depend on where the repository is checked out.
fn diagnostics(rel: &str) -> Vec<Diagnostic> {
    let text = std::fs::read_to_string(root().join(rel)).unwrap();
    match Topology::parse(&text, rel) {
        Ok(t) => t.verify(),
        Err(Error::Invalid { diagnostics, .. }) => diagnostics,
        Err(other) => panic!("{rel}: {other}"),
    }
}

fn render(diagnostics: &[Diagnostic]) -> String {
    diagnostics.iter().map(|d| format!("{d}\n")).collect()
}

fn assert_golden(rel: &str, actual: &str) {
    let expected_path = root().join(rel);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&expected_path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&expected_path)
        .unwrap_or_else(|e| panic!("{rel}: {e}; run with UPDATE_GOLDEN=1 to create it"));
    if expected != actual {
        panic!(
            "{rel} differs from the output.\n--- expected\n{expected}\n--- actual\n{actual}\n\
             (UPDATE_GOLDEN=1 accepts the new output)"
        );
    }
}

#[test]
fn example_topologies_verify_without_errors_or_warnings() {
    let mut seen = 0;
    for entry in std::fs::read_dir(root().join("topologies")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            seen += 1;
            let t = Topology::from_path(&path).unwrap_or_else(|e| panic!("{e}"));
            let bad: Vec<_> = t
                .verify()
                .into_iter()
                .filter(|d| d.severity >= Severity::Warning)
                .collect();
            assert!(bad.is_empty(), "{}:\n{}", path.display(), render(&bad));
        }
    }
    assert!(seen >= 2, "expected at least two example topologies");
}

#[test]
fn broken_fixture_diagnostics_are_exact() {
    let found = diagnostics("topologies/fixtures/broken.yaml");
    assert_golden("topologies/fixtures/broken.expected", &render(&found));
}

#[test]
fn invalid_fixture_diagnostics_are_exact() {
    let found = diagnostics("topologies/fixtures/invalid.yaml");
    assert_golden("topologies/fixtures/invalid.expected", &render(&found));
}

#[test]
fn not_yaml_fixture_diagnostics_are_exact() {
    let found = diagnostics("topologies/fixtures/not-yaml.yaml");
    assert_golden("topologies/fixtures/not-yaml.expected", &render(&found));
}

#[test]
fn fixtures_trigger_every_diagnostic_code() {
    let mut found: Vec<Code> = Vec::new();
    for rel in [
        "topologies/fixtures/broken.yaml",
        "topologies/fixtures/invalid.yaml",
        "topologies/fixtures/not-yaml.yaml",
    ] {
        found.extend(diagnostics(rel).iter().map(|d| d.code));
    }
    let missing: Vec<&str> = Code::ALL
        .iter()
        .filter(|c| !found.contains(c))
        .map(|c| c.as_str())
        .collect();
    assert!(missing.is_empty(), "no fixture triggers {missing:?}");
}

#[test]
fn broken_fixture_alone_triggers_every_verifier_code() {
    let found: Vec<Code> = diagnostics("topologies/fixtures/broken.yaml")
        .iter()
        .map(|d| d.code)
        .collect();
    let first_verifier = Code::ALL
        .iter()
        .position(|c| *c == Code::NeverEmitted)
        .unwrap();
    for code in &Code::ALL[first_verifier..] {
        assert!(found.contains(code), "broken.yaml does not trigger {code}");
    }
}

#[test]
fn order_fulfillment_paths_are_the_three_runs_of_the_saga() {
    let t = Topology::from_path(root().join("topologies/order-fulfillment.yaml")).unwrap();
    let paths = t.paths(PathLimits::default());
    assert_eq!(paths.len(), 1);
    let checkout = &paths[0];
    assert!(checkout.exact);
    let runs: Vec<String> = checkout.listed.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        runs,
        [
            "OrderPlaced -> PaymentCaptured -> StockReserved -> OrderShipped  (ends: OrderShipped)",
            "OrderPlaced -> PaymentCaptured -> OutOfStock -> PaymentRefunded -> OrderCancelled  (ends: OrderCancelled)",
            "OrderPlaced -> PaymentFailed -> OrderCancelled  (ends: OrderCancelled)",
        ]
    );
}

#[test]
fn signup_paths_unroll_the_retry_loop_twice() {
    let t = Topology::from_path(root().join("topologies/signup-kyc.yaml")).unwrap();
    let signup = &t.paths(PathLimits::default())[0];
    assert_eq!(signup.count, 5);
    assert_eq!(signup.listed.len(), 5);
    let looping = signup
        .listed
        .iter()
        .filter(|e| e.outcome == choreo_topology::Outcome::Looping)
        .count();
    assert_eq!(looping, 1, "only the always-retry run hits the bound");
    let capped = &t.paths(PathLimits::default().max_listed(2))[0];
    assert_eq!((capped.listed.len(), capped.more()), (2, 3));
}
