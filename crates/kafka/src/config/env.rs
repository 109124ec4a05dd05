//! The configuration from `CHOREO_KAFKA_*` environment variables.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::{KafkaConfig, SaslConfig, SaslMechanism, Secret, TlsConfig, is_secret_key};
use crate::{Error, Result};

impl KafkaConfig {
    /// Reads the configuration from `CHOREO_KAFKA_*` environment variables.
    /// See [`KafkaConfig::from_vars`].
    pub fn from_env() -> Result<Self> {
        Self::from_env_with_brokers(None)
    }

    /// [`from_env`](KafkaConfig::from_env), with `brokers` (when given) in
    /// place of `CHOREO_KAFKA_BROKERS`: for a `--brokers` flag over the
    /// environment.
    pub fn from_env_with_brokers(brokers: Option<&str>) -> Result<Self> {
        let env = std::env::vars_os().filter_map(|(k, v)| {
            let k = k.into_string().ok()?;
            k.starts_with(ENV_PREFIX)
                .then(|| (k, v.to_string_lossy().into_owned()))
        });
        // Later variables win: the flag comes last.
        let flag = brokers.map(|b| ("CHOREO_KAFKA_BROKERS".to_owned(), b.to_owned()));
        Self::from_vars(env.chain(flag))
    }

    /// Reads the configuration from variables such as the environment's.
    ///
    /// | variable | field |
    /// |---|---|
    /// | `CHOREO_KAFKA_BROKERS` (required) | `brokers` |
    /// | `CHOREO_KAFKA_CLIENT_ID` | `client_id` |
    /// | `CHOREO_KAFKA_GROUP_PREFIX` | `group_prefix` |
    /// | `CHOREO_KAFKA_PARTITIONS` | `partitions` |
    /// | `CHOREO_KAFKA_REPLICATION_FACTOR` | `replication_factor` |
    /// | `CHOREO_KAFKA_CREATE_TOPICS` (`true`/`false`) | `create_topics` |
    /// | `CHOREO_KAFKA_SESSION_TIMEOUT_MS` | `session_timeout` |
    /// | `CHOREO_KAFKA_DELIVERY_TIMEOUT_MS` | `delivery_timeout` |
    /// | `CHOREO_KAFKA_JOIN_TIMEOUT_MS` | `join_timeout` |
    /// | `CHOREO_KAFKA_COMMIT_INTERVAL_MS` | `commit_interval` |
    /// | `CHOREO_KAFKA_LAG_INTERVAL_MS` (`0` = off) | `lag_interval` |
    /// | `CHOREO_KAFKA_TLS` (`true`), `CHOREO_KAFKA_TLS_CA_LOCATION`, `CHOREO_KAFKA_TLS_CERT_LOCATION`, `CHOREO_KAFKA_TLS_KEY_LOCATION`, `CHOREO_KAFKA_TLS_KEY_PASSWORD`, `CHOREO_KAFKA_TLS_VERIFY_HOSTNAME` | `tls` (on when any is set) |
    /// | `CHOREO_KAFKA_SASL_MECHANISM`, `CHOREO_KAFKA_SASL_USERNAME`, `CHOREO_KAFKA_SASL_PASSWORD` | `sasl` (all three) |
    /// | `CHOREO_KAFKA_OPTIONS` (`key=value;key=value`) | `librdkafka` |
    ///
    /// Variables not starting with `CHOREO_KAFKA_` are ignored; an unknown
    /// `CHOREO_KAFKA_*` variable is an error (a typo would otherwise go unnoticed).
    pub fn from_vars<I, K, V>(vars: I) -> Result<Self>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let mut vars: BTreeMap<String, String> = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        let brokers = vars
            .remove("CHOREO_KAFKA_BROKERS")
            .ok_or_else(|| Error::Env {
                var: "CHOREO_KAFKA_BROKERS".into(),
                reason: "is not set: set it to the bootstrap servers, e.g. 'localhost:9092'".into(),
            })?;
        let mut c = KafkaConfig::new(brokers);
        let mut take = |name: &str| vars.remove(name);
        c.client_id = take("CHOREO_KAFKA_CLIENT_ID");
        c.group_prefix = take("CHOREO_KAFKA_GROUP_PREFIX");
        if let Some(v) = take("CHOREO_KAFKA_PARTITIONS") {
            c.partitions = parse_env("CHOREO_KAFKA_PARTITIONS", &v)?;
        }
        if let Some(v) = take("CHOREO_KAFKA_REPLICATION_FACTOR") {
            c.replication_factor = Some(parse_env("CHOREO_KAFKA_REPLICATION_FACTOR", &v)?);
        }
        if let Some(v) = take("CHOREO_KAFKA_CREATE_TOPICS") {
            c.create_topics = parse_bool("CHOREO_KAFKA_CREATE_TOPICS", &v)?;
        }
        let ms = |var: &str, v: &str| -> Result<Duration> {
            Ok(Duration::from_millis(parse_env::<u64>(var, v)?))
        };
        if let Some(v) = take("CHOREO_KAFKA_SESSION_TIMEOUT_MS") {
            c.session_timeout = Some(ms("CHOREO_KAFKA_SESSION_TIMEOUT_MS", &v)?);
        }
        if let Some(v) = take("CHOREO_KAFKA_DELIVERY_TIMEOUT_MS") {
            c.delivery_timeout = Some(ms("CHOREO_KAFKA_DELIVERY_TIMEOUT_MS", &v)?);
        }
        if let Some(v) = take("CHOREO_KAFKA_JOIN_TIMEOUT_MS") {
            c.join_timeout = ms("CHOREO_KAFKA_JOIN_TIMEOUT_MS", &v)?;
        }
        if let Some(v) = take("CHOREO_KAFKA_COMMIT_INTERVAL_MS") {
            c.commit_interval = ms("CHOREO_KAFKA_COMMIT_INTERVAL_MS", &v)?;
        }
        if let Some(v) = take("CHOREO_KAFKA_LAG_INTERVAL_MS") {
            let d = ms("CHOREO_KAFKA_LAG_INTERVAL_MS", &v)?;
            c.lag_interval = (!d.is_zero()).then_some(d);
        }
        c.tls = tls_from(&mut vars)?;
        c.sasl = sasl_from(&mut vars)?;
        if let Some(options) = vars.remove("CHOREO_KAFKA_OPTIONS") {
            c.librdkafka.extend(options_from(&options)?);
        }
        if let Some((unknown, _)) = vars.into_iter().next() {
            return Err(Error::Env {
                var: unknown,
                reason: format!(
                    "is not a choreo Kafka setting; known: {}",
                    ENV_VARS.join(", ")
                ),
            });
        }
        c.validate()?;
        Ok(c)
    }
}

