//! Folding judged flows into the aggregates, the event log and the kept flows; the end of a batch on two threads.

use std::sync::{Mutex, mpsc};

use choreo_core::EventId;

use crate::aggregate::Aggregates;
use crate::analysis::{Analysis, Ctx, Scratch, analyse};
use crate::assemble::{build_trace, resolve_findings};
use crate::config::Keep;
use crate::export::{LogChunk, LogFormat, LogWriter, Row};
use crate::flow::FlowTrace;
use crate::metrics::TraceMetrics;
use crate::report::{EvictReason, FlowBrief};
use crate::store::FlowState;

/// Folds finished flows into aggregates: on the tracer's thread, or on a
/// helper thread over its own aggregates, merged afterwards.
pub(crate) struct Folder<'a> {
    ctx: &'a Ctx<'a>,
    metrics: Option<&'a TraceMetrics>,
    agg: &'a mut Aggregates,
    pub(crate) orphans: u64,
    pub(crate) kept: Vec<FlowTrace>,
    pub(crate) log: Option<LogChunk>,
}

impl<'a> Folder<'a> {
    pub(crate) fn new(
        ctx: &'a Ctx<'a>,
        metrics: Option<&'a TraceMetrics>,
        agg: &'a mut Aggregates,
        log: Option<LogFormat>,
    ) -> Self {
        Folder {
            ctx,
            metrics,
            agg,
            orphans: 0,
            kept: Vec::new(),
            log: log.map(LogChunk::new),
        }
    }

    /// Folds one flow; `order` is its events' time order, from its analysis.
    pub(crate) fn flow(
        &mut self,
        id: &EventId,
        state: &FlowState,
        a: &Analysis,
        evicted: Option<EvictReason>,
        order: &[u32],
    ) {
        let config = self.ctx.config;
        let keep = match &config.keep {
            Keep::None => false,
            Keep::One(k) => k == id,
            Keep::All => true,
        };
        self.orphans += u64::from(a.orphans);
        if let Some(chunk) = self.log.as_mut() {
            debug_assert_eq!(order.len(), state.events.len(), "the flow's own order");
            log_case(self.ctx, chunk, id, state, a, order);
        }
        self.agg.fold_flow(
            state,
            a,
            evicted,
            self.ctx.syms,
            self.ctx.model,
            self.metrics,
        );
        let brief = self.agg.wants_brief(a.status, config);
        if keep || brief {
            let trace = build_trace(self.ctx, id, state, a, order);
            if brief {
                self.agg.push_brief(FlowBrief::of(&trace), config);
            }
            if keep {
                self.kept.push(trace);
            }
        }
        if a.findings
            .iter()
            .any(|f| self.agg.wants_example(f.rule, config))
        {
            for f in resolve_findings(self.ctx, id, state, a) {
                self.agg.push_example(f, config);
            }
        }
    }
}

fn log_case(
    ctx: &Ctx<'_>,
    chunk: &mut LogChunk,
    id: &EventId,
    state: &FlowState,
    a: &Analysis,
    order: &[u32],
) {
    let rows = order.iter().map(|&i| {
        let e = &state.events[i as usize];
        Row {
            activity: ctx.syms.name(e.ty),
            time: e.time,
            resource: ctx.syms.name(e.source),
            event_id: &e.id,
            topic: ctx.syms.name(e.topic),
        }
    });
    let flow = a
        .name
        .and_then(|n| ctx.model.map(|m| m.flows[n].name.as_str()));
    let mut buf = [0u8; 36];
    let case = match id.as_uuid() {
        Some(u) => std::borrow::Cow::Borrowed(&*u.hyphenated().encode_lower(&mut buf)),
        None => std::borrow::Cow::Owned(id.to_string()),
    };
    chunk.case(&case, flow, a.status, order.len(), rows);
}

/// Flows at the end of a batch from which the analysis uses a second thread.
const PARALLEL_FROM: usize = 2048;

/// Flows a thread takes at a time in the end-of-batch fold.
const CHUNK: usize = 1024;

/// Chunks folded and waiting for an earlier one to be merged, at most: what
/// the end of a batch holds beyond the chunks being folded.
const MAX_AHEAD: usize = 8;

/// Analyses and folds `flows` into `agg`: the orphans counted, the flows
/// kept, the event-log text.
/// Each flow's records are freed as soon as it is folded, on the thread
/// that folded it: freeing a million small vectors afterwards, on one
/// thread, took a tenth of the end of a batch.
pub(crate) fn fold_all(
    ctx: &Ctx<'_>,
    metrics: Option<&TraceMetrics>,
    agg: &mut Aggregates,
    log: Option<LogFormat>,
    flows: &mut [(EventId, Box<FlowState>)],
    now: i64,
) -> (u64, Vec<FlowTrace>, Option<LogChunk>) {
    let mut scratch = Scratch::default();
    let mut folder = Folder::new(ctx, metrics, agg, log);
    for (id, f) in flows {
        let a = analyse(ctx, &mut scratch, id, f, now);
        folder.flow(id, f, &a, None, &scratch.order);
        f.release();
    }
    (folder.orphans, folder.kept, folder.log)
}

