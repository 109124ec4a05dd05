//! Feeding a tracer from a source on a second thread: decoding and tracing overlap.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;

use crate::receipt::{ParsedReceipt, parse_receipt};
use crate::record::{Progress, Source};
use crate::util::Interner;
use crate::{Error, Record, Tracer};

/// Records handed from the reading thread to the tracer at once.
const BATCH: usize = 2048;
/// Batches in flight between the threads: bounded, so a fast reader does not
/// buffer a whole file ahead of a slower tracer.
const DEPTH: usize = 8;

/// How a drive ended.
#[derive(Debug)]
pub struct Drained {
    /// Records fed to the tracer.
    pub records: u64,
    /// Why the source stopped early, if it did (a damaged file: everything
    /// before the damage was fed). The tracer's results stand either way.
    pub error: Option<Error>,
}

/// Reads `source` to its end on a separate thread and ingests every record into
/// `tracer` on this one, calling `progress` after each batch (about every two
/// thousand records). Also calls `each` with every record before it is
/// ingested (to copy it elsewhere; pass `|_| {}` when not needed).
pub fn drive<S>(
    source: S,
    tracer: &mut Tracer,
    mut each: impl FnMut(&Record),
    mut progress: impl FnMut(Progress),
) -> Drained
where
    S: Source + Send + 'static,
{
    type Batch = (Vec<Record>, Vec<Option<ParsedReceipt>>);
    let (tx, rx) = mpsc::sync_channel::<Batch>(DEPTH);
    // Ingested batches go back to the reader: a batch is most of a megabyte,
    // and allocating it afresh each time costs page faults on both threads.
    let (back, recycled) = mpsc::sync_channel::<Batch>(DEPTH + 2);
    let bytes = Arc::new(AtomicU64::new(0));
    let total = Arc::new(AtomicU64::new(u64::MAX));
    // Batches sent and not yet taken: how far the tracer is behind the reader.
    let queued = Arc::new(AtomicUsize::new(0));
    let (b2, t2, q2) = (bytes.clone(), total.clone(), queued.clone());
    let reader = std::thread::Builder::new()
        .name("choreo-trace-read".into())
        .spawn(move || {
            let mut source = source;
            let mut error = None;
            // Receipts are parsed on whichever thread has time: here when the
            // tracer is behind (a batch is still waiting for it), else by the
            // tracer as it ingests them. Either way the result is the same;
            // which thread is the slower one depends on the input and on what
            // else the machine is doing.
            let mut names = Interner::default();
            loop {
                // Ingested batches come back full: their records are dropped
                // here, off the tracer's thread.
                let (mut records, mut parsed) = match recycled.try_recv() {
                    Ok((mut r, mut p)) => {
                        r.clear();
                        p.clear();
                        (r, p)
                    }
                    Err(_) => (Vec::with_capacity(BATCH), Vec::with_capacity(BATCH)),
                };
                let end = match source.fill(&mut records, BATCH) {
                    Ok(0) => true,
                    Ok(_) => false,
                    Err(e) => {
                        error = Some(e);
                        true
                    }
                };
                if q2.load(Ordering::Relaxed) > 0 {
                    parsed.extend(records.iter().map(|r| {
                        r.is_receipt()
                            .then(|| parse_receipt(&r.envelope.data, &mut names))
                            .flatten()
                    }));
                }
                // Else `parsed` stays empty: the tracer parses them all.
                let p = source.progress();
                b2.store(p.bytes, Ordering::Relaxed);
                t2.store(p.total_bytes.unwrap_or(u64::MAX), Ordering::Relaxed);
                if !records.is_empty() {
                    q2.fetch_add(1, Ordering::Relaxed);
                    if tx.send((records, parsed)).is_err() {
                        return None;
                    }
                }
                if end {
                    return error;
                }
            }
        });
    let reader = match reader {
        Ok(r) => r,
        Err(e) => {
            return Drained {
                records: 0,
                error: Some(Error::Config {
                    setting: "reader thread",
                    reason: format!("cannot start the reading thread: {e}"),
                }),
            };
        }
    };
    let mut records = 0u64;
    for (batch, mut parsed) in rx {
        queued.fetch_sub(1, Ordering::Relaxed);
        let n = batch.len() as u64;
        // By reference: a record is a few hundred bytes, not worth moving again.
        for (i, r) in batch.iter().enumerate() {
            each(r);
            tracer.ingest_prepared(r, parsed.get_mut(i).and_then(Option::take));
        }
        // Back to the reader, which drops the records and refills the batch.
        // It may have ended, or have enough spare batches: then it is dropped here.
        let _ = back.try_send((batch, parsed));
        records += n;
        let total = total.load(Ordering::Relaxed);
        progress(Progress {
            records,
            bytes: bytes.load(Ordering::Relaxed),
            total_bytes: (total != u64::MAX).then_some(total),
        });
    }
    let error = reader.join().unwrap_or_else(|_| {
        Some(Error::Config {
            setting: "reader thread",
            reason: "the reading thread panicked".into(),
        })
    });
    Drained { records, error }
}
