//! The bus contract: what every backend (in-process, Kafka) promises,
//! written out on [`Bus`].

use std::any::Any;
use std::future::Future;
use std::sync::Arc;

use crate::{Envelope, Name, Result, Timestamp};

/// Where a consumer group that has never consumed a topic starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// At the oldest event still retained.
    #[default]
    Earliest,
    /// At the end of the log: only events published after subscribing.
    Latest,
}

/// What to subscribe to, and as which group: [`SubscribeOptions::new`], then
/// a setter per optional field.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SubscribeOptions {
    /// The consumer group.
    pub group: String,
    /// The topics.
    pub topics: Vec<String>,
    /// Where a new group starts.
    pub start: StartFrom,
}

impl SubscribeOptions {
    /// Subscribes `group` to `topics`, a new group starting at the earliest event.
    pub fn new<I, T>(group: impl Into<String>, topics: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        SubscribeOptions {
            group: group.into(),
            topics: topics.into_iter().map(Into::into).collect(),
            start: StartFrom::Earliest,
        }
    }

    /// Sets where a new group starts.
    pub fn start_from(mut self, start: StartFrom) -> Self {
        self.start = start;
        self
    }
}

/// How a delivery was settled; passed to the backend's [`Settle`] hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Done: never deliver it to this group again.
    Ack,
    /// Deliver it again.
    Redeliver,
}

/// The backend side of settling a delivery. Implemented by backends, not by services.
pub trait Settle: Send + Sync + 'static {
    /// Records the settlement of the delivery at `partition`/`offset` that the
    /// backend handed out with `token` (a backend-defined value, such as the
    /// group generation, that lets it ignore settlements of deliveries it has
    /// since taken back).
    fn settle(&self, partition: u32, offset: u64, token: u64, settlement: Settlement);
}

/// One event delivered to one member of a consumer group.
///
/// Settle it with [`ack`](Delivery::ack) or [`redeliver`](Delivery::redeliver),
/// or dead-letter it with [`Bus::dead_letter`]. A delivery dropped without being
/// settled is redelivered, so a panic or a forgotten delivery never loses an event.
pub struct Delivery {
    envelope: Arc<Envelope>,
    partition: u32,
    offset: u64,
    attempt: u32,
    token: u64,
    settle: Option<Arc<dyn Settle>>,
    original: Option<Arc<dyn Any + Send + Sync>>,
}

impl Delivery {
    /// A delivery; used by backends.
    pub fn new(
        envelope: Arc<Envelope>,
        partition: u32,
        offset: u64,
        attempt: u32,
        token: u64,
        settle: Arc<dyn Settle>,
    ) -> Self {
        Delivery {
            envelope,
            partition,
            offset,
            attempt,
            token,
            settle: Some(settle),
            original: None,
        }
    }

    /// Attaches what the backend keeps of the delivered record beside its
    /// envelope: the Kafka backend keeps the record as it was received (key,
    /// value and headers byte for byte), which its dead-letter copy carries.
    /// Opaque to everyone but the backend that attached it.
    pub fn with_original(mut self, original: Arc<dyn Any + Send + Sync>) -> Self {
        self.original = Some(original);
        self
    }

    /// What the backend attached with [`with_original`](Delivery::with_original),
    /// when it is a `T`.
    pub fn original<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.original.clone()?.downcast::<T>().ok()
    }

    /// The event.
    #[inline]
    pub fn envelope(&self) -> &Arc<Envelope> {
        &self.envelope
    }

    /// The partition it was read from.
    #[inline]
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// Its offset in that partition.
    #[inline]
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// 1 for the first delivery of this event to this group, then counting up
    /// with each redelivery the backend knows of (a redelivery after a consumer
    /// crash may start at 1 again on a backend that does not persist attempts).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Acknowledges: done, never delivered to this group again.
    #[inline]
    pub fn ack(mut self) {
        self.finish(Settlement::Ack);
    }

    /// Gives the delivery back to be delivered again.
    #[inline]
    pub fn redeliver(mut self) {
        self.finish(Settlement::Redeliver);
    }

    #[inline]
    fn finish(&mut self, settlement: Settlement) {
        if let Some(s) = self.settle.take() {
            s.settle(self.partition, self.offset, self.token, settlement);
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        self.finish(Settlement::Redeliver);
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("topic", &self.envelope.topic)
            .field("partition", &self.partition)
            .field("offset", &self.offset)
            .field("attempt", &self.attempt)
            .field("id", &self.envelope.id)
            .finish()
    }
}

/// Why and where a delivery was dead-lettered.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The dead-letter topic (by default `<topic>.dlq`, see [`dead_letter_topic`]).
    pub topic: Name,
    /// Why, in words: `decode error: …`, `handler failed after 5 attempts: …`.
    pub reason: String,
    /// How many times the handler ran.
    pub attempts: u32,
    /// The service whose handler gave up.
    pub service: Name,
}

