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

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use choreo_core::{
    Bus, Delivery, Envelope, Error, Name, Result, Settle, Settlement, StartFrom, SubscribeOptions,
    Subscription,
};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use tokio::sync::Notify;

use crate::identity::{self, IdentityCache};

/// What a full partition does with a new event: one whose oldest event a
/// group with members has not settled yet. See the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenFull {
    /// Nothing is lost; the publishers that start work wait, handlers never
    /// do.
    ///
    /// A publish made outside a handler (a flow started by a
    /// [`Publisher`](crate::Publisher), an event from a loop of your own)
    /// waits until the slowest group has settled the oldest event of its
    /// partition, and while any partition of the bus is past its bound.
    ///
    /// A publish made while handling a delivery (the events a
    /// [`Service`](crate::Service)'s handler emits, its receipts, its dead
    /// letters; anything published from the task of a service's partition
    /// worker) never waits: the event is appended past the bound and counted
    /// in `choreo_bus_overflow_total{topic}`. Waiting there could wait for
    /// itself: services in a cycle (the order saga's `orders` → `payment` →
    /// `payments` → `checkout` → `orders`) each hold the deliveries whose
    /// settlement would make room for the other, and a service that publishes
    /// to a topic its own group reads holds the very room it waits for. So
    /// back-pressure stops new work at the door instead, and the work already
    /// admitted always finishes: the partitions past their bound drain as
    /// their consumers settle, which they can, since none of them waits for
    /// room. What the bus holds beyond the bounds is what the work admitted
    /// before the door closed produces.
    ///
    /// A publisher then only ever waits for consumers; if the consumer that
    /// holds the room back settles nothing for [`Retention::stalled_after`]
    /// (a handler stuck, a subscription nobody reads, your own loop waiting
    /// for its own publish), a warning names its topic, partition and group
    /// (`choreo_bus_publish_stalls_total`). A handler that publishes from a
    /// task of its own (`tokio::spawn`) is not handling there: its publishes
    /// wait like any other, so await them in the handler, or emit through
    /// its [`Context`](crate::Context).
    #[default]
    Block,
    /// The oldest event is evicted even if an active group has not read it;
    /// counted in `choreo_bus_unread_evicted_total`. Nothing ever waits.
    DropOldest,
}

/// How many events a partition keeps, and what happens when it is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Events kept per partition. Default 1 024: with the default 4
    /// partitions a topic holds 4 096 events, which bounds what the bus keeps
    /// in memory (every event of every topic, read or not: a receipts topic
    /// nothing reads holds as many as the topics it reports on) and lets a
    /// slow group hold a publisher back after as many unread events as a
    /// bounded channel would. With [`WhenFull::Block`], events handlers
    /// publish can go past it while a consumer catches up (new work waits
    /// meanwhile). Raise it for late subscribers that need more history, or
    /// for bursts larger than that per partition.
    pub max_events_per_partition: usize,
    /// What happens when a partition is full. Default [`WhenFull::Block`].
    pub when_full: WhenFull,
    /// How long a publisher waits for room, while the group holding it back
    /// settles nothing, before it logs a warning naming that group and counts
    /// `choreo_bus_publish_stalls_total` (and again every such period). The
    /// publisher keeps waiting: a consumer may be slow on purpose. Default
    /// 10 s.
    pub stalled_after: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_events_per_partition: 1024,
            when_full: WhenFull::Block,
            stalled_after: Duration::from_secs(10),
        }
    }
}

/// Configuration of an [`InProcessBus`].
#[derive(Debug, Clone)]
pub struct InProcessConfig {
    /// Partitions of a topic created on first use. Default 4.
    pub partitions: u32,
    /// Partition counts of named topics, overriding `partitions`.
    pub topic_partitions: HashMap<String, u32>,
    /// Retention bound and policy: how much a partition keeps, and who waits
    /// when it is full (publishers that start work; never a handler). See
    /// [`WhenFull`] and the [module docs](self).
    pub retention: Retention,
    /// Deliveries a subscription takes from a partition per lock. Default 64.
    /// Larger batches cost fewer locks; smaller ones spread a burst over more
    /// members sooner.
    pub fetch_batch: usize,
}

