//! What one bus's librdkafka clients saw go wrong on their broker
//! connections, so a failed operation can name the cause (wrong SASL
//! credentials, an untrusted certificate), and the secrets of its
//! configuration, kept out of every log line and error that leaves the crate.
//!
//! librdkafka reports a broker connection failure twice: as a log line of
//! facility `FAIL`, written at once from the broker's thread, and as an error
//! event that reaches [`ClientContext::error`](rdkafka::client::ClientContext::error)
//! only when the client is polled (a metadata lookup never is). Both are
//! observed; the log line is what makes short-lived clients explainable.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::Error;
use crate::config::{KafkaConfig, is_secret_key};

/// What replaces a secret in text.
pub(crate) const REDACTED: &str = "<redacted>";

/// How long before an operation started a SASL or TLS failure still
/// explains its failure: librdkafka logs an identical connection failure of
/// one broker at most every 30 s, so a client that keeps failing the same way
/// may say nothing during a short operation.
const RECENT: Duration = Duration::from_secs(45);

/// A connection failure that has a cause the user can fix in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// The brokers refused the SASL handshake or credentials.
    Authentication,
    /// The TLS handshake failed (certificate not trusted, wrong host name,
    /// the listener does not speak TLS).
    Tls,
}

/// Shared by every client of one bus (and every clone of it).
#[derive(Debug)]
pub(crate) struct Watch {
    brokers: String,
    /// SASL mechanism and user name, from the typed config or raw options.
    mechanism: String,
    username: String,
    /// Every secret value of the configuration, longest first (so a secret
    /// that contains another is replaced whole).
    secrets: Vec<String>,
    /// parking_lot Mutex: held only to copy in or out, never across a call.
    last: Mutex<Option<(Instant, Cause, String)>>,
}

impl Watch {
    pub(crate) fn new(config: &KafkaConfig) -> Watch {
        let mut secrets: Vec<String> = Vec::new();
        if let Some(sasl) = &config.sasl {
            secrets.push(sasl.password.expose().to_owned());
        }
        if let Some(p) = config.tls.as_ref().and_then(|t| t.key_password.as_ref()) {
            secrets.push(p.expose().to_owned());
        }
        for (k, v) in &config.librdkafka {
            if is_secret_key(k) {
                secrets.push(v.clone());
            }
        }
        secrets.retain(|s| !s.is_empty());
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        // A raw option by its canonical name, whichever alias was written.
        let raw = |key: &str| {
            config
                .librdkafka
                .iter()
                .find(|(k, _)| crate::config::canonical(k) == key)
                .map(|(_, v)| v.clone())
        };
        let (mechanism, username) = match &config.sasl {
            Some(s) => (s.mechanism.as_str().to_owned(), s.username.clone()),
            None => (
                raw("sasl.mechanisms").unwrap_or_else(|| "GSSAPI".into()),
                raw("sasl.username").unwrap_or_else(|| "(none)".into()),
            ),
        };
        Watch {
            brokers: config.brokers.clone(),
            mechanism,
            username,
            secrets,
            last: Mutex::new(None),
        }
    }

