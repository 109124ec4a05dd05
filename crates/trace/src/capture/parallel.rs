//! A capture cut into pieces (Avro blocks, runs of JSON lines) that several threads decode at once into the tracer's compact records.
//!
//! One thread reads the file and cuts it ([`Splitter`]); each decoding
//! thread turns a piece into [`Item`]s ([`Decoder`]); the tracer takes the
//! pieces back in file order. What comes out is what the [`Reader`]
//! yields record by record, damage included: every record before it, then
//! the same error.

use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::avro::{self, Block, BlockPool, Cursor, Fault, Lent, Pool, ReadFault};
use super::{Inner, Reader, Stream, jsonl, lines, trim};
use crate::compact::{Item, LocalNames};
use crate::util::Interner;

/// Bytes of JSON lines per piece (whole lines: a longer line makes a longer piece).
const LINES_BYTES: usize = 512 << 10;

/// The room of a buffer for a piece of JSON lines: the piece and the line
/// the piece before it cut short.
const LINES_ROOM: usize = 2 * LINES_BYTES;

/// How many buffers of JSON lines are kept for reuse: more than the pieces
/// in flight between the reading thread and the decoders (both queues of
/// `drive`'s `PIECES_QUEUED`, and one per decoder).
const LINE_BUFFERS_KEPT: usize = 32;

/// Bytes of Avro blocks per piece (whole blocks): a block alone (64 KiB as
/// choreo writes them) made the threads hand pieces over so often that
/// waking each other up cost a tenth of the time.
const BLOCKS_BYTES: usize = 512 << 10;

/// A piece of a capture, decoded on its own.
pub(crate) enum Piece {
    /// Avro blocks, in order.
    Blocks(Vec<Block>),
    /// Whole JSON lines (the last piece's last line may lack its newline).
    /// Their numbers are counted by the decoder, from 1 within the piece
    /// (see [`Lines`]): the file's line numbers are known only in file
    /// order, and counting them as the file is cut took the reading thread,
    /// the one that cannot be shared, a fifth of its time.
    Lines {
        data: Bytes,
        /// The file offset of the first byte.
        offset: u64,
    },
}

/// What a piece of JSON lines says of its lines, numbered from 1 within the
/// piece: the tracer, taking pieces in file order, adds the lines before it.
#[derive(Debug, Default)]
pub(crate) struct Lines {
    /// The lines decoded (all of them, but after damage).
    pub(crate) count: u64,
    /// The items whose id was made from their line's number (records without
    /// one): item index, line in the piece.
    pub(crate) named: Vec<(usize, u64)>,
}

/// Why reading stopped early.
#[derive(Debug)]
pub(crate) enum Stop {
    /// Damage at a byte offset.
    Damaged { offset: u64, reason: String },
    /// A JSON line that does not decode, at a byte offset: `line` within its
    /// piece, `complete` when it has its newline.
    Line {
        offset: u64,
        line: u64,
        complete: bool,
        reason: String,
    },
    /// The input's own error.
    Io(io::Error),
}

enum Cut {
    Avro {
        input: Stream,
        sync: [u8; 16],
        offset: u64,
        pool: BlockPool,
    },
    Lines {
        input: Stream,
        carry: Vec<u8>,
        offset: u64,
        buffers: LineBuffers,
    },
    /// Pieces were handed out; the error that followed them is next.
    Failed(Stop),
    Done,
}

/// Cuts a capture into pieces, in file order.
pub(crate) struct Splitter {
    cut: Cut,
    /// Bytes of the file cut so far.
    consumed: u64,
}

impl Splitter {
    /// The bytes consumed so far.
    pub(crate) fn bytes(&self) -> u64 {
        self.consumed
    }

    /// The next piece; `Ok(None)` at the end. After an error or damage it ends.
    pub(crate) fn next_piece(&mut self) -> Result<Option<Piece>, Stop> {
        let r = self.cut_next();
        match &self.cut {
            Cut::Avro { offset, .. } | Cut::Lines { offset, .. } => self.consumed = *offset,
            Cut::Failed(_) | Cut::Done => {}
        }
        r
    }