impl Default for InProcessConfig {
    fn default() -> Self {
        InProcessConfig {
            partitions: 4,
            topic_partitions: HashMap::new(),
            retention: Retention::default(),
            fetch_batch: 64,
        }
    }
}

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
}

tokio::task_local! {
    /// Set on the task of a service's partition worker (see [`handling`]):
    /// what it publishes never waits for room.
    static HANDLING: ();
}

/// Runs `worker`, a task that handles deliveries, so that what it publishes
/// to the in-process bus never waits for room (see [`WhenFull::Block`]): a
/// handler holds unsettled deliveries, and the room it would wait for may be
/// held back by them. Harmless on other backends.
pub(crate) fn handling<F: Future>(worker: F) -> impl Future<Output = F::Output> {
    HANDLING.scope((), worker)
}

/// Whether the current task handles deliveries ([`handling`]).
fn in_handler() -> bool {
    HANDLING.try_with(|_| ()).is_ok()
}

/// The door new work comes in by: closed while any partition of the bus holds
/// more than its bound (events handlers published past it). Publishes made
/// outside handlers wait for it to open.
struct Gate {
    /// Partitions past their bound.
    over: AtomicUsize,
    /// Woken when `over` drops to 0.
    opened: Notify,
}

impl Gate {
    fn is_open(&self) -> bool {
        self.over.load(Ordering::Acquire) == 0
    }
}

#[derive(Clone)]
struct Counters {
    unread_evicted: IntCounterVec,
    publish_waits: IntCounterVec,
    overflow: IntCounterVec,
    stalls: IntCounterVec,
}

impl Counters {
    fn new() -> Self {
        let vec = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition")
        };
        Counters {
            unread_evicted: vec(
                "choreo_bus_unread_evicted_total",
                "Events evicted from an in-process partition before a group read them (DropOldest, or a group without members).",
                &["topic", "group"],
            ),
            publish_waits: vec(
                "choreo_bus_publish_waits_total",
                "Publishes from outside handlers that waited for room in a full in-process partition, or for partitions past their bound to drain (WhenFull::Block).",
                &["topic"],
            ),
            overflow: vec(
                "choreo_bus_overflow_total",
                "Events published while handling a delivery, appended past a full in-process partition's bound instead of waiting (WhenFull::Block).",
                &["topic"],
            ),
            stalls: vec(
                "choreo_bus_publish_stalls_total",
                "Periods of Retention::stalled_after in which a waiting publisher saw the group holding the room back settle nothing in this partition.",
                &["topic", "partition", "group"],
            ),
        }
    }
}

struct Topic {
    name: Name,
    partitions: Vec<Arc<Partition>>,
}

struct Partition {
    topic: Name,
    index: u32,
    // std Mutex: held only for short, await-free sections.
    state: Mutex<PartState>,
    /// Publishers waiting for room.
    room: Notify,
    /// How many publishers wait on `room`: a settlement wakes them only if
    /// there are any (a partition at its bound is full in every settlement
    /// once retention has filled it, waiting publishers or not).
    waiting: AtomicUsize,
    counters: Counters,
    publish_waits: prometheus::IntCounter,
    overflow: prometheus::IntCounter,
    when_full: WhenFull,
    max_events: usize,
    /// The bus's door for new work: this partition keeps it closed while it
    /// is past its bound (`PartState::over`).
    gate: Arc<Gate>,
}

