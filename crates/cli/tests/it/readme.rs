//! The documentation follows the code: docs/metrics.md documents every
//! metric, and the README's two commands are the real ones.

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn every_metric_is_in_the_metrics_guides_table() {
    let table = read("docs/metrics.md");
    let all = choreo_bus::METRICS
        .iter()
        .chain(choreo_trace::METRICS.iter());
    let missing: Vec<&str> = all
        .map(|m| m.0)
        .filter(|name| !table.contains(&format!("| `{name}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "metrics missing from docs/metrics.md's table (run scripts/metrics-table.py): {missing:?}"
    );
    // The group tracer's own, from the binary's source (a binary exports nothing).
    let source = read("crates/cli/src/cmd/trace/group.rs");
    let block = source
        .split("const METRICS")
        .nth(1)
        .and_then(|rest| rest.split("];").next())
        .expect("the group tracer's METRICS");
    let names: Vec<&str> = block
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("\"choreo_"))
        .map(|l| l.trim_matches(|c| c == '"' || c == ','))
        .collect();
    assert_eq!(names.len(), 6, "{names:?}");
    let missing: Vec<&&str> = names
        .iter()
        .filter(|name| !table.contains(&format!("| `{name}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "group tracer metrics missing from docs/metrics.md's table (run scripts/metrics-table.py): {missing:?}"
    );
}

#[test]
fn the_two_commands_are_the_ones_ci_and_newcomers_run() {
    let readme = read("README.md");
    // The quick build: no Kafka (librdkafka's C build), no optimization.
    assert!(readme.contains("cargo run -p choreo-cli --no-default-features -- demo"));
    assert!(readme.contains("./scripts/test.sh"));
    let ci = read(".ci/run");
    assert!(
        ci.contains("scripts/test.sh"),
        ".ci/run must run the README's test command"
    );
}

#[test]
fn every_guide_the_readme_names_exists() {
    let readme = read("README.md");
    let mut named = 0;
    for (i, _) in readme.match_indices("](docs/") {
        let rest = &readme[i + 2..];
        let path = &rest[..rest.find(')').expect("a link ends")];
        let file = path.split('#').next().unwrap_or(path);
        assert!(
            repo().join(file).is_file(),
            "README links to {path}, which is missing"
        );
        named += 1;
    }
    assert!(
        named >= 9,
        "the README's map names the guides ({named} links)"
    );
}
