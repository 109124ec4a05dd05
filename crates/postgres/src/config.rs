//! Configuration: where the database is, the pool, and the names of the tables.

use std::fmt;
use std::time::Duration;

use crate::metrics::PgMetrics;
use crate::{Error, Result};

/// How a [`PgStore`](crate::PgStore) connects, and what it calls its tables.
///
/// Built with [`PgConfig::new`] and one setter per option; `Debug` and every
/// error print the URL with its password replaced by `***`.
#[derive(Clone)]
pub struct PgConfig {
    url: String,
    pool_size: usize,
    connect_timeout: Duration,
    application_name: String,
    tables: Tables,
    lanes: u32,
    migrate: bool,
    metrics: Option<PgMetrics>,
}

impl fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConfig")
            .field("url", &redact(&self.url))
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("application_name", &self.application_name)
            .field("tables", &self.tables)
            .field("lanes", &self.lanes)
            .field("migrate", &self.migrate)
            .finish()
    }
}

impl PgConfig {
    /// Connects to `url`: `postgres://USER:PASSWORD@HOST:PORT/DATABASE`
    /// (libpq's URL and `key=value` forms are both accepted, with their
    /// options such as `sslmode=disable`; TLS is not built in, so use a
    /// local or tunnelled connection).
    ///
    /// Defaults: 16 pooled connections, a 10 s connect timeout, the
    /// application name `choreo`, the tables of [`Tables::default`], 32
    /// lanes, migrations applied at connect, metrics on Prometheus' default
    /// registry.
    pub fn new(url: impl Into<String>) -> Self {
        PgConfig {
            url: url.into(),
            pool_size: 16,
            connect_timeout: Duration::from_secs(10),
            application_name: "choreo".into(),
            tables: Tables::default(),
            lanes: 32,
            migrate: true,
            metrics: None,
        }
    }

    /// `CHOREO_POSTGRES_URL` from the environment.
    pub fn from_env() -> Result<Self> {
        match std::env::var("CHOREO_POSTGRES_URL") {
            Ok(url) if !url.trim().is_empty() => Ok(PgConfig::new(url)),
            _ => Err(Error::Config(
                "CHOREO_POSTGRES_URL is not set: set it to postgres://USER:PASSWORD@HOST:PORT/DATABASE"
                    .into(),
            )),
        }
    }

    /// Connections the pool keeps at most (handlers, the relay and the
    /// inbox share them). Default 16.
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n.max(1);
        self
    }

    /// How long connecting may take before it fails. Default 10 s.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// The `application_name` the connections report (`pg_stat_activity`).
    /// Default `choreo`.
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = name.into();
        self
    }

    /// The table names. Default [`Tables::default`] (`choreo_outbox`, …).
    pub fn tables(mut self, tables: Tables) -> Self {
        self.tables = tables;
        self
    }

    /// Lanes of the outbox (see [`Relay`](crate::Relay)): events of one key
    /// share a lane, and each lane is relayed by one relay at a time, in
    /// order. Only read when the schema is created; changing it later takes
    /// the manual step in docs/postgres.md. Default 32.
    pub fn lanes(mut self, lanes: u32) -> Self {
        self.lanes = lanes;
        self
    }

    /// Whether connecting applies the crate's migrations (default true).
    /// Off, connecting only checks that the schema is at the version this
    /// crate needs, for databases whose schema is applied by a migration
    /// tool from [`migrations`](crate::migrations).
    pub fn migrate(mut self, on: bool) -> Self {
        self.migrate = on;
        self
    }

    /// The metric families (default: on Prometheus' default registry).
    pub fn metrics(mut self, metrics: PgMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }

    pub(crate) fn get_tables(&self) -> &Tables {
        &self.tables
    }

    pub(crate) fn get_lanes(&self) -> u32 {
        self.lanes
    }

    pub(crate) fn get_migrate(&self) -> bool {
        self.migrate
    }

    pub(crate) fn get_metrics(&self) -> PgMetrics {
        self.metrics
            .clone()
            .unwrap_or_else(|| PgMetrics::global().clone())
    }

    /// The client configuration, with the options choreo sets.
    pub(crate) fn client_config(&self) -> Result<tokio_postgres::Config> {
        let mut c: tokio_postgres::Config =
            self.url
                .parse()
                .map_err(|e: tokio_postgres::Error| Error::Url {
                    url: self.redacted_url(),
                    reason: crate::error::describe(&e),
                })?;
        c.connect_timeout(self.connect_timeout);
        if c.get_application_name().is_none() {
            c.application_name(&self.application_name);
        }
        // A peer that vanished without closing (a cut network) is noticed
        // within about a minute rather than the kernel's two hours.
        c.keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .keepalives_interval(Duration::from_secs(10))
            .keepalives_retries(3);
        Ok(c)
    }

    pub(crate) fn get_pool_size(&self) -> usize {
        self.pool_size
    }

    pub(crate) fn get_connect_timeout(&self) -> Duration {
        self.connect_timeout
    }
}

