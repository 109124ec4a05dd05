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
//!
//! Here: the subscription and what it shares with its thread; `poll.rs`:
//! the polling thread; `rebalance.rs`: the rebalance callbacks and the
//! consumer's librdkafka context; `commit.rs`: storing and committing
//! settled offsets.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use choreo_core::{Delivery, Name, Settle, Settlement, SubscribeOptions, Subscription};
use parking_lot::Mutex;
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rustc_hash::FxHashMap;
use tokio::sync::Notify;

use crate::client::Inner;
use crate::config::Role;
use crate::metrics::KafkaMetrics;
use crate::window::Window;
use crate::{Error, Result};

mod commit;
mod poll;
mod rebalance;

use poll::Poller;
pub(crate) use poll::envelope_of;
use rebalance::GroupContext;

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
    /// Looked up several times per record: hashed with Fx, not SipHash
    /// (the keys are the broker's topic names and partition numbers).
    parts: FxHashMap<Key, Part>,
    /// Partitions that may have records waiting, served in turn.
    ready: VecDeque<Key>,
    /// Errors for `next` to report (at most one waits: the runtime logs them).
    errors: VecDeque<choreo_core::Error>,
    settlers: FxHashMap<Name, Arc<dyn Settle>>,
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

    /// What [`Subscription::next`] returns now, if it need not wait: an
    /// error first, then a record, then the end once the thread finished.
    fn next(&mut self) -> Option<Option<choreo_core::Result<Delivery>>> {
        if let Some(e) = self.errors.pop_front() {
            return Some(Some(Err(e)));
        }
        if let Some(d) = self.take() {
            return Some(Some(Ok(d)));
        }
        self.finished.then_some(None)
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
            let delivery = Delivery::new(
                t.record.envelope,
                key.1 as u32,
                t.offset as u64,
                t.attempt,
                epoch,
                settle,
            );
            return Some(delivery.with_original(t.record.original));
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
            // Most calls find a record waiting: take it without registering
            // for a wake-up.
            if let Some(next) = shared.state.lock().next() {
                return next;
            }
            loop {
                let notified = shared.ready.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if let Some(next) = shared.state.lock().next() {
                    return next;
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
