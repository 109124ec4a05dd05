//! The in-process bus: Kafka's semantics inside one process, no broker needed.
//!
//! Topics have partitions; an event goes to the partition of its key (Kafka's
//! murmur2 partitioner, so a key lands on the same partition number as on
//! Kafka). Each consumer group has its own position in every partition; the
//! members of a group split the partitions between them (round robin over the
//! members sorted by join order) and the split is redone when a member joins
//! or leaves. A partition that changes owner is handed over at the group's
//! position: deliveries the old owner had not settled are delivered again.
//!
//! # Retention and back-pressure
//!
//! Each partition keeps at most [`Retention::max_events_per_partition`]
//! events. Events are kept after they are consumed, so that a group that
//! subscribes later from [`StartFrom::Earliest`](choreo_core::StartFrom) can
//! read them, until the bound is hit. Then, to make room for a new event:
//!
//! 1. the oldest event is evicted if every group with members has settled it
//!    (counted in `choreo_bus_retention_evicted_total`);
//! 2. otherwise, with [`WhenFull::Block`] (the default), who waits depends on
//!    who publishes (see [`WhenFull::Block`] for why):
//!    - a publish made **while handling a delivery** (a [`Service`]'s emitted
//!      events, receipts and dead letters) never waits: the event is appended
//!      past the bound (counted in `choreo_bus_overflow_total`);
//!    - any other publish (a flow started by a [`Publisher`], an event
//!      published from a loop of your own) waits for room in its partition,
//!      and also while **any** partition of the bus is past its bound, so the
//!      work already admitted drains before new work comes in
//!      (`choreo_bus_publish_waits_total` counts the waits). Nothing is lost;
//! 3. with [`WhenFull::DropOldest`], the oldest event is evicted even though a
//!    group has not read it; the group skips it and
//!    `choreo_bus_unread_evicted_total{topic,group}` counts it, with a warning
//!    in the log. Nothing waits and nothing goes past the bound.
//!
//! A group whose members have all left does not hold events back: its unread
//! events are evicted when room is needed, counted in
//! `choreo_bus_unread_evicted_total` like case 3. No event a group has not read
//! disappears without being counted.
//!
//! A publisher that has waited [`Retention::stalled_after`] (default 10 s)
//! while the group holding the room back settled nothing logs a warning naming
//! the topic, partition and group, and counts
//! `choreo_bus_publish_stalls_total{topic,partition,group}`, again every
//! period while it lasts: a wait that may never end is never silent.
//!
//! [`Service`]: crate::Service
//! [`Publisher`]: crate::Publisher
//!
//! Here the bus and its topics; `config.rs` its configuration,
//! `partition.rs` a partition's log, cursors and retention, `back_pressure.rs`
//! who waits for room and who never does, `group.rs` consumer groups and their
//! assignments, `subscription.rs` a member's subscription, `metrics.rs` the
//! bus's metrics, `settled.rs` waiting until the bus is quiet.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, RwLock};

use choreo_core::{Bus, Envelope, Error, Name, Result, SubscribeOptions};
use prometheus::Registry;
use tokio::sync::Notify;

use crate::identity::{self, IdentityCache};

mod back_pressure;
mod config;
mod group;
mod metrics;
mod partition;
mod settled;
mod subscription;

pub(crate) use back_pressure::handling;
pub use config::{InProcessConfig, Retention, WhenFull};
pub use settled::Unsettled;
pub(crate) use settled::{Activity, describe as describe_unsettled};
pub use subscription::InProcessSubscription;

use back_pressure::{Gate, in_handler};
use group::GroupState;
use metrics::{Counters, LagCollector};
use partition::{PartState, Partition};
use settled::Quiet;

/// The in-process bus. Cheap to clone; clones share the topics.
///
/// ```
/// # tokio_test_block_on(async {
/// use choreo_bus::InProcessBus;
/// use choreo_core::{Bus, Envelope, SubscribeOptions, Subscription};
///
/// let bus = InProcessBus::new();
/// let mut sub = bus.subscribe(SubscribeOptions::new("audit", ["orders"])).await.unwrap();
/// bus.publish(Envelope::new("OrderPlaced", "orders", "{}")).await.unwrap();
/// let delivery = sub.next().await.unwrap().unwrap();
/// assert_eq!(delivery.envelope().event_type, "OrderPlaced");
/// delivery.ack();
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Clone)]
pub struct InProcessBus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for InProcessBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessBus")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: InProcessConfig,
    // std RwLock: never held across an await.
    topics: RwLock<rustc_hash::FxHashMap<Name, Arc<Topic>>>,
    /// Topics by the identity of the names publishes name them with.
    by_identity: IdentityCache<Name, Arc<Topic>, 64>,
    groups: Mutex<HashMap<Arc<str>, GroupState>>,
    next_member: AtomicU64,
    counters: Counters,
    gate: Arc<Gate>,
    /// Wakes [`InProcessBus::settled`].
    quiet: Arc<Quiet>,
}