/// The names of the tables the crate creates and uses, so several services
/// can share one database (each with its own prefix) and a schema can hold
/// them. Names are plain SQL identifiers (letters, digits, `_`, starting with
/// a letter or `_`, at most 48 characters), written quoted.
///
/// | table | default | holds |
/// |---|---|---|
/// | outbox | `choreo_outbox` | events committed by handlers, until relayed and pruned |
/// | outbox dead | `choreo_outbox_dead` | outbox rows that no longer decode or that the bus refused, with the reason |
/// | lanes | `choreo_outbox_lanes` | one row per lane, locked by the relay that publishes it |
/// | inbox | `choreo_inbox` | (service, event id) of every event handled, until pruned |
/// | migrations | `choreo_migrations` | the schema versions applied |
///
/// The outbox's `NOTIFY` channel is the outbox table's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tables {
    schema: Option<String>,
    outbox: String,
    outbox_dead: String,
    lanes: String,
    inbox: String,
    migrations: String,
}

impl Default for Tables {
    fn default() -> Self {
        Tables::prefixed("choreo_")
    }
}

impl Tables {
    /// Every table named `<prefix>outbox`, `<prefix>outbox_dead`,
    /// `<prefix>outbox_lanes`, `<prefix>inbox`, `<prefix>migrations`.
    pub fn prefixed(prefix: &str) -> Self {
        Tables {
            schema: None,
            outbox: format!("{prefix}outbox"),
            outbox_dead: format!("{prefix}outbox_dead"),
            lanes: format!("{prefix}outbox_lanes"),
            inbox: format!("{prefix}inbox"),
            migrations: format!("{prefix}migrations"),
        }
    }

    /// Puts the tables in `schema` (which must exist); default: the
    /// connection's `search_path`.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// Names the outbox table.
    pub fn outbox(mut self, name: impl Into<String>) -> Self {
        self.outbox = name.into();
        self
    }

    /// Names the table of rows moved aside.
    pub fn outbox_dead(mut self, name: impl Into<String>) -> Self {
        self.outbox_dead = name.into();
        self
    }

    /// Names the lanes table.
    pub fn lanes(mut self, name: impl Into<String>) -> Self {
        self.lanes = name.into();
        self
    }

    /// Names the inbox table.
    pub fn inbox(mut self, name: impl Into<String>) -> Self {
        self.inbox = name.into();
        self
    }

    /// Names the migrations table.
    pub fn migrations(mut self, name: impl Into<String>) -> Self {
        self.migrations = name.into();
        self
    }

    /// The outbox table's bare name (also its `NOTIFY` channel and the
    /// `outbox` label of the metrics).
    pub fn outbox_name(&self) -> &str {
        &self.outbox
    }

    /// Checks every name.
    pub(crate) fn validate(&self) -> Result<()> {
        let names = [
            ("schema", self.schema.as_deref()),
            ("outbox", Some(self.outbox.as_str())),
            ("outbox_dead", Some(self.outbox_dead.as_str())),
            ("lanes", Some(self.lanes.as_str())),
            ("inbox", Some(self.inbox.as_str())),
            ("migrations", Some(self.migrations.as_str())),
        ];
        for (what, name) in names {
            let Some(name) = name else { continue };
            let ok = !name.is_empty()
                && name.len() <= 48
                && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err(Error::Config(format!(
                    "table name {what} = '{name}' is not a plain SQL identifier: use letters, digits and '_', start with a letter or '_', at most 48 characters"
                )));
            }
        }
        let mut all = vec![
            &self.outbox,
            &self.outbox_dead,
            &self.lanes,
            &self.inbox,
            &self.migrations,
        ];
        all.sort();
        all.dedup();
        if all.len() != 5 {
            return Err(Error::Config(format!(
                "two tables share a name in {self}: give each its own"
            )));
        }
        Ok(())
    }

    /// `"schema"."name"` or `"name"`.
    pub(crate) fn qualified(&self, name: &str) -> String {
        match &self.schema {
            Some(s) => format!("\"{s}\".\"{name}\""),
            None => format!("\"{name}\""),
        }
    }

    pub(crate) fn q_outbox(&self) -> String {
        self.qualified(&self.outbox)
    }
    pub(crate) fn q_outbox_dead(&self) -> String {
        self.qualified(&self.outbox_dead)
    }
    pub(crate) fn q_lanes(&self) -> String {
        self.qualified(&self.lanes)
    }
    pub(crate) fn q_inbox(&self) -> String {
        self.qualified(&self.inbox)
    }
    pub(crate) fn q_migrations(&self) -> String {
        self.qualified(&self.migrations)
    }

    /// The placeholders of the migrations' SQL and their values.
    pub(crate) fn placeholders(&self, lanes: u32) -> Vec<(&'static str, String)> {
        let bare = |n: &str| format!("\"{n}\"");
        vec![
            ("{outbox}", self.q_outbox()),
            ("{outbox_dead}", self.q_outbox_dead()),
            ("{lanes}", self.q_lanes()),
            ("{inbox}", self.q_inbox()),
            (
                "{outbox_pending_index}",
                bare(&format!("{}_pending", self.outbox)),
            ),
            (
                "{outbox_sent_index}",
                bare(&format!("{}_sent", self.outbox)),
            ),
            (
                "{inbox_handled_index}",
                bare(&format!("{}_handled", self.inbox)),
            ),
            (
                "{notify_function}",
                self.qualified(&format!("{}_notify", self.outbox)),
            ),
            ("{notify_trigger}", bare(&format!("{}_notify", self.outbox))),
            ("{channel}", self.outbox.clone()),
            ("{lane_count}", lanes.to_string()),
        ]
    }
}

