//! The schema: versioned migrations shipped with the crate, and applying them.

use tokio_postgres::Client;

use crate::config::{PgConfig, Tables};
use crate::error::describe;
use crate::{Error, Result};

/// One schema version: SQL with placeholders for the table names (see
/// [`Migration::render`]).
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// The version it brings the schema to, from 1.
    pub version: u32,
    /// What it does, in a few words.
    pub name: &'static str,
    /// The SQL, with `{outbox}`-style placeholders.
    pub sql: &'static str,
}

impl Migration {
    /// The SQL with the placeholders replaced by `tables`' names and `lanes`.
    pub fn render(&self, tables: &Tables, lanes: u32) -> String {
        let mut sql = self.sql.to_owned();
        for (placeholder, value) in tables.placeholders(lanes) {
            sql = sql.replace(placeholder, &value);
        }
        sql
    }
}

/// Every migration the crate ships, oldest first. Connecting applies those
/// not yet applied ([`PgConfig::migrate`]), each recorded in the
/// migrations table, all under one advisory lock so that services starting
/// together apply each once.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "outbox and inbox",
    sql: include_str!("../migrations/0001_outbox_and_inbox.sql"),
}];

/// The migrations rendered for `tables` and `lanes`, for a migration tool of
/// your own: `(version, name, sql)`. Record the version in the migrations
/// table (`INSERT INTO <migrations> (version, name) VALUES (…)`, the table as
/// [`migrations_table_sql`] creates it) so that connecting with
/// `PgConfig::migrate(false)` finds it.
pub fn migrations(tables: &Tables, lanes: u32) -> Vec<(u32, &'static str, String)> {
    MIGRATIONS
        .iter()
        .map(|m| (m.version, m.name, m.render(tables, lanes)))
        .collect()
}

/// The SQL that creates the migrations table (if it does not exist).
pub fn migrations_table_sql(tables: &Tables) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
        tables.q_migrations()
    )
}

/// The newest version the crate ships.
pub(crate) fn latest() -> u32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Applies the migrations not yet applied, in one transaction under an
/// advisory lock named after the migrations table.
pub(crate) async fn migrate(client: &mut Client, config: &PgConfig) -> Result<()> {
    let tables = config.get_tables();
    let url = config.redacted_url();
    let fail = |version: u32, name: &'static str, e: tokio_postgres::Error| Error::Migrate {
        tables: tables.to_string(),
        url: url.clone(),
        version,
        name,
        reason: describe(&e),
    };
    let first = MIGRATIONS[0];
    let tx = client
        .transaction()
        .await
        .map_err(|e| fail(first.version, first.name, e))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext($1))",
        &[&format!(
            "choreo-postgres migrations {}",
            tables.q_migrations()
        )],
    )
    .await
    .map_err(|e| fail(first.version, first.name, e))?;
    tx.batch_execute(&migrations_table_sql(tables))
        .await
        .map_err(|e| fail(first.version, first.name, e))?;
    let current = current_version(&tx, tables)
        .await
        .map_err(|e| fail(first.version, first.name, e))?;
    if current > latest() as i32 {
        return Err(Error::SchemaTooNew {
            url,
            migrations: tables.q_migrations(),
            found: current,
            known: latest(),
        });
    }
    for m in MIGRATIONS.iter().filter(|m| m.version as i32 > current) {
        tx.batch_execute(&m.render(tables, config.get_lanes()))
            .await
            .map_err(|e| fail(m.version, m.name, e))?;
        tx.execute(
            &format!(
                "INSERT INTO {} (version, name) VALUES ($1, $2)",
                tables.q_migrations()
            ),
            &[&(m.version as i32), &m.name],
        )
        .await
        .map_err(|e| fail(m.version, m.name, e))?;
        tracing::info!(version = m.version, name = m.name, tables = %tables, "choreo-postgres: schema migrated");
    }
    tx.commit().await.map_err(|e| fail(latest(), "commit", e))?;
    Ok(())
}

/// Checks, without changing anything, that the schema is at the version
/// this crate needs.
pub(crate) async fn check(client: &Client, config: &PgConfig) -> Result<()> {
    let tables = config.get_tables();
    let exists: bool = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&tables.q_migrations()],
        )
        .await
        .map_err(|e| Error::db("checking the outbox schema", e))?
        .get(0);
    let found = if exists {
        current_version(client, tables)
            .await
            .map_err(|e| Error::db("checking the outbox schema", e))?
    } else {
        0
    };
    if found < latest() as i32 {
        return Err(Error::SchemaBehind {
            url: config.redacted_url(),
            migrations: tables.q_migrations(),
            found,
            needed: latest(),
        });
    }
    if found > latest() as i32 {
        return Err(Error::SchemaTooNew {
            url: config.redacted_url(),
            migrations: tables.q_migrations(),
            found,
            known: latest(),
        });
    }
    Ok(())
}

async fn current_version(
    client: &impl tokio_postgres::GenericClient,
    tables: &Tables,
) -> Result<i32, tokio_postgres::Error> {
    let row = client
        .query_one(
            &format!(
                "SELECT coalesce(max(version), 0) FROM {}",
                tables.q_migrations()
            ),
            &[],
        )
        .await?;
    Ok(row.get(0))
}