/// Judges and folds every flow left at the end of a batch, as of `now`, in
/// the order given: into `agg`, the flows to keep into `kept`, the event log
/// into `log`. Returns the orphans counted.
///
/// Flows are independent: past [`PARALLEL_FROM`] flows (and when
/// [`TracerConfig::parallel`](crate::TracerConfig::parallel) allows) this thread and a helper take chunks of
/// them in turn, and the result is the same as one thread's.
pub(crate) fn finish_batch(
    ctx: &Ctx<'_>,
    metrics: Option<&TraceMetrics>,
    agg: &mut Aggregates,
    kept: &mut Vec<FlowTrace>,
    log: Option<&mut LogWriter>,
    mut flows_in: Vec<(EventId, Box<FlowState>)>,
    now_us: i64,
) -> u64 {
    let log_format = log.as_ref().map(|w| w.format());
    let config = ctx.config;
    let mut orphans = 0;
    let mut log = log;
    if !(config.parallel && flows_in.len() >= PARALLEL_FROM) {
        // A chunk at a time, so the event log's text is held a chunk at a time.
        for flows in flows_in.chunks_mut(CHUNK) {
            let (o, k, chunk) = fold_all(ctx, metrics, agg, log_format, flows, now_us);
            orphans += o;
            kept.extend(k);
            if let (Some(w), Some(chunk)) = (log.as_mut(), chunk) {
                w.append(&chunk);
            }
        }
    } else {
        // Flows are independent: this thread and a helper take chunks of
        // them in turn, analyse and fold each chunk into aggregates of its
        // own, and this thread merges the chunks in their order — the
        // result is the same as one thread's. Taking chunks rather than
        // halves keeps both threads busy to the end; a third thread writes
        // the event log.
        let chunks = flows_in.len().div_ceil(CHUNK);
        let work = Mutex::new((0usize, std::mem::take(&mut flows_in).into_iter()));
        let take = || {
            let mut w = work.lock().unwrap_or_else(|e| e.into_inner());
            let i = w.0;
            let flows: Vec<_> = w.1.by_ref().take(CHUNK).collect();
            w.0 += 1;
            (!flows.is_empty()).then_some((i, flows))
        };
        let fold = |mut flows: Vec<(EventId, Box<FlowState>)>| {
            let mut part = Aggregates::default();
            let (o, k, chunk) = fold_all(ctx, metrics, &mut part, log_format, &mut flows, now_us);
            // Freed here, on the thread that folded them.
            drop(flows);
            (part, o, k, chunk)
        };
        std::thread::scope(|scope| {
            let (log_tx, log_rx) = mpsc::sync_channel::<LogChunk>(4);
            let writer = log.take().map(|w| {
                scope.spawn(move || {
                    for chunk in log_rx {
                        w.append(&chunk);
                    }
                })
            });
            // Bounded: the helper waits rather than run far ahead of the merge.
            let (done_tx, done_rx) = mpsc::sync_channel(4);
            let (take, fold) = (&take, &fold);
            let helper = scope.spawn(move || {
                while let Some((i, flows)) = take() {
                    if done_tx.send((i, fold(flows))).is_err() {
                        return;
                    }
                }
            });
            let mut pending = std::collections::BTreeMap::new();
            let mut next = 0;
            while next < chunks {
                // Past a few chunks folded ahead of the one the helper is
                // still on, wait for it rather than hold more.
                let ahead = pending.len() >= MAX_AHEAD;
                match if ahead { None } else { take() } {
                    Some((i, flows)) => {
                        pending.insert(i, fold(flows));
                    }
                    // Nothing left to take, or far enough ahead: wait for
                    // the helper's chunk.
                    None => match done_rx.recv() {
                        Ok((i, part)) => {
                            pending.insert(i, part);
                        }
                        // The helper is gone (it panicked: rethrown below).
                        Err(_) => break,
                    },
                }
                pending.extend(done_rx.try_iter());
                while let Some((part, o, k, chunk)) = pending.remove(&next) {
                    agg.merge(part, config);
                    orphans += o;
                    kept.extend(k);
                    if let Some(chunk) = chunk {
                        // Only rendered when there is a log, hence a writer.
                        let _ = log_tx.send(chunk);
                    }
                    next += 1;
                }
            }
            drop(log_tx);
            helper
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            if let Some(w) = writer {
                w.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            }
        });
    }
    orphans
}