struct Topic {
    name: Name,
    partitions: Vec<Arc<Partition>>,
}

impl InProcessBus {
    /// A bus with the default configuration.
    pub fn new() -> Self {
        Self::with_config(InProcessConfig::default())
    }

    /// A bus with a configuration.
    pub fn with_config(config: InProcessConfig) -> Self {
        InProcessBus {
            inner: Arc::new(Inner {
                config,
                topics: RwLock::new(rustc_hash::FxHashMap::default()),
                by_identity: IdentityCache::new(),
                groups: Mutex::new(HashMap::new()),
                next_member: AtomicU64::new(1),
                counters: Counters::new(),
                gate: Arc::new(Gate {
                    over: AtomicUsize::new(0),
                    opened: Notify::new(),
                }),
                quiet: Arc::new(Quiet::new()),
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &InProcessConfig {
        &self.inner.config
    }

    /// Registers the bus's metrics (`choreo_bus_*`) with `registry`.
    pub fn register_metrics(&self, registry: &Registry) -> prometheus::Result<()> {
        let c = &self.inner.counters;
        registry.register(Box::new(c.unread_evicted.clone()))?;
        registry.register(Box::new(c.publish_waits.clone()))?;
        registry.register(Box::new(c.overflow.clone()))?;
        registry.register(Box::new(c.stalls.clone()))?;
        registry.register(Box::new(LagCollector::new(Arc::downgrade(&self.inner))))?;
        Ok(())
    }

    /// Creates `topic` with `partitions` partitions if it does not exist yet.
    /// Returns the partition count it has.
    pub fn create_topic(&self, topic: &str, partitions: u32) -> u32 {
        self.inner
            .topic_with(topic, Some(partitions))
            .partitions
            .len() as u32
    }

    /// The names of the topics that exist.
    pub fn topics(&self) -> Vec<String> {
        let topics = self.inner.topics.read().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<String> = topics.keys().map(|k| k.to_string()).collect();
        v.sort();
        v
    }

    /// A snapshot of a topic's partitions: retained range and every group's
    /// position. `None` for a topic that does not exist.
    pub fn topic_stats(&self, topic: &str) -> Option<TopicStats> {
        let t = self
            .inner
            .topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
            .cloned()?;
        let partitions = t
            .partitions
            .iter()
            .map(|p| {
                let st = p.lock();
                PartitionStats {
                    partition: p.index,
                    start: st.base,
                    end: st.end(),
                    groups: st
                        .cursors
                        .iter()
                        .map(|c| GroupPosition {
                            group: c.group.to_string(),
                            committed: c.committed,
                            active: c.active(),
                        })
                        .collect(),
                }
            })
            .collect();
        Some(TopicStats {
            topic: topic.to_owned(),
            partitions,
        })
    }

    /// Every event currently retained in `topic`, in partition then offset order.
    /// A tool for tests and the tracer's in-process tap; it does not consume.
    pub fn retained(&self, topic: &str) -> Vec<Arc<Envelope>> {
        let Some(t) = self
            .inner
            .topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
            .cloned()
        else {
            return Vec::new();
        };
        t.partitions
            .iter()
            .flat_map(|p| p.lock().log.iter().cloned().collect::<Vec<_>>())
            .collect()
    }
}

impl Default for InProcessBus {
    fn default() -> Self {
        Self::new()
    }
}

/// Positions in one topic; see [`InProcessBus::topic_stats`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicStats {
    /// The topic.
    pub topic: String,
    /// Each partition.
    pub partitions: Vec<PartitionStats>,
}

/// Positions in one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionStats {
    /// Partition number.
    pub partition: u32,
    /// Oldest retained offset.
    pub start: u64,
    /// Offset the next event will get.
    pub end: u64,
    /// Each group's position.
    pub groups: Vec<GroupPosition>,
}

/// A group's position in a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPosition {
    /// The group.
    pub group: String,
    /// Every offset below this one is settled.
    pub committed: u64,
    /// Whether the group has members.
    pub active: bool,
}

impl Inner {
    fn topic(&self, name: &str) -> Arc<Topic> {
        self.topic_with(name, None)
    }

