//! The error type of `choreo-postgres`.

/// Errors from connecting, migrating, transactions and the relay.
///
/// Connection URLs in messages have their password replaced by `***`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The connection URL could not be read.
    #[error(
        "invalid PostgreSQL URL '{url}': {reason}; write it as postgres://USER:PASSWORD@HOST:PORT/DATABASE"
    )]
    Url {
        /// The URL, password redacted.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The database could not be reached (or refused us) at start.
    #[error(
        "cannot connect to PostgreSQL at {url}: {reason}; check that the server runs and accepts connections from this host, and that the URL's user, password and database are right"
    )]
    Connect {
        /// The URL, password redacted.
        url: String,
        /// What the client reported.
        reason: String,
    },
    /// Invalid configuration (a table name, a bound).
    #[error("invalid choreo-postgres configuration: {0}")]
    Config(String),
    /// Bringing the schema up to date failed.
    #[error("migrating {tables} at {url} to version {version} ({name}) failed: {reason}")]
    Migrate {
        /// The tables, e.g. `choreo_outbox, choreo_inbox, …`.
        tables: String,
        /// The URL, password redacted.
        url: String,
        /// The migration's version.
        version: u32,
        /// The migration's name.
        name: &'static str,
        /// What the database said.
        reason: String,
    },
    /// The schema is newer than this version of the crate knows.
    #[error(
        "the outbox schema at {url} ({migrations}) is at version {found}, newer than the {known} this version of choreo-postgres knows: upgrade choreo-postgres in this service"
    )]
    SchemaTooNew {
        /// The URL, password redacted.
        url: String,
        /// The migrations table.
        migrations: String,
        /// The version found.
        found: i32,
        /// The newest version this crate ships.
        known: u32,
    },
    /// Migrations are off and the schema is missing or behind.
    #[error(
        "the outbox schema at {url} ({migrations}) is at version {found}, and this service needs {needed}: apply the SQL of `choreo_postgres::migrations` (docs/postgres.md), or leave PgConfig::migrate on"
    )]
    SchemaBehind {
        /// The URL, password redacted.
        url: String,
        /// The migrations table.
        migrations: String,
        /// The version found (0: none).
        found: i32,
        /// The version needed.
        needed: u32,
    },
    /// No connection could be had from the pool.
    #[error("no PostgreSQL connection to {url}: {reason}")]
    Pool {
        /// The URL, password redacted.
        url: String,
        /// Why.
        reason: String,
    },
    /// A statement failed.
    #[error("{what}: {reason}")]
    Db {
        /// What was being done.
        what: String,
        /// What the database or the client said.
        reason: String,
        /// The client's error (its SQLSTATE, when the server sent one).
        error: tokio_postgres::Error,
    },
    /// [`PgStore::begin`](crate::PgStore::begin) on a context that already
    /// has a transaction (or another emission sink) open.
    #[error(
        "a transaction is already open for this handling of '{event_id}': commit or drop it before beginning another"
    )]
    AlreadyOpen {
        /// The event being handled.
        event_id: String,
    },
    /// An event for the outbox could not be built (encoding).
    #[error("cannot build the event for the outbox: {source}")]
    Event {
        /// The codec's error.
        #[source]
        source: choreo_bus::Error,
    },
}

impl Error {
    /// The SQLSTATE the server returned, for [`Error::Db`].
    pub fn sqlstate(&self) -> Option<&tokio_postgres::error::SqlState> {
        match self {
            Error::Db { error, .. } => error.code(),
            _ => None,
        }
    }

    pub(crate) fn db(what: impl Into<String>, error: tokio_postgres::Error) -> Self {
        Error::Db {
            what: what.into(),
            reason: describe(&error),
            error,
        }
    }
}

/// A client error in words: the server's message and SQLSTATE when it sent
/// one, else the client's own (connection closed, refused, …) with its cause.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{} ({})", db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            s.push_str(": ");
            s.push_str(detail);
        }
        return s;
    }
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
