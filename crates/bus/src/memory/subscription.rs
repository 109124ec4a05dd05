//! A member of a consumer group: the subscription a service reads from.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use choreo_core::{Delivery, Envelope, Result, Settle, Subscription};

use super::Inner;
use super::group::{CursorHandle, Member};

/// A member of a consumer group on the [`InProcessBus`](super::InProcessBus).
pub struct InProcessSubscription {
    pub(super) inner: Arc<Inner>,
    pub(super) group: Arc<str>,
    pub(super) member: Arc<Member>,
    pub(super) buffer: VecDeque<Delivery>,
    pub(super) scratch: Vec<(Arc<Envelope>, u64, u32, u64)>,
    pub(super) buffer_epoch: u64,
    pub(super) rr: usize,
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