/// The default dead-letter topic of `topic`: `<topic>.dlq`.
pub fn dead_letter_topic(topic: &str) -> String {
    format!("{topic}.dlq")
}

/// Header names the dead-letter copy of an event carries.
pub mod dlq_headers {
    /// Why the event was dead-lettered.
    pub const REASON: &str = "choreo-dlq-reason";
    /// How many attempts were made.
    pub const ATTEMPTS: &str = "choreo-dlq-attempts";
    /// The topic it was read from.
    pub const TOPIC: &str = "choreo-dlq-topic";
    /// The partition it was read from.
    pub const PARTITION: &str = "choreo-dlq-partition";
    /// Its offset there.
    pub const OFFSET: &str = "choreo-dlq-offset";
    /// The service that gave up.
    pub const SERVICE: &str = "choreo-dlq-service";
    /// When it was dead-lettered (RFC 3339).
    pub const TIME: &str = "choreo-dlq-time";
    /// Set when the record could not be read (its CloudEvents attributes are
    /// broken: the backend marked it with
    /// [`MALFORMED_HEADER`](crate::MALFORMED_HEADER)): what is wrong with it.
    /// Its presence says that the service dead-lettered the record without
    /// ever handling it (so did every other service that received it); the
    /// reason then starts with `malformed record: `.
    pub const MALFORMED: &str = "choreo-dlq-malformed";
    /// How many times it has been replayed from the dead-letter topic.
    pub const REPLAYS: &str = "choreo-replay-count";

    /// Every header the dead-letter copy gets (not [`REPLAYS`], which the
    /// event keeps when it is replayed).
    pub const ALL: [&str; 8] = [
        REASON, ATTEMPTS, TOPIC, PARTITION, OFFSET, SERVICE, TIME, MALFORMED,
    ];
}

/// Header a backend sets on an event it could only partly read, such as a
/// Kafka record with a CloudEvents header that is not UTF-8 or a `ce_time`
/// that is not RFC 3339. Its value says what is wrong; the fields that could
/// not be read were derived (the id from the record's position, say). The
/// runtime dead-letters such a delivery at once with the reason
/// `malformed record: <value>`.
pub const MALFORMED_HEADER: &str = "choreo-malformed";

/// The header an outbox relay adds to each event it publishes: when it
/// published it (RFC 3339). The event's own `time` is when its handler wrote
/// it to the outbox, so the difference is how long it waited there; the
/// tracer reports it per service. A relay that publishes a row again after a
/// crash stamps its own time: the copies differ in this header only.
pub const RELAYED_AT_HEADER: &str = "choreo-relayed-at";

/// The copy of `delivery`'s event that goes to the dead-letter topic: the same
/// id, flow, causation, payload and headers, plus the `choreo-dlq-*` headers
/// (a [`MALFORMED_HEADER`] becomes [`dlq_headers::MALFORMED`]).
///
/// This is the copy of a backend whose records are envelopes (the in-process
/// bus); the Kafka backend copies the record as it was received instead.
pub fn dead_letter_envelope(delivery: &Delivery, info: &DeadLetter) -> Envelope {
    let mut env = (**delivery.envelope()).clone();
    env.topic = info.topic.clone();
    if let Some(problem) = env.headers.remove(MALFORMED_HEADER) {
        env.headers.insert(dlq_headers::MALFORMED, problem);
    }
    env.headers.insert(dlq_headers::REASON, info.reason.clone());
    env.headers
        .insert(dlq_headers::ATTEMPTS, info.attempts.to_string());
    env.headers
        .insert(dlq_headers::TOPIC, delivery.envelope().topic.to_string());
    env.headers
        .insert(dlq_headers::PARTITION, delivery.partition().to_string());
    env.headers
        .insert(dlq_headers::OFFSET, delivery.offset().to_string());
    env.headers
        .insert(dlq_headers::SERVICE, info.service.to_string());
    env.headers
        .insert(dlq_headers::TIME, Timestamp::now().to_rfc3339());
    env
}