struct PartState {
    /// Offset of `log[0]`: every event below was evicted. (So `end()` counts
    /// the events ever appended, and `base - evicted_unread` those evicted
    /// once settled: the counters are read from here when scraped, not
    /// counted per event.)
    base: u64,
    /// Events evicted before some group had settled them.
    evicted_unread: u64,
    log: VecDeque<Arc<Envelope>>,
    cursors: Vec<Cursor>,
    /// Whether `log` holds more than the bound, counted in `Gate::over`.
    over: bool,
}

impl PartState {
    fn end(&self) -> u64 {
        self.base + self.log.len() as u64
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SlotState {
    InFlight,
    Settled,
    Pending,
}

#[derive(Clone, Copy)]
struct Slot {
    state: SlotState,
    attempt: u32,
}

/// One group's position in one partition.
struct Cursor {
    group: Arc<str>,
    /// Every offset below is settled.
    committed: u64,
    /// The next offset to hand out from the log.
    next: u64,
    /// States of offsets `committed..next`.
    window: VecDeque<Slot>,
    /// Offsets given back for redelivery, delivered before new ones.
    pending: VecDeque<u64>,
    owner: Option<Arc<Member>>,
    /// Bumped whenever ownership changes; settlements carrying an older token are ignored.
    generation: u64,
}

impl Cursor {
    fn active(&self) -> bool {
        self.owner.is_some()
    }

    /// Rewinds to the committed position: everything not settled will be delivered again.
    fn rewind(&mut self) {
        self.next = self.committed;
        self.window.clear();
        self.pending.clear();
        self.generation += 1;
    }

    fn advance_committed(&mut self) {
        while let Some(front) = self.window.front() {
            if front.state != SlotState::Settled {
                break;
            }
            self.window.pop_front();
            self.committed += 1;
        }
    }
}

/// A group member (one subscription).
struct Member {
    id: u64,
    notify: Notify,
    /// The partitions assigned to this member, with the handle deliveries settle through.
    assignment: Mutex<Vec<Arc<CursorHandle>>>,
    /// Bumped on every assignment change, so a subscription can drop prefetched deliveries.
    epoch: AtomicU64,
    closed: AtomicBool,
}

/// Settles deliveries of one partition for one group.
struct CursorHandle {
    partition: Arc<Partition>,
    group: Arc<str>,
}

struct GroupState {
    members: Vec<(Arc<Member>, Vec<Name>)>,
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
                            })
                        })
                        .collect(),
                    name,
                })
            })
            .clone()
    }

    /// Recomputes the assignment of every topic `group` consumes.
    fn rebalance(&self, group: &Arc<str>, groups: &HashMap<Arc<str>, GroupState>, topics: &[Name]) {
        let members: &[(Arc<Member>, Vec<Name>)] = groups.get(group).map_or(&[], |g| &g.members);
        let mut new_assignments: HashMap<u64, Vec<Arc<CursorHandle>>> =
            members.iter().map(|(m, _)| (m.id, Vec::new())).collect();
        // Every topic any member consumes, plus the ones the leaving/joining member had.
        let mut all_topics: Vec<Name> = members
            .iter()
            .flat_map(|(_, t)| t.iter().cloned())
            .collect();
        all_topics.extend(topics.iter().cloned());
        all_topics.sort();
        all_topics.dedup();
        for topic_name in &all_topics {
            let topic = self.topic(topic_name);
            let subscribers: Vec<&Arc<Member>> = members
                .iter()
                .filter(|(_, t)| t.contains(topic_name))
                .map(|(m, _)| m)
                .collect();
            for p in &topic.partitions {
                let owner = if subscribers.is_empty() {
                    None
                } else {
                    Some(subscribers[p.index as usize % subscribers.len()].clone())
                };
                let mut st = p.lock();
                let Some(cursor) = st.cursors.iter_mut().find(|c| c.group == *group) else {
                    continue;
                };
                let same = match (&cursor.owner, &owner) {
                    (Some(a), Some(b)) => a.id == b.id,
                    (None, None) => true,
                    _ => false,
                };
                if !same {
                    cursor.rewind();
                    cursor.owner = owner.clone();
                }
                // A group that lost its members no longer holds events back:
                // a partition it kept past its bound can shrink now.
                p.trim(&mut st);
                drop(st);
                if let Some(o) = owner {
                    new_assignments
                        .get_mut(&o.id)
                        .expect("owner is a member")
                        .push(Arc::new(CursorHandle {
                            partition: p.clone(),
                            group: group.clone(),
                        }));
                    o.notify.notify_one();
                }
                // A group that lost its members no longer holds events back.
                p.room.notify_waiters();
            }
        }
        for (m, _) in members {
            let list = new_assignments.remove(&m.id).unwrap_or_default();
            *m.assignment.lock().unwrap_or_else(|e| e.into_inner()) = list;
            m.epoch.fetch_add(1, Ordering::AcqRel);
            m.notify.notify_one();
        }
    }

    /// Joins `options.group`; returns the member and the group's shared name.
    fn join(&self, options: &SubscribeOptions) -> (Arc<Member>, Arc<str>) {
        // Every member of a group shares one name, so cursors are found by
        // pointer (`Arc`'s equality checks the pointer first).
        let group: Arc<str> = self
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_key_value(options.group.as_str())
            .map_or_else(|| Arc::from(options.group.as_str()), |(k, _)| k.clone());
        let topics: Vec<Name> = options
            .topics
            .iter()
            .map(|t| Name::from(t.as_str()))
            .collect();
        // Make sure the group has a cursor in every partition of its topics.
        for t in &topics {
            let topic = self.topic(t);
            for p in &topic.partitions {
                let mut st = p.lock();
                if !st.cursors.iter().any(|c| c.group == group) {
                    let start = match options.start {
                        StartFrom::Earliest => st.base,
                        StartFrom::Latest => st.end(),
                    };
                    st.cursors.push(Cursor {
                        group: group.clone(),
                        committed: start,
                        next: start,
                        window: VecDeque::new(),
                        pending: VecDeque::new(),
                        owner: None,
                        generation: 0,
                    });
                }
            }
        }
        let member = Arc::new(Member {
            id: self.next_member.fetch_add(1, Ordering::Relaxed),
            notify: Notify::new(),
            assignment: Mutex::new(Vec::new()),
            epoch: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        });
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        groups
            .entry(group.clone())
            .or_insert_with(|| GroupState {
                members: Vec::new(),
            })
            .members
            .push((member.clone(), topics.clone()));
        self.rebalance(&group, &groups, &topics);
        (member, group)
    }

    fn leave(&self, group: &Arc<str>, member: &Arc<Member>) {
        if member.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let mut topics = Vec::new();
        if let Some(g) = groups.get_mut(group)
            && let Some(i) = g.members.iter().position(|(m, _)| m.id == member.id)
        {
            topics = g.members.remove(i).1;
        }
        self.rebalance(group, &groups, &topics);
        member
            .assignment
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        member.epoch.fetch_add(1, Ordering::AcqRel);
        member.notify.notify_one();
    }
}

