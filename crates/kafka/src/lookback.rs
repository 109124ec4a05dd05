//! `LookbackReader`: a consumer-group member for a reader that keeps state
//! across records (the tracer), and must rebuild that state for every
//! partition it is given — after its own restart, a crash, or a rebalance.
//!
//! ```no_run
//! use std::time::Duration;
//! use choreo_kafka::{KafkaConfig, LookbackEvent, LookbackOptions, LookbackReader, Topics};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = KafkaConfig::new("localhost:9092");
//! let options = LookbackOptions::new(Topics::names(["orders"]), "tracers")
//!     .lookback(Duration::from_secs(3600));
//! let mut reader = LookbackReader::open(&config, options).await?;
//! while let Some(event) = reader.next().await {
//!     match event? {
//!         // Rebuild state silently from a replayed record; act on a live one.
//!         LookbackEvent::Record { record, replayed } => {}
//!         // Replay is over: judge what was rebuilt as of each partition's clock.
//!         LookbackEvent::Ready { .. } => {}
//!         // Drop the state of partitions gone to other members.
//!         LookbackEvent::Revoked { partitions } => {}
//!         _ => {}
//!     }
//!     // Now and then: everything read so far has been acted on as of this clock.
//!     reader.checkpoint(1_767_000_000_000_000)?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # How a partition is restored
//!
//! When the group assigns a partition this member does not hold already, the
//! member looks up the group's committed offset `C` and the *clock* its
//! previous owner checkpointed with it, then starts reading at the offset of
//! the first record published at most [`LookbackOptions::lookback`] before
//! that clock (Kafka's offsets-by-time lookup). Records before `C` are
//! handed out as `replayed`: the previous owner acted on them already; they
//! are there to rebuild state. From `C` on, records are live. Once every
//! partition being restored reached its `C`, [`LookbackEvent::Ready`] says
//! so. A partition the group never committed starts at the end as of the
//! assignment (replaying the look-back before it) with
//! [`ReadFrom::End`], or at its first record, all live, with
//! [`ReadFrom::Beginning`].
//!
//! # Checkpoints
//!
//! [`LookbackReader::checkpoint`] commits, for every partition past its
//! replay, the position read so far to the group, then the caller's clock
//! (a time in µs, "what was read has been acted on as of then") to a
//! companion group, `<group>.choreo-clock`, as the committed offset of the
//! same partition: Kafka brokers do not return a commit's metadata string
//! everywhere (tansu drops it), and a committed offset is stored by all of
//! them. Both commits are synchronous. Killed between the two, the next
//! owner pairs the new position with the previous clock: it judges a little
//! earlier than the previous owner had, and may say again what was said in
//! that last interval — never less.
//!
//! # Rebalances
//!
//! With the eager protocol (librdkafka's default assignors) a rebalance
//! revokes every partition and assigns them again: partitions that come back
//! to this member resume where it had read, with their state; those that do
//! not come back are reported by [`LookbackEvent::Revoked`] and their state
//! is to be dropped (their new owner restores it). Between the revocation and
//! the assignment, [`LookbackReader::settled`] is false: a caller acting on a
//! clock should not act then, as the partitions' next owner starts from the
//! last checkpoint.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use choreo_core::StartFrom;
use parking_lot::Mutex;
use rdkafka::Message;
use rdkafka::client::ClientContext;
use rdkafka::config::{FromClientConfigAndContext, RDKafkaLogLevel};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;

use crate::client::{LogContext, client_error, log_librdkafka};
use crate::config::{KafkaConfig, Role};
use crate::consumer::envelope_of;
use crate::metrics::KafkaMetrics;
use crate::reader::{Outage, ReadFrom, ReadRecord, Topics, discover, reader_error, transient};
use crate::watch::Watch;
use crate::{Error, Result};

/// A partition, as `(topic, partition)`.
pub type Partition = (String, i32);

/// What a [`LookbackReader`] reads, and how far back it restores.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LookbackOptions {
    /// The topics.
    pub topics: Topics,
    /// The consumer group (with the configuration's `group_prefix`).
    pub group: String,
    /// How far before the previous owner's clock (or, for a partition the
    /// group never committed, before now) replay starts. Default 1 h.
    pub lookback: Duration,
    /// Where a partition the group never committed starts. Default
    /// [`ReadFrom::End`] (after replaying the look-back).
    pub from: ReadFrom,
    /// How often topics created later are looked for (a pattern, or
    /// [`Topics::Optional`] ones). Default 5 s.
    pub refresh: Duration,
    /// Where the member's consumer lag goes (`choreo_kafka_consumer_lag`,
    /// from librdkafka's statistics every `lag_interval`: the log end minus
    /// the last checkpoint). Default: metrics nobody registered.
    pub metrics: Option<KafkaMetrics>,
}

