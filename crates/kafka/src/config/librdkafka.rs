//! The typed configuration as librdkafka's options, per client, with the
//! raw options merged in: those that contradict a typed field, or that
//! choreo sets itself for its guarantees, are refused with both named.

use std::path::PathBuf;
use std::time::Duration;

use choreo_core::StartFrom;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};

use super::{KafkaConfig, is_secret_key};
use crate::{Error, Result};

/// Which client a configuration is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Producer,
    Consumer,
    Admin,
}

/// Canonical names of librdkafka aliases of options choreo looks at.
pub(crate) fn canonical(key: &str) -> &str {
    match key {
        "metadata.broker.list" => "bootstrap.servers",
        "delivery.timeout.ms" => "message.timeout.ms",
        "sasl.mechanism" => "sasl.mechanisms",
        "request.required.acks" => "acks",
        "queue.buffering.max.ms" => "linger.ms",
        "ssl_key" => "ssl.key.location",
        other => other,
    }
}

fn millis(d: Duration) -> String {
    d.as_millis().to_string()
}

/// The typed options of one client: (librdkafka key, value, the typed field
/// or `None` when choreo owns it, whether the value is secret).
#[derive(Default)]
struct Typed(Vec<(&'static str, String, Option<&'static str>, bool)>);

impl Typed {
    fn add(&mut self, key: &'static str, value: String, field: Option<&'static str>) {
        self.0.push((key, value, field, is_secret_key(key)));
    }
}

impl KafkaConfig {
    /// The librdkafka configuration of one client. `consumer` gives the
    /// group id and start position of a consumer.
    pub(crate) fn client_config(
        &self,
        role: Role,
        consumer: Option<(&str, StartFrom)>,
    ) -> Result<ClientConfig> {
        let mut typed = Typed::default();
        self.connection_options(&mut typed);
        match role {
            Role::Producer => self.producer_options(&mut typed),
            Role::Consumer => self.consumer_options(consumer, &mut typed),
            Role::Admin => {}
        }
        self.merge_raw(&typed, role)
    }

    /// What every client gets: the brokers, the client id, TLS and SASL.
    fn connection_options(&self, typed: &mut Typed) {
        let mut add = |key, value, field| typed.add(key, value, field);
        add("bootstrap.servers", self.brokers.clone(), Some("brokers"));
        add(
            "client.id",
            self.client_id.clone().unwrap_or_else(|| "choreo".into()),
            Some("client_id"),
        );
        let protocol = match (&self.tls, &self.sasl) {
            (None, None) => None,
            (Some(_), None) => Some("ssl"),
            (None, Some(_)) => Some("sasl_plaintext"),
            (Some(_), Some(_)) => Some("sasl_ssl"),
        };
        if let Some(p) = protocol {
            add("security.protocol", p.into(), Some("tls/sasl"));
        }
        if let Some(tls) = &self.tls {
            let path = |p: &PathBuf| p.to_string_lossy().into_owned();
            if let Some(p) = &tls.ca_location {
                add("ssl.ca.location", path(p), Some("tls.ca_location"));
            }
            if let Some(p) = &tls.certificate_location {
                add(
                    "ssl.certificate.location",
                    path(p),
                    Some("tls.certificate_location"),
                );
            }
            if let Some(p) = &tls.key_location {
                add("ssl.key.location", path(p), Some("tls.key_location"));
            }
            if let Some(p) = &tls.key_password {
                add(
                    "ssl.key.password",
                    p.expose().to_owned(),
                    Some("tls.key_password"),
                );
            }
            add(
                "ssl.endpoint.identification.algorithm",
                if tls.verify_hostname { "https" } else { "none" }.into(),
                Some("tls.verify_hostname"),
            );
        }
        if let Some(sasl) = &self.sasl {
            add(
                "sasl.mechanisms",
                sasl.mechanism.as_str().into(),
                Some("sasl.mechanism"),
            );
            add(
                "sasl.username",
                sasl.username.clone(),
                Some("sasl.username"),
            );
            add(
                "sasl.password",
                sasl.password.expose().to_owned(),
                Some("sasl.password"),
            );
        }
        if let Some(t) = self.socket_timeout {
            add("socket.timeout.ms", millis(t), Some("socket_timeout"));
        }
    }

