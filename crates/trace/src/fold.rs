//! Folding judged flows into the aggregates, the event log and the kept flows; the end of a batch on two threads.

use std::sync::{Mutex, mpsc};

use choreo_core::EventId;

use crate::aggregate::Aggregates;
use crate::analysis::{Analysis, Ctx, Scratch, analyse};
use crate::assemble::{build_trace, resolve_findings, summary_of};
use crate::config::Keep;
use crate::export::{FlowChunk, FlowWriter, LogChunk, LogFormat, LogWriter, Row};
use crate::flow::FlowTrace;
use crate::metrics::TraceMetrics;
use crate::recent::RecentFlows;
use crate::report::{EvictReason, FlowBrief};
use crate::store::FlowState;
use crate::util::FastMap;

/// Where folded flows are written, besides the aggregates.
#[derive(Default)]
pub(crate) struct Out<'a> {
    /// The event log.
    pub(crate) log: Option<&'a mut LogWriter>,
    /// Every flow's verdict, as JSON lines.
    pub(crate) flows: Option<&'a mut FlowWriter>,
}

impl Out<'_> {
    /// What a [`Folder`] renders for these outputs.
    pub(crate) fn shape(&self) -> Shape {
        Shape {
            log: self.log.as_ref().map(|w| w.format()),
            flows: self.flows.is_some(),
        }
    }

    pub(crate) fn write(&mut self, chunk: &Chunk) {
        if let (Some(w), Some(c)) = (self.log.as_mut(), &chunk.log) {
            w.append(c);
        }
        if let (Some(w), Some(c)) = (self.flows.as_mut(), &chunk.flows) {
            w.append(c);
        }
    }
}

/// What to render while folding.
#[derive(Clone, Copy, Default)]
pub(crate) struct Shape {
    pub(crate) log: Option<LogFormat>,
    pub(crate) flows: bool,
}

/// Text rendered while folding, for the outputs, in the order of the flows.
#[derive(Default)]
pub(crate) struct Chunk {
    log: Option<LogChunk>,
    flows: Option<FlowChunk>,
}

/// Folds finished flows into aggregates: on the tracer's thread, or on a
/// helper thread over its own aggregates, merged afterwards.
pub(crate) struct Folder<'a> {
    ctx: &'a Ctx<'a>,
    metrics: Option<&'a TraceMetrics>,
    agg: &'a mut Aggregates,
    /// Flows kept whole besides those `TracerConfig::keep` names.
    keep: &'a FastMap<EventId, ()>,
    pub(crate) orphans: u64,
    pub(crate) kept: Vec<FlowTrace>,
    /// Flows for [`RecentFlows`] (when it holds any), in the order folded.
    pub(crate) recent: Vec<FlowTrace>,
    /// At the end of a batch, the first flow (in the batch's order: by
    /// correlation id) that can stay among the recent flows; the traces of
    /// those before it are not built.
    pub(crate) recent_from: Option<&'a EventId>,
    pub(crate) out: Chunk,
}

/// What folding a run of flows gave, besides the aggregates.
pub(crate) struct Folded {
    orphans: u64,
    kept: Vec<FlowTrace>,
    recent: Vec<FlowTrace>,
    out: Chunk,
}

