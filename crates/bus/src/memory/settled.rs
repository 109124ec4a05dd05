//! Waiting until the bus is quiet: every event published so far settled by
//! every consumer group that has members ([`InProcessBus::settled`]).

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use super::back_pressure::Counted;
use super::{InProcessBus, Inner};
use crate::{Error, Result};

/// Wakes whoever waits in [`InProcessBus::settled`] when a group's position
/// moves on (an ack, an eviction past unread events) or a member leaves.
pub(super) struct Quiet {
    /// How many `settled` calls wait: progress wakes them only if there are
    /// any, so an ack costs one load when nobody waits.
    waiting: AtomicUsize,
    progress: Notify,
    /// Partition workers of services on this bus that are handling what
    /// they were given ([`Activity`]): a service publishes a delivery's
    /// receipt after it settles it, and `settled` waits for that too.
    busy: AtomicUsize,
}

impl Quiet {
    pub(super) fn new() -> Self {
        Quiet {
            waiting: AtomicUsize::new(0),
            progress: Notify::new(),
            busy: AtomicUsize::new(0),
        }
    }

    /// A group's position moved on, or a group lost a member. Called after
    /// the change is made under its partition's lock: a waiter that counted
    /// itself before it looked either saw the change or is woken here.
    pub(super) fn progressed(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.progress.notify_waiters();
        }
    }
}

/// How a running service tells the in-process bus it serves that its
/// partition workers are busy: from taking a run of deliveries until every
/// one of them is settled and its receipt published. (A service on another
/// backend has none.)
#[derive(Clone)]
pub(crate) struct Activity(Arc<Quiet>);

impl Activity {
    /// The activity of `bus`, if it is an in-process bus.
    pub(crate) fn of<B: Any>(bus: &B) -> Option<Activity> {
        (bus as &dyn Any)
            .downcast_ref::<InProcessBus>()
            .map(|b| Activity(b.inner.quiet.clone()))
    }

    /// Counts a worker busy until the returned guard is dropped. Once per run
    /// of deliveries, not per delivery.
    pub(crate) fn begin(&self) -> Busy<'_> {
        self.0.busy.fetch_add(1, Ordering::SeqCst);
        Busy(&self.0)
    }
}

/// A busy partition worker; see [`Activity::begin`].
pub(crate) struct Busy<'a>(&'a Quiet);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        if self.0.busy.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.progressed();
        }
    }
}

/// Events one consumer group has not settled yet in one partition: what
/// [`InProcessBus::settled`] still waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Unsettled {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The consumer group (a service's name, unless it set another group).
    pub group: String,
    /// Every offset below this one is settled by the group.
    pub committed: u64,
    /// The offset the next event will get: `end - committed` events are
    /// not settled yet.
    pub end: u64,
}

impl fmt::Display for Unsettled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "group '{}' has {} unsettled event(s) in {}/{} from offset {}",
            self.group,
            self.end - self.committed,
            self.topic,
            self.partition,
            self.committed
        )
    }
}

/// What one look at every partition found.
struct Look {
    unsettled: Vec<Unsettled>,
    /// Partition workers still busy (receipts to publish), read last.
    busy: usize,
    /// Events ever appended, summed over the partitions: equal in two looks
    /// means nothing was published between them.
    appended: u64,
}

impl Look {
    fn is_quiet(&self) -> bool {
        self.unsettled.is_empty() && self.busy == 0
    }
}

impl Inner {
    fn look(&self) -> Look {
        let mut look = Look {
            unsettled: Vec::new(),
            busy: 0,
            appended: 0,
        };
        for topic in self.all_topics() {
            for p in &topic.partitions {
                let st = p.lock();
                let end = st.end();
                look.appended += end;
                for c in st
                    .cursors
                    .iter()
                    .filter(|c| c.active() && c.committed < end)
                {
                    look.unsettled.push(Unsettled {
                        topic: topic.name.to_string(),
                        partition: p.index,
                        group: c.group.to_string(),
                        committed: c.committed,
                        end,
                    });
                }
            }
        }
        look.busy = self.quiet.busy.load(Ordering::SeqCst);
        look.unsettled.sort_by(|a, b| {
            (&a.topic, a.partition, &a.group).cmp(&(&b.topic, b.partition, &b.group))
        });
        look
    }
}