    fn cut_next(&mut self) -> Result<Option<Piece>, Stop> {
        let r = match &mut self.cut {
            Cut::Avro {
                input,
                sync,
                offset,
                pool,
            } => {
                let mut blocks = Vec::new();
                let mut bytes = 0;
                let end = loop {
                    match avro::read_block(input, *offset, sync, pool) {
                        Ok(None) => break None,
                        Ok(Some((block, len))) => {
                            *offset += len;
                            bytes += block.data.len();
                            // A block that ends the readable part: nothing after it is read.
                            let last = !block.complete || !block.sync_ok;
                            blocks.push(block);
                            if last {
                                break Some(Ok(()));
                            }
                            if bytes >= BLOCKS_BYTES {
                                return Ok(Some(Piece::Blocks(blocks)));
                            }
                        }
                        Err(ReadFault::Io(e)) => break Some(Err(Stop::Io(e))),
                        Err(ReadFault::Fault(f)) => {
                            break Some(Err(Stop::Damaged {
                                offset: *offset,
                                reason: f.describe("the block header"),
                            }));
                        }
                    }
                };
                self.cut = Cut::Done;
                return match end {
                    // The blocks before an error first; the error with the next call.
                    Some(Err(stop)) if !blocks.is_empty() => {
                        self.cut = Cut::Failed(stop);
                        Ok(Some(Piece::Blocks(blocks)))
                    }
                    Some(Err(stop)) => Err(stop),
                    _ if blocks.is_empty() => Ok(None),
                    _ => Ok(Some(Piece::Blocks(blocks))),
                };
            }
            Cut::Lines {
                input,
                carry,
                offset,
                buffers,
            } => {
                let mut buf = buffers.take();
                let mut filled = carry.len();
                if buf.len() < filled + LINES_BYTES {
                    buf.resize(filled + LINES_BYTES, 0);
                }
                buf[..filled].copy_from_slice(carry);
                carry.clear();
                'piece: loop {
                    let scanned = filled;
                    // Reads of half a megabyte go past the BufReader's buffer
                    // straight into this one.
                    let target = scanned + LINES_BYTES;
                    let mut end = false;
                    let mut failed = None;
                    while filled < target {
                        match input.read(&mut buf[filled..target]) {
                            Ok(0) => {
                                end = true;
                                break;
                            }
                            Ok(n) => filled += n,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => {
                                failed = Some(e);
                                break;
                            }
                        }
                    }
                    if let Some(e) = failed {
                        // The whole lines read before the error, then the
                        // error, as record by record.
                        let Some(cut) = memchr::memrchr(b'\n', &buf[..filled]) else {
                            buffers.give(buf);
                            break 'piece Err(Stop::Io(e));
                        };
                        let piece = lent_piece(buf, cut + 1, buffers, offset);
                        self.cut = Cut::Failed(Stop::Io(e));
                        return Ok(Some(piece));
                    }
                    let cut = if end {
                        // The end: what is left is the last line.
                        Some(filled)
                    } else {
                        memchr::memrchr(b'\n', &buf[scanned..filled]).map(|i| scanned + i + 1)
                    };
                    let Some(cut) = cut else {
                        // A line longer than a piece: read on, with more room
                        // (doubled: a very long line is copied a few times, not
                        // once for every half megabyte).
                        buf.resize((filled + LINES_BYTES).max(2 * buf.len()), 0);
                        continue;
                    };
                    carry.extend_from_slice(&buf[cut..filled]);
                    if cut == 0 {
                        buffers.give(buf);
                        break Ok(None);
                    }
                    let piece = lent_piece(buf, cut, buffers, offset);
                    if end {
                        // Read no further, as record by record: an input
                        // that ends and then goes on (a terminal) ends here.
                        self.cut = Cut::Done;
                    }
                    return Ok(Some(piece));
                }
            }
            Cut::Failed(_) => match std::mem::replace(&mut self.cut, Cut::Done) {
                Cut::Failed(stop) => Err(stop),
                _ => Ok(None),
            },
            Cut::Done => Ok(None),
        };
        self.cut = Cut::Done;
        r
    }
}

