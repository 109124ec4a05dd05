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

/// Pieces waiting for a decoding thread, and decoded pieces waiting for the
/// tracer: bounded, so memory stays at a few pieces whatever the file's size.
/// Eight, not two: a piece takes about 0.3 ms to decode, and with more
/// threads than cores each is set aside for a scheduler's slice of a few
/// milliseconds, so two pieces queued left every thread waiting on another
/// now and then (the cores were 87 % busy while reading, 91 % with eight).
const PIECES_QUEUED: usize = 8;

/// Reads a capture file into `tracer`, calling `progress` after each piece
/// of the file (about half a megabyte of Avro blocks or JSON lines).
///
/// Faster than [`drive`], to the same results: one thread reads the file
/// and cuts it into pieces, several (one per core, at most four) decode them
/// at once straight into what the tracer keeps (no envelope per record, the
/// receipts' payloads parsed where they are read), and this thread ingests
/// them in file order. On a damaged file it ingests every record before the
/// damage and returns the same error [`drive`] would. A file that cannot be
/// cut (an Avro file written with another schema or codec, read through
/// apache-avro) is read as [`drive`] reads it.
pub fn drive_capture(
    reader: crate::capture::Reader,
    tracer: &mut Tracer,
    mut progress: impl FnMut(Progress),
) -> Drained {
    use crate::capture::parallel::{Decoder, Lines, Piece, Stop};
    use crate::capture::{line_damage, line_id};
    use crate::compact::{Batch, Item, Translation};
    use choreo_core::EventId;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    let label = reader.name();
    let total = reader.progress().total_bytes;
    let (mut splitter, lean) = match reader.split() {
        Ok(split) => split,
        Err(reader) => return drive(reader, tracer, |_| {}, progress),
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, 4);
    type Decoded = (u64, Batch, Option<Stop>);
    let (jobs_tx, jobs_rx) = mpsc::sync_channel::<(u64, Piece)>(PIECES_QUEUED);
    let jobs_rx = Arc::new(Mutex::new(jobs_rx));
    let (done_tx, done_rx) = mpsc::sync_channel::<Decoded>(PIECES_QUEUED);
    let bytes = Arc::new(AtomicU64::new(0));
    let spawned = std::thread::scope(|scope| -> Result<Drained, String> {
        let b2 = bytes.clone();
        let cut_tx = done_tx.clone();
        std::thread::Builder::new()
            .name("choreo-trace-read".into())
            .spawn_scoped(scope, move || {
                let mut seq = 0u64;
                loop {
                    let piece = splitter.next_piece();
                    b2.store(splitter.bytes(), Ordering::Relaxed);
                    match piece {
                        Ok(Some(piece)) => {
                            if jobs_tx.send((seq, piece)).is_err() {
                                return;
                            }
                        }
                        Ok(None) => return,
                        Err(stop) => {
                            let _ = cut_tx.send((seq, Batch::default(), Some(stop)));
                            return;
                        }
                    }
                    seq += 1;
                }
            })
            .map_err(|e| format!("cannot start the reading thread: {e}"))?;
        for reader_id in 0..threads {
            let jobs = jobs_rx.clone();
            let done = done_tx.clone();
            std::thread::Builder::new()
                .name(format!("choreo-trace-decode-{reader_id}"))
                .spawn_scoped(scope, move || {
                    let mut decoder = Decoder::new(lean);
                    // Room for as many items as the last piece gave: a
                    // vector grown from empty copies each piece's items
                    // about twice over.
                    let mut room = 0;
                    loop {
                        // std Mutex: held only to take the next piece.
                        let next = jobs.lock().map(|rx| rx.recv());
                        let Ok(Ok((seq, piece))) = next else {
                            return;
                        };
                        let mut items = Vec::with_capacity(room);
                        let mut lines = Lines::default();
                        let stop = decoder.decode(piece, &mut items, &mut lines);
                        room = items.len() + items.len() / 8;
                        let batch = Batch {
                            reader: reader_id,
                            fresh: decoder.local.take_fresh(),
                            items,
                            lines,
                        };
                        if done.send((seq, batch, stop)).is_err() {
                            return;
                        }
                    }
                })
                .map_err(|e| format!("cannot start a decoding thread: {e}"))?;
        }
        drop(done_tx);
        drop(jobs_rx);
        // In file order: pieces decoded ahead wait here (a few at most).
        let mut names: Vec<Translation> = (0..threads).map(|_| Translation::default()).collect();
        let mut waiting: BTreeMap<u64, (Batch, Option<Stop>)> = BTreeMap::new();
        let mut next = 0u64;
        let mut records = 0u64;
        // JSON lines before the piece taken next.
        let mut lines_before = 0u64;
        let mut error = None;
        'pieces: for (seq, batch, stop) in done_rx.iter() {
            waiting.insert(seq, (batch, stop));
            while let Some((batch, stop)) = waiting.remove(&next) {
                next += 1;
                let translation = &mut names[batch.reader];
                translation.learn(batch.fresh);
                records += batch.items.len() as u64;
                let base = lines_before;
                lines_before += batch.lines.count;
                let mut items = batch.items;
                // Records without an id are named after their line in the
                // file (and so is their flow, without a correlation id).
                for &(i, line) in &batch.lines.named {
                    if let Some(Item::Whole(record)) = items.get_mut(i)
                        && let Some(id) = EventId::parse(&line_id(base + line))
                    {
                        let e = &mut record.envelope;
                        if e.correlation_id == e.id {
                            e.correlation_id = id.clone();
                        }
                        e.id = id;
                    }
                }
                for item in items {
                    tracer.ingest_item(item, translation);
                }
                progress(Progress {
                    records,
                    bytes: bytes.load(Ordering::Relaxed),
                    total_bytes: total,
                });
                if let Some(stop) = stop {
                    error = Some(match stop {
                        Stop::Damaged { offset, reason } => Error::Damaged {
                            path: label.clone().into(),
                            offset,
                            records,
                            reason,
                        },
                        Stop::Line {
                            offset,
                            line,
                            complete,
                            reason,
                        } => Error::Damaged {
                            path: label.clone().into(),
                            offset,
                            records,
                            reason: line_damage(base + line, complete, &reason),
                        },
                        Stop::Io(source) => Error::Io {
                            path: label.clone().into(),
                            action: "read",
                            source,
                        },
                    });
                    break 'pieces;
                }
            }
        }
        // Dropping the receiver stops the decoders, and they the reader.
        drop(done_rx);
        Ok(Drained { records, error })
    });
    spawned.unwrap_or_else(|reason| Drained {
        records: 0,
        error: Some(Error::Config {
            setting: "reader thread",
            reason,
        }),
    })
}
