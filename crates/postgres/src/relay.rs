//! The relay: publishes committed outbox rows to the bus, in order per key.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use choreo_core::Bus;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;

use crate::error::describe;
use crate::row::{Pending, select_columns};
use crate::store::PgStore;
use crate::{Error, Result};

/// How a [`Relay`] runs. Built with [`RelayConfig::default`] and one setter
/// per option.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    batch_size: u32,
    lanes_per_batch: u32,
    poll_interval: Duration,
    listen: bool,
    backoff_min: Duration,
    backoff_max: Duration,
    retention: Duration,
    inbox_retention: Duration,
    prune_interval: Duration,
    metrics_interval: Duration,
    shutdown_grace: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            batch_size: 256,
            lanes_per_batch: u32::MAX,
            poll_interval: Duration::from_secs(1),
            listen: true,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            retention: Duration::from_secs(24 * 3600),
            inbox_retention: Duration::from_secs(7 * 24 * 3600),
            prune_interval: Duration::from_secs(60),
            metrics_interval: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl RelayConfig {
    /// Rows read and published per batch (one database transaction).
    /// Default 256.
    pub fn batch_size(mut self, n: u32) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// Lanes one relay takes per batch, chosen at random among those with
    /// rows waiting; the rest are left to other relays. Default: all.
    /// Lower it to spread one outbox's load over several relays.
    pub fn lanes_per_batch(mut self, n: u32) -> Self {
        self.lanes_per_batch = n.max(1);
        self
    }

    /// How often the relay looks for rows without being woken by a
    /// `NOTIFY` (a fallback: notifications are lost while its listening
    /// connection is down). Default 1 s.
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d;
        self
    }

    /// Whether the relay `LISTEN`s for the outbox's `NOTIFY` (default true);
    /// off, it only polls.
    pub fn listen(mut self, on: bool) -> Self {
        self.listen = on;
        self
    }

    /// The wait after a failure (the database or the bus), doubling with
    /// each failure in a row from `min` to `max`, ±25 % jitter. Default
    /// 100 ms to 10 s.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min;
        self.backoff_max = max.max(min);
        self
    }

    /// How long sent rows are kept before pruning (for inspection). Default 24 h.
    pub fn retention(mut self, d: Duration) -> Self {
        self.retention = d;
        self
    }

    /// How long inbox rows are kept. An event redelivered after its inbox
    /// row was pruned is handled again, so keep it well above the longest
    /// time an event can wait for redelivery (a consumer group's lag, a
    /// replay from the dead-letter topic). Default 7 days.
    pub fn inbox_retention(mut self, d: Duration) -> Self {
        self.inbox_retention = d;
        self
    }

    /// How often the relay prunes. Default 60 s.
    pub fn prune_interval(mut self, d: Duration) -> Self {
        self.prune_interval = d;
        self
    }

    /// How often the backlog gauges are refreshed. Default 5 s.
    pub fn metrics_interval(mut self, d: Duration) -> Self {
        self.metrics_interval = d;
        self
    }

    /// On shutdown, how long a batch being published may take to finish
    /// (then it is abandoned: its rows are published again by the next
    /// relay). Default 10 s.
    pub fn shutdown_grace(mut self, d: Duration) -> Self {
        self.shutdown_grace = d;
        self
    }
}

/// What one batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchReport {
    /// Lanes locked for the batch.
    pub lanes: usize,
    /// Rows read.
    pub fetched: usize,
    /// Rows published and marked sent.
    pub published: usize,
    /// Rows moved to the dead table (undecodable, or refused by the bus).
    pub moved_aside: usize,
    /// Why publishing stopped on some lane (its remaining rows wait for the
    /// next batch), if it did.
    pub failure: Option<String>,
}

/// What pruning deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Sent outbox rows past the retention.
    pub outbox: u64,
    /// Inbox rows past the inbox retention.
    pub inbox: u64,
}