    /// The producer's options: choreo's guarantees, then the typed timings.
    fn producer_options(&self, typed: &mut Typed) {
        let mut add = |key, value, field| typed.add(key, value, field);
        add("enable.idempotence", "true".into(), None);
        add("acks", "all".into(), None);
        add("partitioner", "murmur2_random".into(), None);
        add("allow.auto.create.topics", "false".into(), None);
        if let Some(t) = self.delivery_timeout {
            add("message.timeout.ms", millis(t), Some("delivery_timeout"));
        }
        if let Some(t) = self.linger {
            add("linger.ms", millis(t), Some("linger"));
        }
    }

    /// A consumer's options: settled offsets only, its group and start, the
    /// group's timings and the lag statistics.
    fn consumer_options(&self, consumer: Option<(&str, StartFrom)>, typed: &mut Typed) {
        let mut add = |key, value, field| typed.add(key, value, field);
        // Only settled offsets are stored; librdkafka commits what is
        // stored every `commit_interval`.
        add("enable.auto.commit", "true".into(), None);
        add("enable.auto.offset.store", "false".into(), None);
        add(
            "auto.commit.interval.ms",
            millis(self.commit_interval.max(Duration::from_millis(1))),
            Some("commit_interval"),
        );
        add("enable.partition.eof", "false".into(), None);
        if let Some((group, start)) = consumer {
            add("group.id", self.group_id(group), None);
            add(
                "auto.offset.reset",
                match start {
                    StartFrom::Earliest => "earliest",
                    StartFrom::Latest => "latest",
                }
                .into(),
                None,
            );
        }
        if let Some(t) = self.session_timeout {
            add("session.timeout.ms", millis(t), Some("session_timeout"));
        }
        let heartbeat = self.heartbeat_interval.or_else(|| {
            self.session_timeout
                .filter(|s| *s < Duration::from_secs(9))
                .map(|s| s / 3)
        });
        if let Some(t) = heartbeat {
            add(
                "heartbeat.interval.ms",
                millis(t.max(Duration::from_millis(1))),
                Some("heartbeat_interval"),
            );
        }
        if let Some(t) = self.lag_interval {
            add("statistics.interval.ms", millis(t), Some("lag_interval"));
        }
    }

    /// The typed options, then the raw ones: a raw option that says otherwise
    /// than a typed one, or than one choreo owns, is refused.
    fn merge_raw(&self, typed: &Typed, role: Role) -> Result<ClientConfig> {
        let mut config = ClientConfig::new();
        config.set_log_level(librdkafka_log_level());
        for (key, value, _, _) in &typed.0 {
            config.set(*key, value.as_str());
        }
        for (raw_key, raw_value) in &self.librdkafka {
            let key = canonical(raw_key.as_str());
            let redact = |v: &str, secret: bool| {
                if secret {
                    "<redacted>".to_owned()
                } else {
                    v.to_owned()
                }
            };
            if let Some((_, value, field, secret)) = typed.0.iter().find(|(k, ..)| *k == key) {
                if !same_value(key, value, raw_value) {
                    return Err(match field {
                        Some(field) => Error::Contradiction {
                            key: raw_key.clone(),
                            value: redact(raw_value, *secret || is_secret_key(raw_key)),
                            field,
                            typed: redact(value, *secret),
                        },
                        None => Error::Managed {
                            key: raw_key.clone(),
                            value: raw_value.clone(),
                            reason: managed_reason(key),
                        },
                    });
                }
                continue;
            }
            if let Some(reason) = always_managed(key, raw_value, role) {
                return Err(Error::Managed {
                    key: raw_key.clone(),
                    value: raw_value.clone(),
                    reason,
                });
            }
            config.set(raw_key.as_str(), raw_value.as_str());
        }
        Ok(config)
    }
}