/// `tls` from the `CHOREO_KAFKA_TLS*` variables: on when any is set.
fn tls_from(vars: &mut BTreeMap<String, String>) -> Result<Option<TlsConfig>> {
    let mut take = |name: &str| vars.remove(name);
    let tls_on = take("CHOREO_KAFKA_TLS");
    let ca = take("CHOREO_KAFKA_TLS_CA_LOCATION");
    let cert = take("CHOREO_KAFKA_TLS_CERT_LOCATION");
    let key = take("CHOREO_KAFKA_TLS_KEY_LOCATION");
    let key_password = take("CHOREO_KAFKA_TLS_KEY_PASSWORD");
    let verify = take("CHOREO_KAFKA_TLS_VERIFY_HOSTNAME");
    let tls_on = match tls_on {
        Some(v) => parse_bool("CHOREO_KAFKA_TLS", &v)?,
        None => false,
    };
    let any = ca.is_some()
        || cert.is_some()
        || key.is_some()
        || key_password.is_some()
        || verify.is_some();
    if !tls_on && !any {
        return Ok(None);
    }
    Ok(Some(TlsConfig {
        ca_location: ca.map(PathBuf::from),
        certificate_location: cert.map(PathBuf::from),
        key_location: key.map(PathBuf::from),
        key_password: key_password.map(Secret::new),
        verify_hostname: match verify {
            Some(v) => parse_bool("CHOREO_KAFKA_TLS_VERIFY_HOSTNAME", &v)?,
            None => true,
        },
    }))
}