impl fmt::Display for Tables {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = self
            .schema
            .as_ref()
            .map(|s| format!("{s}."))
            .unwrap_or_default();
        write!(
            f,
            "{prefix}{}, {prefix}{}, {prefix}{}, {prefix}{}, {prefix}{}",
            self.outbox, self.outbox_dead, self.lanes, self.inbox, self.migrations
        )
    }
}

/// `url` with any password replaced by `***`: the user-info password of a
/// `postgres://` URL, a `password=` query parameter, and `password=` in
/// libpq's `key=value` form. For messages and logs.
pub fn redact(url: &str) -> String {
    let lower = url.to_ascii_lowercase();
    if let Some(scheme_end) = ["postgres://", "postgresql://"]
        .iter()
        .find(|s| lower.starts_with(*s))
        .map(|s| s.len())
    {
        let rest = &url[scheme_end..];
        let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let mut out = url[..scheme_end].to_owned();
        match rest[..auth_end].rfind('@') {
            Some(at) => {
                let userinfo = &rest[..at];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..colon]);
                        out.push_str(":***");
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&rest[at..auth_end]);
            }
            None => out.push_str(&rest[..auth_end]),
        }
        let tail = &rest[auth_end..];
        match tail.find('?') {
            Some(q) => {
                out.push_str(&tail[..=q]);
                let params: Vec<String> = tail[q + 1..]
                    .split('&')
                    .map(|p| match p.split_once('=') {
                        Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                        _ => p.to_owned(),
                    })
                    .collect();
                out.push_str(&params.join("&"));
            }
            None => out.push_str(tail),
        }
        return out;
    }
    // key=value form: values may be quoted with '…' and contain \' escapes.
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    while let Some(eq) = rest.find('=') {
        let key_start = rest[..eq]
            .trim_end()
            .rfind(char::is_whitespace)
            .map_or(0, |i| i + 1);
        let key = rest[key_start..eq].trim();
        out.push_str(&rest[..=eq]);
        let after = &rest[eq + 1..];
        let lead = after.len() - after.trim_start().len();
        let value = &after[lead..];
        let value_len = if value.starts_with('\'') {
            let mut end = value.len();
            let mut escaped = false;
            for (i, c) in value.char_indices().skip(1) {
                match c {
                    '\\' if !escaped => escaped = true,
                    '\'' if !escaped => {
                        end = i + 1;
                        break;
                    }
                    _ => escaped = false,
                }
            }
            end
        } else {
            value.find(char::is_whitespace).unwrap_or(value.len())
        };
        out.push_str(&after[..lead]);
        if key.eq_ignore_ascii_case("password") {
            out.push_str("***");
        } else {
            out.push_str(&value[..value_len]);
        }
        rest = &value[value_len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_in_every_form() {
        let cases = [
            (
                "postgres://orders:s3cr%40t@db.internal:5432/orders",
                "postgres://orders:***@db.internal:5432/orders",
            ),
            (
                "postgresql://u:p@h/db?sslmode=disable",
                "postgresql://u:***@h/db?sslmode=disable",
            ),
            ("postgres://u@h:5/db", "postgres://u@h:5/db"),
            (
                "postgres://h/db?user=u&password=hunter2&x=1",
                "postgres://h/db?user=u&password=***&x=1",
            ),
            (
                "host=h user=u password=hunter2 dbname=d",
                "host=h user=u password=*** dbname=d",
            ),
            (
                "host=h password='a b\\' c' dbname=d",
                "host=h password=*** dbname=d",
            ),
            ("password = x host=h", "password = *** host=h"),
        ];
        for (url, want) in cases {
            assert_eq!(redact(url), want, "{url}");
        }
    }

    #[test]
    fn debug_never_prints_the_password() {
        let c = PgConfig::new("postgres://u:hunter2@localhost/db");
        let text = format!("{c:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("u:***@localhost"), "{text}");
    }

    #[test]
    fn table_names_must_be_plain_identifiers_and_distinct() {
        assert!(Tables::default().validate().is_ok());
        assert!(
            Tables::prefixed("payment_")
                .schema("svc")
                .validate()
                .is_ok()
        );
        let e = Tables::default()
            .outbox("x; DROP TABLE y")
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("outbox = 'x; DROP TABLE y'"), "{e}");
        let e = Tables::default()
            .inbox("choreo_outbox")
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("share a name"), "{e}");
        assert!(Tables::default().schema("9x").validate().is_err());
    }
}
