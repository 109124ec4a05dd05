//! The polling thread: fetches records into the partitions' windows, hands
//! settled offsets to librdkafka's store, pauses partitions whose window is
//! full, and commits what was settled when the subscription closes.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use choreo_core::{Envelope, MALFORMED_HEADER};
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::topic_partition_list::TopicPartitionList;

use crate::dlq::RawRecord;
use crate::window::Fetched;

use super::commit::{commit_now, retriable_commit, store};
use super::rebalance::GroupContext;
use super::{BATCH, CLOSE_PATIENCE, Key, POLL, STORE_EVERY, Shared};

/// The polling thread.
pub(super) struct Poller {
    pub(super) shared: Arc<Shared>,
    pub(super) max_window: usize,
}

impl Poller {
    pub(super) fn run(self, consumer: BaseConsumer<GroupContext>) {
        let mut batch: Vec<(Key, i64, Fetched)> = Vec::with_capacity(BATCH);
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
    pub(super) fn final_commit(&self, consumer: &BaseConsumer<GroupContext>) {
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

    pub(super) fn convert(&self, m: &BorrowedMessage<'_>) -> (Key, i64, Fetched) {
        // The envelope's topic is the record's, a name shared by every
        // record of the thread (see `record::shared_name`).
        let (env, original) = envelope_of(m);
        let topic = env.topic.clone();
        if env.headers.get(MALFORMED_HEADER).is_some() {
            self.shared
                .metrics
                .malformed
                .with_label_values(&[&topic])
                .inc();
        }
        let record = Fetched {
            envelope: Arc::new(env),
            original: Arc::new(original),
        };
        ((topic, m.partition()), m.offset(), record)
    }

    pub(super) fn deliver(&self, batch: &mut Vec<(Key, i64, Fetched)>) {
        let mut st = self.shared.state.lock();
        let mut added = false;
        for (key, offset, record) in batch.drain(..) {
            let Some(part) = st.parts.get_mut(&key) else {
                // Not (or no longer) assigned: its owner fetches it again.
                continue;
            };
            if part.window.push(offset, record) {
                added = true;
                st.enqueue(&key);
            }
        }
        drop(st);
        if added {
            self.shared.ready.notify_one();
        }
    }

    pub(super) fn report(&self, e: KafkaError) {
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
    pub(super) fn flow_control(&self, consumer: &BaseConsumer<GroupContext>) {
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

/// The envelope of a consumed record (see
/// [`envelope_from_record`](crate::record::envelope_from_record)), and the
/// record as received.
pub(crate) fn envelope_of(m: &BorrowedMessage<'_>) -> (Envelope, RawRecord) {
    // rdkafka panics on a header name that is not UTF-8: such a record is
    // still delivered, marked malformed (and the header left out).
    let (headers, unreadable) = RawRecord::message_headers(m);
    let raw = RawRecord::of_message(m, &headers);
    let mut env = raw.envelope_with(&headers, m.topic(), m.partition(), m.offset());
    if unreadable > 0 {
        let problem = format!(
            "{unreadable} of the record's headers are unreadable (a header name is not UTF-8)"
        );
        let problem = match env.headers.get_str(MALFORMED_HEADER) {
            Some(other) => format!("{other}; {problem}"),
            None => problem,
        };
        env.headers.insert(MALFORMED_HEADER, problem);
    }
    (env, raw)
}