/// Publishes the outbox's committed rows to a bus.
///
/// **Order.** Each row belongs to a lane (its key hashed among the lanes),
/// and a batch locks the lanes it publishes (`SELECT … FOR UPDATE SKIP
/// LOCKED` on the lanes table) until it has marked its rows sent, so a lane
/// is published by one relay at a time, in the order its rows were
/// committed: events of one key (one flow, by default) reach the bus in
/// order. Lanes are published concurrently.
///
/// **Delivery.** A row is marked sent in the same transaction that holds its
/// lane, after the bus accepted it: a relay that dies between the two
/// (crash, lost connection) leaves the row unsent and its lane unlocked, so
/// another relay — or this one, restarted — publishes it again. Delivery is
/// therefore at least once; a duplicate is the same event (same id, same
/// bytes), which the consumers' idempotency and the tracer collapse.
///
/// **Failures.** A row that no longer decodes, or that the bus refuses for
/// good ([`choreo_core::Error::Refused`]: too large for it), is moved to the
/// dead table with the reason and never retried; the lane goes on. Any other
/// publish error stops that lane for this batch (order!) and the relay
/// backs off; a database error fails the batch and the relay backs off,
/// reconnecting when the database is back.
///
/// **Waking.** The relay `LISTEN`s on the outbox's channel, which the
/// outbox's trigger notifies when a transaction that wrote to it commits,
/// and polls every `poll_interval` in case a notification was missed.
///
/// Several relays may run on one outbox (in one process or many): they
/// share the lanes. The relay also prunes sent rows and old inbox rows,
/// and refreshes the backlog gauges.
#[derive(Debug, Clone)]
pub struct Relay<B> {
    store: PgStore,
    bus: B,
    config: RelayConfig,
}

impl<B: Bus> Relay<B> {
    pub(crate) fn new(store: PgStore, bus: B) -> Self {
        Relay {
            store,
            bus,
            config: RelayConfig::default(),
        }
    }

    /// Sets the configuration.
    pub fn config(mut self, config: RelayConfig) -> Self {
        self.config = config;
        self
    }