/// `sasl` from the `CHOREO_KAFKA_SASL_*` variables: all three or none.
fn sasl_from(vars: &mut BTreeMap<String, String>) -> Result<Option<SaslConfig>> {
    let mut take = |name: &str| vars.remove(name);
    let mechanism = take("CHOREO_KAFKA_SASL_MECHANISM");
    let username = take("CHOREO_KAFKA_SASL_USERNAME");
    let password = take("CHOREO_KAFKA_SASL_PASSWORD");
    match (mechanism, username, password) {
        (None, None, None) => Ok(None),
        (Some(m), Some(u), Some(p)) => {
            let mechanism = SaslMechanism::parse(&m).ok_or_else(|| Error::Env {
                var: "CHOREO_KAFKA_SASL_MECHANISM".into(),
                reason: format!(
                    "'{m}' is not a mechanism choreo configures: use PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (others through CHOREO_KAFKA_OPTIONS)"
                ),
            })?;
            Ok(Some(SaslConfig {
                mechanism,
                username: u,
                password: Secret::new(p),
            }))
        }
        (m, u, p) => {
            let missing: Vec<&str> = [
                ("CHOREO_KAFKA_SASL_MECHANISM", m.is_none()),
                ("CHOREO_KAFKA_SASL_USERNAME", u.is_none()),
                ("CHOREO_KAFKA_SASL_PASSWORD", p.is_none()),
            ]
            .into_iter()
            .filter_map(|(n, missing)| missing.then_some(n))
            .collect();
            Err(Error::Env {
                var: missing.join(", "),
                reason: "SASL needs the mechanism, the user name and the password: set the missing variables".into(),
            })
        }
    }
}

/// The raw options of `CHOREO_KAFKA_OPTIONS`, `key=value;key=value`.
fn options_from(options: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for pair in options.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            // A malformed pair may hold a secret (`sasl.password:…`).
            let shown = if is_secret_key(pair) {
                "<redacted>"
            } else {
                pair
            };
            return Err(Error::Env {
                var: "CHOREO_KAFKA_OPTIONS".into(),
                reason: format!(
                    "'{shown}' is not 'key=value': write options as 'key=value;key=value'"
                ),
            });
        };
        out.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    Ok(out)
}

const ENV_PREFIX: &str = "CHOREO_KAFKA_";

const ENV_VARS: &[&str] = &[
    "CHOREO_KAFKA_BROKERS",
    "CHOREO_KAFKA_CLIENT_ID",
    "CHOREO_KAFKA_GROUP_PREFIX",
    "CHOREO_KAFKA_PARTITIONS",
    "CHOREO_KAFKA_REPLICATION_FACTOR",
    "CHOREO_KAFKA_CREATE_TOPICS",
    "CHOREO_KAFKA_SESSION_TIMEOUT_MS",
    "CHOREO_KAFKA_DELIVERY_TIMEOUT_MS",
    "CHOREO_KAFKA_JOIN_TIMEOUT_MS",
    "CHOREO_KAFKA_COMMIT_INTERVAL_MS",
    "CHOREO_KAFKA_LAG_INTERVAL_MS",
    "CHOREO_KAFKA_TLS",
    "CHOREO_KAFKA_TLS_CA_LOCATION",
    "CHOREO_KAFKA_TLS_CERT_LOCATION",
    "CHOREO_KAFKA_TLS_KEY_LOCATION",
    "CHOREO_KAFKA_TLS_KEY_PASSWORD",
    "CHOREO_KAFKA_TLS_VERIFY_HOSTNAME",
    "CHOREO_KAFKA_SASL_MECHANISM",
    "CHOREO_KAFKA_SASL_USERNAME",
    "CHOREO_KAFKA_SASL_PASSWORD",
    "CHOREO_KAFKA_OPTIONS",
];

fn parse_env<T: std::str::FromStr>(var: &str, value: &str) -> Result<T>
where
    T::Err: fmt::Display,
{
    value.trim().parse().map_err(|e: T::Err| Error::Env {
        var: var.to_owned(),
        reason: format!("'{value}' is not a valid number: {e}"),
    })
}