impl<'a> Folder<'a> {
    pub(crate) fn new(
        ctx: &'a Ctx<'a>,
        metrics: Option<&'a TraceMetrics>,
        agg: &'a mut Aggregates,
        keep: &'a FastMap<EventId, ()>,
        shape: Shape,
    ) -> Self {
        Folder {
            ctx,
            metrics,
            agg,
            keep,
            orphans: 0,
            kept: Vec::new(),
            recent: Vec::new(),
            recent_from: None,
            out: Chunk {
                log: shape.log.map(LogChunk::new),
                flows: shape.flows.then(FlowChunk::default),
            },
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
        } || (!self.keep.is_empty() && self.keep.contains_key(id));
        self.orphans += u64::from(a.orphans);
        if let Some(chunk) = self.out.log.as_mut() {
            debug_assert_eq!(order.len(), state.events.len(), "the flow's own order");
            log_case(self.ctx, chunk, id, state, a, order);
        }
        if let Some(chunk) = self.out.flows.as_mut() {
            chunk.push(&summary_of(self.ctx, id, state, a));
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
        let recent = config.recent_flows > 0 && self.recent_from.is_none_or(|from| id >= from);
        if keep || brief || recent {
            let trace = build_trace(self.ctx, id, state, a, order);
            if brief {
                self.agg.push_brief(FlowBrief::of(&trace), config);
            }
            match (keep, recent) {
                (true, true) => {
                    self.kept.push(trace.clone());
                    self.recent.push(trace);
                }
                (true, false) => self.kept.push(trace),
                (false, true) => self.recent.push(trace),
                (false, false) => {}
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
    chunk.case(id.text(&mut [0; 36]), flow, a.status, order.len(), rows);
}

/// Flows at the end of a batch from which the analysis uses a second thread.
const PARALLEL_FROM: usize = 2048;

/// Flows a thread takes at a time in the end-of-batch fold.
const CHUNK: usize = 1024;

/// Chunks folded and waiting for an earlier one to be merged, at most: what
/// the end of a batch holds beyond the chunks being folded.
const MAX_AHEAD: usize = 8;

/// What the end of a batch folds with.
#[derive(Clone, Copy)]
pub(crate) struct Batch<'a> {
    pub(crate) ctx: &'a Ctx<'a>,
    pub(crate) metrics: Option<&'a TraceMetrics>,
    pub(crate) keep: &'a FastMap<EventId, ()>,
    pub(crate) now: i64,
    /// The first flow that can stay among the recent flows (see [`Folder`]).
    pub(crate) recent_from: Option<&'a EventId>,
}

/// Analyses and folds `flows` into `agg`: the orphans counted, the flows
/// kept, the text for the outputs.
/// Each flow's records are freed as soon as it is folded, on the thread
/// that folded it: freeing a million small vectors afterwards, on one
/// thread, took a tenth of the end of a batch.
fn fold_all(
    b: Batch<'_>,
    agg: &mut Aggregates,
    shape: Shape,
    flows: &mut [(EventId, Box<FlowState>)],
) -> Folded {
    let mut scratch = Scratch::default();
    let mut folder = Folder::new(b.ctx, b.metrics, agg, b.keep, shape);
    folder.recent_from = b.recent_from;
    for (id, f) in flows {
        let a = analyse(b.ctx, &mut scratch, id, f, b.now);
        folder.flow(id, f, &a, None, &scratch.order);
        f.release();
    }
    // Only the newest can stay in the recent flows: drop the others now.
    let cap = b.ctx.config.recent_flows;
    let mut recent = folder.recent;
    if recent.len() > cap {
        recent.drain(..recent.len() - cap);
    }
    Folded {
        orphans: folder.orphans,
        kept: folder.kept,
        recent,
        out: folder.out,
    }
}

/// Judges and folds every flow left at the end of a batch, as of `now`, in
/// the order given: into `agg`, the flows to keep into `kept`, the newest
/// into `recent`, the event log and the flows' lines into `out`. Returns the
/// orphans counted.
///
/// Flows are independent: past [`PARALLEL_FROM`] flows (and when
/// [`TracerConfig::parallel`](crate::TracerConfig::parallel) allows) this thread and a helper take chunks of
/// them in turn, and the result is the same as one thread's.
pub(crate) fn finish_batch(
    b: Batch<'_>,
    agg: &mut Aggregates,
    kept: &mut Vec<FlowTrace>,
    recent: &mut RecentFlows,
    mut out: Out<'_>,
    mut flows_in: Vec<(EventId, Box<FlowState>)>,
) -> u64 {
    // Only the last flows in the batch's order can stay among the recent ones.
    let cap = b.ctx.config.recent_flows;
    let recent_from =
        (cap > 0 && flows_in.len() > cap).then(|| flows_in[flows_in.len() - cap].0.clone());
    let b = Batch {
        recent_from: recent_from.as_ref(),
        ..b
    };
    let shape = out.shape();
    let config = b.ctx.config;
    let mut orphans = 0;
    if !(config.parallel && flows_in.len() >= PARALLEL_FROM) {
        // A chunk at a time, so the outputs' text is held a chunk at a time.
        for flows in flows_in.chunks_mut(CHUNK) {
            let f = fold_all(b, agg, shape, flows);
            orphans += f.orphans;
            kept.extend(f.kept);
            f.recent.into_iter().for_each(|t| recent.push(t));
            out.write(&f.out);
        }
    } else {
        // Flows are independent: this thread and a helper take chunks of
        // them in turn, analyse and fold each chunk into aggregates of its
        // own, and this thread merges the chunks in their order — the
        // result is the same as one thread's. Taking chunks rather than
        // halves keeps both threads busy to the end; a third thread writes
        // the event log and the flows' lines.
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
            let folded = fold_all(b, &mut part, shape, &mut flows);
            // Freed here, on the thread that folded them.
            drop(flows);
            (part, folded)
        };
        std::thread::scope(|scope| {
            let (out_tx, out_rx) = mpsc::sync_channel::<Chunk>(4);
            let writing = shape.log.is_some() || shape.flows;
            let writer = writing.then(|| {
                let mut out = std::mem::take(&mut out);
                scope.spawn(move || {
                    for chunk in out_rx {
                        out.write(&chunk);
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
                while let Some((part, f)) = pending.remove(&next) {
                    agg.merge(part, config);
                    orphans += f.orphans;
                    kept.extend(f.kept);
                    f.recent.into_iter().for_each(|t| recent.push(t));
                    if writing {
                        let _ = out_tx.send(f.out);
                    }
                    next += 1;
                }
            }
            drop(out_tx);
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
