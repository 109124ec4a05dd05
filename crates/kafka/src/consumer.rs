//! `KafkaSubscription`: one member of a consumer group, with offsets
//! committed only once deliveries are settled.
//!
//! A dedicated thread polls the librdkafka consumer: it buffers fetched
//! records per partition in a [`Window`], hands the settled prefix of every
//! partition to librdkafka's offset store (which librdkafka commits every
//! `commit_interval`; nothing unsettled is ever stored), pauses partitions
//! whose window is full, and runs the rebalance callbacks. [`Subscription::next`] hands records out
//! of the windows (given-back ones first, partitions in turn); settling a
//! [`Delivery`] updates its window.
//!
//! Rebalances: a revoked partition's settled prefix is committed at once
//! (synchronously, inside the callback), then its window is dropped and its
//! epoch forgotten, so deliveries still in flight settle into nothing — the
//! new owner gets them from the committed offset. An assigned partition
//! starts a new window with a new epoch.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use choreo_core::{
    Delivery, Envelope, MALFORMED_HEADER, Name, Settle, Settlement, StartFrom, SubscribeOptions,
    Subscription,
};
use parking_lot::Mutex;
use rdkafka::Message;
use rdkafka::client::ClientContext;
use rdkafka::config::{FromClientConfigAndContext, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use tokio::sync::Notify;

use crate::client::{Inner, client_error, log_librdkafka};
use crate::config::Role;
use crate::metrics::KafkaMetrics;
use crate::record::{RecordHeader, RecordParts, envelope_from_record};
use crate::watch::Watch;
use crate::window::Window;
use crate::{Error, Result};

/// How long one poll of the consumer blocks: bounds how fast the thread
/// notices `close`.
const POLL: Duration = Duration::from_millis(50);
/// Records taken from the consumer per lock of the shared state.
const BATCH: usize = 512;
/// How long closing waits for a rebalance to let it commit.
const CLOSE_PATIENCE: Duration = Duration::from_secs(15);
/// How often settled offsets are handed to librdkafka's offset store (a
/// local operation; librdkafka commits them every `commit_interval`).
const STORE_EVERY: Duration = Duration::from_millis(10);

type Key = (Name, i32);

/// One member of a Kafka consumer group, from [`Bus::subscribe`](choreo_core::Bus::subscribe).
///
/// Delivers each partition's records in offset order (given-back ones first),
/// commits a partition's offset only past records that are settled and have
/// no unsettled record before them, and on [`close`](Subscription::close)
/// commits what was settled and leaves the group. Dropping it without closing
/// does the same in the background.
pub struct KafkaSubscription {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for KafkaSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSubscription")
            .field("group", &self.shared.group)
            .field("topics", &self.shared.topics)
            .finish_non_exhaustive()
    }
}

struct Shared {
    group: String,
    topics: Vec<String>,
    metrics: KafkaMetrics,
    // parking_lot Mutex: never held across an await, nor across a consumer call.
    state: Mutex<State>,
    /// Wakes `next`.
    ready: Notify,
    /// Wakes `subscribe`, waiting for the first assignment.
    joined: Notify,
    /// Set by `close` and `drop`: the polling thread commits and leaves.
    stop: AtomicBool,
    /// Bumped by every rebalance: records fetched before one are dropped.
    rebalances: AtomicU64,
    /// The group's state as librdkafka's last statistics gave it, for a
    /// join that times out to say where it stopped.
    group_state: Mutex<Option<String>>,
}

#[derive(Default)]
struct State {
    parts: HashMap<Key, Part>,
    /// Partitions that may have records waiting, served in turn.
    ready: VecDeque<Key>,
    /// Errors for `next` to report (at most one waits: the runtime logs them).
    errors: VecDeque<choreo_core::Error>,
    settlers: HashMap<Name, Arc<dyn Settle>>,
    /// Settled offsets of revoked partitions whose commit failed (the group
    /// was rebalancing): committed if the partition comes back to this member.
    uncommitted: HashMap<Key, i64>,
    joined: bool,
    finished: bool,
    close_error: Option<String>,
    next_epoch: u64,
}