    /// [`topic`](Self::topic) for a publish: usually found in the identity
    /// cache, by the address of the name's text, without taking the lock.
    fn topic_of(&self, name: &Name) -> Cow<'_, Arc<Topic>> {
        let id = identity::of_name(name);
        let is_key = |k: &Name| identity::same(k, name);
        if let Some(t) = self.by_identity.get(id, is_key) {
            // Borrowed: no count to change.
            return Cow::Borrowed(t);
        }
        let topic = self
            .find_topic(name)
            .unwrap_or_else(|| self.topic_with_key(name.clone(), None));
        self.by_identity
            .insert(id, name.clone(), topic.clone(), is_key);
        Cow::Owned(topic)
    }

    fn topic_with(&self, name: &str, partitions: Option<u32>) -> Arc<Topic> {
        self.find_topic(name)
            .unwrap_or_else(|| self.topic_with_key(Name::from(name), partitions))
    }

    /// Every topic, taken out of the lock (to walk their partitions, each
    /// behind its own lock).
    fn all_topics(&self) -> Vec<Arc<Topic>> {
        self.topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The topic `name` names, if it exists.
    fn find_topic<Q>(&self, name: &Q) -> Option<Arc<Topic>>
    where
        Name: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Creates the topic `key` names if it does not exist.
    fn topic_with_key(&self, key: Name, partitions: Option<u32>) -> Arc<Topic> {
        let mut topics = self.topics.write().unwrap_or_else(|e| e.into_inner());
        topics
            .entry(key)
            .or_insert_with_key(|name| {
                let n = partitions
                    .or_else(|| self.config.topic_partitions.get(name.as_str()).copied())
                    .unwrap_or(self.config.partitions)
                    .max(1);
                let name = name.clone();
                Arc::new(Topic {
                    partitions: (0..n)
                        .map(|index| {
                            Arc::new(Partition {
                                topic: name.clone(),
                                index,
                                state: Mutex::new(PartState {
                                    base: 0,
                                    evicted_unread: 0,
                                    log: VecDeque::new(),
                                    cursors: Vec::new(),
                                    over: false,
                                }),
                                room: Notify::new(),
                                waiting: AtomicUsize::new(0),
                                counters: self.counters.clone(),
                                publish_waits: self
                                    .counters
                                    .publish_waits
                                    .with_label_values(&[name.as_str()]),
                                overflow: self
                                    .counters
                                    .overflow
                                    .with_label_values(&[name.as_str()]),
                                when_full: self.config.retention.when_full,
                                max_events: self.config.retention.max_events_per_partition.max(1),
                                gate: self.gate.clone(),
                                quiet: self.quiet.clone(),
                            })
                        })
                        .collect(),
                    name,
                })
            })
            .clone()
    }
}

impl Bus for InProcessBus {
    type Subscription = InProcessSubscription;

    fn publish(&self, envelope: Envelope) -> impl Future<Output = Result<()>> + Send {
        // Shared at once: the future then holds a pointer, not the envelope,
        // and appending moves no more bytes.
        self.publish_shared(Arc::new(envelope))
    }

    async fn publish_shared(&self, envelope: Arc<Envelope>) -> Result<()> {
        let topic = self.inner.topic_of(&envelope.topic);
        let p = envelope
            .partition_key()
            .partition(topic.partitions.len() as u32);
        let partition = &topic.partitions[p as usize];
        let mut envelope = Some(envelope);
        // Fast path: the door open and room available, no waiter registration.
        if partition.gate.is_open() && partition.try_append(&mut envelope, false) {
            return Ok(());
        }
        if in_handler() {
            // A handler never waits for room: it could wait for itself (see
            // `WhenFull::Block`). Appended, past the bound if need be.
            let appended = partition.try_append(&mut envelope, true);
            debug_assert!(appended, "an append past the bound always succeeds");
            return Ok(());
        }
        // Boxed: the wait takes no room in the future of every publish.
        Box::pin(self.inner.wait_to_append(partition, envelope)).await
    }

    async fn subscribe(&self, options: SubscribeOptions) -> Result<InProcessSubscription> {
        if options.topics.is_empty() {
            return Err(Error::Config(format!(
                "group '{}' subscribes to no topic",
                options.group
            )));
        }
        if options.group.is_empty() {
            return Err(Error::Config("a consumer group needs a name".into()));
        }
        let (member, group) = self.inner.join(&options);
        Ok(InProcessSubscription {
            inner: self.inner.clone(),
            group,
            member,
            buffer: VecDeque::new(),
            scratch: Vec::new(),
            buffer_epoch: 0,
            rr: 0,
        })
    }

    fn backend_name(&self) -> &'static str {
        "in-process"
    }
}
