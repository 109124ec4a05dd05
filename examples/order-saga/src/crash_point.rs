//! A place to crash the relay at, for the crash tests (`--crash-point FILE`).
//!
//! `tests/it/postgres_crash.rs` kills `payment` with `kill -9` at the moments
//! that matter for the outbox. Two of them are inside the relay — rows
//! committed but not yet published, and rows published but not yet marked
//! sent — and last a few milliseconds: aimed at from outside by timing they
//! are sometimes missed. Here the relay publishes through [`CrashPoint`],
//! which, once the test writes `before` or `after` to the file, stops the
//! relay right before or right after its next publication and says so by
//! creating `FILE.held`; the test then kills the process, which is what
//! makes the crash land exactly there. Without the flag nothing wraps the
//! bus.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use choreo::bus::SubscribeOptions;
use choreo::{Bus, Envelope};

/// Where [`CrashPoint`] holds the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Before the next publication: its row is committed, not published.
    Before,
    /// After the next publication: published, not marked sent.
    After,
}

impl Hold {
    /// The word the test writes to the file.
    pub fn as_str(self) -> &'static str {
        match self {
            Hold::Before => "before",
            Hold::After => "after",
        }
    }
}

/// A bus that holds its caller forever at the point the file names.
#[derive(Clone)]
pub struct CrashPoint<B> {
    inner: B,
    file: Arc<PathBuf>,
}

impl<B: Bus> CrashPoint<B> {
    /// Wraps `inner`, armed by writing to `file`.
    pub fn new(inner: B, file: impl Into<PathBuf>) -> Self {
        CrashPoint {
            inner,
            file: Arc::new(file.into()),
        }
    }

    /// The armed hold, if any, disarming it (one hold per arming).
    fn take(&self) -> Option<Hold> {
        // A stat per publication, and only under the test's flag.
        let word = std::fs::read_to_string(&*self.file).ok()?;
        let hold = match word.trim() {
            "before" => Hold::Before,
            "after" => Hold::After,
            _ => return None,
        };
        std::fs::remove_file(&*self.file).ok()?;
        Some(hold)
    }

    /// Never returns: the process is meant to be killed here.
    async fn hold(&self) {
        let _ = std::fs::write(held_path(&self.file), "");
        std::future::pending::<()>().await
    }
}

/// The file [`CrashPoint`] creates once it holds the relay.
pub fn held_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".held");
    PathBuf::from(name)
}

impl<B: Bus> Bus for CrashPoint<B> {
    type Subscription = B::Subscription;

    async fn publish(&self, envelope: Envelope) -> choreo::bus::Result<()> {
        let hold = self.take();
        if hold == Some(Hold::Before) {
            self.hold().await;
        }
        self.inner.publish(envelope).await?;
        if hold == Some(Hold::After) {
            self.hold().await;
        }
        Ok(())
    }

    async fn subscribe(&self, options: SubscribeOptions) -> choreo::bus::Result<B::Subscription> {
        self.inner.subscribe(options).await
    }

    fn backend_name(&self) -> &'static str {
        self.inner.backend_name()
    }
}
