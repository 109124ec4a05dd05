//! Feeding a tracer from a source on a second thread: decoding and tracing overlap.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use choreo_core::RECEIPT_TYPE;

use crate::engine::{ParsedReceipt, parse_receipt};
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
    let (tx, rx) = mpsc::sync_channel::<(Vec<Record>, Vec<Option<ParsedReceipt>>)>(DEPTH);
    let bytes = Arc::new(AtomicU64::new(0));
    let total = Arc::new(AtomicU64::new(u64::MAX));
    let (b2, t2) = (bytes.clone(), total.clone());
    let reader = std::thread::Builder::new()
        .name("choreo-trace-read".into())
        .spawn(move || {
            let mut source = source;
            let mut error = None;
            // Receipts are parsed here, beside decoding: the tracer's thread
            // has the heavier share of the work.
            let mut names = Interner::default();
            loop {
                let mut records: Vec<Record> = Vec::with_capacity(BATCH);
                let end = match source.fill(&mut records, BATCH) {
                    Ok(0) => true,
                    Ok(_) => false,
                    Err(e) => {
                        error = Some(e);
                        true
                    }
                };
                let parsed: Vec<Option<ParsedReceipt>> = records
                    .iter()
                    .map(|r| {
                        (r.attributed && r.envelope.event_type.as_str() == RECEIPT_TYPE)
                            .then(|| parse_receipt(&r.envelope.data, &mut names))
                            .flatten()
                    })
                    .collect();
                let p = source.progress();
                b2.store(p.bytes, Ordering::Relaxed);
                t2.store(p.total_bytes.unwrap_or(u64::MAX), Ordering::Relaxed);
                if !records.is_empty() && tx.send((records, parsed)).is_err() {
                    return None;
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
        let n = batch.len() as u64;
        // By reference: a record is a few hundred bytes, not worth moving again.
        for (r, pre) in batch.iter().zip(parsed.iter_mut()) {
            each(r);
            tracer.ingest_prepared(r, pre.take());
        }
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
