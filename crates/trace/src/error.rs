//! The error type of `choreo-trace`.

use std::path::PathBuf;

/// Errors from reading captures, tracing and serving metrics.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A capture file could not be opened, read or written.
    #[error("capture '{path}': {action} failed: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done (`open`, `read`, `write`).
        action: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The content of a capture is neither an Avro object container file nor JSON lines.
    #[error(
        "capture '{path}': unknown format (starts with {start:?}): expected an Avro object container file (written by `choreo capture` or `choreo simulate --capture`) or JSON lines with one envelope per line"
    )]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// The first bytes, for the message.
        start: String,
    },
    /// A capture is damaged (truncated, or corrupt): everything before `offset` was read.
    #[error(
        "capture '{path}': damaged at byte {offset} after {records} records: {reason}; the records before it were read, the rest of the file was skipped"
    )]
    Damaged {
        /// The file.
        path: PathBuf,
        /// The byte offset of the damage (the start of the record or block that could not be read).
        offset: u64,
        /// How many records were read before it.
        records: u64,
        /// What is wrong there.
        reason: String,
    },
    /// An Avro capture was written with a schema that cannot be read as choreo records.
    #[error(
        "capture '{path}': the Avro schema is not a choreo capture schema: {reason}; write captures with `choreo capture` or choreo_trace::capture::Writer"
    )]
    Schema {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A record could not be encoded into a capture.
    #[error("capture '{path}': cannot encode record {id}: {reason}")]
    Encode {
        /// The file.
        path: PathBuf,
        /// The record's event id.
        id: String,
        /// Why.
        reason: String,
    },
    /// A Prometheus metric could not be registered (a name clash on the registry).
    #[error(
        "cannot register tracer metric '{name}': {source}; use a registry without choreo_trace_* metrics"
    )]
    Metrics {
        /// The metric family.
        name: String,
        /// Prometheus' error.
        #[source]
        source: prometheus::Error,
    },
    /// Subscribing the tap to a bus failed.
    #[error("tracer tap: cannot subscribe group '{group}' to {topics:?}: {source}")]
    Tap {
        /// The consumer group.
        group: String,
        /// The topics.
        topics: Vec<String>,
        /// The bus error (boxed: it is large, and this error is rare).
        #[source]
        source: Box<choreo_core::Error>,
    },
    /// A value given to the tracer is out of range.
    #[error("invalid tracer setting '{setting}': {reason}")]
    Config {
        /// The setting.
        setting: &'static str,
        /// Why, and the accepted range.
        reason: String,
    },
}

/// The result type of `choreo-trace`.
pub type Result<T> = std::result::Result<T, Error>;