struct Part {
    epoch: u64,
    window: Window,
    queued: bool,
    /// The last offset the broker confirmed committing.
    committed: Option<i64>,
    /// The last offset handed to librdkafka's offset store.
    stored: Option<i64>,
    paused: bool,
    /// Where this member starts reading when the assignment names an offset
    /// (the end, pinned for `Latest`; or where settled records stop, when a
    /// partition comes back): the lag before the group's first commit counts
    /// from here.
    start: Option<i64>,
}

impl State {
    fn enqueue(&mut self, key: &Key) {
        if let Some(p) = self.parts.get_mut(key)
            && !p.queued
            && p.window.waiting() > 0
        {
            p.queued = true;
            self.ready.push_back(key.clone());
        }
    }

    fn take(&mut self) -> Option<Delivery> {
        while let Some(key) = self.ready.pop_front() {
            let Some(part) = self.parts.get_mut(&key) else {
                continue;
            };
            part.queued = false;
            let Some(t) = part.window.take() else {
                continue;
            };
            let epoch = part.epoch;
            let settle = self.settlers.get(&key.0).cloned()?;
            self.enqueue(&key);
            return Some(Delivery::new(
                t.envelope,
                key.1 as u32,
                t.offset as u64,
                t.attempt,
                epoch,
                settle,
            ));
        }
        None
    }
}

/// Settles the deliveries of one topic of one subscription.
struct TopicSettle {
    shared: Weak<Shared>,
    topic: Name,
}

impl Settle for TopicSettle {
    fn settle(&self, partition: u32, offset: u64, token: u64, settlement: Settlement) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let key = (self.topic.clone(), partition as i32);
        let mut st = shared.state.lock();
        match st.parts.get_mut(&key) {
            Some(part) if part.epoch == token => {
                let given_back = settlement == Settlement::Redeliver;
                part.window.settle(offset as i64, !given_back);
                if given_back {
                    st.enqueue(&key);
                    drop(st);
                    shared.ready.notify_one();
                }
            }
            _ => {
                drop(st);
                shared
                    .metrics
                    .stale_settlements
                    .with_label_values(&[&shared.group])
                    .inc();
            }
        }
    }
}

impl KafkaSubscription {
    /// Creates the consumer, starts its thread and waits for the first
    /// partition assignment.
    pub(crate) async fn start(bus: Arc<Inner>, options: SubscribeOptions) -> Result<Self> {
        let started = Instant::now();
        let config = &bus.config;
        let group = config.group_id(&options.group);
        let client_config =
            config.client_config(Role::Consumer, Some((&options.group, options.start)))?;
        let shared = Arc::new(Shared {
            group: group.clone(),
            topics: options.topics.clone(),
            metrics: bus.metrics.clone(),
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            joined: Notify::new(),
            stop: AtomicBool::new(false),
            rebalances: AtomicU64::new(0),
            group_state: Mutex::new(None),
        });
        let context = GroupContext {
            watch: bus.watch.clone(),
            shared: shared.clone(),
            start: options.start,
            timeout: config.admin_timeout,
        };
        let consumer =
            BaseConsumer::from_config_and_context(&client_config, context).map_err(|source| {
                Error::Client {
                    role: "consumer",
                    brokers: config.brokers.clone(),
                    source: bus.watch.redact(source),
                }
            })?;
        let topics: Vec<&str> = options.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).map_err(|source| Error::Kafka {
            context: format!("subscribing group '{group}' to {topics:?}"),
            source,
        })?;
        let poller = Poller {
            shared: shared.clone(),
            max_window: config.max_window_per_partition,
            names: HashMap::new(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("choreo-kafka-{group}"))
            .spawn(move || poller.run(consumer))
            .map_err(|e| Error::Topic {
                topic: options.topics.join(","),
                reason: format!("cannot start the consumer thread: {e}"),
            })?;
        let sub = KafkaSubscription {
            shared: shared.clone(),
            thread: Some(thread),
        };
        let joined = tokio::time::timeout(config.join_timeout, async {
            loop {
                let notified = shared.joined.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                {
                    let st = shared.state.lock();
                    if st.joined || st.finished {
                        return;
                    }
                }
                notified.await;
            }
        })
        .await;
        if joined.is_err() {
            let last_seen = shared.group_state.lock().clone().unwrap_or_else(|| {
                "no statistics from librdkafka yet (they come every lag_interval, and not at all when it is off)".to_owned()
            });
            return Err(bus.watch.explain(
                started,
                Error::JoinTimeout {
                    group,
                    brokers: config.brokers.clone(),
                    timeout: config.join_timeout,
                    last_seen,
                },
            ));
        }
        Ok(sub)
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.shared.group
    }

