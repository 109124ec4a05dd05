//! Who waits for room in a full partition, and who never does: publishers
//! that start work wait (behind the gate while partitions are past their
//! bound), handlers never wait (their events go past it), and a wait that may
//! never end is reported.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use choreo_core::{Envelope, Name, Result};
use tokio::sync::Notify;

use super::Inner;
use super::partition::Partition;

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
pub(super) fn in_handler() -> bool {
    HANDLING.try_with(|_| ()).is_ok()
}

/// The door new work comes in by: closed while any partition of the bus holds
/// more than its bound (events handlers published past it). Publishes made
/// outside handlers wait for it to open.
pub(super) struct Gate {
    /// Partitions past their bound.
    pub(super) over: AtomicUsize,
    /// Woken when `over` drops to 0.
    pub(super) opened: Notify,
}

impl Gate {
    pub(super) fn is_open(&self) -> bool {
        self.over.load(Ordering::Acquire) == 0
    }
}

/// A group holding back room a publisher waits for, at `committed` in one
/// partition.
#[derive(PartialEq, Eq)]
pub(super) struct Holder {
    pub(super) topic: Name,
    pub(super) partition: u32,
    pub(super) group: Arc<str>,
    pub(super) committed: u64,
}

impl Inner {
    /// A publish from outside handlers that found its partition full or the
    /// door closed: waits until both allow it, warning about the groups that
    /// hold the room back while they settle nothing.
    pub(super) async fn wait_to_append(
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
    pub(super) fn holders(&self, partition: &Partition) -> Vec<Holder> {
        let mut out = Vec::new();
        partition.holders(&mut out);
        if !partition.gate.is_open() {
            for t in self.all_topics() {
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

/// Uncounts a waiting publisher however its wait ends (room found, or the
/// publish dropped).
pub(super) struct Counted<'a>(pub(super) &'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
