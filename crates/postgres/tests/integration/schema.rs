//! The schema: versioned migrations, configurable names, applied once.

use choreo_postgres::{Error, MIGRATIONS, PgConfig, PgStore, Tables};

use super::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_once_even_when_services_start_together() {
    let db = Db::start();
    let connects: Vec<_> = (0..4).map(|_| PgStore::connect(db.config())).collect();
    for r in futures_util::future::join_all(connects).await {
        r.expect("every connect succeeds");
    }
    let client = db.client().await;
    let versions: Vec<i32> = client
        .query(
            "SELECT version FROM choreo_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let shipped: Vec<i32> = MIGRATIONS.iter().map(|m| m.version as i32).collect();
    assert_eq!(versions, shipped);
    assert_eq!(db.count(&client, "choreo_outbox_lanes").await, 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_names_are_configurable_so_services_can_share_a_database() {
    let db = Db::start();
    let client = db.client().await;
    client.batch_execute("CREATE SCHEMA shop").await.unwrap();
    let payment = PgStore::connect(db.config().tables(Tables::prefixed("payment_")).lanes(8))
        .await
        .unwrap();
    let inventory = PgStore::connect(
        db.config()
            .tables(Tables::prefixed("inv_").schema("shop").outbox("inv_events")),
    )
    .await
    .unwrap();
    assert_eq!(payment.lanes(), 8);
    assert_eq!(inventory.lanes(), 32);
    for table in [
        "payment_outbox",
        "payment_outbox_dead",
        "payment_outbox_lanes",
        "payment_inbox",
        "payment_migrations",
        "shop.inv_events",
        "shop.inv_outbox_dead",
        "shop.inv_inbox",
    ] {
        let exists: bool = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
            .await
            .unwrap()
            .get(0);
        assert!(exists, "{table}");
    }
    assert!(
        !client
            .query_one("SELECT to_regclass('choreo_outbox') IS NOT NULL", &[])
            .await
            .unwrap()
            .get::<_, bool>(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_migrations_connecting_checks_the_schema_version() {
    let db = Db::start();
    let e = PgStore::connect(db.config().migrate(false))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::SchemaBehind { found: 0, .. }), "{e}");
    assert!(e.to_string().contains("apply the SQL"), "{e}");

    // Applied by hand from the SQL the crate ships, as a migration tool would.
    let client = db.client().await;
    let tables = Tables::default();
    client
        .batch_execute(&choreo_postgres::migrations_table_sql(&tables))
        .await
        .unwrap();
    for (version, name, sql) in choreo_postgres::migrations(&tables, 4) {
        client.batch_execute(&sql).await.unwrap();
        client
            .execute(
                "INSERT INTO choreo_migrations (version, name) VALUES ($1, $2)",
                &[&(version as i32), &name],
            )
            .await
            .unwrap();
    }
    let store = PgStore::connect(db.config().migrate(false)).await.unwrap();
    assert_eq!(store.lanes(), 4);

    client
        .batch_execute(
            "INSERT INTO choreo_migrations (version, name) VALUES (99, 'from the future')",
        )
        .await
        .unwrap();
    for config in [db.config(), db.config().migrate(false)] {
        let e = PgStore::connect(config).await.unwrap_err();
        assert!(matches!(e, Error::SchemaTooNew { found: 99, .. }), "{e}");
        assert!(e.to_string().contains("upgrade choreo-postgres"), "{e}");
    }
}

#[test]
fn every_metric_is_documented_in_docs_postgres_md() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/postgres.md"
    ))
    .unwrap();
    for (name, ..) in choreo_postgres::METRICS {
        assert!(
            doc.contains(&format!("`{name}`")),
            "docs/postgres.md does not list {name}"
        );
    }
    // And every migration's SQL is shown there as shipped.
    for m in MIGRATIONS {
        for line in m.sql.lines().filter(|l| l.starts_with("CREATE")) {
            assert!(
                doc.contains(line),
                "docs/postgres.md does not show `{line}`"
            );
        }
    }
}

#[test]
fn a_bad_url_is_named_without_its_password() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let e = rt
        .block_on(PgStore::connect(PgConfig::new(
            "postgres://u:hunter2@127.0.0.1:notaport/db",
        )))
        .unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, Error::Url { .. }), "{text}");
    assert!(
        text.contains("postgres://u:***@127.0.0.1:notaport/db") && !text.contains("hunter2"),
        "{text}"
    );
}
