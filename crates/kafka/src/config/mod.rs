//! Typed configuration of the Kafka backend, with a raw librdkafka escape
//! hatch. Here the typed configuration; `env.rs` reads it from
//! `CHOREO_KAFKA_*` variables, `librdkafka.rs` maps it to librdkafka's
//! options (and refuses raw options that contradict it).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::{Error, Result};

mod env;
mod librdkafka;

pub(crate) use librdkafka::{Role, canonical};

/// A secret (a password): kept out of `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Secret(secret.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret::new(s)
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret::new(s)
    }
}

/// TLS to the brokers. Setting it makes the connection `ssl` (or `sasl_ssl`
/// with [`SaslConfig`]). The paths are handed to librdkafka as they are.
///
/// librdkafka is built with the system's OpenSSL (rdkafka's `ssl` feature;
/// building needs its headers, Debian's `libssl-dev`). A failed handshake
/// (an untrusted certificate, a host name the certificate does not name)
/// makes the operation that needed the connection fail with
/// [`Error::Tls`](crate::Error::Tls).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsConfig {
    /// CA certificate(s) to verify the brokers with (`ssl.ca.location`).
    /// Default: the system's.
    pub ca_location: Option<PathBuf>,
    /// Client certificate for mutual TLS (`ssl.certificate.location`).
    pub certificate_location: Option<PathBuf>,
    /// Client private key for mutual TLS (`ssl.key.location`).
    pub key_location: Option<PathBuf>,
    /// Password of the private key (`ssl.key.password`).
    pub key_password: Option<Secret>,
    /// Whether the broker's host name is checked against its certificate
    /// (`ssl.endpoint.identification.algorithm` `https` or `none`). Default true.
    pub verify_hostname: bool,
}

impl TlsConfig {
    /// TLS with the system's CAs and host name verification.
    pub fn new() -> Self {
        TlsConfig {
            verify_hostname: true,
            ..TlsConfig::default()
        }
    }

    /// Sets the CA certificate(s) the brokers are verified with.
    pub fn ca_location(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_location = Some(path.into());
        self
    }

    /// Sets the client certificate for mutual TLS.
    pub fn certificate_location(mut self, path: impl Into<PathBuf>) -> Self {
        self.certificate_location = Some(path.into());
        self
    }

    /// Sets the client private key for mutual TLS.
    pub fn key_location(mut self, path: impl Into<PathBuf>) -> Self {
        self.key_location = Some(path.into());
        self
    }

    /// Sets the password of the private key.
    pub fn key_password(mut self, password: impl Into<Secret>) -> Self {
        self.key_password = Some(password.into());
        self
    }

    /// Sets whether the broker's host name is checked against its certificate.
    pub fn verify_hostname(mut self, verify: bool) -> Self {
        self.verify_hostname = verify;
        self
    }
}

/// SASL mechanisms choreo configures by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SaslMechanism {
    /// `PLAIN`: user name and password (use it with TLS).
    Plain,
    /// `SCRAM-SHA-256`.
    ScramSha256,
    /// `SCRAM-SHA-512`.
    ScramSha512,
}

impl SaslMechanism {
    /// The librdkafka name.
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }

    /// Parses a librdkafka mechanism name (case-insensitive).
    pub fn parse(s: &str) -> Option<SaslMechanism> {
        match s.trim().to_ascii_uppercase().as_str() {
            "PLAIN" => Some(SaslMechanism::Plain),
            "SCRAM-SHA-256" => Some(SaslMechanism::ScramSha256),
            "SCRAM-SHA-512" => Some(SaslMechanism::ScramSha512),
            _ => None,
        }
    }
}

/// SASL authentication. Setting it makes the connection `sasl_plaintext` (or
/// `sasl_ssl` with [`TlsConfig`]). Refused credentials make the operation
/// that needed the connection fail with
/// [`Error::Authentication`](crate::Error::Authentication), which names the
/// mechanism and the user, never the password.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SaslConfig {
    /// The mechanism (`sasl.mechanisms`).
    pub mechanism: SaslMechanism,
    /// User name (`sasl.username`).
    pub username: String,
    /// Password (`sasl.password`); never printed.
    pub password: Secret,
}

