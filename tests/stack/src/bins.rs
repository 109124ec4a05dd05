//! The workspace's binaries under test (`choreo`, `order-saga`), built by
//! cargo itself.
//!
//! A test crate cannot name another package's binaries, and a path guessed
//! next to the test executable may be stale. So the binaries are asked of
//! cargo with the selection of the test command, `cargo test --workspace
//! --no-run`: under `./scripts/test.sh` everything is already built and
//! cargo only reports where it is; under `cargo test -p
//! choreo-stack-tests` it builds what that command would have built.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::repo;

static BINARIES: OnceLock<Result<HashMap<String, PathBuf>, String>> = OnceLock::new();

/// The path of the workspace binary `name`, fresh; panics with cargo's
/// output when it cannot be built.
pub fn binary(name: &str) -> PathBuf {
    let all = BINARIES.get_or_init(|| build(&repo::root()));
    match all {
        Ok(map) => match map.get(name) {
            Some(path) => path.clone(),
            None => panic!(
                "cargo built no binary named '{name}' (it built: {:?})",
                map.keys().collect::<Vec<_>>()
            ),
        },
        Err(e) => panic!("{e}"),
    }
}

fn build(root: &Path) -> Result<HashMap<String, PathBuf>, String> {
    let output = Command::new(env!("CARGO"))
        .args([
            "test",
            "--workspace",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(root)
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "`cargo test --workspace --no-run` failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let mut found = HashMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_bin = msg["reason"] == "compiler-artifact"
            && msg["profile"]["test"] == false
            && msg["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"));
        if let (true, Some(name), Some(exe)) = (
            is_bin,
            msg["target"]["name"].as_str(),
            msg["executable"].as_str(),
        ) {
            found.insert(name.to_owned(), PathBuf::from(exe));
        }
    }
    Ok(found)
}