    /// `text` with every secret of the configuration replaced.
    pub(crate) fn scrub<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = Cow::Owned(out.replace(s.as_str(), REDACTED));
            }
        }
        out
    }

    /// A librdkafka log line: a connection failure (facility `FAIL`) whose
    /// text names SASL or TLS is remembered.
    pub(crate) fn observe_log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let severe = matches!(
            level,
            RDKafkaLogLevel::Emerg
                | RDKafkaLogLevel::Alert
                | RDKafkaLogLevel::Critical
                | RDKafkaLogLevel::Error
        );
        if fac != "FAIL" || !severe {
            return;
        }
        let cause = if message.contains("SASL") {
            Some(Cause::Authentication)
        } else if message.contains("SSL") || message.contains("certificate") {
            Some(Cause::Tls)
        } else {
            None
        };
        if let Some(cause) = cause {
            self.remember(cause, message);
        }
    }

    /// A librdkafka error event.
    pub(crate) fn observe_error(&self, error: &KafkaError, reason: &str) {
        let cause = match error.rdkafka_error_code() {
            Some(
                RDKafkaErrorCode::Authentication
                | RDKafkaErrorCode::SaslAuthenticationFailed
                | RDKafkaErrorCode::UnsupportedSASLMechanism
                | RDKafkaErrorCode::IllegalSASLState,
            ) => Cause::Authentication,
            Some(RDKafkaErrorCode::SSL) => Cause::Tls,
            _ => return,
        };
        self.remember(cause, reason);
    }

    fn remember(&self, cause: Cause, reason: &str) {
        let reason = self.scrub(reason).into_owned();
        *self.last.lock() = Some((Instant::now(), cause, reason));
    }

    /// `err`, or, when a SASL or TLS failure was seen during the operation
    /// that started at `since` (or shortly before: see [`RECENT`]), an error
    /// that names it (the mechanism and user, or the certificate problem).
    pub(crate) fn explain(&self, since: Instant, err: Error) -> Error {
        self.cause(since).unwrap_or(err)
    }

    /// The SASL or TLS failure seen since `since` (or just before), if any.
    pub(crate) fn cause(&self, since: Instant) -> Option<Error> {
        let (at, cause, reason) = self.last.lock().clone()?;
        if at + RECENT < since {
            return None;
        }
        Some(match cause {
            Cause::Authentication => Error::Authentication {
                mechanism: self.mechanism.clone(),
                username: self.username.clone(),
                brokers: self.brokers.clone(),
                reason,
            },
            Cause::Tls => Error::Tls {
                brokers: self.brokers.clone(),
                reason,
            },
        })
    }

    /// `err` with the configuration's secrets taken out: librdkafka's
    /// configuration errors repeat the option's value (and sometimes quote
    /// it in the description).
    pub(crate) fn redact(&self, err: KafkaError) -> KafkaError {
        match err {
            KafkaError::ClientConfig(code, desc, key, value) => {
                let value = if is_secret_key(&key) || self.secrets.contains(&value) {
                    REDACTED.to_owned()
                } else {
                    self.scrub(&value).into_owned()
                };
                let desc = self.scrub(&desc).into_owned();
                KafkaError::ClientConfig(code, desc, key, value)
            }
            KafkaError::ClientCreation(s) => {
                KafkaError::ClientCreation(self.scrub(&s).into_owned())
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SaslConfig, SaslMechanism, Secret, TlsConfig};
    use rdkafka::types::RDKafkaConfRes;

    fn watch() -> Watch {
        let c = KafkaConfig::new("b:9092")
            .sasl(SaslConfig {
                mechanism: SaslMechanism::ScramSha512,
                username: "svc".into(),
                password: Secret::new("pw-1"),
            })
            .tls(TlsConfig {
                key_password: Some(Secret::new("pw-1-longer")),
                ..TlsConfig::new()
            })
            .set("ssl.keystore.password", "ks-secret")
            .set("compression.type", "lz4");
        Watch::new(&c)
    }

    #[test]
    fn scrub_replaces_every_secret_whole() {
        let w = watch();
        assert_eq!(
            w.scrub("a pw-1-longer b pw-1 c ks-secret lz4"),
            "a <redacted> b <redacted> c <redacted> lz4"
        );
        assert!(matches!(w.scrub("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn config_errors_lose_their_secret_values() {
        let w = watch();
        let e = w.redact(KafkaError::ClientConfig(
            RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN,
            "No such configuration property: \"my.api.secret\"".into(),
            "my.api.secret".into(),
            "tok-9".into(),
        ));
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains("tok-9"), "{shown}");
        assert!(shown.contains("my.api.secret"), "{shown}");
        let KafkaError::ClientConfig(_, _, _, value) = &e else {
            panic!("{e:?}")
        };
        assert_eq!(value, REDACTED);
        // A known secret quoted in the description goes too.
        let e = w.redact(KafkaError::ClientConfig(
            RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
            "Invalid value \"pw-1\" for configuration property \"x\"".into(),
            "x".into(),
            "pw-1".into(),
        ));
        assert!(!format!("{e} {e:?}").contains("pw-1"), "{e:?}");
    }

    #[test]
    fn a_sasl_failure_seen_since_the_start_names_mechanism_and_user() {
        let w = watch();
        let before = Instant::now();
        let plain = || Error::Invalid {
            field: "x",
            reason: "y".into(),
        };
        assert!(matches!(w.explain(before, plain()), Error::Invalid { .. }));
        w.observe_log(
            RDKafkaLogLevel::Error,
            "FAIL",
            "b:9092/bootstrap: SASL authentication error: invalid credentials (pw-1)",
        );
        let e = w.explain(before, plain()).to_string();
        assert!(e.contains("SCRAM-SHA-512") && e.contains("'svc'"), "{e}");
        assert!(!e.contains("pw-1"), "{e}");
        // Not for operations that started long after.
        let later = Instant::now() + RECENT + Duration::from_secs(1);
        assert!(matches!(w.explain(later, plain()), Error::Invalid { .. }));
        // Other failures are not a cause the config can fix.
        w.observe_log(RDKafkaLogLevel::Error, "FAIL", "Connect failed: refused");
        w.observe_error(
            &KafkaError::Global(RDKafkaErrorCode::SSL),
            "SSL handshake failed: certificate verify failed",
        );
        let e = w.explain(Instant::now(), plain()).to_string();
        assert!(e.starts_with("TLS connection to brokers 'b:9092'"), "{e}");
    }
}