    /// The partitions currently assigned to this member, as `(topic, partition)`.
    pub fn assignment(&self) -> Vec<(String, i32)> {
        let mut v: Vec<(String, i32)> = self
            .shared
            .state
            .lock()
            .parts
            .keys()
            .map(|(t, p)| (t.to_string(), *p))
            .collect();
        v.sort();
        v
    }
}

impl Drop for KafkaSubscription {
    fn drop(&mut self) {
        // The thread commits what was settled and leaves the group on its own.
        self.shared.stop.store(true, Ordering::Release);
    }
}

impl Subscription for KafkaSubscription {
    fn next(
        &mut self,
    ) -> impl std::future::Future<Output = Option<choreo_core::Result<Delivery>>> + Send {
        let shared = self.shared.clone();
        async move {
            loop {
                let notified = shared.ready.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                {
                    let mut st = shared.state.lock();
                    if let Some(e) = st.errors.pop_front() {
                        return Some(Err(e));
                    }
                    if let Some(d) = st.take() {
                        return Some(Ok(d));
                    }
                    if st.finished {
                        return None;
                    }
                }
                notified.await;
            }
        }
    }

    fn close(mut self) -> impl std::future::Future<Output = choreo_core::Result<()>> + Send {
        self.shared.stop.store(true, Ordering::Release);
        let thread = self.thread.take();
        let shared = self.shared.clone();
        async move {
            if let Some(t) = thread {
                let _ = tokio::task::spawn_blocking(move || t.join()).await;
            }
            let close_error = shared.state.lock().close_error.take();
            match close_error {
                None => Ok(()),
                Some(reason) => Err(choreo_core::Error::Config(format!(
                    "closing the subscription of group '{}': {reason}; unsettled and uncommitted deliveries will be delivered again",
                    shared.group
                ))),
            }
        }
    }
}

/// The polling thread.
struct Poller {
    shared: Arc<Shared>,
    max_window: usize,
    names: HashMap<String, Name>,
}

impl Poller {
    fn run(mut self, consumer: BaseConsumer<GroupContext>) {
        let mut batch: Vec<(Key, i64, Envelope)> = Vec::with_capacity(BATCH);
        let mut last_store = Instant::now();
        while !self.shared.stop.load(Ordering::Acquire) {
            let mut timeout = POLL;
            while batch.len() < BATCH {
                let generation = self.shared.rebalances.load(Ordering::Acquire);
                match consumer.poll(timeout) {
                    Some(Ok(m)) => {
                        if self.shared.rebalances.load(Ordering::Acquire) != generation {
                            // Fetched under the previous assignment.
                            batch.clear();
                        }
                        let record = self.convert(&m);
                        batch.push(record);
                        timeout = Duration::ZERO;
                    }
                    Some(Err(e)) => {
                        self.report(e);
                        break;
                    }
                    None => break,
                }
            }
            if !batch.is_empty() {
                self.deliver(&mut batch);
            }
            if last_store.elapsed() >= STORE_EVERY {
                store(&consumer, &self.shared);
                last_store = Instant::now();
            }
            self.flow_control(&consumer);
        }
        self.final_commit(&consumer);
        // Closing the consumer revokes the assignment (committing again,
        // which is a no-op by now) and leaves the group.
        drop(consumer);
        self.shared.state.lock().finished = true;
        self.shared.ready.notify_one();
        self.shared.joined.notify_one();
    }

