//! The README's "Your own service" section, done as a new user does it: a
//! fresh crate made of exactly its blocks — the `Cargo.toml`, `src/main.rs`,
//! `checkout.yaml`, the test it adds, the recording it adds — built and run
//! by cargo. The blocks are read from README.md, so a README that drifts
//! from what works fails here.
//!
//! The crate depends on `crates/choreo` by path (the README's git line,
//! rewritten) and builds offline on the workspace's target directory with
//! the workspace's lock file and `[profile.dev]`, so that it reuses what is
//! already compiled.

use std::path::Path;

use crate::cargo::{cargo, repo};
use choreo_trace::capture::Reader;
use choreo_trace::{FlowStatus, Tracer, TracerConfig};

const GIT_LINE: &str = r#"choreo = { git = "https://github.com/choreo-rs/choreo""#;

/// The fenced block of `lang` that follows `marker` in `text`.
fn block_after<'a>(text: &'a str, marker: &str, lang: &str) -> &'a str {
    let at = text
        .find(marker)
        .unwrap_or_else(|| panic!("README.md no longer has {marker:?}"));
    let fence = format!("```{lang}\n");
    let start = at
        + text[at..]
            .find(&fence)
            .unwrap_or_else(|| panic!("no ```{lang} block after {marker:?} in README.md"))
        + fence.len();
    let len = text[start..].find("\n```").expect("a fenced block ends");
    &text[start..start + len + 1]
}

/// The README's dependency lines, on the facade by path instead of git.
fn on_path(manifest: &str) -> String {
    assert!(
        manifest.contains(GIT_LINE),
        "the README's Cargo.toml no longer depends on choreo with {GIT_LINE:?}:\n{manifest}"
    );
    let path = repo().join("crates/choreo");
    manifest.replace(
        r#"git = "https://github.com/choreo-rs/choreo""#,
        &format!("path = {:?}", path.display().to_string()),
    )
}

