//! One partition's window of a consumer: the records fetched and not yet
//! committed, their states, and how far the group's offset may move.
//!
//! The window runs from the oldest unsettled record to the newest fetched
//! one. Records are handed out in offset order, except that records given
//! back for redelivery go first (oldest first). The committable offset only
//! moves past a record once it and every record before it are settled, so a
//! commit never passes an unsettled earlier offset.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use choreo_core::Envelope;

use crate::dlq::RawRecord;

/// A fetched record: the envelope made of it, and the record as received
/// (which its dead-letter copy carries).
#[derive(Debug, Clone)]
pub(crate) struct Fetched {
    pub(crate) envelope: Arc<Envelope>,
    pub(crate) original: Arc<RawRecord>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Fetched, not yet handed out.
    Fresh,
    /// Handed out, not settled.
    InFlight,
    /// Given back: to be handed out again.
    Pending,
    /// Acked (or dead-lettered).
    Settled,
}

struct Slot {
    offset: i64,
    record: Fetched,
    attempts: u32,
    state: State,
}

/// A record handed out for delivery.
#[derive(Debug, Clone)]
pub(crate) struct Taken {
    pub(crate) offset: i64,
    pub(crate) record: Fetched,
    /// 1 for the first delivery, then one more per redelivery.
    pub(crate) attempt: u32,
}

/// One partition's records between the committable offset and the newest fetched.
#[derive(Default)]
pub(crate) struct Window {
    slots: VecDeque<Slot>,
    /// Offsets given back, handed out again before fresh records.
    pending: BTreeSet<i64>,
    /// The offset of the next fresh record to hand out.
    next_fresh: i64,
    /// Records not yet handed out (fresh or pending).
    waiting: usize,
    /// Every record below this offset is settled; `None` until one is.
    committable: Option<i64>,
}

impl Window {
    /// A window whose records below `offset` are known to be settled: its
    /// committable offset starts there.
    pub(crate) fn settled_until(offset: i64) -> Self {
        Window {
            committable: Some(offset),
            ..Window::default()
        }
    }

    /// Appends a fetched record. Offsets must grow; a record at or below the
    /// newest one (fetched twice) is ignored and `false` returned.
    pub(crate) fn push(&mut self, offset: i64, record: Fetched) -> bool {
        let newest = self
            .slots
            .back()
            .map(|s| s.offset)
            .or(self.committable.map(|c| c - 1));
        if newest.is_some_and(|n| offset <= n) {
            return false;
        }
        if self.slots.is_empty() {
            self.next_fresh = offset;
        }
        self.slots.push_back(Slot {
            offset,
            record,
            attempts: 0,
            state: State::Fresh,
        });
        self.waiting += 1;
        true
    }

    /// The next record to deliver: the oldest given back, else the oldest fresh.
    pub(crate) fn take(&mut self) -> Option<Taken> {
        let idx = if let Some(offset) = self.pending.pop_first() {
            self.index(offset)?
        } else {
            let idx = self.slots.partition_point(|s| s.offset < self.next_fresh);
            let slot = self.slots.get(idx)?;
            if slot.state != State::Fresh {
                return None;
            }
            self.next_fresh = slot.offset + 1;
            idx
        };
        let slot = &mut self.slots[idx];
        slot.state = State::InFlight;
        slot.attempts += 1;
        self.waiting -= 1;
        Some(Taken {
            offset: slot.offset,
            record: slot.record.clone(),
            attempt: slot.attempts,
        })
    }

    fn index(&self, offset: i64) -> Option<usize> {
        self.slots.binary_search_by_key(&offset, |s| s.offset).ok()
    }

    /// Settles an in-flight record: `ack` true when done, false to give it
    /// back. Returns false when `offset` is not in flight (already settled).
    pub(crate) fn settle(&mut self, offset: i64, ack: bool) -> bool {
        let Some(idx) = self.index(offset) else {
            return false;
        };
        let slot = &mut self.slots[idx];
        if slot.state != State::InFlight {
            return false;
        }
        if ack {
            slot.state = State::Settled;
            while self
                .slots
                .front()
                .is_some_and(|s| s.state == State::Settled)
            {
                if let Some(s) = self.slots.pop_front() {
                    self.committable = Some(s.offset + 1);
                }
            }
        } else {
            slot.state = State::Pending;
            self.pending.insert(offset);
            self.waiting += 1;
        }
        true
    }