    /// Commits what was settled before leaving. While the group rebalances
    /// (another member left or joined) commits are refused: keep polling so
    /// this member takes part in the rebalance, and commit with the new
    /// generation (partitions that come back carry their settled offsets).
    /// Other retriable failures (the coordinator moving) are retried too,
    /// for at most `CLOSE_PATIENCE`.
    fn final_commit(&self, consumer: &BaseConsumer<GroupContext>) {
        let deadline = Instant::now() + CLOSE_PATIENCE;
        let failure = loop {
            match commit_now(consumer, &self.shared, None) {
                Ok(()) => {
                    let st = self.shared.state.lock();
                    if st.uncommitted.is_empty() {
                        break None;
                    }
                    if Instant::now() > deadline {
                        break Some(format!(
                            "the settled offsets of {} partition(s) moved to another member uncommitted",
                            st.uncommitted.len()
                        ));
                    }
                }
                Err(e) if retriable_commit(&e) && Instant::now() < deadline => {}
                Err(e) => break Some(format!("the final commit failed: {e}")),
            }
            // Serve the rebalance; records fetched meanwhile are not delivered.
            let _ = consumer.poll(POLL);
        };
        if let Some(reason) = failure {
            self.shared.state.lock().close_error = Some(reason);
        }
    }

    fn name(&mut self, topic: &str) -> Name {
        if let Some(n) = self.names.get(topic) {
            return n.clone();
        }
        let n = Name::from(topic);
        self.names.insert(topic.to_owned(), n.clone());
        n
    }

    fn convert(&mut self, m: &BorrowedMessage<'_>) -> (Key, i64, Envelope) {
        let topic = self.name(m.topic());
        let mut env = envelope_of(m);
        env.topic = topic.clone();
        if env.headers.get(MALFORMED_HEADER).is_some() {
            self.shared
                .metrics
                .malformed
                .with_label_values(&[&topic])
                .inc();
        }
        ((topic, m.partition()), m.offset(), env)
    }

    fn deliver(&self, batch: &mut Vec<(Key, i64, Envelope)>) {
        let mut st = self.shared.state.lock();
        let mut added = false;
        for (key, offset, env) in batch.drain(..) {
            let Some(part) = st.parts.get_mut(&key) else {
                // Not (or no longer) assigned: its owner fetches it again.
                continue;
            };
            if part.window.push(offset, Arc::new(env)) {
                added = true;
                st.enqueue(&key);
            }
        }
        drop(st);
        if added {
            self.shared.ready.notify_one();
        }
    }

    fn report(&self, e: KafkaError) {
        tracing::warn!(group = %self.shared.group, error = %e, "kafka consumer error");
        let mut st = self.shared.state.lock();
        if st.errors.is_empty() {
            st.errors.push_back(choreo_core::Error::backend(
                format!("consuming as group '{}'", self.shared.group),
                e,
            ));
            drop(st);
            self.shared.ready.notify_one();
        }
    }

    /// Pauses partitions whose window is full; resumes them once it halved.
    fn flow_control(&self, consumer: &BaseConsumer<GroupContext>) {
        let mut pause = TopicPartitionList::new();
        let mut resume = TopicPartitionList::new();
        {
            let mut st = self.shared.state.lock();
            for ((topic, p), part) in st.parts.iter_mut() {
                let len = part.window.len();
                if !part.paused && len >= self.max_window {
                    part.paused = true;
                    pause.add_partition(topic, *p);
                } else if part.paused && len < self.max_window.div_ceil(2) {
                    part.paused = false;
                    resume.add_partition(topic, *p);
                }
            }
        }
        if pause.count() > 0
            && let Err(e) = consumer.pause(&pause)
        {
            tracing::warn!(group = %self.shared.group, error = %e, "pausing partitions failed");
        }
        if resume.count() > 0
            && let Err(e) = consumer.resume(&resume)
        {
            tracing::warn!(group = %self.shared.group, error = %e, "resuming partitions failed");
        }
    }
}