/// A group holding back room a publisher waits for, at `committed` in one
/// partition.
#[derive(PartialEq, Eq)]
struct Holder {
    topic: Name,
    partition: u32,
    group: Arc<str>,
    committed: u64,
}

impl Inner {
    /// A publish from outside handlers that found its partition full or the
    /// door closed: waits until both allow it, warning about the groups that
    /// hold the room back while they settle nothing.
    async fn wait_to_append(
        &self,
        partition: &Partition,
        mut envelope: Option<Arc<Envelope>>,
    ) -> Result<()> {
        partition.publish_waits.inc();
        partition.waiting.fetch_add(1, Ordering::SeqCst);
        let _counted = Counted(&partition.waiting);
        let period = self.config.retention.stalled_after;
        let since = Instant::now();
        // Who held the room back at the last look, to tell a consumer that
        // is slow from one that has stopped.
        let mut held_by = self.holders(partition);
        let check = tokio::time::sleep(period);
        tokio::pin!(check);
        loop {
            // Register for both wake-ups before re-checking, so a settlement
            // or the door opening in between is not missed.
            let room = partition.room.notified();
            let opened = partition.gate.opened.notified();
            tokio::pin!(room, opened);
            room.as_mut().enable();
            opened.as_mut().enable();
            if partition.gate.is_open() && partition.try_append(&mut envelope, false) {
                return Ok(());
            }
            tokio::select! {
                _ = room => {}
                _ = opened => {}
                _ = check.as_mut() => {
                    let now = self.holders(partition);
                    for h in now.iter().filter(|h| held_by.contains(h)) {
                        self.counters
                            .stalls
                            .with_label_values(&[h.topic.as_str(), &h.partition.to_string(), &h.group])
                            .inc();
                        tracing::warn!(
                            topic = %partition.topic, partition = partition.index,
                            waited = ?since.elapsed(), held_by_topic = %h.topic,
                            held_by_partition = h.partition, held_by_group = %h.group,
                            offset = h.committed,
                            "a publish has waited for room in the in-process bus while group '{}' settled nothing in partition {} of '{}' for {period:?} (its oldest unsettled event is offset {}): is its consumer stuck, or waiting for this publish? Publishes outside handlers wait for room (WhenFull::Block); handlers never do",
                            h.group, h.partition, h.topic, h.committed
                        );
                    }
                    held_by = now;
                    check.as_mut().reset(tokio::time::Instant::now() + period);
                }
            }
        }
    }