/// The first `cut` bytes of `buf`, whole lines, as the next piece; `offset`
/// moves past them.
fn lent_piece(buf: Vec<u8>, cut: usize, buffers: &LineBuffers, offset: &mut u64) -> Piece {
    let data = Bytes::from_owner(Lent {
        buf,
        pool: buffers.clone(),
    })
    .slice(..cut);
    let at = *offset;
    *offset += cut as u64;
    Piece::Lines { offset: at, data }
}

/// Buffers for pieces of JSON lines, zeroed once and reused. Reading each
/// piece into fresh memory made the kernel fault in and clear its pages, and
/// reading through the input's BufReader copied every byte once more.
#[derive(Clone, Default)]
struct LineBuffers(Arc<Mutex<Vec<Vec<u8>>>>);

impl LineBuffers {
    /// A buffer of [`LINES_ROOM`] bytes, all of them initialised.
    fn take(&self) -> Vec<u8> {
        let kept = self.0.lock().unwrap_or_else(|e| e.into_inner()).pop();
        kept.unwrap_or_else(|| vec![0; LINES_ROOM])
    }
}

impl Pool for LineBuffers {
    /// Keeps `buf` for reuse, unless it grew for a long line or enough are kept.
    fn give(&self, buf: Vec<u8>) {
        if buf.len() == LINES_ROOM {
            let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if kept.len() < LINE_BUFFERS_KEPT {
                kept.push(buf);
            }
        }
    }
}

/// A decoding thread's state: its own names, numbered as it meets them.
pub(crate) struct Decoder {
    pub(crate) local: LocalNames,
    names: Interner,
    scratch: Vec<u8>,
    lean: bool,
}

impl Decoder {
    /// A decoder for pieces of a reader that was [`Reader::lean`] or not.
    pub(crate) fn new(lean: bool) -> Decoder {
        Decoder {
            local: LocalNames::default(),
            names: Interner::default(),
            scratch: Vec::new(),
            lean,
        }
    }

    /// Decodes a piece into `out`; the damage that ends it, if any. `lines`
    /// tells of a piece of JSON lines' lines.
    pub(crate) fn decode(
        &mut self,
        piece: Piece,
        out: &mut Vec<Item>,
        lines: &mut Lines,
    ) -> Option<Stop> {
        match piece {
            Piece::Blocks(blocks) => {
                for block in &blocks {
                    if let Some(stop) = self.block(block, out) {
                        return Some(stop);
                    }
                }
                None
            }
            Piece::Lines { data, offset } => self.lines(&data, offset, out, lines),
        }
    }

    fn block(&mut self, block: &Block, out: &mut Vec<Item>) -> Option<Stop> {
        let mut c = Cursor::new(&block.data);
        out.reserve(block.count.min(1 << 16) as usize);
        for k in 0..block.count {
            let record_offset = block.data_offset + c.pos() as u64;
            match avro::decode_item(&mut c, &mut self.local, &mut self.names, self.lean, || {
                format!("capture-offset-{record_offset}")
            }) {
                Ok(item) => out.push(item),
                Err(fault) => {
                    let fault = if block.complete && fault == Fault::Truncated {
                        Fault::Corrupt("it runs past the end of its block".into())
                    } else {
                        fault
                    };
                    return Some(Stop::Damaged {
                        offset: record_offset,
                        reason: fault.describe(&format!(
                            "record {} of the block at byte {}",
                            k + 1,
                            block.data_offset
                        )),
                    });
                }
            }
        }
        let leftover = block.data.len() - c.pos();
        let data_end = block.data_offset + c.pos() as u64;
        if leftover > 0 && block.complete {
            Some(Stop::Damaged {
                offset: data_end,
                reason: format!(
                    "the block holds {leftover} bytes after its {} records (corrupt block size or count)",
                    block.count
                ),
            })
        } else if !block.complete {
            Some(Stop::Damaged {
                offset: data_end,
                reason: "the file ends inside a block (truncated)".to_owned(),
            })
        } else if !block.sync_ok {
            Some(Stop::Damaged {
                offset: block.sync_offset,
                reason: "the block's sync marker is missing or wrong (corrupt or truncated)"
                    .to_owned(),
            })
        } else {
            None
        }
    }