/// The workspace's `[profile.dev…]` sections: the same settings, so the
/// dependencies compiled for the workspace are the ones this crate uses.
fn dev_profiles() -> String {
    let manifest = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    let mut out = String::new();
    let mut keep = false;
    for line in manifest.lines() {
        if line.starts_with('[') {
            keep = line.starts_with("[profile.dev");
        }
        if keep && !line.starts_with('#') {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(out.contains("[profile.dev]"), "{out}");
    out
}

fn write(dir: &Path, file: &str, text: &str) {
    let path = dir.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `main` with the recording's lines put where the README says: those
/// before its `// …` line after `let bus = …`, the rest after the service
/// has stopped.
fn with_recording(main: &str, recording: &str) -> String {
    let mut lines = recording.lines().map(str::trim);
    let anchor = lines.next().expect("the recording block has lines");
    assert_eq!(
        anchor, "let bus = InProcessBus::new();",
        "the recording block starts where main makes its bus"
    );
    let before: Vec<&str> = lines
        .by_ref()
        .take_while(|l| !l.starts_with("// …"))
        .collect();
    let after: Vec<&str> = lines.collect();
    assert!(!before.is_empty() && !after.is_empty(), "{recording}");
    let mut out = String::new();
    let mut placed = 0;
    for line in main.lines() {
        out.push_str(line);
        out.push('\n');
        let extra = match line.trim() {
            l if l == anchor => &before,
            "running.await?;" => &after,
            _ => continue,
        };
        for l in extra {
            out.push_str("    ");
            out.push_str(l);
            out.push('\n');
        }
        placed += 1;
    }
    assert_eq!(
        placed, 2,
        "main has `{anchor}` and `running.await?;` once each"
    );
    out
}

#[test]
fn the_readme_service_built_as_a_new_crate_runs_its_handler_passes_its_test_and_records_a_traceable_run()
 {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let manifest = block_after(&readme, "`Cargo.toml`:\n", "toml");
    let main = block_after(&readme, "`src/main.rs`:\n", "rust");
    let topology_yaml = block_after(&readme, "**Declare it**", "yaml");
    let dev_dependencies = block_after(&readme, "Add to `Cargo.toml`:", "toml");
    let test_module = block_after(&readme, "and to `src/main.rs`:", "rust");
    let recording = block_after(&readme, "**Record your run and trace it**", "rust");

    let dir = tempfile::tempdir().unwrap();
    let krate = dir.path();
    let manifest = format!("{}\n{}", on_path(manifest), dev_profiles());
    write(krate, "Cargo.toml", &manifest);
    // The workspace's versions, so that nothing is resolved afresh.
    std::fs::copy(repo().join("Cargo.lock"), krate.join("Cargo.lock")).unwrap();
    write(krate, "src/main.rs", main);
    write(krate, "checkout.yaml", topology_yaml);

    // 1. `cargo run`: the handler runs.
    let out = stdout(&cargo(krate, &["run", "--quiet"]));
    assert!(
        out.contains("payment: charging order 42 (1999 cents)\n"),
        "the handler did not run:\n{out}"
    );
    assert!(
        out.contains("PaymentCaptured from 'payment' in flow "),
        "{out}"
    );

    // 2. The test the README adds passes (`choreo::testing::conforms`).
    let manifest = format!("{manifest}\n{}", on_path(dev_dependencies));
    write(krate, "Cargo.toml", &manifest);
    write(krate, "src/main.rs", &format!("{main}\n{test_module}"));
    let out = stdout(&cargo(krate, &["test", "--quiet"]));
    assert!(out.contains("1 passed"), "{out}");
    // And fails when the code and the topology disagree.
    write(
        krate,
        "src/main.rs",
        &format!(
            "{}\n{test_module}",
            main.replace(r#"topic = "orders""#, r#"topic = "order""#)
        ),
    );
    let failed = std::process::Command::new(env!("CARGO"))
        .args(["test", "--quiet", "--offline"])
        .env("CARGO_TARGET_DIR", crate::cargo::target_dir())
        .current_dir(krate)
        .output()
        .unwrap();
    let said = stdout(&failed);
    assert!(!failed.status.success(), "{said}");
    // What the README says such a test prints, it prints.
    let shown = &readme[readme
        .find("`checkout.yaml:")
        .expect("the README shows a mismatch")
        + 1..];
    let shown = &shown[..shown
        .find(": …`")
        .expect("the shown mismatch ends with ': …'")];
    assert!(
        shown.starts_with("checkout.yaml:3:3: error[wrong-topic]: service 'payment' reads 'OrderPlaced' from topic 'order'"),
        "{shown}"
    );
    assert!(
        said.contains(shown),
        "the README shows {shown:?}; the test printed:\n{said}"
    );

    // 3. The recording, with the `trace` feature: the run traces clean.
    let manifest = manifest.replacen(
        &format!(
            "path = {:?} }}",
            repo().join("crates/choreo").display().to_string()
        ),
        &format!(
            "path = {:?}, features = [\"trace\"] }}",
            repo().join("crates/choreo").display().to_string()
        ),
        1,
    );
    write(krate, "Cargo.toml", &manifest);
    write(krate, "src/main.rs", &with_recording(main, recording));
    let out = stdout(&cargo(krate, &["run", "--quiet"]));
    assert!(out.contains("payment: charging order 42"), "{out}");
    assert!(out.contains("recorded "), "{out}");

    let topology = choreo_topology::Topology::parse(topology_yaml, "checkout.yaml").unwrap();
    let mut tracer = Tracer::new(TracerConfig::batch(), Some(&topology));
    let mut records = 0;
    for r in Reader::open(krate.join("run.avro")).unwrap() {
        tracer.ingest(&r.unwrap());
        records += 1;
    }
    // OrderPlaced, PaymentCaptured and payment's receipt.
    assert_eq!(records, 3);
    assert!(
        out.contains(&format!("recorded {records} records")),
        "{out}"
    );
    tracer.finish(None);
    let report = tracer.report();
    assert!(report.ok, "{}\n{:#?}", report.verdict, report.findings);
    assert_eq!((report.flows.started, report.flows.completed), (1, 1));
    assert!(
        tracer.kept().is_empty() || tracer.kept()[0].status == FlowStatus::Completed,
        "{:?}",
        tracer.kept().first().map(|f| f.timeline())
    );
    assert!(
        report.edges.iter().any(|e| e.producer == "checkout"
            && e.event_type == "OrderPlaced"
            && e.consumer == "payment"),
        "{:?}",
        report.edges
    );
}

#[test]
fn the_readme_names_types_through_the_facade_not_its_inner_crates() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    for inner in [
        "choreo_core::",
        "choreo_bus::",
        "choreo_topology::",
        "choreo_trace::",
        "choreo_kafka::",
        "choreo_avro::",
        "choreo_postgres::",
    ] {
        assert!(
            !readme.contains(inner),
            "README.md names `{inner}…`: name it through the facade (`choreo::…`), as a service's code would"
        );
    }
}
