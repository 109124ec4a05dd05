//! Records decoded straight into what the tracer keeps: compact events and receipts, with names as the reader's numbers.
//!
//! A capture's reading threads decode each record into an [`Item`] instead of
//! a [`Record`]: no envelope, no payload kept, the receipt's JSON parsed where
//! it was read, and every name (event type, source, topic, the receipt's
//! service) replaced by a small number of the reader's own [`LocalNames`].
//! The tracer turns those numbers into its symbols through a table indexed by
//! them ([`Translation`]): a name's text is looked at once per reader, not
//! once per record. Anything out of the ordinary (a record with headers: a
//! dead-letter copy, a malformed event's mark) stays a whole [`Record`] and is
//! ingested as before, so both paths reach the same report.

use choreo_core::{EventId, Name, Outcome};

use crate::Record;
use crate::model::{Sym, Symbols};
use crate::receipt::ParsedReceipt;
use crate::util::{FastMap, global_name};

/// A reader's number for a name: an index into the names it has met, in order.
pub(crate) type Local = u32;

/// A business event as the tracer ingests it.
#[derive(Debug)]
pub(crate) struct CompactEvent {
    pub(crate) correlation: EventId,
    pub(crate) id: EventId,
    pub(crate) cause: Option<EventId>,
    pub(crate) ty: Local,
    pub(crate) source: Local,
    pub(crate) topic: Local,
    pub(crate) time: i64,
    pub(crate) partition: Option<u32>,
    pub(crate) offset: Option<u64>,
}

/// A receipt as the tracer ingests it: its payload already parsed.
#[derive(Debug)]
pub(crate) struct CompactReceipt {
    pub(crate) correlation: EventId,
    /// The receipt envelope's own time.
    pub(crate) time: i64,
    pub(crate) event: EventId,
    pub(crate) service: Local,
    pub(crate) event_type: Local,
    pub(crate) outcome: Outcome,
    pub(crate) attempts: u32,
    pub(crate) reason: Option<Box<str>>,
    pub(crate) started: i64,
    pub(crate) duration_us: u64,
    pub(crate) emitted: u32,
    pub(crate) ignored: bool,
}

/// One record, decoded for the tracer.
#[derive(Debug)]
pub(crate) enum Item {
    Event(CompactEvent),
    Receipt(CompactReceipt),
    /// An attributed record of the receipt type whose payload is not a receipt.
    BadReceipt,
    /// A record without choreo metadata.
    Unattributed,
    /// Anything else (a dead-letter copy, a record with headers), whole.
    Whole(Box<Record>),
}

impl Item {
    /// A receipt's item from its parsed payload.
    pub(crate) fn receipt(
        correlation: EventId,
        time: i64,
        view: ParsedReceipt,
        names: &mut LocalNames,
    ) -> Item {
        Item::Receipt(CompactReceipt {
            correlation,
            time,
            event: view.event,
            service: names.of_name(&view.service),
            event_type: names.of_name(&view.event_type),
            outcome: view.outcome,
            attempts: view.attempts,
            reason: view.reason,
            started: view.started,
            duration_us: view.duration_us,
            emitted: view.emitted,
            ignored: view.ignored,
        })
    }
}

/// A reader's names: each distinct name gets the next number. The names met
/// since the last [`LocalNames::take_fresh`] travel with the batch that
/// first uses them, so the tracer learns each once.
pub(crate) struct LocalNames {
    /// Direct-mapped by length and end bytes: most lookups compare one name.
    slots: [Local; SLOTS],
    all: Vec<Name>,
    index: FastMap<Box<[u8]>, Local>,
    /// Numbers from `fresh_from` on have not been handed out yet.
    fresh_from: usize,
}

const SLOTS: usize = 256;
const NONE: Local = Local::MAX;

impl Default for LocalNames {
    fn default() -> Self {
        LocalNames {
            slots: [NONE; SLOTS],
            all: Vec::new(),
            index: FastMap::default(),
            fresh_from: 0,
        }
    }
}

#[inline(always)]
fn slot(raw: &[u8]) -> usize {
    let (first, last) = match raw {
        [] => (0, 0),
        [f, .., l] => (*f, *l),
        [f] => (*f, *f),
    };
    (raw.len().wrapping_mul(31) ^ (usize::from(first) << 3) ^ usize::from(last).wrapping_mul(7))
        % SLOTS
}

impl LocalNames {
    /// The number of the name with these bytes; `None` when they are not UTF-8.
    #[inline(always)]
    pub(crate) fn of(&mut self, raw: &[u8]) -> Option<Local> {
        let s = slot(raw);
        let at = self.slots[s];
        if at != NONE && self.all[at as usize].as_bytes() == raw {
            return Some(at);
        }
        self.of_slow(raw, s)
    }

    #[inline(never)]
    fn of_slow(&mut self, raw: &[u8], s: usize) -> Option<Local> {
        let n = match self.index.get(raw) {
            Some(&n) => n,
            None => {
                let text = std::str::from_utf8(raw).ok()?;
                let n = self.all.len() as Local;
                self.all.push(global_name(text));
                self.index.insert(Box::from(raw), n);
                n
            }
        };
        self.slots[s] = n;
        Some(n)
    }

    /// The number of a name already known to be text.
    #[inline]
    pub(crate) fn of_name(&mut self, name: &Name) -> Local {
        self.of(name.as_bytes())
            .expect("a name is UTF-8 text by construction")
    }

    /// The names numbered since the last call, in order.
    pub(crate) fn take_fresh(&mut self) -> Vec<Name> {
        let fresh = self.all[self.fresh_from..].to_vec();
        self.fresh_from = self.all.len();
        fresh
    }
}

/// The tracer's side of one reader's [`LocalNames`]: their names, and the
/// symbol of each once the tracer first needs it (in the order the record
/// path would have interned them, so symbols number the same either way).
#[derive(Default)]
pub(crate) struct Translation {
    names: Vec<Name>,
    syms: Vec<Sym>,
}

const UNSET: Sym = Sym::MAX;

impl Translation {
    /// Learns the names a batch brought.
    pub(crate) fn learn(&mut self, fresh: Vec<Name>) {
        self.syms.resize(self.syms.len() + fresh.len(), UNSET);
        self.names.extend(fresh);
    }

    /// The tracer's symbol for the reader's name `local`.
    #[inline(always)]
    pub(crate) fn sym(&mut self, local: Local, syms: &mut Symbols) -> Sym {
        let s = self.syms[local as usize];
        if s != UNSET {
            return s;
        }
        let s = syms.intern(&self.names[local as usize]);
        self.syms[local as usize] = s;
        s
    }
}

/// A batch of items from one reader, with the names first numbered in it.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// Which reader decoded it (readers number names on their own).
    pub(crate) reader: usize,
    pub(crate) fresh: Vec<Name>,
    pub(crate) items: Vec<Item>,
    /// A piece of JSON lines' lines (nothing for Avro blocks).
    pub(crate) lines: crate::capture::parallel::Lines,
}