    /// The groups holding back the room a publish to `partition` waits for:
    /// those of `partition`, and those keeping any partition past its bound
    /// (the door closed).
    fn holders(&self, partition: &Partition) -> Vec<Holder> {
        let mut out = Vec::new();
        partition.holders(&mut out);
        if !partition.gate.is_open() {
            let topics: Vec<Arc<Topic>> = self
                .topics
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .cloned()
                .collect();
            for t in topics {
                for p in &t.partitions {
                    if !std::ptr::eq(&**p, partition) && p.lock().over {
                        p.holders(&mut out);
                    }
                }
            }
        }
        out
    }
}

impl Partition {
    fn lock(&self) -> std::sync::MutexGuard<'_, PartState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends, making room per the retention policy. Returns false when the
    /// publisher must wait for room; with `past_bound` (a publish made while
    /// handling, see [`WhenFull::Block`]) never: what cannot be evicted
    /// stays, and the event goes past the bound.
    fn try_append(&self, envelope: &mut Option<Arc<Envelope>>, past_bound: bool) -> bool {
        let mut st = self.lock();
        while st.log.len() >= self.max_events {
            if !self.evict_oldest(&mut st) {
                if !past_bound {
                    return false;
                }
                self.overflow.inc();
                break;
            }
        }
        let env = envelope.take().expect("envelope present until appended");
        st.log.push_back(env);
        if st.over != (st.log.len() > self.max_events) {
            self.set_over(&mut st);
        }
        for c in &st.cursors {
            if let Some(owner) = &c.owner {
                owner.notify.notify_one();
            }
        }
        drop(st);
        true
    }

    /// Evicts the oldest events of a partition past its bound, down to the
    /// bound, as far as the groups that hold them allow: called when a group
    /// settles or loses its members.
    fn trim(&self, st: &mut PartState) {
        while st.log.len() > self.max_events && self.evict_oldest(st) {}
        self.set_over(st);
    }

