//! What the tracer holds per flow in flight: compact events, receipts and dead-letter copies, and the table of flows.

use choreo_core::{EventId, Outcome};

use crate::model::Sym;
use crate::util::FastMap;

pub(crate) const NO_PARTITION: u32 = u32::MAX;
pub(crate) const NO_OFFSET: u64 = u64::MAX;

/// An event as the tracer keeps it: symbols instead of names, no payload.
#[derive(Debug, Clone)]
pub(crate) struct Ev {
    pub(crate) id: EventId,
    pub(crate) cause: Option<EventId>,
    pub(crate) ty: Sym,
    pub(crate) source: Sym,
    pub(crate) topic: Sym,
    pub(crate) time: i64,
    pub(crate) partition: u32,
    pub(crate) offset: u64,
}

/// A receipt as the tracer keeps it.
#[derive(Debug, Clone)]
pub(crate) struct Rc {
    pub(crate) event: EventId,
    pub(crate) service: Sym,
    pub(crate) ty: Sym,
    pub(crate) outcome: Outcome,
    pub(crate) attempts: u32,
    pub(crate) started: i64,
    pub(crate) duration_us: u64,
    pub(crate) emitted: u32,
    pub(crate) reason: Option<Box<str>>,
}

/// A dead-letter copy of an event; or, with `marker`, the note that an
/// event's own record was malformed (the backend could only partly read it).
#[derive(Debug, Clone)]
pub(crate) struct Dl {
    pub(crate) event: EventId,
    /// The service that gave up (`EMPTY` when the copy does not say).
    pub(crate) service: Sym,
    /// Why; for a marker, what is wrong with the record.
    pub(crate) reason: Box<str>,
    pub(crate) attempts: u32,
    /// When it was dead-lettered, when the copy says (µs).
    pub(crate) at: Option<i64>,
    /// The record could not be read: no service could handle it.
    pub(crate) malformed: bool,
    /// Not a dead-letter copy: the mark of a malformed event record.
    pub(crate) marker: bool,
}

#[derive(Debug)]
pub(crate) struct FlowState {
    pub(crate) events: Vec<Ev>,
    pub(crate) receipts: Vec<Rc>,
    pub(crate) dead: Vec<Dl>,
    /// Event id → index in `events`, built once a flow grows past a few events.
    pub(crate) index: Option<FastMap<EventId, u32>>,
    pub(crate) last_activity: i64,
    pub(crate) duplicates: u32,
    /// Live mode: don't analyse again before this time.
    pub(crate) next_check: i64,
    pub(crate) name: Option<usize>,
    /// The partition its first record was read from (`NO_PARTITION` when
    /// unknown): a consumer-group member holds a flow while it holds that
    /// partition (topics keyed by correlation id give a flow one partition
    /// number on every topic).
    pub(crate) home: u32,
    /// Rebuilt from replayed records and not adopted yet: never judged until
    /// [`Tracer::restored`](crate::Tracer::restored) decides.
    pub(crate) restoring: bool,
    /// Its beginning is older than the tracer's horizon (the look-back of a
    /// restore): causes missing from it are not orphans.
    pub(crate) before_horizon: bool,
}

/// Events a flow holds before it indexes them by id: below it, a scan of a
/// few ids is cheaper than a hash table.
const INDEX_FROM: usize = 24;

impl FlowState {
    /// An empty flow whose first record came at `time`; `name` is the flow
    /// its first record suggests.
    pub(crate) fn new(time: i64, name: Option<usize>) -> FlowState {
        FlowState {
            home: NO_PARTITION,
            restoring: false,
            before_horizon: false,
            events: Vec::new(),
            receipts: Vec::new(),
            dead: Vec::new(),
            index: None,
            last_activity: time,
            duplicates: 0,
            next_check: i64::MIN,
            name,
        }
    }

    /// Adds an event not held yet.
    pub(crate) fn push_event(&mut self, ev: Ev) {
        self.events.push(ev);
        let last = self.events.len() - 1;
        if let Some(ix) = self.index.as_mut() {
            ix.insert(self.events[last].id.clone(), last as u32);
        } else if self.events.len() > INDEX_FROM {
            self.index = Some(
                self.events
                    .iter()
                    .enumerate()
                    .map(|(i, e)| (e.id.clone(), i as u32))
                    .collect(),
            );
        }
    }

    /// Frees what it holds (once folded).
    pub(crate) fn release(&mut self) {
        self.events = Vec::new();
        self.receipts = Vec::new();
        self.dead = Vec::new();
        self.index = None;
    }

    pub(crate) fn records(&self) -> usize {
        self.events.len() + self.receipts.len() + self.dead.len()
    }

    pub(crate) fn find(&self, id: &EventId) -> Option<usize> {
        match &self.index {
            Some(ix) => ix.get(id).map(|&i| i as usize),
            None => self.events.iter().position(|e| &e.id == id),
        }
    }
}

/// Flows in flight: a slab with an id index, so a lookup holds no borrow and
/// one hash probe finds a flow. Flows are boxed: growing the slab, sorting
/// it at the end of a batch and moving flows in and out then moves 32 bytes
/// a flow, not 170 (a million-event capture holds a quarter of a million
/// flows at once, and copying the slab as it doubled was a tenth of the
/// tracer's page faults).
#[derive(Default)]
pub(crate) struct FlowTable {
    index: FastMap<EventId, u32>,
    slab: Vec<(EventId, Box<FlowState>)>,
}

impl FlowTable {
    #[inline]
    pub(crate) fn find(&self, id: &EventId) -> Option<u32> {
        self.index.get(id).copied()
    }

    #[inline]
    pub(crate) fn at_mut(&mut self, i: u32) -> &mut FlowState {
        &mut self.slab[i as usize].1
    }

    pub(crate) fn contains_key(&self, id: &EventId) -> bool {
        self.index.contains_key(id)
    }

    pub(crate) fn insert(&mut self, id: EventId, state: FlowState) -> u32 {
        let i = self.slab.len() as u32;
        self.index.insert(id.clone(), i);
        self.slab.push((id, Box::new(state)));
        i
    }

    pub(crate) fn remove(&mut self, id: &EventId) -> Option<FlowState> {
        let i = self.index.remove(id)? as usize;
        let (_, state) = self.slab.swap_remove(i);
        if let Some((moved, _)) = self.slab.get(i) {
            self.index.insert(moved.clone(), i as u32);
        }
        Some(*state)
    }

    pub(crate) fn get(&self, id: &EventId) -> Option<&FlowState> {
        self.find(id).map(|i| &*self.slab[i as usize].1)
    }

    pub(crate) fn len(&self) -> usize {
        self.slab.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &FlowState> {
        self.slab.iter().map(|(_, f)| &**f)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&EventId, &FlowState)> {
        self.slab.iter().map(|(id, f)| (id, &**f))
    }

    pub(crate) fn first_key(&self) -> Option<EventId> {
        self.slab.first().map(|(id, _)| id.clone())
    }

    pub(crate) fn take_all(&mut self) -> Vec<(EventId, Box<FlowState>)> {
        self.index.clear();
        std::mem::take(&mut self.slab)
    }
}
