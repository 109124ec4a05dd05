//! The consumer's librdkafka context: rebalances (assigning and revoking
//! partitions), commit reports, the lag before a group's first commit, and
//! librdkafka's logs.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use choreo_core::{Name, StartFrom};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;

use crate::client::{client_error, log_librdkafka};
use crate::watch::Watch;
use crate::window::Window;

use super::commit::{commit_now, settle_commit};
use super::{Key, Part, Shared, TopicSettle};

/// The consumer's librdkafka context: rebalances, commits, lag, logs.
pub(super) struct GroupContext {
    pub(super) watch: Arc<Watch>,
    pub(super) shared: Arc<Shared>,
    pub(super) start: StartFrom,
    pub(super) timeout: Duration,
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
pub(super) fn lag_before_first_commit(
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
    pub(super) fn pin_latest(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
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

    pub(super) fn assign(&self, tpl: &mut TopicPartitionList) {
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
    pub(super) fn commit_revoked(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
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

    pub(super) fn revoke(&self, tpl: &TopicPartitionList) {
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