    /// Keeps `st.over` in step with the log's length, and the gate with it:
    /// the last partition to come back under its bound opens the door.
    fn set_over(&self, st: &mut PartState) {
        let over = st.log.len() > self.max_events;
        if over == st.over {
            return;
        }
        st.over = over;
        if over {
            self.gate.over.fetch_add(1, Ordering::AcqRel);
        } else if self.gate.over.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Waiters enable their wake-up before they look at the gate.
            self.gate.opened.notify_waiters();
        }
    }

    /// The groups with members that hold back the eviction of the oldest
    /// event (so the room a publisher waits for), with their positions.
    fn holders(&self, out: &mut Vec<Holder>) {
        let st = self.lock();
        for c in &st.cursors {
            if c.active() && c.committed <= st.base && c.committed < st.end() {
                out.push(Holder {
                    topic: self.topic.clone(),
                    partition: self.index,
                    group: c.group.clone(),
                    committed: c.committed,
                });
            }
        }
    }

    /// Evicts `log[0]` if the policy allows it.
    fn evict_oldest(&self, st: &mut PartState) -> bool {
        let oldest = st.base;
        let blocked_by_active = st
            .cursors
            .iter()
            .any(|c| c.active() && c.committed <= oldest);
        if blocked_by_active && self.when_full == WhenFull::Block {
            return false;
        }
        st.log.pop_front();
        st.base += 1;
        let mut unread = false;
        for c in st.cursors.iter_mut() {
            if c.committed <= oldest {
                unread = true;
                self.counters
                    .unread_evicted
                    .with_label_values(&[self.topic.as_str(), &c.group])
                    .inc();
                tracing::warn!(
                    topic = %self.topic, partition = self.index, group = %c.group, offset = oldest,
                    "in-process retention evicted an event the group had not settled; raise Retention::max_events_per_partition"
                );
                // The group skips the evicted offset.
                c.committed = oldest + 1;
                if c.next < c.committed {
                    c.next = c.committed;
                }
                if !c.window.is_empty() {
                    c.window.pop_front();
                }
                c.pending.retain(|&o| o > oldest);
            }
        }
        if unread {
            st.evicted_unread += 1;
        }
        true
    }

    /// Takes up to `max` deliverable events for `group`, redeliveries first.
    fn fetch(&self, group: &Arc<str>, max: usize, out: &mut Vec<(Arc<Envelope>, u64, u32, u64)>) {
        let mut st = self.lock();
        let PartState {
            base, log, cursors, ..
        } = &mut *st;
        let Some(c) = cursors.iter_mut().find(|c| c.group == *group) else {
            return;
        };
        let mut taken = 0;
        while taken < max {
            let Some(offset) = c.pending.pop_front() else {
                break;
            };
            if offset < c.committed || offset < *base {
                continue;
            }
            let Some(slot) = c.window.get_mut((offset - c.committed) as usize) else {
                continue;
            };
            if slot.state != SlotState::Pending {
                continue;
            }
            slot.state = SlotState::InFlight;
            slot.attempt += 1;
            let env = log[(offset - *base) as usize].clone();
            out.push((env, offset, slot.attempt, c.generation));
            taken += 1;
        }
        let end = *base + log.len() as u64;
        if c.next < *base {
            // Evicted while unread (counted at eviction).
            c.next = *base;
        }
        while taken < max && c.next < end {
            let offset = c.next;
            c.next += 1;
            c.window.push_back(Slot {
                state: SlotState::InFlight,
                attempt: 1,
            });
            out.push((
                log[(offset - *base) as usize].clone(),
                offset,
                1,
                c.generation,
            ));
            taken += 1;
        }
    }

    fn settle(&self, group: &Arc<str>, offset: u64, token: u64, settlement: Settlement) {
        let mut st = self.lock();
        let Some(c) = st.cursors.iter_mut().find(|c| c.group == *group) else {
            return;
        };
        if c.generation != token || offset < c.committed {
            // Taken back by a rebalance (it will be delivered again), or already evicted.
            return;
        }
        let i = (offset - c.committed) as usize;
        let Some(slot) = c.window.get_mut(i) else {
            return;
        };
        if slot.state != SlotState::InFlight {
            return;
        }
        match settlement {
            Settlement::Ack => {
                slot.state = SlotState::Settled;
                let before = c.committed;
                c.advance_committed();
                // Only a full partition has publishers waiting for room. A
                // publisher counts itself in `waiting` before it looks for
                // room under the lock: if it is not counted yet, it will
                // find the room made here.
                let advanced = c.committed != before;
                let wake = advanced
                    && st.log.len() >= self.max_events
                    && self.waiting.load(Ordering::SeqCst) > 0;
                if advanced && st.over {
                    // Past its bound (handlers published while it was full):
                    // back down as far as every group has settled.
                    self.trim(&mut st);
                }
                drop(st);
                if wake {
                    self.room.notify_waiters();
                }
            }
            Settlement::Redeliver => {
                slot.state = SlotState::Pending;
                c.pending.push_back(offset);
                if let Some(owner) = &c.owner {
                    owner.notify.notify_one();
                }
            }
        }
    }
}

