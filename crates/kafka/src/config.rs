//! Typed configuration of the Kafka backend, with a raw librdkafka escape hatch.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use choreo_core::StartFrom;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};

use crate::{Error, Result};

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
pub struct SaslConfig {
    /// The mechanism (`sasl.mechanisms`).
    pub mechanism: SaslMechanism,
    /// User name (`sasl.username`).
    pub username: String,
    /// Password (`sasl.password`); never printed.
    pub password: Secret,
}

/// Configuration of a [`KafkaBus`](crate::KafkaBus).
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
/// settled), `auto.offset.reset` (from the subscription's [`StartFrom`]).
///
/// `Debug` never prints passwords, nor raw options whose name looks secret.
#[derive(Clone, PartialEq)]
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

    /// Sets a raw librdkafka option.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.librdkafka.insert(key.into(), value.into());
        self
    }

    /// Sets the client id.
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = Some(id.into());
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

    /// Sets the partitions of topics choreo creates.
    pub fn partitions(mut self, partitions: u32) -> Self {
        self.partitions = partitions;
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
        if tls_on
            || ca.is_some()
            || cert.is_some()
            || key.is_some()
            || key_password.is_some()
            || verify.is_some()
        {
            c.tls = Some(TlsConfig {
                ca_location: ca.map(PathBuf::from),
                certificate_location: cert.map(PathBuf::from),
                key_location: key.map(PathBuf::from),
                key_password: key_password.map(Secret::new),
                verify_hostname: match verify {
                    Some(v) => parse_bool("CHOREO_KAFKA_TLS_VERIFY_HOSTNAME", &v)?,
                    None => true,
                },
            });
        }
        let mechanism = take("CHOREO_KAFKA_SASL_MECHANISM");
        let username = take("CHOREO_KAFKA_SASL_USERNAME");
        let password = take("CHOREO_KAFKA_SASL_PASSWORD");
        match (mechanism, username, password) {
            (None, None, None) => {}
            (Some(m), Some(u), Some(p)) => {
                let mechanism = SaslMechanism::parse(&m).ok_or_else(|| Error::Env {
                    var: "CHOREO_KAFKA_SASL_MECHANISM".into(),
                    reason: format!(
                        "'{m}' is not a mechanism choreo configures: use PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (others through CHOREO_KAFKA_OPTIONS)"
                    ),
                })?;
                c.sasl = Some(SaslConfig {
                    mechanism,
                    username: u,
                    password: Secret::new(p),
                });
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
                return Err(Error::Env {
                    var: missing.join(", "),
                    reason: "SASL needs the mechanism, the user name and the password: set the missing variables".into(),
                });
            }
        }
        if let Some(options) = take("CHOREO_KAFKA_OPTIONS") {
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
                c.librdkafka
                    .insert(k.trim().to_owned(), v.trim().to_owned());
            }
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

    /// The librdkafka configuration of one client. `consumer` gives the
    /// group id and start position of a consumer.
    pub(crate) fn client_config(
        &self,
        role: Role,
        consumer: Option<(&str, StartFrom)>,
    ) -> Result<ClientConfig> {
        // (librdkafka key, value, typed field or None when choreo owns it)
        let mut typed: Vec<(&'static str, String, Option<&'static str>, bool)> = Vec::new();
        let mut add = |key: &'static str, value: String, field: Option<&'static str>| {
            typed.push((key, value, field, is_secret_key(key)));
        };
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
        match role {
            Role::Producer => {
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
            Role::Consumer => {
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
            Role::Admin => {}
        }
        let mut config = ClientConfig::new();
        config.set_log_level(librdkafka_log_level());
        for (key, value, _, _) in &typed {
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
            if let Some((_, value, field, secret)) = typed.iter().find(|(k, ..)| *k == key) {
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

    fn get(c: &ClientConfig, k: &str) -> Option<String> {
        c.get(k).map(str::to_owned)
    }

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
