//! The error type of `choreo-core` and of the bus backends built on it.

/// Errors from codecs and bus backends.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An event could not be encoded.
    #[error("cannot encode event '{event_type}' as {content_type}: {reason}")]
    Encode {
        /// The event type.
        event_type: String,
        /// The codec's content type.
        content_type: String,
        /// What went wrong.
        reason: String,
    },
    /// A payload could not be decoded into the expected type.
    #[error("decode error: payload of '{event_type}' is not valid {content_type}: {reason}")]
    Decode {
        /// The event type.
        event_type: String,
        /// The payload's content type.
        content_type: String,
        /// What went wrong.
        reason: String,
    },
    /// The bus or subscription was closed.
    #[error("the bus is closed")]
    Closed,
    /// A publish could not be accepted because a bound was reached.
    #[error(
        "topic '{topic}' partition {partition} is full ({limit} events retained and unread by group '{group}'): {hint}"
    )]
    Full {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The retention bound.
        limit: usize,
        /// A group that has not read the oldest event.
        group: String,
        /// What to do about it.
        hint: &'static str,
    },
    /// An event is too large or carries too many headers.
    #[error("event '{event_type}' on '{topic}' is refused: {reason}")]
    Refused {
        /// The event type.
        event_type: String,
        /// The topic.
        topic: String,
        /// Which limit was exceeded, and by how much.
        reason: String,
    },
    /// Invalid configuration or arguments.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A backend-specific failure (the Kafka client, a schema registry).
    #[error("{context}: {source}")]
    Backend {
        /// What was being done.
        context: String,
        /// The backend's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

impl Error {
    /// Wraps a backend error with what was being done.
    pub fn backend(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Error::Backend {
            context: context.into(),
            source: source.into(),
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