    /// The offset the group may commit: every record below it is settled.
    pub(crate) fn committable(&self) -> Option<i64> {
        self.committable
    }

    /// The first offset not known to be settled: the committable offset once
    /// a record was settled, else the oldest record fetched. `None` while
    /// nothing has been fetched or settled.
    pub(crate) fn unsettled_from(&self) -> Option<i64> {
        self.committable
            .or_else(|| self.slots.front().map(|s| s.offset))
    }

    /// Records waiting to be handed out.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting
    }

    /// Records in the window, settled ones behind an unsettled one included.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Fetched {
        Fetched {
            envelope: Arc::new(Envelope::new("T", "t", "{}")),
            original: Arc::new(RawRecord::default()),
        }
    }

    fn filled(offsets: &[i64]) -> Window {
        let mut w = Window::default();
        for &o in offsets {
            assert!(w.push(o, env()));
        }
        w
    }

    #[test]
    fn the_unsettled_part_starts_at_the_oldest_record_then_at_the_committable_offset() {
        assert_eq!(Window::default().unsettled_from(), None);
        let mut w = filled(&[10, 11]);
        assert_eq!(w.unsettled_from(), Some(10));
        let a = w.take().unwrap();
        let b = w.take().unwrap();
        assert!(w.settle(b.offset, true));
        assert_eq!(w.unsettled_from(), Some(10), "11 is settled, 10 is not");
        assert!(w.settle(a.offset, true));
        assert_eq!(w.unsettled_from(), Some(12));
        assert_eq!(Window::settled_until(40).unsettled_from(), Some(40));
    }

    #[test]
    fn hands_out_in_order_and_commits_the_settled_prefix() {
        let mut w = filled(&[10, 11, 12]);
        assert_eq!(w.waiting(), 3);
        let a = w.take().unwrap();
        let b = w.take().unwrap();
        let c = w.take().unwrap();
        assert_eq!((a.offset, b.offset, c.offset), (10, 11, 12));
        assert!(w.take().is_none());
        assert_eq!(w.committable(), None);
        // Later offsets settled first: the commit waits for 10.
        assert!(w.settle(12, true));
        assert!(w.settle(11, true));
        assert_eq!(
            w.committable(),
            None,
            "never past an unsettled earlier offset"
        );
        assert!(w.settle(10, true));
        assert_eq!(w.committable(), Some(13));
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn given_back_records_come_first_and_count_attempts() {
        let mut w = filled(&[0, 1, 2]);
        let first = w.take().unwrap();
        let second = w.take().unwrap();
        assert!(w.settle(second.offset, false));
        assert!(w.settle(first.offset, false));
        let again = w.take().unwrap();
        assert_eq!(
            (again.offset, again.attempt),
            (0, 2),
            "oldest given back first"
        );
        assert_eq!(w.take().unwrap().offset, 1);
        assert_eq!(w.take().unwrap().offset, 2);
        assert!(w.settle(0, true));
        assert_eq!(w.committable(), Some(1));
    }

    #[test]
    fn gaps_in_offsets_are_fine_and_double_settles_are_ignored() {
        let mut w = filled(&[5, 9]);
        let a = w.take().unwrap();
        let b = w.take().unwrap();
        assert!(w.settle(b.offset, true));
        assert!(w.settle(a.offset, true));
        assert_eq!(w.committable(), Some(10));
        assert!(!w.settle(a.offset, true));
        assert!(!w.settle(42, false));
        assert!(!w.push(9, env()), "refetched records are ignored");
        assert!(w.push(10, env()));
        assert_eq!(w.take().unwrap().offset, 10);
    }

    #[test]
    fn a_settled_record_is_not_taken_again() {
        let mut w = filled(&[0, 1]);
        let a = w.take().unwrap();
        assert!(w.settle(a.offset, false));
        let a = w.take().unwrap();
        assert!(w.settle(a.offset, true));
        let b = w.take().unwrap();
        assert_eq!(b.offset, 1);
        assert!(w.take().is_none());
        assert_eq!(w.waiting(), 0);
    }
}
