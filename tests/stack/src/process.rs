//! Child processes that are ended when the test lets go of them, and the
//! external tools the tests require.

use std::path::PathBuf;
use std::process::Child;

/// A child process killed (and reaped) on drop, so a failing test leaves
/// nothing running behind it.
#[derive(Debug)]
pub struct Running {
    child: Child,
    name: String,
}

impl Running {
    /// Takes ownership of `child`, called `name` in messages.
    pub fn new(name: impl Into<String>, child: Child) -> Running {
        Running {
            child,
            name: name.into(),
        }
    }

    /// `None` while the process runs, else how it ended.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(None) => None,
            Ok(Some(status)) => Some(format!("{} exited: {status}", self.name)),
            Err(e) => Some(format!("{}: cannot wait for it: {e}", self.name)),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Only this child, by its own handle: never by name.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
