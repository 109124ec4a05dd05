//! `PgStore`: a service's database — the pool, the outbox and the inbox.

use std::sync::Arc;
use std::time::Duration;

use choreo_bus::{Context, Idempotency, MemoryStore};
use choreo_core::Bus;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use crate::config::{PgConfig, Tables};
use crate::error::describe;
use crate::inbox::Inbox;
use crate::metrics::{OutboxMetrics, PgMetrics};
use crate::relay::Relay;
use crate::transaction::{Sink, Transaction};
use crate::{Error, Result, schema};

/// A service's PostgreSQL database, as choreo uses it: a connection pool,
/// the outbox that handlers write their events to inside their own
/// transactions, and the inbox that records which events were handled.
///
/// Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct PgStore {
    pub(crate) inner: Arc<StoreInner>,
}

pub(crate) struct StoreInner {
    pub(crate) pool: Pool,
    pub(crate) config: PgConfig,
    pub(crate) lanes: u32,
    pub(crate) metrics: PgMetrics,
    pub(crate) outbox_metrics: OutboxMetrics,
    pub(crate) sql: Sql,
    /// Events whose inbox row this process committed recently: the
    /// runtime's idempotency check and record after the handler find them
    /// here without a round trip.
    pub(crate) recent: Recent,
}

/// Per service, the ids of events whose inbox row this process saw committed.
#[derive(Default)]
pub(crate) struct Recent {
    // std Mutex: held for a map lookup, never across an await.
    by_service: std::sync::Mutex<std::collections::HashMap<String, Arc<MemoryStore>>>,
}

impl Recent {
    /// At least the last 100 000 ids per service.
    const CAPACITY: usize = 100_000;

    fn of(&self, service: &str) -> Arc<MemoryStore> {
        let mut map = self.by_service.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = map.get(service) {
            return s.clone();
        }
        let s = Arc::new(MemoryStore::new(Self::CAPACITY));
        map.insert(service.to_owned(), s.clone());
        s
    }

    pub(crate) fn contains(&self, service: &str, id: &choreo_core::EventId) -> bool {
        self.of(service).contains_now(id)
    }

    pub(crate) fn insert(&self, service: &str, id: &choreo_core::EventId) {
        self.of(service).insert_now(id)
    }
}

/// The statements, with the configured table names.
pub(crate) struct Sql {
    pub(crate) insert_outbox: String,
    pub(crate) insert_inbox: String,
    pub(crate) contains_inbox: String,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("url", &self.inner.config.redacted_url())
            .field("tables", self.tables())
            .field("lanes", &self.inner.lanes)
            .finish()
    }
}

impl PgStore {
    /// Connects, applies the migrations (unless [`PgConfig::migrate`] is off,
    /// then checks the schema's version) and reads the outbox's lane count.
    ///
    /// Fails with [`Error::Connect`] — naming the URL, password redacted —
    /// when the database cannot be reached within the connect timeout.
    pub async fn connect(config: PgConfig) -> Result<PgStore> {
        config.get_tables().validate()?;
        if config.get_lanes() == 0 || config.get_lanes() > 4096 {
            return Err(Error::Config(format!(
                "lanes = {}: choose between 1 and 4096",
                config.get_lanes()
            )));
        }
        let client_config = config.client_config()?;
        let manager = Manager::from_config(
            client_config.clone(),
            NoTls,
            ManagerConfig {
                // A connection whose server went away is replaced, not handed out.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.get_pool_size())
            .wait_timeout(Some(config.get_connect_timeout()))
            .create_timeout(Some(config.get_connect_timeout()))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| Error::Config(format!("connection pool: {e}")))?;

        // The first connection, outside the pool: its error is the one to show.
        let (mut client, connection) = match tokio::time::timeout(
            config.get_connect_timeout() + Duration::from_secs(1),
            client_config.connect(NoTls),
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                return Err(Error::Connect {
                    url: config.redacted_url(),
                    reason: describe(&e),
                });
            }
            Err(_) => {
                return Err(Error::Connect {
                    url: config.redacted_url(),
                    reason: format!("no answer within {:?}", config.get_connect_timeout()),
                });
            }
        };
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        let checked = async {
            if config.get_migrate() {
                schema::migrate(&mut client, &config).await?;
            } else {
                schema::check(&client, &config).await?;
            }
            let lanes: i64 = client
                .query_one(
                    &format!("SELECT count(*) FROM {}", config.get_tables().q_lanes()),
                    &[],
                )
                .await
                .map_err(|e| Error::db("reading the outbox's lanes", e))?
                .get(0);
            Ok::<_, Error>(lanes)
        }
        .await;
        drop(client);
        let _ = driver.await;
        let lanes = checked?;
        if lanes < 1 {
            return Err(Error::Config(format!(
                "the lanes table {} is empty: it needs one row per lane (lane = 0 … n-1)",
                config.get_tables().q_lanes()
            )));
        }
        let tables = config.get_tables();
        let metrics = config.get_metrics();
        let sql = Sql {
            insert_outbox: crate::row::insert_sql(tables),
            insert_inbox: format!(
                "INSERT INTO {} (service, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                tables.q_inbox()
            ),
            contains_inbox: format!(
                "SELECT EXISTS (SELECT 1 FROM {} WHERE service = $1 AND event_id = $2)",
                tables.q_inbox()
            ),
        };
        Ok(PgStore {
            inner: Arc::new(StoreInner {
                outbox_metrics: metrics.outbox(tables.outbox_name()),
                metrics,
                pool,
                lanes: lanes as u32,
                sql,
                recent: Recent::default(),
                config,
            }),
        })
    }