    fn lines(
        &mut self,
        data: &[u8],
        offset: u64,
        out: &mut Vec<Item>,
        lines: &mut Lines,
    ) -> Option<Stop> {
        let mut pos = 0;
        while pos < data.len() {
            let end = memchr::memchr(b'\n', &data[pos..]).map_or(data.len(), |i| pos + i + 1);
            let line = &data[pos..end];
            let start = offset + pos as u64;
            pos = end;
            lines.count += 1;
            let this = lines.count;
            let text = trim(line);
            if text.is_empty() {
                continue;
            }
            if let Some(item) =
                lines::decode_item(text, &mut self.local, &mut self.names, &mut self.scratch)
            {
                out.push(item);
                continue;
            }
            // Numbered within the piece here; the tracer renames it.
            let mut named = false;
            match jsonl::decode(text, &mut self.names, || {
                named = true;
                super::line_id(this)
            }) {
                Ok(record) => {
                    if named {
                        lines.named.push((out.len(), this));
                    }
                    out.push(Item::Whole(Box::new(record)));
                }
                Err(reason) => {
                    return Some(Stop::Line {
                        offset: start,
                        line: this,
                        complete: line.last() == Some(&b'\n'),
                        reason,
                    });
                }
            }
        }
        None
    }
}

impl Reader {
    /// Cuts this reader's input into pieces for several decoding threads;
    /// `Err(self)` (boxed) when it cannot (a file read through apache-avro, or one
    /// already partly read). Also gives the label and whether it is lean.
    pub(crate) fn split(self) -> Result<(Splitter, bool), Box<Reader>> {
        if self.records > 0 {
            return Err(Box::new(self));
        }
        let lean = self.lean;
        match self.inner {
            Inner::Fast(f) if f.block.is_none() => {
                let f = *f;
                Ok((
                    Splitter {
                        cut: Cut::Avro {
                            input: f.input,
                            sync: f.sync,
                            offset: f.offset,
                            pool: f.pool,
                        },
                        consumed: f.offset,
                    },
                    lean,
                ))
            }
            Inner::Jsonl(j) if j.number == 0 => Ok((
                Splitter {
                    cut: Cut::Lines {
                        input: j.input,
                        carry: Vec::new(),
                        offset: j.offset,
                        buffers: LineBuffers::default(),
                    },
                    consumed: j.offset,
                },
                lean,
            )),
            Inner::Done => Ok((
                Splitter {
                    cut: Cut::Done,
                    consumed: 0,
                },
                lean,
            )),
            inner => Err(Box::new(Reader { inner, ..self })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_piece_buffer_is_reused_once_its_piece_is_gone_unless_it_grew() {
        let buffers = LineBuffers::default();
        let buf = buffers.take();
        assert_eq!(buf.len(), LINES_ROOM);
        let addr = buf.as_ptr();
        let piece = Bytes::from_owner(Lent {
            buf,
            pool: buffers.clone(),
        })
        .slice(..10);
        let line = piece.slice(2..5);
        drop(piece);
        assert!(
            buffers.0.lock().unwrap().is_empty(),
            "a line still holds it"
        );
        drop(line);
        let again = buffers.take();
        assert_eq!(again.as_ptr(), addr, "the same buffer, reused");
        // One grown for a long line is let go.
        let mut grown = again;
        grown.resize(2 * LINES_ROOM, 0);
        buffers.give(grown);
        assert!(buffers.0.lock().unwrap().is_empty());
        // At most LINE_BUFFERS_KEPT are kept.
        let many: Vec<Vec<u8>> = (0..LINE_BUFFERS_KEPT + 3).map(|_| buffers.take()).collect();
        many.into_iter().for_each(|b| buffers.give(b));
        assert_eq!(buffers.0.lock().unwrap().len(), LINE_BUFFERS_KEPT);
    }
}