/// The most detailed librdkafka log level any `tracing` subscriber wants, so
/// librdkafka's warnings reach `tracing` when someone listens (rdkafka's own
/// default follows the `log` crate, which choreo does not use). Errors always
/// pass.
fn librdkafka_log_level() -> RDKafkaLogLevel {
    use tracing::level_filters::LevelFilter;
    let max = LevelFilter::current();
    if max >= LevelFilter::DEBUG {
        RDKafkaLogLevel::Debug
    } else if max >= LevelFilter::INFO {
        RDKafkaLogLevel::Info
    } else if max >= LevelFilter::WARN {
        RDKafkaLogLevel::Warning
    } else {
        RDKafkaLogLevel::Error
    }
}

/// Options choreo sets for some clients: refused for the others too, unless
/// they say the same.
fn always_managed(key: &str, value: &str, role: Role) -> Option<&'static str> {
    let fixed = match key {
        "enable.auto.commit" => Some("true"),
        "enable.auto.offset.store" => Some("false"),
        "enable.idempotence" => Some("true"),
        "acks" => Some("all"),
        "partitioner" => Some("murmur2_random"),
        _ => None,
    };
    if fixed.is_some_and(|f| same_value(key, f, value)) {
        return None;
    }
    match key {
        "group.id"
        | "enable.auto.commit"
        | "enable.auto.offset.store"
        | "auto.offset.reset"
        | "enable.idempotence"
        | "acks"
        | "partitioner" => Some(managed_reason(key)),
        "security.protocol" => Some(
            "the security protocol follows from the typed `tls` and `sasl` fields: set those instead",
        ),
        "allow.auto.create.topics" if role == Role::Producer => Some(managed_reason(key)),
        _ => None,
    }
}

fn managed_reason(key: &str) -> &'static str {
    match key {
        "group.id" => "the consumer group comes from each subscription (and `group_prefix`)",
        "enable.auto.commit" | "enable.auto.offset.store" => {
            "choreo stores offsets itself, only once deliveries are settled, and has librdkafka commit what is stored (`commit_interval`)"
        }
        "auto.offset.reset" => "it follows each subscription's StartFrom",
        "enable.idempotence" | "acks" => {
            "the producer is always idempotent with acks=all, so a publish that returned Ok is on every in-sync replica"
        }
        "partitioner" => {
            "choreo uses murmur2_random so a key lands on the same partition as on the in-process bus"
        }
        "allow.auto.create.topics" => {
            "choreo creates missing topics itself with the configured partitions (`create_topics`)"
        }
        "enable.partition.eof" => "the consumer never reports the end of a partition",
        _ => "choreo sets it itself",
    }
}

