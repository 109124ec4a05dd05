//! Committing: settled prefixes to librdkafka's offset store as they move,
//! synchronous commits on revocation and close, and the outcome of each.

use choreo_core::Name;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::Shared;
use super::rebalance::GroupContext;

/// Hands every partition's settled prefix that moved to librdkafka's offset
/// store; librdkafka commits stored offsets every `commit_interval` (and
/// reports the outcome as a commit event: see [`settle_commit`]).
pub(super) fn store(consumer: &BaseConsumer<GroupContext>, shared: &Shared) {
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
pub(super) fn commit_now(
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
pub(super) fn settle_commit(
    shared: &Shared,
    result: &KafkaResult<()>,
    offsets: &TopicPartitionList,
) {
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

/// Whether a commit may succeed when tried again: the group is rebalancing
/// (it succeeds once this member has rejoined), or the coordinator is
/// moving or briefly unreachable.
pub(super) fn retriable_commit(e: &KafkaError) -> bool {
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
