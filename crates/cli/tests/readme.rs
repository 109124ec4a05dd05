//! The README documents every metric, and its two commands are the real ones.

use std::path::Path;

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
        .expect("README.md")
}

#[test]
fn every_metric_is_in_the_readme_table() {
    let readme = readme();
    let all = choreo_bus::METRICS
        .iter()
        .chain(choreo_trace::METRICS.iter());
    let missing: Vec<&str> = all
        .map(|m| m.0)
        .filter(|name| !readme.contains(&format!("| `{name}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "metrics missing from the README's table (run scripts/metrics-table.py): {missing:?}"
    );
}

#[test]
fn the_two_commands_are_the_ones_ci_and_newcomers_run() {
    let readme = readme();
    assert!(readme.contains("cargo run --release -p choreo-cli -- demo"));
    assert!(readme.contains("./scripts/test.sh"));
    let ci = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.ci/run"))
        .unwrap();
    assert!(
        ci.contains("scripts/test.sh"),
        ".ci/run must run the README's test command"
    );
}