fn same_value(key: &str, typed: &str, raw: &str) -> bool {
    if typed == raw {
        return true;
    }
    match key {
        "acks" => matches!(raw.trim(), "all" | "-1"),
        "enable.idempotence"
        | "enable.auto.commit"
        | "enable.auto.offset.store"
        | "enable.partition.eof"
        | "allow.auto.create.topics" => raw.trim().eq_ignore_ascii_case(typed),
        "security.protocol" | "sasl.mechanisms" => raw.trim().eq_ignore_ascii_case(typed),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SaslConfig, SaslMechanism, TlsConfig};

    fn get(c: &ClientConfig, k: &str) -> Option<String> {
        c.get(k).map(str::to_owned)
    }

    #[test]
    fn producer_and_consumer_get_choreos_guarantees() {
        let c = KafkaConfig::new("b:9092");
        let p = c.client_config(Role::Producer, None).unwrap();
        assert_eq!(get(&p, "enable.idempotence").as_deref(), Some("true"));
        assert_eq!(get(&p, "acks").as_deref(), Some("all"));
        assert_eq!(get(&p, "partitioner").as_deref(), Some("murmur2_random"));
        assert_eq!(get(&p, "bootstrap.servers").as_deref(), Some("b:9092"));
        let k = c
            .client_config(Role::Consumer, Some(("billing", StartFrom::Latest)))
            .unwrap();
        assert_eq!(get(&k, "group.id").as_deref(), Some("billing"));
        assert_eq!(get(&k, "enable.auto.commit").as_deref(), Some("true"));
        assert_eq!(get(&k, "auto.commit.interval.ms").as_deref(), Some("200"));
        assert_eq!(
            get(&k, "enable.auto.offset.store").as_deref(),
            Some("false")
        );
        assert_eq!(get(&k, "auto.offset.reset").as_deref(), Some("latest"));
        let prefixed = KafkaConfig {
            group_prefix: Some("staging.".into()),
            ..c
        };
        let k = prefixed
            .client_config(Role::Consumer, Some(("billing", StartFrom::Earliest)))
            .unwrap();
        assert_eq!(get(&k, "group.id").as_deref(), Some("staging.billing"));
    }

    #[test]
    fn a_contradicting_raw_option_names_both() {
        let c = KafkaConfig::new("b:9092")
            .session_timeout(Duration::from_secs(6))
            .set("session.timeout.ms", "10000");
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("'session.timeout.ms'"), "{err}");
        assert!(err.contains("`session_timeout`"), "{err}");
        assert!(err.contains("'6000'") && err.contains("'10000'"), "{err}");

        // An alias is the same option.
        let c = KafkaConfig::new("b:9092").set("metadata.broker.list", "other:9092");
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("'metadata.broker.list'") && err.contains("`brokers`"),
            "{err}"
        );

        // Agreeing is fine, and so is an option no typed field covers.
        let c = KafkaConfig::new("b:9092")
            .session_timeout(Duration::from_secs(6))
            .set("session.timeout.ms", "6000")
            .set("acks", "-1")
            .set("compression.type", "lz4");
        c.validate().unwrap();
        let p = c.client_config(Role::Producer, None).unwrap();
        assert_eq!(get(&p, "compression.type").as_deref(), Some("lz4"));
    }

    #[test]
    fn options_choreo_owns_are_refused_with_the_reason() {
        for (k, v, expect) in [
            (
                "enable.auto.commit",
                "false",
                "only once deliveries are settled",
            ),
            (
                "enable.auto.offset.store",
                "true",
                "only once deliveries are settled",
            ),
            ("acks", "1", "idempotent"),
            ("group.id", "x", "from each subscription"),
            ("partitioner", "consistent_random", "murmur2_random"),
            ("security.protocol", "ssl", "typed `tls`"),
        ] {
            let err = KafkaConfig::new("b:9092")
                .set(k, v)
                .validate()
                .unwrap_err()
                .to_string();
            assert!(err.contains(k) && err.contains(expect), "{k}: {err}");
        }
    }

    #[test]
    fn security_protocol_follows_tls_and_sasl() {
        let tls = KafkaConfig::new("b:9092").tls(TlsConfig {
            ca_location: Some("/etc/ca.pem".into()),
            ..TlsConfig::new()
        });
        let p = tls.client_config(Role::Producer, None).unwrap();
        assert_eq!(get(&p, "security.protocol").as_deref(), Some("ssl"));
        assert_eq!(get(&p, "ssl.ca.location").as_deref(), Some("/etc/ca.pem"));
        assert_eq!(
            get(&p, "ssl.endpoint.identification.algorithm").as_deref(),
            Some("https")
        );
        let sasl = KafkaConfig::new("b:9092").sasl(SaslConfig {
            mechanism: SaslMechanism::Plain,
            username: "u".into(),
            password: "p".into(),
        });
        let p = sasl.client_config(Role::Admin, None).unwrap();
        assert_eq!(
            get(&p, "security.protocol").as_deref(),
            Some("sasl_plaintext")
        );
    }
}