/// The envelope of a consumed record (see [`envelope_from_record`]).
pub(crate) fn envelope_of(m: &BorrowedMessage<'_>) -> Envelope {
    // rdkafka panics on a header name that is not UTF-8: such a record is
    // still delivered, marked malformed.
    let headers = std::panic::catch_unwind(AssertUnwindSafe(|| {
        m.headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| RecordHeader {
                        name: h.key,
                        value: h.value,
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    }));
    let (headers, unreadable) = match headers {
        Ok(h) => (h, false),
        Err(_) => (Vec::new(), true),
    };
    let mut env = envelope_from_record(&RecordParts {
        topic: m.topic(),
        partition: m.partition(),
        offset: m.offset(),
        timestamp_ms: m.timestamp().to_millis(),
        key: m.key(),
        value: m.payload(),
        headers: &headers,
    });
    if unreadable {
        env.headers.insert(
            MALFORMED_HEADER,
            "the record's headers are unreadable (a header name is not UTF-8)",
        );
    }
    env
}

/// Hands every partition's settled prefix that moved to librdkafka's offset
/// store; librdkafka commits stored offsets every `commit_interval` (and
/// reports the outcome as a commit event: see [`settle_commit`]).
fn store(consumer: &BaseConsumer<GroupContext>, shared: &Shared) {
    let mut tpl = TopicPartitionList::new();
    {
        let st = shared.state.lock();
        for ((topic, p), part) in st.parts.iter() {
            if let Some(c) = part.window.committable()
                && part.stored != Some(c)
            {
                // Adding to a list only fails for an invalid offset.
                let _ = tpl.add_partition_offset(topic, *p, Offset::Offset(c));
            }
        }
    }
    if tpl.count() == 0 {
        return;
    }
    match consumer.store_offsets(&tpl) {
        Ok(()) => {
            let mut st = shared.state.lock();
            for e in tpl.elements() {
                if let Offset::Offset(o) = e.offset()
                    && let Some(part) = st.parts.get_mut(&(Name::from(e.topic()), e.partition()))
                {
                    part.stored = Some(o);
                }
            }
        }
        // A partition revoked meanwhile: its new owner starts from the last commit.
        Err(e) => tracing::debug!(group = %shared.group, error = %e, "storing offsets failed"),
    }
}

/// Commits the settled prefix of `only` (or of every assigned partition) now,
/// synchronously: on revocation and on close.
fn commit_now(
    consumer: &BaseConsumer<GroupContext>,
    shared: &Shared,
    only: Option<&TopicPartitionList>,
) -> KafkaResult<()> {
    let mut tpl = TopicPartitionList::new();
    {
        let st = shared.state.lock();
        let wanted = |t: &str, p: i32| only.is_none_or(|l| l.find_partition(t, p).is_some());
        for ((topic, p), part) in st.parts.iter() {
            if let Some(c) = part.window.committable()
                && part.committed != Some(c)
                && wanted(topic, *p)
            {
                let _ = tpl.add_partition_offset(topic, *p, Offset::Offset(c));
            }
        }
    }
    if tpl.count() == 0 {
        return Ok(());
    }
    // The offset store too, or librdkafka's own commit on close could go
    // back to an older stored offset.
    let _ = consumer.store_offsets(&tpl);
    let result = consumer.commit(&tpl, CommitMode::Sync);
    settle_commit(shared, &result, &tpl);
    result
}

/// Records the outcome of a commit: confirmed offsets, or a counted failure.
fn settle_commit(shared: &Shared, result: &KafkaResult<()>, offsets: &TopicPartitionList) {
    let mut st = shared.state.lock();
    let mut failed = result.is_err();
    for e in offsets.elements() {
        let Offset::Offset(o) = e.offset() else {
            continue;
        };
        let key = (Name::from(e.topic()), e.partition());
        let Some(part) = st.parts.get_mut(&key) else {
            continue;
        };
        if result.is_ok() && e.error().is_ok() {
            part.committed = Some(part.committed.map_or(o, |c| c.max(o)));
        } else {
            // The offset stays stored: librdkafka's next commit sends it again.
            failed = true;
        }
    }
    drop(st);
    if failed {
        shared
            .metrics
            .commit_failures
            .with_label_values(&[&shared.group])
            .inc();
        if let Err(e) = result {
            tracing::warn!(group = %shared.group, error = %e, "committing offsets failed; they are sent again with the next commit");
        }
    }
}

/// The consumer's librdkafka context: rebalances, commits, lag, logs.
struct GroupContext {
    watch: Arc<Watch>,
    shared: Arc<Shared>,
    start: StartFrom,
    timeout: Duration,
}

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_librdkafka(&self.watch, level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        client_error(&self.watch, Some(&self.shared.group), error, reason);
    }

    fn stats(&self, statistics: Statistics) {
        if let Some(g) = &statistics.cgrp {
            *self.shared.group_state.lock() = Some(format!(
                "group state '{}', join state '{}', {} rebalances, {} partitions assigned",
                g.state, g.join_state, g.rebalance_cnt, g.assignment_size
            ));
        }
        let st = self.shared.state.lock();
        for (topic, t) in &statistics.topics {
            for (p, stats) in &t.partitions {
                let key = (Name::from(topic.as_str()), *p);
                let Some(part) = st.parts.get(&key) else {
                    continue;
                };
                let lag = if stats.consumer_lag >= 0 {
                    Some(stats.consumer_lag)
                } else {
                    lag_before_first_commit(part, stats, self.start)
                };
                if let Some(lag) = lag {
                    self.shared
                        .metrics
                        .lag
                        .with_label_values(&[&self.shared.group, topic, &p.to_string()])
                        .set(lag);
                }
            }
        }
    }
}

