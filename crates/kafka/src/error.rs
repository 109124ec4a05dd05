//! The error type of `choreo-kafka`: configuration, client and topic errors.
//!
//! [`Bus`](choreo_core::Bus) methods return [`choreo_core::Error`], the bus
//! contract's error type; this crate's errors convert into it.

use std::time::Duration;

use rdkafka::error::KafkaError;

/// Errors from configuring and connecting the Kafka backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A raw librdkafka option says something else than a typed field.
    #[error(
        "raw librdkafka option '{key}' = '{value}' contradicts the typed field `{field}` = '{typed}': remove one of them"
    )]
    Contradiction {
        /// The raw option.
        key: String,
        /// Its value (redacted for secrets).
        value: String,
        /// The typed field of `KafkaConfig`.
        field: &'static str,
        /// The typed field's value (redacted for secrets).
        typed: String,
    },
    /// A raw librdkafka option that choreo sets itself, with another value.
    #[error("raw librdkafka option '{key}' = '{value}' is refused: {reason}")]
    Managed {
        /// The raw option.
        key: String,
        /// Its value.
        value: String,
        /// Why choreo owns it, and what to do instead.
        reason: &'static str,
    },
    /// An environment variable could not be used.
    #[error("environment variable {var}: {reason}")]
    Env {
        /// The variable.
        var: String,
        /// What is wrong with it, and how to fix it.
        reason: String,
    },
    /// A typed field has a value that cannot work.
    #[error("kafka configuration field `{field}`: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong with it, and how to fix it.
        reason: String,
    },
    /// librdkafka refused to create a client.
    #[error("cannot create the kafka {role} for brokers '{brokers}': {source}")]
    Client {
        /// Which client: producer, consumer, admin client.
        role: &'static str,
        /// The configured brokers.
        brokers: String,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// A topic is missing and could not be created, or could not be looked up.
    #[error("topic '{topic}': {reason}")]
    Topic {
        /// The topic.
        topic: String,
        /// What happened, and what to do.
        reason: String,
    },
    /// A consumer did not get its partitions in time.
    #[non_exhaustive]
    #[error(
        "consumer group '{group}' gave this member no partition assignment within {timeout:?} (brokers '{brokers}'; last seen: {last_seen}): check that the brokers are reachable, or raise `join_timeout`"
    )]
    JoinTimeout {
        /// The consumer group.
        group: String,
        /// The configured brokers.
        brokers: String,
        /// How long it waited.
        timeout: Duration,
        /// Where the join stood, from librdkafka's last statistics.
        last_seen: String,
    },
    /// The brokers refused this client's SASL authentication.
    #[error(
        "SASL {mechanism} authentication as user '{username}' failed on brokers '{brokers}': {reason}: check the user name and password (`sasl.username`, `sasl.password`) and that the brokers enable {mechanism}"
    )]
    Authentication {
        /// The SASL mechanism.
        mechanism: String,
        /// The user name.
        username: String,
        /// The configured brokers.
        brokers: String,
        /// librdkafka's account of the failure (never the password).
        reason: String,
    },
    /// The TLS connection to the brokers failed.
    #[error(
        "TLS connection to brokers '{brokers}' failed: {reason}: check `tls.ca_location` (the CA that signed the brokers' certificates), `tls.verify_hostname`, and that the brokers serve TLS on that port"
    )]
    Tls {
        /// The configured brokers.
        brokers: String,
        /// librdkafka's account of the failure.
        reason: String,
    },
    /// A Kafka operation failed.
    #[error("{context}: {source}")]
    Kafka {
        /// What was being done.
        context: String,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for choreo_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Contradiction { .. }
            | Error::Managed { .. }
            | Error::Env { .. }
            | Error::Invalid { .. } => choreo_core::Error::Config(e.to_string()),
            other => choreo_core::Error::backend("kafka", other),
        }
    }
}

/// For `?` where a service's setup returns the SDK's error
/// (`choreo::Result`): through the bus contract's error, as above.
impl From<Error> for choreo_bus::Error {
    fn from(e: Error) -> Self {
        choreo_bus::Error::from(choreo_core::Error::from(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_errors_convert_into_the_sdks_with_a_question_mark() {
        fn setup() -> choreo_bus::Result<()> {
            Err(Error::Invalid {
                field: "brokers",
                reason: "is empty".into(),
            })?;
            Ok(())
        }
        let e = setup().unwrap_err();
        assert!(matches!(
            e,
            choreo_bus::Error::Bus {
                source: choreo_core::Error::Config(_)
            }
        ));
        assert!(e.to_string().contains("`brokers`: is empty"), "{e}");
    }
}
