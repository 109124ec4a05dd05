//! Child processes that are ended when the test lets go of them, and the
//! external tools the tests require.

use std::path::PathBuf;

pub use choreo_testkit::Running;

/// The path of an external tool the tests need, or a panic saying how to
/// install it. The tests fail rather than skip when a tool is missing.
pub fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    match found {
        Some(path) => path,
        None => panic!(
            "`{name}` is not on PATH: install Debian's `prometheus` package, which brings \
             `prometheus` and `promtool` (apt-get install prometheus); ./scripts/test.sh \
             installs it when it is missing"
        ),
    }
}