/// The lag of a partition whose group has no committed offset yet.
/// librdkafka counts lag from the committed offset and reports none before
/// the first commit, yet a group that has never committed (its first
/// handlings hang, or it only just joined behind a backlog) is one an
/// operator must see. Counted from the first record this member has not
/// settled; before it has received any, from where it starts reading (the end
/// pinned for `Latest`, or the log start for `Earliest`). Up to the same end
/// as librdkafka's lag: the last stable offset (its default isolation level
/// is `read_committed`), else the high watermark. `None` while either end is
/// unknown.
fn lag_before_first_commit(
    part: &Part,
    stats: &rdkafka::statistics::Partition,
    start: StartFrom,
) -> Option<i64> {
    let end = if stats.ls_offset >= 0 {
        stats.ls_offset
    } else {
        stats.hi_offset
    };
    if end < 0 {
        return None;
    }
    let from = match part.window.unsettled_from().or(part.start) {
        Some(offset) => offset,
        None if start == StartFrom::Earliest && stats.lo_offset >= 0 => stats.lo_offset,
        None => return None,
    };
    // Records below the log start are gone: they are not behind.
    let from = from.max(stats.lo_offset);
    Some((end - from).max(0))
}

impl ConsumerContext for GroupContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        self.shared.rebalances.fetch_add(1, Ordering::AcqRel);
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let count = |kind: &str| {
            self.shared
                .metrics
                .rebalances
                .with_label_values(&[&self.shared.group, kind])
                .inc();
        };
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                count("assign");
                if self.start == StartFrom::Latest {
                    self.pin_latest(consumer, tpl);
                }
                self.assign(tpl);
                let assigned = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = assigned {
                    tracing::error!(group = %self.shared.group, error = %e, "taking the partition assignment failed");
                }
                self.shared.state.lock().joined = true;
                self.shared.joined.notify_one();
                tracing::debug!(group = %self.shared.group, partitions = tpl.count(), "partitions assigned");
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                if consumer.assignment_lost() {
                    // The group moved on without us: committing would fail.
                    count("lost");
                } else {
                    count("revoke");
                    self.commit_revoked(consumer, tpl);
                }
                self.revoke(tpl);
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
                let all = {
                    let st = self.shared.state.lock();
                    let mut all = TopicPartitionList::new();
                    for (t, p) in st.parts.keys() {
                        all.add_partition(t, *p);
                    }
                    all
                };
                self.revoke(&all);
                let _ = consumer.unassign();
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        settle_commit(&self.shared, &result, offsets);
    }
}

