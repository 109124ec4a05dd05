//! Records: an envelope as a source saw it, and the [`Source`] trait every input implements.

use choreo_core::{Envelope, RECEIPT_TYPE};

use crate::Result;

/// One event (or receipt: receipts are envelopes too) as a source saw it: the
/// envelope, plus where it was read from when the source knows.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The event.
    pub envelope: Envelope,
    /// The partition it was read from, when known.
    pub partition: Option<u32>,
    /// Its offset in that partition, when known.
    pub offset: Option<u64>,
    /// False when the source found no choreo metadata (a record without a
    /// correlation id, such as a Kafka record without CloudEvents headers):
    /// the tracer counts it as unattributed and places it in no flow.
    pub attributed: bool,
}

impl Record {
    /// Whether the tracer reads this record as a receipt: an attributed
    /// record of the receipt event type.
    pub(crate) fn is_receipt(&self) -> bool {
        self.attributed && is_receipt_type(&self.envelope.event_type)
    }

    /// A record of `envelope` with no position. It is attributed unless its
    /// event type is empty.
    pub fn new(envelope: Envelope) -> Record {
        let attributed = !envelope.event_type.is_empty();
        Record {
            envelope,
            partition: None,
            offset: None,
            attributed,
        }
    }

    /// A record of an envelope that lacks choreo metadata (its correlation id
    /// was made up by the source): counted as unattributed.
    pub fn unattributed(envelope: Envelope) -> Record {
        Record {
            attributed: false,
            ..Record::new(envelope)
        }
    }

    /// Sets where it was read from.
    pub fn at(mut self, partition: u32, offset: u64) -> Record {
        self.partition = Some(partition);
        self.offset = Some(offset);
        self
    }
}

/// How far a source has got, for progress bars.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Records produced so far.
    pub records: u64,
    /// Bytes consumed so far (0 when the source does not count bytes).
    pub bytes: u64,
    /// Total bytes, when known (a file's length).
    pub total_bytes: Option<u64>,
}

/// A stream of records: a capture file, a Kafka topic, a bus tap.
///
/// The contract: `next_record` returns records until the input ends (`None`);
/// a damaged input yields one `Err` (naming where it is damaged) after every
/// record read before the damage, and then `None`. Records must be yielded in
/// the order the source read them; the tracer places out-of-order events
/// itself. Sources that block (a Kafka consumer in batch mode) may block in
/// `next_record`.
///
/// To add a source, implement this trait (or wrap any iterator of
/// `Result<Record>` in [`IterSource`]) and hand it to
/// [`drive`](crate::drive) or feed [`Tracer::ingest`](crate::Tracer::ingest)
/// directly.
pub trait Source {
    /// A label for messages and progress (`run.avro`, `kafka:orders,payments`).
    fn name(&self) -> String;

    /// The next record; see the trait docs.
    fn next_record(&mut self) -> Option<Result<Record>>;

    /// How far it has got. The default counts nothing.
    fn progress(&self) -> Progress {
        Progress::default()
    }

    /// Appends up to `max` records to `out` and returns how many: `Ok(0)`
    /// at the end of the input. On damage, the records before it are in
    /// `out` and the error is returned. The default calls `next_record`;
    /// sources that can decode in batches override it.
    fn fill(&mut self, out: &mut Vec<Record>, max: usize) -> Result<usize> {
        fill_one_by_one(self, out, max)
    }
}

/// [`Source::fill`] through [`Source::next_record`].
pub(crate) fn fill_one_by_one<S: Source + ?Sized>(
    source: &mut S,
    out: &mut Vec<Record>,
    max: usize,
) -> Result<usize> {
    let mut n = 0;
    while n < max {
        match source.next_record() {
            Some(Ok(r)) => {
                out.push(r);
                n += 1;
            }
            Some(Err(e)) => return Err(e),
            None => break,
        }
    }
    Ok(n)
}

/// Any iterator of records as a [`Source`].
#[derive(Debug)]
pub struct IterSource<I> {
    name: String,
    iter: I,
    records: u64,
}

impl<I> IterSource<I> {
    /// Wraps `iter`, labelled `name`.
    pub fn new(name: impl Into<String>, iter: I) -> Self {
        IterSource {
            name: name.into(),
            iter,
            records: 0,
        }
    }
}

impl<I: Iterator<Item = Result<Record>>> Source for IterSource<I> {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn next_record(&mut self) -> Option<Result<Record>> {
        let r = self.iter.next();
        if matches!(r, Some(Ok(_))) {
            self.records += 1;
        }
        r
    }

    fn progress(&self) -> Progress {
        Progress {
            records: self.records,
            ..Progress::default()
        }
    }
}

impl<S: Source + ?Sized> Source for Box<S> {
    fn name(&self) -> String {
        (**self).name()
    }

    fn next_record(&mut self) -> Option<Result<Record>> {
        (**self).next_record()
    }

    fn progress(&self) -> Progress {
        (**self).progress()
    }

    fn fill(&mut self, out: &mut Vec<Record>, max: usize) -> Result<usize> {
        (**self).fill(out, max)
    }
}

/// Whether `event_type` is the receipts' event type.
pub(crate) fn is_receipt_type(event_type: &str) -> bool {
    event_type == RECEIPT_TYPE
}

/// Whether `event_type`'s bytes are the receipts' event type.
#[inline]
pub(crate) fn is_receipt_type_bytes(event_type: &[u8]) -> bool {
    event_type == RECEIPT_TYPE.as_bytes()
}
