//! A partition: its log of retained events, the cursor of each group, and
//! retention (making room for a new event as the policy says).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use choreo_core::{Envelope, Name, Settlement};
use tokio::sync::Notify;

use super::back_pressure::{Gate, Holder};
use super::config::WhenFull;
use super::group::Member;
use super::metrics::Counters;
use super::settled::Quiet;

pub(super) struct Partition {
    pub(super) topic: Name,
    pub(super) index: u32,
    // std Mutex: held only for short, await-free sections.
    pub(super) state: Mutex<PartState>,
    /// Publishers waiting for room.
    pub(super) room: Notify,
    /// How many publishers wait on `room`: a settlement wakes them only if
    /// there are any (a partition at its bound is full in every settlement
    /// once retention has filled it, waiting publishers or not).
    pub(super) waiting: AtomicUsize,
    pub(super) counters: Counters,
    pub(super) publish_waits: prometheus::IntCounter,
    pub(super) overflow: prometheus::IntCounter,
    pub(super) when_full: WhenFull,
    pub(super) max_events: usize,
    /// The bus's door for new work: this partition keeps it closed while it
    /// is past its bound (`PartState::over`).
    pub(super) gate: Arc<Gate>,
    /// Told when a group's position moves on ([`InProcessBus::settled`](super::InProcessBus::settled)).
    pub(super) quiet: Arc<Quiet>,
}

pub(super) struct PartState {
    /// Offset of `log[0]`: every event below was evicted. (So `end()` counts
    /// the events ever appended, and `base - evicted_unread` those evicted
    /// once settled: the counters are read from here when scraped, not
    /// counted per event.)
    pub(super) base: u64,
    /// Events evicted before some group had settled them.
    pub(super) evicted_unread: u64,
    pub(super) log: VecDeque<Arc<Envelope>>,
    pub(super) cursors: Vec<Cursor>,
    /// Whether `log` holds more than the bound, counted in `Gate::over`.
    pub(super) over: bool,
}

impl PartState {
    pub(super) fn end(&self) -> u64 {
        self.base + self.log.len() as u64
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum SlotState {
    InFlight,
    Settled,
    Pending,
}

#[derive(Clone, Copy)]
pub(super) struct Slot {
    pub(super) state: SlotState,
    pub(super) attempt: u32,
}

/// One group's position in one partition.
pub(super) struct Cursor {
    pub(super) group: Arc<str>,
    /// Every offset below is settled.
    pub(super) committed: u64,
    /// The next offset to hand out from the log.
    pub(super) next: u64,
    /// States of offsets `committed..next`.
    pub(super) window: VecDeque<Slot>,
    /// Offsets given back for redelivery, delivered before new ones.
    pub(super) pending: VecDeque<u64>,
    pub(super) owner: Option<Arc<Member>>,
    /// Bumped whenever ownership changes; settlements carrying an older token are ignored.
    pub(super) generation: u64,
}

impl Cursor {
    pub(super) fn active(&self) -> bool {
        self.owner.is_some()
    }

    /// Rewinds to the committed position: everything not settled will be delivered again.
    pub(super) fn rewind(&mut self) {
        self.next = self.committed;
        self.window.clear();
        self.pending.clear();
        self.generation += 1;
    }

    pub(super) fn advance_committed(&mut self) {
        while let Some(front) = self.window.front() {
            if front.state != SlotState::Settled {
                break;
            }
            self.window.pop_front();
            self.committed += 1;
        }
    }
}

impl Partition {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, PartState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends, making room per the retention policy. Returns false when the
    /// publisher must wait for room; with `past_bound` (a publish made while
    /// handling, see [`WhenFull::Block`]) never: what cannot be evicted
    /// stays, and the event goes past the bound.
    pub(super) fn try_append(
        &self,
        envelope: &mut Option<Arc<Envelope>>,
        past_bound: bool,
    ) -> bool {
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
    pub(super) fn trim(&self, st: &mut PartState) {
        while st.log.len() > self.max_events && self.evict_oldest(st) {}
        self.set_over(st);
    }

    /// Keeps `st.over` in step with the log's length, and the gate with it:
    /// the last partition to come back under its bound opens the door.
    pub(super) fn set_over(&self, st: &mut PartState) {
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
    pub(super) fn holders(&self, out: &mut Vec<Holder>) {
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
    pub(super) fn evict_oldest(&self, st: &mut PartState) -> bool {
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
            // A group's position moved past the evicted event.
            self.quiet.progressed();
        }
        true
    }

    /// Takes up to `max` deliverable events for `group`, redeliveries first.
    pub(super) fn fetch(
        &self,
        group: &Arc<str>,
        max: usize,
        out: &mut Vec<(Arc<Envelope>, u64, u32, u64)>,
    ) {
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

    pub(super) fn settle(&self, group: &Arc<str>, offset: u64, token: u64, settlement: Settlement) {
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
                if advanced {
                    self.quiet.progressed();
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