impl LookbackOptions {
    /// Reads `topics` as a member of `group`, restoring an hour back.
    pub fn new(topics: Topics, group: impl Into<String>) -> Self {
        LookbackOptions {
            topics,
            group: group.into(),
            lookback: Duration::from_secs(3600),
            from: ReadFrom::End,
            refresh: Duration::from_secs(5),
            metrics: None,
        }
    }

    /// Reports the member's consumer lag to `metrics`, to be registered where
    /// they are served.
    pub fn metrics(mut self, metrics: KafkaMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Sets how far back replay starts.
    pub fn lookback(mut self, lookback: Duration) -> Self {
        self.lookback = lookback;
        self
    }

    /// Sets where a partition the group never committed starts.
    pub fn from(mut self, from: ReadFrom) -> Self {
        self.from = from;
        self
    }

    /// Sets how often new topics are looked for.
    pub fn refresh(mut self, refresh: Duration) -> Self {
        self.refresh = refresh;
        self
    }
}

/// How a newly assigned partition is restored.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Restore {
    /// The partition.
    pub partition: Partition,
    /// The first offset read (replay starts here).
    pub from: i64,
    /// Where replay ends and live reading starts: the group's committed
    /// offset, or the end as of the assignment. `from == until`: nothing to
    /// replay.
    pub until: i64,
    /// The clock the previous owner checkpointed with `until` (µs since the
    /// Unix epoch), when it did.
    pub clock: Option<i64>,
    /// Whether `until` is the group's committed offset (else the partition
    /// had none: there was no previous owner).
    pub committed: bool,
    /// Whether older records exist than `from`: state older than the look-back
    /// is not rebuilt (flows that started before it are cut by the horizon).
    pub cut: bool,
}

/// What [`LookbackReader::next`] hands out.
#[derive(Debug)]
#[non_exhaustive]
// Records are nearly every event: boxing them would allocate once per record
// to save bytes on the rare assignment events.
#[allow(clippy::large_enum_variant)]
pub enum LookbackEvent {
    /// A record; `replayed` when the partition's previous owner acted on it
    /// already (it is read again to rebuild state).
    Record {
        /// The record.
        record: ReadRecord,
        /// Read before the group's committed offset.
        replayed: bool,
    },
    /// The group assigned partitions: those `kept` resume with this member's
    /// state; the others are `restoring`.
    Assigned {
        /// Partitions this member held before the rebalance.
        kept: Vec<Partition>,
        /// Partitions new to this member, and how each is restored.
        restoring: Vec<Restore>,
    },
    /// Partitions taken away for good: drop their state.
    Revoked {
        /// The partitions.
        partitions: Vec<Partition>,
    },
    /// Every partition being restored reached its committed offset.
    Ready {
        /// Partitions restored since the last `Ready`.
        partitions: usize,
        /// Records replayed to restore them.
        replayed: u64,
        /// From the first assignment needing a restore to now.
        took: Duration,
    },
}

/// A consumer-group member that replays each newly assigned partition from a
/// look-back; see the [module docs](self).
pub struct LookbackReader {
    consumer: StreamConsumer<LookbackContext>,
    shared: Arc<Shared>,
    options: LookbackOptions,
    outage: Outage,
}

impl std::fmt::Debug for LookbackReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LookbackReader")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// What the member and its rebalance callbacks share.
struct Shared {
    group: String,
    metrics: KafkaMetrics,
    lookback: Duration,
    from: ReadFrom,
    timeout: Duration,
    /// The companion group's client: commits and reads the clocks.
    clock: BaseConsumer<LogContext>,
    // parking_lot Mutex: never held across an await, nor across a broker call.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    events: VecDeque<LookbackEvent>,
    /// Assigned partitions → the next offset to read.
    held: HashMap<Partition, i64>,
    /// Revoked by an eager rebalance, waiting for the assignment that follows.
    suspended: HashMap<Partition, i64>,
    /// Partitions being replayed → where replay ends.
    restoring: HashMap<Partition, i64>,
    /// Since the first assignment that needed a restore, and its counts.
    restore_started: Option<Instant>,
    restore_partitions: usize,
    replayed: u64,
    /// The last checkpoint the group refused, as it was (each partition's
    /// position then, and the clock), until one is taken: see
    /// [`LookbackReader::checkpoint_again`].
    refused: Option<(Vec<(Partition, i64)>, i64)>,
}