impl Settle for CursorHandle {
    fn settle(&self, _partition: u32, offset: u64, token: u64, settlement: Settlement) {
        self.partition
            .settle(&self.group, offset, token, settlement);
    }
}

/// Uncounts a waiting publisher however its wait ends (room found, or the
/// publish dropped).
struct Counted<'a>(&'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
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

/// A member of a consumer group on the [`InProcessBus`].
pub struct InProcessSubscription {
    inner: Arc<Inner>,
    group: Arc<str>,
    member: Arc<Member>,
    buffer: VecDeque<Delivery>,
    scratch: Vec<(Arc<Envelope>, u64, u32, u64)>,
    buffer_epoch: u64,
    rr: usize,
}

impl std::fmt::Debug for InProcessSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessSubscription")
            .field("group", &self.group)
            .field("member", &self.member.id)
            .finish_non_exhaustive()
    }
}

impl InProcessSubscription {
    /// The partitions of each topic this member currently owns.
    pub fn assignment(&self) -> Vec<(String, u32)> {
        self.member
            .assignment
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|h| (h.partition.topic.to_string(), h.partition.index))
            .collect()
    }

    fn fill(&mut self) {
        let epoch = self.member.epoch.load(Ordering::Acquire);
        let handles: Vec<Arc<CursorHandle>> = self
            .member
            .assignment
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if handles.is_empty() {
            return;
        }
        let n = handles.len();
        let batch = self.inner.config.fetch_batch.max(1);
        for k in 0..n {
            let h = &handles[(self.rr + k) % n];
            self.scratch.clear();
            h.partition.fetch(&self.group, batch, &mut self.scratch);
            let settle: Arc<dyn Settle> = h.clone();
            for (env, offset, attempt, token) in self.scratch.drain(..) {
                self.buffer.push_back(Delivery::new(
                    env,
                    h.partition.index,
                    offset,
                    attempt,
                    token,
                    settle.clone(),
                ));
            }
        }
        self.rr = self.rr.wrapping_add(1);
        self.buffer_epoch = epoch;
    }
}

impl Subscription for InProcessSubscription {
    async fn next(&mut self) -> Option<Result<Delivery>> {
        loop {
            if self.member.closed.load(Ordering::Acquire) {
                return None;
            }
            if self.member.epoch.load(Ordering::Acquire) != self.buffer_epoch {
                // Reassigned since the buffer was filled: deliveries of partitions we
                // lost must not be handled here (their settlements are ignored anyway).
                self.buffer.clear();
                self.buffer_epoch = self.member.epoch.load(Ordering::Acquire);
            }
            if let Some(d) = self.buffer.pop_front() {
                return Some(Ok(d));
            }
            // Usually there is more: take it without registering for a wake-up.
            self.fill();
            if !self.buffer.is_empty() {
                continue;
            }
            let member = self.member.clone();
            let notified = member.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.fill();
            if !self.buffer.is_empty() {
                continue;
            }
            notified.await;
        }
    }