impl GroupContext {
    /// For a group starting at the end of the log: partitions it never
    /// committed start at the high watermark read now, so everything
    /// published after `subscribe` returns is delivered.
    fn pin_latest(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let committed = match consumer.committed_offsets(tpl.clone(), self.timeout) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(group = %self.shared.group, error = %e, "reading committed offsets failed; the latest position is resolved by the consumer");
                return;
            }
        };
        for e in committed.elements() {
            if e.offset() != Offset::Invalid {
                continue;
            }
            match consumer.fetch_watermarks(e.topic(), e.partition(), self.timeout) {
                Ok((_, high)) => {
                    let _ =
                        tpl.set_partition_offset(e.topic(), e.partition(), Offset::Offset(high));
                }
                Err(err) => {
                    tracing::warn!(group = %self.shared.group, topic = e.topic(), partition = e.partition(), error = %err, "reading the high watermark failed");
                }
            }
        }
    }

    fn assign(&self, tpl: &mut TopicPartitionList) {
        let weak = Arc::downgrade(&self.shared);
        let mut st = self.shared.state.lock();
        let back: Vec<(Key, i64)> = tpl
            .elements()
            .iter()
            .filter_map(|e| {
                let key = (Name::from(e.topic()), e.partition());
                st.uncommitted.get(&key).map(|o| (key, *o))
            })
            .collect();
        for ((topic, p), offset) in &back {
            // Back to this member: resume after the settled records, and
            // commit them with the new generation.
            let _ = tpl.set_partition_offset(topic, *p, Offset::Offset(*offset));
        }
        if !st.uncommitted.is_empty() {
            let lost = st.uncommitted.len() - back.len();
            if lost > 0 {
                tracing::warn!(
                    group = %self.shared.group, partitions = lost,
                    "settled offsets of partitions now owned by another member could not be committed: their owner delivers those records again"
                );
            }
            st.uncommitted.clear();
        }
        for e in tpl.elements() {
            let topic = Name::from(e.topic());
            st.settlers.entry(topic.clone()).or_insert_with(|| {
                Arc::new(TopicSettle {
                    shared: weak.clone(),
                    topic: topic.clone(),
                })
            });
            st.next_epoch += 1;
            let epoch = st.next_epoch;
            let key = (topic, e.partition());
            let window = match back.iter().find(|(k, _)| *k == key) {
                Some((_, offset)) => Window::settled_until(*offset),
                None => Window::default(),
            };
            let start = match e.offset() {
                Offset::Offset(n) => Some(n),
                _ => None,
            };
            st.parts.insert(
                key,
                Part {
                    epoch,
                    window,
                    queued: false,
                    committed: None,
                    stored: None,
                    paused: false,
                    start,
                },
            );
        }
    }

    /// Commits the settled prefix of the revoked partitions, synchronously.
    fn commit_revoked(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        match commit_now(consumer, &self.shared, Some(tpl)) {
            Ok(()) => {}
            Err(e) => {
                // Typically the group is rebalancing and refuses commits of
                // the old generation: keep the offsets for the case the
                // partitions come back to this member.
                tracing::info!(group = %self.shared.group, error = %e, "committing revoked partitions failed; kept for the next assignment");
                let mut st = self.shared.state.lock();
                let pending: Vec<(Key, i64)> = tpl
                    .elements()
                    .iter()
                    .filter_map(|e| {
                        let key = (Name::from(e.topic()), e.partition());
                        let part = st.parts.get(&key)?;
                        let c = part.window.committable()?;
                        (part.committed != Some(c)).then_some((key, c))
                    })
                    .collect();
                st.uncommitted.extend(pending);
            }
        }
    }

    fn revoke(&self, tpl: &TopicPartitionList) {
        let mut st = self.shared.state.lock();
        for e in tpl.elements() {
            let key = (Name::from(e.topic()), e.partition());
            st.parts.remove(&key);
            let _ = self.shared.metrics.lag.remove_label_values(&[
                &self.shared.group,
                e.topic(),
                &e.partition().to_string(),
            ]);
        }
        let parts = std::mem::take(&mut st.ready);
        st.ready = parts
            .into_iter()
            .filter(|k| st.parts.contains_key(k))
            .collect();
    }
}

/// Whether a commit may succeed when tried again: the group is rebalancing
/// (it succeeds once this member has rejoined), or the coordinator is
/// moving or briefly unreachable.
fn retriable_commit(e: &KafkaError) -> bool {
    use rdkafka::error::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::RebalanceInProgress
                | C::IllegalGeneration
                | C::UnknownMemberId
                | C::WaitingForCoordinator
                | C::CoordinatorNotAvailable
                | C::NotCoordinator
                | C::CoordinatorLoadInProgress
                | C::RequestTimedOut
                | C::OperationTimedOut
                | C::BrokerTransportFailure
                | C::AllBrokersDown
                | C::NetworkException
        )
    )
}