impl State {
    /// Says `Ready` once no partition is being restored.
    fn maybe_ready(&mut self) {
        if !self.restoring.is_empty() {
            return;
        }
        if let Some(started) = self.restore_started.take() {
            self.events.push_back(LookbackEvent::Ready {
                partitions: std::mem::take(&mut self.restore_partitions),
                replayed: std::mem::take(&mut self.replayed),
                took: started.elapsed(),
            });
        }
    }
}

impl LookbackReader {
    /// Connects, subscribes, and returns at once: the assignment comes as a
    /// [`LookbackEvent::Assigned`].
    pub async fn open(config: &KafkaConfig, options: LookbackOptions) -> Result<LookbackReader> {
        config.validate()?;
        let mut config = config.clone();
        const REFRESH: &str = "topic.metadata.refresh.interval.ms";
        if options.topics.grows() && !config.librdkafka.contains_key(REFRESH) {
            let ms = options.refresh.as_millis().max(1).to_string();
            config = config.set(REFRESH, ms);
        }
        let watch = Arc::new(Watch::new(&config));
        if let Topics::Names(_) = &options.topics {
            // Each must exist: a clear error now, not an empty assignment.
            let (lookup, w, topics) = (config.clone(), watch.clone(), options.topics.clone());
            let timeout = config.admin_timeout;
            tokio::task::spawn_blocking(move || discover(&lookup, &w, &topics, false, timeout))
                .await
                .map_err(|_| Error::Topic {
                    topic: format!("{:?}", options.topics),
                    reason: "the metadata lookup was cancelled".into(),
                })??;
        }
        let start = match options.from {
            ReadFrom::Beginning => StartFrom::Earliest,
            ReadFrom::End => StartFrom::Latest,
        };
        let clock_group = format!("{}.choreo-clock", options.group);
        let clock_config = config.client_config(Role::Consumer, Some((&clock_group, start)))?;
        let clock = BaseConsumer::from_config_and_context(
            &clock_config,
            LogContext {
                watch: watch.clone(),
            },
        )
        .map_err(|source| Error::Client {
            role: "clock client",
            brokers: config.brokers.clone(),
            source: watch.redact(source),
        })?;
        let shared = Arc::new(Shared {
            group: config.group_id(&options.group),
            metrics: options.metrics.clone().unwrap_or_default(),
            lookback: options.lookback,
            from: options.from,
            timeout: config.admin_timeout,
            clock,
            state: Mutex::new(State::default()),
        });
        let client_config = config.client_config(Role::Consumer, Some((&options.group, start)))?;
        let context = LookbackContext {
            watch: watch.clone(),
            shared: shared.clone(),
        };
        let consumer: StreamConsumer<LookbackContext> =
            StreamConsumer::from_config_and_context(&client_config, context).map_err(|source| {
                Error::Client {
                    role: "consumer",
                    brokers: config.brokers.clone(),
                    source: watch.redact(source),
                }
            })?;
        let topics = options.topics.subscription();
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&names).map_err(|source| Error::Kafka {
            context: format!("subscribing group '{}' to {names:?}", shared.group),
            source,
        })?;
        Ok(LookbackReader {
            consumer,
            shared,
            options,
            outage: Outage::default(),
        })
    }

    /// The next event; `None` never (the reader follows), `Some(Err)` when
    /// reading fails.
    pub async fn next(&mut self) -> Option<Result<LookbackEvent>> {
        loop {
            if let Some(e) = self.shared.state.lock().events.pop_front() {
                return Some(Ok(e));
            }
            // While restoring, look often whether a partition's position
            // passed its end without a record there (compacted records,
            // transaction markers).
            let wait = if self.shared.state.lock().restoring.is_empty() {
                self.options.refresh
            } else {
                Duration::from_millis(200)
            };
            let m = match tokio::time::timeout(wait, self.consumer.recv()).await {
                Err(_) => {
                    self.passed_ends();
                    continue;
                }
                // A broker restarting: librdkafka reconnects, the reader waits.
                Ok(Err(e)) if transient(&e) => {
                    self.outage.note(&self.shared.group, &e);
                    continue;
                }
                Ok(Err(e)) => return Some(Err(reader_error(e))),
                Ok(Ok(m)) => m,
            };
            self.outage.over(&self.shared.group);
            let key = (m.topic().to_owned(), m.partition());
            let offset = m.offset();
            let (envelope, original) = envelope_of(&m);
            drop(m);
            let mut st = self.shared.state.lock();
            // Fetched before a revocation: its new owner reads it.
            if !st.held.contains_key(&key) {
                continue;
            }
            st.held.insert(key.clone(), offset + 1);
            let replayed = match st.restoring.get(&key).copied() {
                Some(until) if offset < until => {
                    st.replayed += 1;
                    if offset + 1 >= until {
                        st.restoring.remove(&key);
                    }
                    true
                }
                Some(_) => {
                    st.restoring.remove(&key);
                    false
                }
                None => false,
            };
            // `Ready` comes after the record that ended the replay.
            st.maybe_ready();
            return Some(Ok(LookbackEvent::Record {
                record: ReadRecord {
                    envelope,
                    original: Arc::new(original),
                    partition: key.1,
                    offset,
                },
                replayed,
            }));
        }
    }

    /// Ends the replay of partitions whose position reached their end.
    fn passed_ends(&self) {
        let Ok(positions) = self.consumer.position() else {
            return;
        };
        let mut st = self.shared.state.lock();

        for e in positions.elements() {
            if let Offset::Offset(pos) = e.offset() {
                let key = (e.topic().to_owned(), e.partition());
                if st.restoring.get(&key).is_some_and(|until| pos >= *until) {
                    st.restoring.remove(&key);
                }
            }
        }
        st.maybe_ready();
    }

    /// Whether every assigned partition is live and the caller has seen
    /// every event: no replay in progress, no rebalance between its
    /// revocation and its assignment, no event waiting for
    /// [`next`](LookbackReader::next) (a `Ready` or a `Revoked` not acted on
    /// yet).
    pub fn settled(&self) -> bool {
        let st = self.shared.state.lock();
        st.restoring.is_empty() && st.suspended.is_empty() && st.events.is_empty()
    }

    /// The partitions assigned to this member, sorted.
    pub fn assignment(&self) -> Vec<Partition> {
        let mut v: Vec<Partition> = self.shared.state.lock().held.keys().cloned().collect();
        v.sort();
        v
    }

    /// Commits, for every partition past its replay, the position read so far
    /// to the group and `clock` (µs since the Unix epoch) to the companion
    /// group, both synchronously: "what was read has been acted on as of
    /// `clock`". Fails while the group rebalances; then
    /// [`checkpoint_again`](Self::checkpoint_again) commits the same one.
    pub fn checkpoint(&self, clock: i64) -> Result<()> {
        let positions: Vec<(Partition, i64)> = {
            let st = self.shared.state.lock();
            // Between a revocation and its assignment, or with an event the
            // caller has not acted on: the last checkpoint stands.
            if !st.suspended.is_empty() || !st.events.is_empty() {
                return Ok(());
            }
            st.held
                .iter()
                .filter(|(key, _)| !st.restoring.contains_key(*key))
                .map(|(key, pos)| (key.clone(), *pos))
                .collect()
        };
        let done = self.commit(&positions, clock);
        self.shared.state.lock().refused = match done {
            Ok(()) => None,
            Err(_) => Some((positions, clock)),
        };
        done
    }

    /// Commits again the last checkpoint the group refused, with the
    /// positions it had then, not the ones read since (those were not acted
    /// on as of its clock), for the partitions still held past their replay.
    /// `Ok` when there is none: the last one was taken, or an assignment came
    /// since (a partition given back may have been restored from another
    /// member's later checkpoint; the refused one would rewind it).
    pub fn checkpoint_again(&self) -> Result<()> {
        let (positions, clock) = {
            let st = self.shared.state.lock();
            let Some((positions, clock)) = &st.refused else {
                return Ok(());
            };
            let still: Vec<(Partition, i64)> = positions
                .iter()
                .filter(|(key, _)| st.held.contains_key(key) && !st.restoring.contains_key(key))
                .cloned()
                .collect();
            (still, *clock)
        };
        self.commit(&positions, clock)?;
        self.shared.state.lock().refused = None;
        Ok(())
    }

    /// Commits `positions` to the group and `clock` for each of them to the
    /// companion group.
    fn commit(&self, positions: &[(Partition, i64)], clock: i64) -> Result<()> {
        if positions.is_empty() {
            return Ok(());
        }
        let mut offsets = TopicPartitionList::new();
        let mut clocks = TopicPartitionList::new();
        for ((topic, p), pos) in positions {
            // Adding to a list only fails for an invalid offset.
            let _ = offsets.add_partition_offset(topic, *p, Offset::Offset(*pos));
            let _ = clocks.add_partition_offset(topic, *p, Offset::Offset(clock));
        }
        // Position first: killed between the two, the next owner judges as
        // of an older clock (and may repeat itself), never a newer one.
        self.consumer
            .commit(&offsets, CommitMode::Sync)
            .map_err(|source| Error::Kafka {
                context: format!("committing group '{}'", self.shared.group),
                source,
            })?;
        self.shared
            .clock
            .commit(&clocks, CommitMode::Sync)
            .map_err(|source| Error::Kafka {
                context: format!("committing the clock of group '{}'", self.shared.group),
                source,
            })
    }
}