/// A message bus backend: the contract every implementation keeps.
///
/// # The contract
///
/// **Thread safety.** A [`Bus`] is a cheap-to-clone handle; clones share one
/// connection and may be used from any task or thread at once. A
/// [`Subscription`] is owned by one task at a time.
///
/// **Topics and partitions.** A topic has a fixed number of partitions. An
/// event goes to the partition chosen by its key ([`Envelope::partition_key`],
/// Kafka's murmur2 partitioner), so events with the same key — by default, the
/// same flow — go to the same partition.
///
/// **Publishing.** [`Bus::publish`] returns once the backend has accepted the
/// event durably enough that it will be delivered to every consumer group that
/// subscribes to the topic (in-process: appended to the partition log; Kafka:
/// acknowledged by all in-sync replicas). An error means it was not published.
///
/// **Consumer groups.** Subscribing names a group. Each group receives every
/// event of its topics; the members of one group split the partitions between
/// them, so each event goes to one member. A new group starts at the earliest
/// retained event or at the end of the log ([`StartFrom`]); a group that has
/// consumed before resumes after its last settled event.
///
/// **Ordering.** Within one partition and one group, events are delivered in
/// the order they were published. Nothing is promised across partitions.
///
/// **Settling.** Every [`Delivery`] ends in exactly one settlement:
/// - [`Delivery::ack`]: done; it will not be delivered to this group again;
/// - [`Delivery::redeliver`] (or dropping the delivery without settling it):
///   deliver it again later, with [`Delivery::attempt`] one higher;
/// - dead-lettering ([`Bus::dead_letter`]): a copy goes to the dead-letter
///   topic with the reason in its headers, then the original is acked.
///
/// A group's position (Kafka: committed offset) only moves past a partition's
/// events once all of them, and all before them, are settled, so an event that
/// was delivered but not settled when its consumer went away (crash, shutdown,
/// rebalance) is delivered again — to this member or another one of the group.
/// Delivery is therefore **at least once**: handlers must tolerate duplicates
/// (the runtime's idempotency middleware removes the effect of most).
///
/// **Records a backend can only partly read** (a Kafka record whose
/// CloudEvents headers are broken) are still delivered, never dropped: the
/// backend fills in what it can derive and sets the [`MALFORMED_HEADER`]
/// header to what is wrong. The runtime dead-letters such a delivery at once.
///
/// **Cancellation.** Dropping the future returned by [`Subscription::next`]
/// loses nothing: an event is only counted as delivered once `next` returns it.
/// Dropping a future of [`Bus::publish`] may or may not publish the event.
/// [`Subscription::close`] leaves the group gracefully: deliveries settled
/// before it are final, unsettled ones are delivered again to the group's
/// remaining (or next) members.
pub trait Bus: Clone + Send + Sync + 'static {
    /// A group member's stream of deliveries.
    type Subscription: Subscription;

    /// Publishes an event to `envelope.topic`, creating the topic if the backend
    /// allows it.
    fn publish(&self, envelope: Envelope) -> impl Future<Output = Result<()>> + Send;

    /// [`publish`](Bus::publish) for an envelope that is already shared. A
    /// backend that keeps envelopes in memory (the in-process bus) keeps this
    /// one as it is, without moving it again; the default publishes the
    /// envelope itself when nothing else holds it, else a copy.
    fn publish_shared(&self, envelope: Arc<Envelope>) -> impl Future<Output = Result<()>> + Send {
        self.publish(Arc::unwrap_or_clone(envelope))
    }

    /// Joins a consumer group on some topics.
    fn subscribe(
        &self,
        options: SubscribeOptions,
    ) -> impl Future<Output = Result<Self::Subscription>> + Send;

    /// The name of the backend, for logs and metrics (`in-process`, `kafka`).
    fn backend_name(&self) -> &'static str;

    /// Dead-letters a delivery: publishes [`dead_letter_envelope`] to
    /// `info.topic`, then acks the original. If the copy cannot be published the
    /// delivery is given back for redelivery and the error returned — an event
    /// is never acked without its dead-letter copy.
    fn dead_letter(
        &self,
        delivery: Delivery,
        info: DeadLetter,
    ) -> impl Future<Output = Result<()>> + Send {
        async move {
            let copy = dead_letter_envelope(&delivery, &info);
            match self.publish(copy).await {
                Ok(()) => {
                    delivery.ack();
                    Ok(())
                }
                Err(e) => {
                    delivery.redeliver();
                    Err(e)
                }
            }
        }
    }
}

/// One member of a consumer group.
pub trait Subscription: Send + 'static {
    /// The next delivery, waiting for one. `None` once the subscription is
    /// closed. Cancel-safe: dropping the future loses nothing.
    fn next(&mut self) -> impl Future<Output = Option<Result<Delivery>>> + Send;

    /// Waits for the next delivery like [`next`](Subscription::next), and
    /// adds it to `out` together with any others ready at once, up to `max`
    /// in all (always the one waited for). Returns false, adding nothing,
    /// once the subscription is closed. Cancel-safe like `next`: nothing is
    /// taken until it returns. The default takes one delivery at a time.
    fn next_batch(
        &mut self,
        out: &mut Vec<Result<Delivery>>,
        max: usize,
    ) -> impl Future<Output = bool> + Send {
        let _ = max;
        async move {
            match self.next().await {
                Some(d) => {
                    out.push(d);
                    true
                }
                None => false,
            }
        }
    }

    /// Leaves the group: what was settled is final (Kafka: committed), what was
    /// not is delivered again to the group's other or next members.
    fn close(self) -> impl Future<Output = Result<()>> + Send;
}
