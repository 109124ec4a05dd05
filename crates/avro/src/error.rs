//! The error type of `choreo-avro`: schemas and registries.

/// Errors from schemas and schema registries.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A schema could not be parsed or derived.
    #[error("avro schema: {reason}")]
    Schema {
        /// What is wrong.
        reason: String,
    },
    /// The registry does not know a schema id.
    #[error(
        "schema id {id} is not in the {registry}: the record was written with a schema this registry never saw (another registry, or a deleted schema)"
    )]
    UnknownSchema {
        /// The id.
        id: u32,
        /// Which registry.
        registry: String,
    },
    /// The registry answered with an error.
    #[error("schema registry {url} answered HTTP {status} (error code {code:?}): {message}")]
    Registry {
        /// The request URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// Confluent's `error_code`, when given.
        code: Option<i64>,
        /// Confluent's `message`.
        message: String,
    },
    /// The registry could not be reached or its answer not understood.
    #[error("schema registry {url}: {reason}")]
    Http {
        /// The request URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for choreo_core::Error {
    fn from(e: Error) -> Self {
        choreo_core::Error::backend("avro", e)
    }
}
