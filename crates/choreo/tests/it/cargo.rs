//! Running cargo from a test, on the workspace's target directory: what it
//! compiled for this test run is reused, so a crate that depends on the
//! facade builds in seconds, not minutes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository's root.
pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository exists")
}

/// The target directory this test binary was built in (`<target>/debug/deps/it-…`).
pub(crate) fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors()
        .nth(3)
        .expect("the test binary is in <target>/<profile>/deps")
        .to_owned()
}

/// `cargo <args>` in `dir`, offline, on the workspace's target directory.
/// Panics with cargo's output when it fails.
pub(crate) fn cargo(dir: &Path, args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO"))
        .args(args)
        .arg("--offline")
        .env("CARGO_TARGET_DIR", target_dir())
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo: {e}"));
    assert!(
        output.status.success(),
        "`cargo {}` in {} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        args.join(" "),
        dir.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}