impl SaslConfig {
    /// Authentication as `username` with `password` by `mechanism`.
    pub fn new(
        mechanism: SaslMechanism,
        username: impl Into<String>,
        password: impl Into<Secret>,
    ) -> Self {
        SaslConfig {
            mechanism,
            username: username.into(),
            password: password.into(),
        }
    }
}

/// Configuration of a [`KafkaBus`](crate::KafkaBus): [`KafkaConfig::new`]
/// with the brokers, then a setter per field.
///
/// Every field documents its default and what it changes. Fields that are
/// `None` leave librdkafka's default in place. [`librdkafka`](Self::librdkafka)
/// passes any other librdkafka option through; an option that contradicts a
/// typed field, or one choreo sets itself for its guarantees, is refused with
/// both named.
///
/// What choreo always sets: on the producer `enable.idempotence=true`,
/// `acks=all`, `partitioner=murmur2_random` (the in-process bus places keys
/// the same way), `allow.auto.create.topics=false` (topics are created with
/// the configured partition count instead); on consumers `group.id` (from
/// the subscription), `enable.auto.commit=false` and
/// `enable.auto.offset.store=false` (offsets are committed only once
/// settled), `auto.offset.reset` (from the subscription's [`StartFrom`](choreo_core::StartFrom)).
///
/// `Debug` never prints passwords, nor raw options whose name looks secret.
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port…]` (`bootstrap.servers`). Required.
    pub brokers: String,
    /// Client id reported to the brokers (`client.id`). Default `choreo`.
    pub client_id: Option<String>,
    /// Prepended to every consumer group name, so that several environments
    /// can share one cluster. Default none.
    pub group_prefix: Option<String>,
    /// TLS to the brokers. Default none (plaintext).
    pub tls: Option<TlsConfig>,
    /// SASL authentication. Default none.
    pub sasl: Option<SaslConfig>,
    /// Consumer group session timeout (`session.timeout.ms`): how long a
    /// member that stopped heart-beating keeps its partitions. Default: librdkafka's (45 s).
    pub session_timeout: Option<Duration>,
    /// Heartbeat interval (`heartbeat.interval.ms`). Default: a third of
    /// `session_timeout` when that is set and below 9 s, else librdkafka's (3 s).
    pub heartbeat_interval: Option<Duration>,
    /// Network request timeout (`socket.timeout.ms`). Default: librdkafka's (60 s).
    pub socket_timeout: Option<Duration>,
    /// How long the producer retries a publish before failing it
    /// (`message.timeout.ms`). Default: librdkafka's (300 s).
    pub delivery_timeout: Option<Duration>,
    /// How long the producer waits to batch records (`linger.ms`). Default: librdkafka's (5 ms).
    pub linger: Option<Duration>,
    /// How long a subscription waits for its first partition assignment
    /// before failing. Default 60 s.
    pub join_timeout: Duration,
    /// How often a consumer commits the offsets of settled deliveries. Each
    /// commit covers every settled delivery, so this bounds how much is
    /// delivered again after a crash, not what is committed. Default 200 ms.
    pub commit_interval: Duration,
    /// Records a consumer keeps per partition between the committed offset
    /// and the newest fetched record (waiting, in flight or settled behind an
    /// unsettled one). At this bound the partition is paused until the
    /// window halves. Bounded so a stuck event cannot make the consumer buffer
    /// without limit. Default 2000.
    pub max_window_per_partition: usize,
    /// How often consumer lag is refreshed (`statistics.interval.ms`); `None`
    /// switches the lag gauge off. Default 5 s.
    pub lag_interval: Option<Duration>,
    /// Whether missing topics are created (with the admin API, falling back
    /// to the broker's auto-creation). Default true.
    pub create_topics: bool,
    /// Partitions of a topic choreo creates. Default 4, like the in-process bus.
    pub partitions: u32,
    /// Partition counts of named topics, overriding `partitions`.
    pub topic_partitions: HashMap<String, u32>,
    /// Replication factor of a topic choreo creates. Default: the broker's
    /// (`default.replication.factor`).
    pub replication_factor: Option<i16>,
    /// Timeout of metadata lookups and topic creation. Default 10 s.
    pub admin_timeout: Duration,
    /// Any other librdkafka option, passed through to every client.
    pub librdkafka: BTreeMap<String, String>,
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let raw: BTreeMap<&str, &str> = self
            .librdkafka
            .iter()
            .map(|(k, v)| {
                let v = if is_secret_key(k) {
                    "<redacted>"
                } else {
                    v.as_str()
                };
                (k.as_str(), v)
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("client_id", &self.client_id)
            .field("group_prefix", &self.group_prefix)
            .field("tls", &self.tls)
            .field("sasl", &self.sasl)
            .field("session_timeout", &self.session_timeout)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("socket_timeout", &self.socket_timeout)
            .field("delivery_timeout", &self.delivery_timeout)
            .field("linger", &self.linger)
            .field("join_timeout", &self.join_timeout)
            .field("commit_interval", &self.commit_interval)
            .field("max_window_per_partition", &self.max_window_per_partition)
            .field("lag_interval", &self.lag_interval)
            .field("create_topics", &self.create_topics)
            .field("partitions", &self.partitions)
            .field("topic_partitions", &self.topic_partitions)
            .field("replication_factor", &self.replication_factor)
            .field("admin_timeout", &self.admin_timeout)
            .field("librdkafka", &raw)
            .finish()
    }
}

/// Whether a raw option's value must not be printed (nor logged, nor put in
/// an error): passwords, pass phrases, client secrets, tokens, PEM keys.
pub(crate) fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("password")
        || k.contains("passphrase")
        || k.contains("secret")
        || k.contains("token")
        || k.contains("credential")
        || k.contains("private")
        || k.contains("sasl.oauthbearer.config")
        || k.contains(".pem")
        || k.contains("ssl_key")
        || k.contains("ssl.key")
}

impl KafkaConfig {
    /// The defaults, with `brokers` as bootstrap servers.
    pub fn new(brokers: impl Into<String>) -> Self {
        KafkaConfig {
            brokers: brokers.into(),
            client_id: None,
            group_prefix: None,
            tls: None,
            sasl: None,
            session_timeout: None,
            heartbeat_interval: None,
            socket_timeout: None,
            delivery_timeout: None,
            linger: None,
            join_timeout: Duration::from_secs(60),
            commit_interval: Duration::from_millis(200),
            max_window_per_partition: 2000,
            lag_interval: Some(Duration::from_secs(5)),
            create_topics: true,
            partitions: 4,
            topic_partitions: HashMap::new(),
            replication_factor: None,
            admin_timeout: Duration::from_secs(10),
            librdkafka: BTreeMap::new(),
        }
    }

    /// Sets the bootstrap servers.
    pub fn brokers(mut self, brokers: impl Into<String>) -> Self {
        self.brokers = brokers.into();
        self
    }

    /// Sets the client id.
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = Some(id.into());
        self
    }

    /// Sets the prefix of every consumer group name.
    pub fn group_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.group_prefix = Some(prefix.into());
        self
    }

    /// Sets TLS.
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets SASL authentication.
    pub fn sasl(mut self, sasl: SaslConfig) -> Self {
        self.sasl = Some(sasl);
        self
    }

    /// Sets the consumer group session timeout.
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = Some(timeout);
        self
    }

    /// Sets the heartbeat interval.
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = Some(interval);
        self
    }

    /// Sets the network request timeout.
    pub fn socket_timeout(mut self, timeout: Duration) -> Self {
        self.socket_timeout = Some(timeout);
        self
    }

    /// Sets how long the producer retries a publish before failing it.
    pub fn delivery_timeout(mut self, timeout: Duration) -> Self {
        self.delivery_timeout = Some(timeout);
        self
    }

    /// Sets how long the producer waits to batch records.
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = Some(linger);
        self
    }

    /// Sets how long a subscription waits for its first assignment.
    pub fn join_timeout(mut self, timeout: Duration) -> Self {
        self.join_timeout = timeout;
        self
    }

    /// Sets how often a consumer commits the offsets of settled deliveries.
    pub fn commit_interval(mut self, interval: Duration) -> Self {
        self.commit_interval = interval;
        self
    }

    /// Sets how many records a consumer keeps per partition.
    pub fn max_window_per_partition(mut self, records: usize) -> Self {
        self.max_window_per_partition = records;
        self
    }

    /// Sets how often consumer lag is refreshed; `None` switches it off.
    pub fn lag_interval(mut self, interval: impl Into<Option<Duration>>) -> Self {
        self.lag_interval = interval.into();
        self
    }

    /// Sets whether missing topics are created.
    pub fn create_topics(mut self, create: bool) -> Self {
        self.create_topics = create;
        self
    }

    /// Sets the partitions of topics choreo creates.
    pub fn partitions(mut self, partitions: u32) -> Self {
        self.partitions = partitions;
        self
    }

    /// Sets the partitions of `topic` when choreo creates it, over `partitions`.
    pub fn topic_partitions(mut self, topic: impl Into<String>, partitions: u32) -> Self {
        self.topic_partitions.insert(topic.into(), partitions);
        self
    }

    /// Sets the replication factor of topics choreo creates.
    pub fn replication_factor(mut self, factor: i16) -> Self {
        self.replication_factor = Some(factor);
        self
    }

    /// Sets the timeout of metadata lookups and topic creation.
    pub fn admin_timeout(mut self, timeout: Duration) -> Self {
        self.admin_timeout = timeout;
        self
    }

    /// Sets a raw librdkafka option (the `librdkafka` field).
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.librdkafka.insert(key.into(), value.into());
        self
    }

    /// The partitions a topic gets when choreo creates it.
    pub fn partitions_of(&self, topic: &str) -> u32 {
        self.topic_partitions
            .get(topic)
            .copied()
            .unwrap_or(self.partitions)
    }

    /// The consumer group id used for a subscription's `group`.
    pub fn group_id(&self, group: &str) -> String {
        match &self.group_prefix {
            Some(p) => format!("{p}{group}"),
            None => group.to_owned(),
        }
    }
    /// Checks the typed fields and that no raw option contradicts them.
    pub fn validate(&self) -> Result<()> {
        if self.brokers.trim().is_empty() {
            return Err(Error::Invalid {
                field: "brokers",
                reason: "is empty: set the bootstrap servers, e.g. 'localhost:9092'".into(),
            });
        }
        if self.partitions == 0 || self.topic_partitions.values().any(|&p| p == 0) {
            return Err(Error::Invalid {
                field: "partitions",
                reason: "a topic needs at least one partition".into(),
            });
        }
        if self.max_window_per_partition == 0 {
            return Err(Error::Invalid {
                field: "max_window_per_partition",
                reason: "must be at least 1".into(),
            });
        }
        for role in [Role::Producer, Role::Consumer, Role::Admin] {
            self.client_config(role, None)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(c: &rdkafka::config::ClientConfig, k: &str) -> Option<String> {
        c.get(k).map(str::to_owned)
    }

    #[test]
    fn secrets_never_reach_debug_or_errors() {
        let c = KafkaConfig::new("b:9092")
            .tls(TlsConfig {
                key_password: Some(Secret::new("tls-hunter2")),
                ..TlsConfig::new()
            })
            .sasl(SaslConfig {
                mechanism: SaslMechanism::ScramSha512,
                username: "svc".into(),
                password: Secret::new("sasl-hunter2"),
            })
            .set("sasl.oauthbearer.client.secret", "oauth-hunter2");
        let debug = format!("{c:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("svc"));
        let k = c.client_config(Role::Consumer, None).unwrap();
        assert_eq!(get(&k, "security.protocol").as_deref(), Some("sasl_ssl"));
        assert_eq!(get(&k, "sasl.mechanisms").as_deref(), Some("SCRAM-SHA-512"));
        assert_eq!(get(&k, "sasl.password").as_deref(), Some("sasl-hunter2"));
        assert_eq!(get(&k, "ssl.key.password").as_deref(), Some("tls-hunter2"));

        let err = c
            .clone()
            .set("sasl.password", "other-hunter2")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains("`sasl.password`"), "{err}");
    }
}
