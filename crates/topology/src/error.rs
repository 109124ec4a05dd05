//! The error type of `choreo-topology`.

use crate::diagnostic::Diagnostic;

/// Errors from loading a topology or exporting it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read.
    #[error("cannot read '{path}': {source}")]
    Read {
        /// The file, as given.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The topology file has problems; each diagnostic says where and how to fix it.
    #[error("{file}: {} problem{} in the topology; the first: {}", diagnostics.len(), if diagnostics.len() == 1 { "" } else { "s" }, first(diagnostics))]
    Invalid {
        /// The file label.
        file: String,
        /// Every problem found, in file order. Never empty.
        diagnostics: Vec<Diagnostic>,
    },
    /// An event's payload schema could not be used.
    #[error("{location}: schema '{schema}' of event '{event}' is unusable: {reason}")]
    Schema {
        /// The event.
        event: String,
        /// The schema reference as written.
        schema: String,
        /// `file:line:column` of the event.
        location: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn first(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .first()
        .map_or_else(String::new, |d| format!("{}: {}", d.code, d.message))
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
