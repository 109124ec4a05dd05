//! The in-process bus's configuration: partitions, retention and what a
//! full partition does.

use std::collections::HashMap;
use std::time::Duration;

/// What a full partition does with a new event: one whose oldest event a
/// group with members has not settled yet. The in-process bus's module docs
/// (`choreo::in_process` in the facade) say what happens, step by step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
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
#[non_exhaustive]
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

/// Configuration of an [`InProcessBus`](super::InProcessBus):
/// [`InProcessConfig::default`], then a setter per field.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct InProcessConfig {
    /// Partitions of a topic created on first use. Default 4.
    pub partitions: u32,
    /// Partition counts of named topics, overriding `partitions`.
    pub topic_partitions: HashMap<String, u32>,
    /// Retention bound and policy: how much a partition keeps, and who waits
    /// when it is full (publishers that start work; never a handler). See
    /// [`WhenFull`] and the in-process bus's module docs.
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

impl Retention {
    /// Sets how many events a partition keeps.
    pub fn max_events_per_partition(mut self, events: usize) -> Self {
        self.max_events_per_partition = events;
        self
    }

    /// Sets what a full partition does with a new event.
    pub fn when_full(mut self, when_full: WhenFull) -> Self {
        self.when_full = when_full;
        self
    }

    /// Sets how long a waiting publisher waits, while the group holding the
    /// room back settles nothing, before it warns (and again each period).
    pub fn stalled_after(mut self, period: Duration) -> Self {
        self.stalled_after = period;
        self
    }
}

impl InProcessConfig {
    /// Sets the partitions of a topic created on first use.
    pub fn partitions(mut self, partitions: u32) -> Self {
        self.partitions = partitions;
        self
    }

    /// Sets the partitions of `topic` when it is created, over `partitions`.
    pub fn topic_partitions(mut self, topic: impl Into<String>, partitions: u32) -> Self {
        self.topic_partitions.insert(topic.into(), partitions);
        self
    }

    /// Sets the retention bound and policy.
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// Sets how many deliveries a subscription takes from a partition per lock.
    pub fn fetch_batch(mut self, deliveries: usize) -> Self {
        self.fetch_batch = deliveries;
        self
    }
}