/// The member's librdkafka context: logs, and the rebalances.
struct LookbackContext {
    watch: Arc<Watch>,
    shared: Arc<Shared>,
}

impl ClientContext for LookbackContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_librdkafka(&self.watch, level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        client_error(&self.watch, Some(&self.shared.group), error, reason);
    }

    /// The lag of the partitions held, as librdkafka counts it: the log end
    /// minus the committed offset (the last checkpoint).
    fn stats(&self, statistics: Statistics) {
        let st = self.shared.state.lock();
        for (topic, t) in &statistics.topics {
            for (p, stats) in &t.partitions {
                if stats.consumer_lag < 0 || !st.held.contains_key(&(topic.clone(), *p)) {
                    continue;
                }
                self.shared
                    .metrics
                    .lag
                    .with_label_values(&[&self.shared.group, topic, &p.to_string()])
                    .set(stats.consumer_lag);
            }
        }
    }
}

impl ConsumerContext for LookbackContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.assign(consumer, tpl);
                let assigned = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = assigned {
                    tracing::error!(group = %self.shared.group, error = %e, "taking the partition assignment failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.revoke(tpl, cooperative);
                let unassigned = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = unassigned {
                    tracing::warn!(group = %self.shared.group, error = %e, "giving up partitions failed");
                }
            }
            other => {
                tracing::error!(group = %self.shared.group, error = ?other, "rebalance error; giving up every partition");
                let mut st = self.shared.state.lock();
                let lost: Vec<Partition> = st.held.drain().map(|(k, _)| k).collect();
                st.restoring.clear();
                st.events
                    .push_back(LookbackEvent::Revoked { partitions: lost });
                drop(st);
                let _ = consumer.unassign();
            }
        }
    }
}