fn parse_bool(var: &str, value: &str) -> Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(Error::Env {
            var: var.to_owned(),
            reason: format!("'{value}' is not a boolean: use true or false"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_brokers_flag_wins_over_the_environment() {
        // Whatever CHOREO_KAFKA_BROKERS says (if anything), the flag is used.
        let c = KafkaConfig::from_env_with_brokers(Some("flag-host:9092")).unwrap();
        assert_eq!(c.brokers, "flag-host:9092");
        let later_wins = KafkaConfig::from_vars([
            ("CHOREO_KAFKA_BROKERS", "env-host:9092"),
            ("CHOREO_KAFKA_BROKERS", "flag-host:9092"),
        ])
        .unwrap();
        assert_eq!(later_wins.brokers, "flag-host:9092");
    }

    #[test]
    fn from_vars_reads_every_setting() {
        let c = KafkaConfig::from_vars([
            ("CHOREO_KAFKA_BROKERS", "k1:9092,k2:9092"),
            ("CHOREO_KAFKA_CLIENT_ID", "orders-svc"),
            ("CHOREO_KAFKA_GROUP_PREFIX", "prod."),
            ("CHOREO_KAFKA_PARTITIONS", "12"),
            ("CHOREO_KAFKA_REPLICATION_FACTOR", "3"),
            ("CHOREO_KAFKA_CREATE_TOPICS", "false"),
            ("CHOREO_KAFKA_SESSION_TIMEOUT_MS", "10000"),
            ("CHOREO_KAFKA_DELIVERY_TIMEOUT_MS", "30000"),
            ("CHOREO_KAFKA_LAG_INTERVAL_MS", "0"),
            ("CHOREO_KAFKA_TLS_CA_LOCATION", "/ca.pem"),
            ("CHOREO_KAFKA_SASL_MECHANISM", "scram-sha-256"),
            ("CHOREO_KAFKA_SASL_USERNAME", "svc"),
            ("CHOREO_KAFKA_SASL_PASSWORD", "pw"),
            (
                "CHOREO_KAFKA_OPTIONS",
                "compression.type=zstd; linger.ms=20",
            ),
            ("HOME", "/root"),
        ])
        .unwrap();
        assert_eq!(c.brokers, "k1:9092,k2:9092");
        assert_eq!(c.client_id.as_deref(), Some("orders-svc"));
        assert_eq!(c.group_id("billing"), "prod.billing");
        assert_eq!(c.partitions, 12);
        assert_eq!(c.replication_factor, Some(3));
        assert!(!c.create_topics);
        assert_eq!(c.session_timeout, Some(Duration::from_secs(10)));
        assert_eq!(c.delivery_timeout, Some(Duration::from_secs(30)));
        assert_eq!(c.lag_interval, None);
        assert_eq!(
            c.tls.as_ref().unwrap().ca_location.as_deref(),
            Some(std::path::Path::new("/ca.pem"))
        );
        let sasl = c.sasl.as_ref().unwrap();
        assert_eq!(sasl.mechanism, SaslMechanism::ScramSha256);
        assert_eq!(sasl.password.expose(), "pw");
        assert_eq!(
            c.librdkafka.get("linger.ms").map(String::as_str),
            Some("20")
        );
    }

    #[test]
    fn from_vars_errors_name_the_variable_and_the_fix() {
        let err = KafkaConfig::from_vars([("CHOREO_KAFKA_CLIENT_ID", "x")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("CHOREO_KAFKA_BROKERS") && err.contains("is not set"),
            "{err}"
        );
        let err = KafkaConfig::from_vars([
            ("CHOREO_KAFKA_BROKERS", "b:1"),
            ("CHOREO_KAFKA_BROKER", "typo"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("CHOREO_KAFKA_BROKER:") && err.contains("known:"),
            "{err}"
        );
        let err = KafkaConfig::from_vars([
            ("CHOREO_KAFKA_BROKERS", "b:1"),
            ("CHOREO_KAFKA_PARTITIONS", "many"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("'many' is not a valid number"), "{err}");
        let err = KafkaConfig::from_vars([
            ("CHOREO_KAFKA_BROKERS", "b:1"),
            ("CHOREO_KAFKA_SASL_USERNAME", "u"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("CHOREO_KAFKA_SASL_MECHANISM")
                && err.contains("CHOREO_KAFKA_SASL_PASSWORD"),
            "{err}"
        );
        let err = KafkaConfig::from_vars([
            ("CHOREO_KAFKA_BROKERS", "b:1"),
            ("CHOREO_KAFKA_OPTIONS", "acks=1"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("'acks'"), "{err}");
    }
}