    async fn next_batch(&mut self, out: &mut Vec<Result<Delivery>>, max: usize) -> bool {
        let Some(first) = self.next().await else {
            return false;
        };
        out.push(first);
        // Then those already fetched, while the assignment they were fetched
        // under holds (`next` drops them when it has changed).
        while out.len() < max && self.member.epoch.load(Ordering::Acquire) == self.buffer_epoch {
            match self.buffer.pop_front() {
                Some(d) => out.push(Ok(d)),
                None => break,
            }
        }
        true
    }

    async fn close(mut self) -> Result<()> {
        // Prefetched deliveries were never handed out: give them back first.
        self.buffer.clear();
        self.inner.leave(&self.group, &self.member);
        Ok(())
    }
}

impl Drop for InProcessSubscription {
    fn drop(&mut self) {
        self.buffer.clear();
        self.inner.leave(&self.group, &self.member);
    }
}

/// Exposes `choreo_bus_retained_events{topic,partition}`,
/// `choreo_bus_consumer_lag{topic,partition,group}`,
/// `choreo_bus_appended_total{topic}` and
/// `choreo_bus_retention_evicted_total{topic}` at scrape time, from the
/// partitions' offsets (an append costs no counter update).
struct LagCollector {
    inner: std::sync::Weak<Inner>,
    descs: Vec<Desc>,
}

/// The families [`LagCollector`] exposes, made afresh for each scrape (two
/// scrapes at once then share nothing).
struct BusFamilies {
    retained: IntGaugeVec,
    lag: IntGaugeVec,
    appended: IntCounterVec,
    evicted: IntCounterVec,
}

impl BusFamilies {
    fn new() -> Self {
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition")
        };
        let counter = |name: &str, help: &str| {
            IntCounterVec::new(Opts::new(name, help), &["topic"]).expect("valid metric definition")
        };
        BusFamilies {
            retained: gauge(
                "choreo_bus_retained_events",
                "Events retained in an in-process partition.",
                &["topic", "partition"],
            ),
            lag: gauge(
                "choreo_bus_consumer_lag",
                "Events of an in-process partition not yet settled by a consumer group.",
                &["topic", "partition", "group"],
            ),
            appended: counter(
                "choreo_bus_appended_total",
                "Events appended to in-process partitions.",
            ),
            evicted: counter(
                "choreo_bus_retention_evicted_total",
                "Events evicted from an in-process partition after every active group settled them.",
            ),
        }
    }

    fn descs(&self) -> Vec<Desc> {
        [
            self.retained.desc(),
            self.lag.desc(),
            self.appended.desc(),
            self.evicted.desc(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
    }
}

impl LagCollector {
    fn new(inner: std::sync::Weak<Inner>) -> Self {
        LagCollector {
            inner,
            descs: BusFamilies::new().descs(),
        }
    }
}

impl Collector for LagCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Some(inner) = self.inner.upgrade() else {
            return Vec::new();
        };
        let f = BusFamilies::new();
        let topics: Vec<Arc<Topic>> = inner
            .topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for t in topics {
            let (mut appended, mut evicted) = (0, 0);
            for p in &t.partitions {
                let st = p.lock();
                let end = st.end();
                appended += end;
                evicted += st.base - st.evicted_unread;
                let part = p.index.to_string();
                f.retained
                    .with_label_values(&[t.name.as_str(), &part])
                    .set(st.log.len() as i64);
                for c in &st.cursors {
                    f.lag
                        .with_label_values(&[t.name.as_str(), &part, &c.group])
                        .set(end.saturating_sub(c.committed) as i64);
                }
            }
            f.appended
                .with_label_values(&[t.name.as_str()])
                .inc_by(appended);
            f.evicted
                .with_label_values(&[t.name.as_str()])
                .inc_by(evicted);
        }
        let mut out = f.retained.collect();
        out.extend(f.lag.collect());
        out.extend(f.appended.collect());
        out.extend(f.evicted.collect());
        out
    }
}