impl InProcessBus {
    /// Waits until the bus is quiet: every event published so far has been
    /// settled — handled and acked, or dead-lettered — by every consumer
    /// group that has members. For tests and examples: publish, then
    /// `bus.settled().await`, then look at what the services did.
    ///
    /// - A delivery being handled, or waiting between retries, is not
    ///   settled: `settled` waits for it (for the whole backoff).
    /// - What a handler emits is published before its delivery is acked, so
    ///   a chain of services settles only when its last event is handled.
    /// - A topic no group with members reads (the receipts topic, a
    ///   dead-letter topic, an event nobody handles) holds nothing back, nor
    ///   does a service that was stopped.
    /// - A service's receipts are published too: a service on this bus
    ///   holds `settled` from taking deliveries until their receipts are out
    ///   (so `retained("choreo.receipts")` has them, and a tap reading the
    ///   receipts topic has read them).
    ///
    /// It may never return while events keep coming, or while a handler is
    /// stuck: [`settled_within`](Self::settled_within) bounds the wait and
    /// says who holds it up.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use choreo_bus::{Context, HandlerError, InProcessBus, Publisher, Service};
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Serialize, Deserialize)] struct OrderPlaced { order_id: u64 }
    /// # choreo_core::event!(OrderPlaced, topic = "orders");
    /// # #[derive(Serialize, Deserialize)] struct PaymentCaptured { order_id: u64 }
    /// # choreo_core::event!(PaymentCaptured, topic = "payments");
    /// async fn capture(order: OrderPlaced, ctx: Context) -> Result<(), HandlerError> {
    ///     ctx.emit(&PaymentCaptured { order_id: order.order_id })?;
    ///     Ok(())
    /// }
    ///
    /// let bus = InProcessBus::new();
    /// let shutdown = tokio_util::sync::CancellationToken::new();
    /// let payment = Service::new("payment").on(capture).start(&bus, shutdown.clone()).await.unwrap();
    /// Publisher::new(&bus, "checkout").start_flow(&OrderPlaced { order_id: 1 }).await.unwrap();
    /// bus.settled().await;
    /// assert_eq!(bus.retained("payments").len(), 1);
    /// shutdown.cancel();
    /// payment.await.unwrap();
    /// # });
    /// ```
    pub async fn settled(&self) {
        let quiet = &self.inner.quiet;
        quiet.waiting.fetch_add(1, Ordering::SeqCst);
        let _counted = Counted(&quiet.waiting);
        loop {
            // Registered before looking, so progress made in between wakes it.
            let progress = quiet.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            let first = self.inner.look();
            if !first.is_quiet() {
                progress.await;
                continue;
            }
            // One look takes the partitions one at a time: a handler may
            // have emitted into a partition already looked at and then acked
            // in one looked at later. A second look that finds everything
            // settled and nothing appended since the first proves there was
            // a moment (between the two) when the whole bus was quiet.
            let second = self.inner.look();
            if second.is_quiet() && second.appended == first.appended {
                return;
            }
        }
    }

    /// [`settled`](Self::settled), waiting at most `timeout`. The error
    /// ([`Error::NotSettled`]) lists each group and partition still holding
    /// events back.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use std::time::Duration;
    /// use choreo_bus::InProcessBus;
    /// use choreo_core::{Bus, Envelope, SubscribeOptions};
    ///
    /// let bus = InProcessBus::new();
    /// // A member that never reads what it is given.
    /// let _idle = bus.subscribe(SubscribeOptions::new("audit", ["orders"])).await.unwrap();
    /// bus.publish(Envelope::new("OrderPlaced", "orders", "{}")).await.unwrap();
    /// let err = bus.settled_within(Duration::from_millis(10)).await.unwrap_err();
    /// assert!(err.to_string().contains("group 'audit' has 1 unsettled event(s) in orders/"), "{err}");
    /// # });
    /// ```
    pub async fn settled_within(&self, timeout: Duration) -> Result<()> {
        match tokio::time::timeout(timeout, self.settled()).await {
            Ok(()) => Ok(()),
            Err(_) => Err(Error::NotSettled {
                within: timeout,
                unsettled: self.unsettled(),
            }),
        }
    }

    /// What [`settled`](Self::settled) waits for now: each group with
    /// members and partition where events are not settled yet, sorted by
    /// topic, partition and group. Empty when the bus is quiet.
    pub fn unsettled(&self) -> Vec<Unsettled> {
        self.inner.look().unsettled
    }
}

/// The list in [`Error::NotSettled`]'s message.
pub(crate) fn describe(unsettled: &[Unsettled]) -> String {
    if unsettled.is_empty() {
        // Settled just after the deadline.
        return "nothing is unsettled any more (it settled just after the deadline)".into();
    }
    let list: Vec<String> = unsettled.iter().map(ToString::to_string).collect();
    list.join("; ")
}