    /// The connection pool, for the service's own queries outside a
    /// transaction of this crate.
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// The table names.
    pub fn tables(&self) -> &Tables {
        self.inner.config.get_tables()
    }

    /// The outbox's lane count (read from the database).
    pub fn lanes(&self) -> u32 {
        self.inner.lanes
    }

    /// Begins the transaction of a handler handling `ctx`'s event.
    ///
    /// It first records the event in the inbox (service, event id) in this
    /// transaction. When the inbox already holds it — an earlier attempt or
    /// delivery committed, and this is a redelivery — it returns `None`:
    /// the effects are already in, so the handler should return `Ok(())`
    /// and do nothing. (A concurrent handling of the same event by another
    /// replica waits on the first one's row lock here, then sees it.)
    ///
    /// Otherwise, until the transaction commits or is dropped, everything
    /// the handler emits through `ctx` is stamped as usual and written to
    /// the outbox **in this transaction** (see [`Transaction`]); the relay
    /// publishes it once committed.
    pub async fn begin(&self, ctx: &Context) -> Result<Option<Transaction>> {
        // The emissions are diverted first: a second transaction on the same
        // handling is refused before it could wait on the first one's inbox row.
        let events = Arc::new(std::sync::Mutex::new(Vec::new()));
        if let Some(previous) = ctx.divert_emissions(Arc::new(Sink(events.clone()))) {
            ctx.divert_emissions(previous);
            return Err(Error::AlreadyOpen {
                event_id: ctx.event().id.to_string(),
            });
        }
        match self.begin_with_inbox(ctx).await {
            Ok(Some(client)) => Ok(Some(Transaction::open(
                self.clone(),
                client,
                Some(ctx.clone()),
                events,
            ))),
            other => {
                ctx.restore_emissions();
                other.map(|_| None)
            }
        }
    }

    /// `BEGIN` and the inbox row; `None` when the inbox holds the event.
    async fn begin_with_inbox(&self, ctx: &Context) -> Result<Option<Object>> {
        let service = ctx.service();
        let event_id = ctx.event().id.to_string();
        let client = self.connection().await?;
        let insert = client
            .prepare_cached(&self.inner.sql.insert_inbox)
            .await
            .map_err(|e| Error::db("preparing the inbox insert", e))?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&service, &event_id];
        // Pipelined: BEGIN and the inbox row go in one round trip.
        let (begun, inserted) = tokio::join!(
            client.batch_execute("BEGIN"),
            client.execute(&insert, &params)
        );
        begun.map_err(|e| Error::db("beginning a transaction", e))?;
        let inserted = match inserted {
            Ok(n) => n,
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(Error::db(format!("recording '{event_id}' in the inbox"), e));
            }
        };
        if inserted == 0 {
            let _ = client.batch_execute("ROLLBACK").await;
            self.inner.metrics.inbox_hit(service);
            self.inner.recent.insert(service, &ctx.event().id);
            return Ok(None);
        }
        Ok(Some(client))
    }

    /// Begins a transaction outside any handler, for the service's own
    /// writes with events published through the outbox
    /// ([`Transaction::start_flow`], [`Transaction::publish`]). No inbox row.
    pub async fn transaction(&self) -> Result<Transaction> {
        let client = self.connection().await?;
        client
            .batch_execute("BEGIN")
            .await
            .map_err(|e| Error::db("beginning a transaction", e))?;
        Ok(Transaction::open(
            self.clone(),
            client,
            None,
            Arc::default(),
        ))
    }

    /// The inbox as the service's idempotency store:
    /// `Service::idempotency(store.inbox())`. The runtime then skips an
    /// event the inbox holds for the service before running its handler.
    pub fn inbox(&self) -> Idempotency {
        Idempotency::store(Arc::new(Inbox::new(self.clone())))
    }

    /// A relay publishing this outbox's committed rows to `bus`.
    pub fn relay<B: Bus>(&self, bus: &B) -> Relay<B> {
        Relay::new(self.clone(), bus.clone())
    }

    /// Rows waiting to be relayed, and the age of the oldest.
    pub async fn backlog(&self) -> Result<Backlog> {
        let client = self.connection().await?;
        let row = client
            .query_one(
                &format!(
                    "SELECT count(*), coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0)::float8 FROM {} WHERE sent_at IS NULL",
                    self.tables().q_outbox()
                ),
                &[],
            )
            .await
            .map_err(|e| Error::db("reading the outbox's backlog", e))?;
        let rows: i64 = row.get(0);
        let age: f64 = row.get(1);
        Ok(Backlog {
            rows: rows as u64,
            oldest: Duration::from_secs_f64(age.max(0.0)),
        })
    }

    /// A pooled connection, or [`Error::Pool`].
    pub(crate) async fn connection(&self) -> Result<Object> {
        self.inner.pool.get().await.map_err(|e| Error::Pool {
            url: self.inner.config.redacted_url(),
            reason: match e {
                deadpool_postgres::PoolError::Backend(e) => describe(&e),
                other => other.to_string(),
            },
        })
    }
}

/// What waits in the outbox.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backlog {
    /// Committed rows not yet relayed.
    pub rows: u64,
    /// The age of the oldest of them (zero when none waits).
    pub oldest: Duration,
}