    /// Runs the relay on a task of its own until `shutdown` is cancelled.
    pub fn start(self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run(shutdown))
    }

    /// Relays until `shutdown` is cancelled; failures are logged, counted and
    /// backed off from, never returned.
    pub async fn run(self, shutdown: CancellationToken) {
        let wake = Arc::new(Notify::new());
        let stop_listening = shutdown.child_token();
        let listener = self.config.listen.then(|| {
            tokio::spawn(listen(
                self.store.clone(),
                wake.clone(),
                self.config.clone(),
                stop_listening.clone(),
            ))
        });
        let metrics = self.store.inner.outbox_metrics.clone();
        let mut backoff = Backoff::new(self.config.backoff_min, self.config.backoff_max);
        let mut next_prune = Instant::now() + self.config.prune_interval;
        let mut next_gauges = Instant::now();
        while !shutdown.is_cancelled() {
            let batch = self.relay_batch();
            tokio::pin!(batch);
            let result = tokio::select! {
                r = &mut batch => r,
                _ = shutdown.cancelled() => match tokio::time::timeout(self.config.shutdown_grace, &mut batch).await {
                    Ok(r) => r,
                    Err(_) => break,
                },
            };
            let wait = match result {
                Ok(report) if report.failure.is_none() => {
                    backoff.reset();
                    // A full batch: more may be waiting.
                    (report.fetched as u32 >= self.config.batch_size).then_some(Duration::ZERO)
                }
                Ok(report) => {
                    let failure = report.failure.unwrap_or_default();
                    let wait = backoff.next();
                    tracing::warn!(outbox = %self.store.tables().outbox_name(), error = %failure, retry_in = ?wait, "choreo-postgres relay: publishing failed");
                    Some(wait)
                }
                Err(e) => {
                    metrics.database_failures.inc();
                    let wait = backoff.next();
                    tracing::warn!(outbox = %self.store.tables().outbox_name(), error = %e, retry_in = ?wait, "choreo-postgres relay: a batch failed");
                    Some(wait)
                }
            };
            let now = Instant::now();
            if now >= next_gauges {
                next_gauges = now + self.config.metrics_interval;
                if let Ok(b) = self.store.backlog().await {
                    metrics.backlog.set(b.rows as i64);
                    metrics.oldest.set(b.oldest.as_secs_f64());
                }
            }
            if now >= next_prune {
                next_prune = now + self.config.prune_interval;
                if let Err(e) = self.prune().await {
                    tracing::warn!(outbox = %self.store.tables().outbox_name(), error = %e, "choreo-postgres relay: pruning failed");
                }
            }
            match wait {
                Some(d) if d.is_zero() => tokio::task::yield_now().await,
                Some(d) => {
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
                None => {
                    let until_gauges = next_gauges.saturating_duration_since(Instant::now());
                    tokio::select! {
                        _ = wake.notified() => {}
                        _ = tokio::time::sleep(self.config.poll_interval.min(until_gauges.max(Duration::from_millis(1)))) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
            }
        }
        stop_listening.cancel();
        if let Some(l) = listener {
            let _ = l.await;
        }
    }

    /// One batch: locks lanes with waiting rows, publishes up to
    /// `batch_size` of their rows in order, marks them sent (or moves them
    /// aside), commits.
    pub async fn relay_batch(&self) -> Result<BatchReport> {
        let store = &self.store;
        let tables = store.tables();
        let mut client = store.connection().await?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| Error::db("relay: beginning a transaction", e))?;
        let lanes: Vec<i32> = tx
            .query(
                &format!(
                    "SELECT l.lane FROM {lanes} l \
                     WHERE EXISTS (SELECT 1 FROM {outbox} o WHERE o.lane = l.lane AND o.sent_at IS NULL) \
                     ORDER BY random() LIMIT $1 FOR UPDATE OF l SKIP LOCKED",
                    lanes = tables.q_lanes(),
                    outbox = tables.q_outbox()
                ),
                &[&(self.config.lanes_per_batch.min(store.lanes()) as i64)],
            )
            .await
            .map_err(|e| Error::db("relay: locking lanes", e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut report = BatchReport {
            lanes: lanes.len(),
            ..BatchReport::default()
        };
        if lanes.is_empty() {
            tx.commit()
                .await
                .map_err(|e| Error::db("relay: committing", e))?;
            return Ok(report);
        }
        let rows = tx
            .query(
                &format!(
                    "SELECT {} FROM {} WHERE sent_at IS NULL AND lane = ANY($1) ORDER BY seq LIMIT $2",
                    select_columns(),
                    tables.q_outbox()
                ),
                &[&lanes, &(self.config.batch_size as i64)],
            )
            .await
            .map_err(|e| Error::db("relay: reading the outbox", e))?;
        report.fetched = rows.len();
        let read_at = Instant::now();
        let mut by_lane: BTreeMap<i32, Vec<Pending>> = BTreeMap::new();
        for row in &rows {
            let p = Pending::from_row(row);
            by_lane.entry(p.lane).or_default().push(p);
        }
        drop(rows);
        let outcomes = futures_util::future::join_all(
            by_lane
                .into_values()
                .map(|rows| self.publish_lane(rows, read_at)),
        )
        .await;
        let mut sent: Vec<i64> = Vec::new();
        let mut aside: Vec<(i64, String)> = Vec::new();
        for lane in outcomes {
            sent.extend(lane.sent);
            aside.extend(lane.aside);
            if let Some(f) = lane.failure {
                report.failure.get_or_insert(f);
            }
        }
        if !sent.is_empty() {
            tx.execute(
                &format!(
                    "UPDATE {} SET sent_at = clock_timestamp() WHERE seq = ANY($1)",
                    tables.q_outbox()
                ),
                &[&sent],
            )
            .await
            .map_err(|e| Error::db("relay: marking rows sent", e))?;
        }
        if !aside.is_empty() {
            let cols = "seq, lane, id, event_type, source, topic, key, correlation_id, causation_id, time_us, \
                        traceparent, tracestate, content_type, data, header_names, header_values, format, created_at";
            let stmt = tx
                .prepare(&format!(
                    "WITH moved AS (DELETE FROM {outbox} WHERE seq = $1 RETURNING {cols}) \
                     INSERT INTO {dead} ({cols}, reason) SELECT {cols}, $2 FROM moved",
                    outbox = tables.q_outbox(),
                    dead = tables.q_outbox_dead(),
                ))
                .await
                .map_err(|e| Error::db("relay: moving rows aside", e))?;
            for (seq, reason) in &aside {
                tx.execute(&stmt, &[seq, reason])
                    .await
                    .map_err(|e| Error::db("relay: moving rows aside", e))?;
            }
        }
        tx.commit()
            .await
            .map_err(|e| Error::db("relay: committing", e))?;
        report.published = sent.len();
        report.moved_aside = aside.len();
        Ok(report)
    }

    /// Publishes one lane's rows in order, until one fails.
    async fn publish_lane(&self, rows: Vec<Pending>, read_at: Instant) -> LaneOutcome {
        let metrics = &self.store.inner.outbox_metrics;
        let outbox = self.store.tables().outbox_name();
        let mut out = LaneOutcome::default();
        for row in rows {
            let env = match row.envelope {
                Ok(env) => env,
                Err(reason) => {
                    metrics.decode.inc();
                    tracing::error!(outbox, seq = row.seq, %reason, "choreo-postgres relay: an outbox row does not decode; moved aside");
                    out.aside
                        .push((row.seq, format!("does not decode: {reason}")));
                    continue;
                }
            };
            let topic = env.topic.clone();
            let (id, event_type) = (env.id.clone(), env.event_type.clone());
            // When it left the outbox: the tracer reports how long it waited.
            let mut env = env;
            env.headers.insert(
                choreo_core::RELAYED_AT_HEADER,
                choreo_core::Timestamp::now().to_rfc3339(),
            );
            match self.bus.publish_shared(Arc::new(env)).await {
                Ok(()) => {
                    metrics.relayed(&topic);
                    metrics
                        .lag
                        .observe(row.age + read_at.elapsed().as_secs_f64());
                    out.sent.push(row.seq);
                }
                Err(e @ choreo_core::Error::Refused { .. }) => {
                    metrics.refused.inc();
                    tracing::error!(outbox, seq = row.seq, event_id = %id, %event_type, error = %e, "choreo-postgres relay: the bus refuses an outbox event; moved aside");
                    out.aside
                        .push((row.seq, format!("refused by the bus: {e}")));
                }
                Err(e) => {
                    metrics.publish_failures.inc();
                    out.failure = Some(format!(
                        "publishing '{event_type}' {id} to '{topic}' failed: {e}"
                    ));
                    break;
                }
            }
        }
        out
    }

    /// Deletes sent rows older than the retention and inbox rows older than
    /// the inbox retention, in bounded chunks.
    pub async fn prune(&self) -> Result<Pruned> {
        let store = &self.store;
        let tables = store.tables();
        let client = store.connection().await?;
        const CHUNK: i64 = 5_000;
        const ROUNDS: usize = 20;
        let mut pruned = Pruned::default();
        let outbox_sql = format!(
            "DELETE FROM {t} WHERE seq IN (SELECT seq FROM {t} WHERE sent_at < clock_timestamp() - make_interval(secs => $1) LIMIT $2)",
            t = tables.q_outbox()
        );
        let inbox_sql = format!(
            "DELETE FROM {t} WHERE ctid IN (SELECT ctid FROM {t} WHERE handled_at < clock_timestamp() - make_interval(secs => $1) LIMIT $2)",
            t = tables.q_inbox()
        );
        for (sql, secs, count, table) in [
            (
                &outbox_sql,
                self.config.retention.as_secs_f64(),
                &mut pruned.outbox,
                tables.outbox_name().to_owned(),
            ),
            (
                &inbox_sql,
                self.config.inbox_retention.as_secs_f64(),
                &mut pruned.inbox,
                "inbox".to_owned(),
            ),
        ] {
            for _ in 0..ROUNDS {
                let n = client
                    .execute(sql.as_str(), &[&secs, &CHUNK])
                    .await
                    .map_err(|e| Error::db("relay: pruning", e))?;
                *count += n;
                if (n as i64) < CHUNK {
                    break;
                }
            }
            if *count > 0 {
                store.inner.metrics.pruned(&table, *count);
            }
        }
        Ok(pruned)
    }
}

#[derive(Default)]
struct LaneOutcome {
    sent: Vec<i64>,
    aside: Vec<(i64, String)>,
    failure: Option<String>,
}

/// Listens on the outbox's channel on a connection of its own, waking the
/// relay on each notification and after each (re)connection.
async fn listen(store: PgStore, wake: Arc<Notify>, config: RelayConfig, stop: CancellationToken) {
    let channel = store.tables().outbox_name().to_owned();
    let mut backoff = Backoff::new(config.backoff_min, config.backoff_max);
    while !stop.is_cancelled() {
        let connected = match store.inner.config.client_config() {
            Ok(c) => tokio::select! {
                c = c.connect(NoTls) => c.map_err(|e| describe(&e)),
                _ = stop.cancelled() => return,
            },
            Err(e) => Err(e.to_string()),
        };
        let (client, mut connection) = match connected {
            Ok(c) => c,
            Err(e) => {
                let wait = backoff.next();
                tracing::warn!(channel, error = %e, retry_in = ?wait, "choreo-postgres relay: cannot connect to LISTEN; polling meanwhile");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => continue,
                    _ = stop.cancelled() => return,
                }
            }
        };
        let messages = async {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(_))) => wake.notify_one(),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return describe(&e),
                    None => return "the connection closed".to_owned(),
                }
            }
        };
        let subscribe = async {
            match client.batch_execute(&format!("LISTEN \"{channel}\"")).await {
                Ok(()) => {
                    backoff.reset();
                    // Rows may have been committed while nobody listened.
                    wake.notify_one();
                    std::future::pending::<String>().await
                }
                Err(e) => describe(&e),
            }
        };
        let lost = tokio::select! {
            e = messages => e,
            e = subscribe => e,
            _ = stop.cancelled() => return,
        };
        let wait = backoff.next();
        tracing::warn!(channel, error = %lost, retry_in = ?wait, "choreo-postgres relay: the LISTEN connection was lost; polling meanwhile");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Exponential backoff with ±25 % jitter.
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    fn next(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let jitter = rand::random_range(0.75..1.25);
        base.mul_f64(jitter)
    }

    fn reset(&mut self) {
        self.next = self.min;
    }
}
