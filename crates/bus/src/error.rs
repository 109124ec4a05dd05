//! The error type of `choreo-bus`.

/// Errors from running services and publishing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `run` was called on a service without handlers.
    #[error("service '{service}' has no handlers: add one with Service::on before running it")]
    NoHandlers {
        /// The service.
        service: String,
    },
    /// Joining the consumer group failed.
    #[error("service '{service}' could not subscribe as group '{group}': {source}")]
    Subscribe {
        /// The service.
        service: String,
        /// The group.
        group: String,
        /// The bus error.
        #[source]
        source: Box<choreo_core::Error>,
    },
    /// Leaving the consumer group failed.
    #[error("service '{service}' could not leave its consumer group cleanly: {source}")]
    Close {
        /// The service.
        service: String,
        /// The bus error.
        #[source]
        source: Box<choreo_core::Error>,
    },
    /// Publishing failed.
    #[error("publishing failed: {source}")]
    Publish {
        /// The bus or codec error.
        #[source]
        source: choreo_core::Error,
    },
    /// The service's task was aborted (its runtime shut down).
    #[error("service '{service}' was aborted before it shut down")]
    Aborted {
        /// The service.
        service: String,
    },
    /// A bus or codec error met outside a handler, such as
    /// [`Context::emit`](crate::Context::emit)'s, converted with `?`.
    #[error(transparent)]
    Bus {
        /// The bus or codec error.
        #[from]
        source: choreo_core::Error,
    },
    /// The in-process bus still had unsettled events when
    /// [`InProcessBus::settled_within`](crate::InProcessBus::settled_within)
    /// gave up.
    #[error(
        "the in-process bus did not settle within {within:?}: {}; is a handler stuck or retrying, or are events still being published?",
        crate::memory::describe_unsettled(unsettled)
    )]
    NotSettled {
        /// How long it waited.
        within: std::time::Duration,
        /// Each group and partition that still held events back.
        unsettled: Vec<crate::memory::Unsettled>,
    },
    /// Serving metrics failed.
    #[error("metrics endpoint on {addr}: {source}")]
    Metrics {
        /// The address.
        addr: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