impl LookbackContext {
    /// Partitions revoked: with the eager protocol, suspended until the
    /// assignment that follows says which come back; with the cooperative
    /// one, gone.
    fn revoke(&self, tpl: &TopicPartitionList, cooperative: bool) {
        let mut st = self.shared.state.lock();
        let mut lost = Vec::new();
        for e in tpl.elements() {
            let key = (e.topic().to_owned(), e.partition());
            let _ = self.shared.metrics.lag.remove_label_values(&[
                &self.shared.group,
                e.topic(),
                &e.partition().to_string(),
            ]);
            if let Some(pos) = st.held.remove(&key) {
                if cooperative {
                    st.restoring.remove(&key);
                    lost.push(key);
                } else {
                    st.suspended.insert(key, pos);
                }
            }
        }
        if !lost.is_empty() {
            st.events
                .push_back(LookbackEvent::Revoked { partitions: lost });
            st.maybe_ready();
        }
    }

    /// Positions an assignment: partitions held before resume where they
    /// were; the others start at their look-back.
    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let mut kept = Vec::new();
        let mut new = Vec::new();
        {
            let mut st = self.shared.state.lock();
            // A refused checkpoint is not committed again across an
            // assignment: a partition given back may have been restored from
            // another member's later checkpoint, which it would rewind.
            st.refused = None;
            for e in tpl.elements() {
                let key = (e.topic().to_owned(), e.partition());
                match st.suspended.remove(&key) {
                    Some(pos) => kept.push((key, pos)),
                    None => new.push(key),
                }
            }
            // Suspended and not given back: another member restores them.
            let lost: Vec<Partition> = st.suspended.drain().map(|(k, _)| k).collect();
            if !lost.is_empty() {
                for k in &lost {
                    st.restoring.remove(k);
                }
                st.events
                    .push_back(LookbackEvent::Revoked { partitions: lost });
            }
        }
        let restores = self.plan(consumer, &new);
        for ((topic, p), pos) in &kept {
            let _ = tpl.set_partition_offset(topic, *p, Offset::Offset(*pos));
        }
        for r in &restores {
            let (topic, p) = &r.partition;
            let _ = tpl.set_partition_offset(topic, *p, Offset::Offset(r.from));
        }
        let mut st = self.shared.state.lock();
        for ((topic, p), pos) in &kept {
            st.held.insert((topic.clone(), *p), *pos);
        }
        for r in &restores {
            st.held.insert(r.partition.clone(), r.from);
            if r.from < r.until {
                st.restoring.insert(r.partition.clone(), r.until);
            }
        }
        if !restores.is_empty() {
            st.restore_started.get_or_insert_with(Instant::now);
            st.restore_partitions += restores.len();
        }
        st.events.push_back(LookbackEvent::Assigned {
            kept: kept.into_iter().map(|(k, _)| k).collect(),
            restoring: restores,
        });
        st.maybe_ready();
        tracing::debug!(group = %self.shared.group, partitions = tpl.count(), "partitions assigned");
    }

    /// Where each new partition starts and ends its replay: the committed
    /// offset and clock, the look-back by time, the watermarks. When the
    /// lookup by time fails, replay starts at the partition's first record
    /// (logged); when the committed offsets cannot be read, the partition
    /// starts as one the group never committed.
    fn plan(&self, consumer: &BaseConsumer<Self>, new: &[Partition]) -> Vec<Restore> {
        if new.is_empty() {
            return Vec::new();
        }
        let shared = &self.shared;
        let mut query = TopicPartitionList::new();
        for (t, p) in new {
            query.add_partition(t, *p);
        }
        let offset_of = |list: &TopicPartitionList, (t, p): &Partition| {
            list.find_partition(t, *p).and_then(|e| match e.offset() {
                Offset::Offset(n) if n >= 0 => Some(n),
                _ => None,
            })
        };
        let committed = consumer
            .committed_offsets(query.clone(), shared.timeout)
            .inspect_err(|e| tracing::warn!(group = %shared.group, error = %e, "reading committed offsets failed"))
            .unwrap_or_default();
        let clocks = shared
            .clock
            .committed_offsets(query.clone(), shared.timeout)
            .inspect_err(|e| tracing::warn!(group = %shared.group, error = %e, "reading the checkpointed clocks failed"))
            .unwrap_or_default();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let lookback_ms = i64::try_from(shared.lookback.as_millis()).unwrap_or(i64::MAX);
        let mut plans = Vec::new();
        let mut times = TopicPartitionList::new();
        for key in new {
            let (t, p) = key;
            let (low, high) = consumer
                .fetch_watermarks(t, *p, shared.timeout)
                .inspect_err(|e| tracing::warn!(group = %shared.group, topic = %t, partition = p, error = %e, "reading the watermarks failed"))
                .unwrap_or((0, 0));
            let clock = offset_of(&clocks, key).filter(|c| *c > 0);
            let commit = offset_of(&committed, key);
            let until = match (commit, shared.from) {
                (Some(c), _) => c,
                (None, ReadFrom::End) => high,
                (None, ReadFrom::Beginning) => low,
            };
            let horizon = clock
                .map_or(now_ms, |c| c / 1000)
                .saturating_sub(lookback_ms);
            let _ = times.add_partition_offset(t, *p, Offset::Offset(horizon.max(0)));
            plans.push((key.clone(), low, until, clock, commit.is_some()));
        }
        let found = consumer
            .offsets_for_times(times, shared.timeout)
            .inspect_err(|e| tracing::warn!(group = %shared.group, error = %e, "looking up offsets by time failed; partitions are replayed from their first record"))
            .ok();
        plans
            .into_iter()
            .map(|(key, low, until, clock, committed)| {
                let from = match &found {
                    // No record at or after the horizon (-1, the end): nothing to replay.
                    Some(f) => offset_of(f, &key).unwrap_or(until),
                    // A broker that cannot look offsets up by time (librdkafka's
                    // mock cluster): all of it, rather than a state with holes.
                    None => low,
                }
                .clamp(low.min(until), until);
                Restore {
                    partition: key,
                    from,
                    until,
                    clock,
                    committed,
                    cut: from > low,
                }
            })
            .collect()
    }
}
