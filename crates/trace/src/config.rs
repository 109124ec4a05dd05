//! How the tracer behaves: caps, timeouts, bounds.

use std::time::Duration;

use choreo_core::EventId;

/// Whether the capture is expected to hold receipts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Receipts {
    /// Expected once any receipt has been seen (the default).
    #[default]
    Auto,
    /// Always expected: a sink with no receipt owes one.
    Expected,
    /// Not expected: sinks are never owed anything.
    Absent,
}

/// Which finished flows to keep whole (for `--flow` and the API), beyond the aggregates.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Keep {
    /// None (the default: memory stays bounded).
    #[default]
    None,
    /// The flow with this correlation id.
    One(EventId),
    /// Every flow (small captures and tests only).
    All,
}

/// The tracer's settings. [`TracerConfig::batch`] suits capture files,
/// [`TracerConfig::live`] a tracer following a bus.
#[derive(Debug, Clone, PartialEq)]
pub struct TracerConfig {
    /// Flows held in flight at most; past it the oldest flow is evicted
    /// (counted, reported as `evicted`). Live default 100,000.
    pub max_flows: usize,
    /// Records (events and receipts) held in flight at most, over all flows;
    /// past it the oldest flows are evicted. Live default 2,000,000.
    pub max_records: usize,
    /// Records held for one flow at most (a runaway loop); past it that flow
    /// is evicted. Default 100,000.
    pub max_records_per_flow: usize,
    /// Live mode: a flow that reached its end (or was dead-lettered) is folded
    /// into the aggregates and dropped once nothing has happened in it for this
    /// long, so late receipts still find it. Default 5 s.
    pub settle: Duration,
    /// Live mode: a flow with no activity for this long is evicted whatever its
    /// state (counted as `idle`). Default 1 h.
    pub idle: Duration,
    /// How often one event type may repeat along a causal path before
    /// `cycle-bound` is reported. Default 3.
    pub cycle_bound: u32,
    /// How much earlier than its cause an event may be before `clock-skew` is
    /// reported. Default 0.
    pub skew_tolerance: Duration,
    /// Whether receipts are expected. Default [`Receipts::Auto`].
    pub receipts: Receipts,
    /// Which flows to keep whole.
    pub keep: Keep,
    /// Example findings kept per rule for the report. Default 5.
    pub examples_per_rule: usize,
    /// Stuck and failed flows listed in the report at most. Default 50.
    pub listed_flows: usize,
    /// Finish a batch on two threads (they take chunks of flows in turn to
    /// analyse and fold; the result is the same as one thread's). Default true.
    pub parallel: bool,
    /// Correlation ids of evicted flows remembered, so that their late
    /// records are counted as `late` instead of starting a new flow. Default 100,000.
    pub remember_evicted: usize,
    /// Finished flows held whole, the newest, for a viewer
    /// ([`Tracer::recent`](crate::Tracer::recent), `choreo trace --ui`); the
    /// oldest is dropped past it. Default 0: none (their traces are not even
    /// built).
    pub recent_flows: usize,
    /// Bytes of the newest events' ids, keys and JSON payloads held so that
    /// [`Tracer::find`](crate::Tracer::find) can search them after their
    /// flows were folded (payloads over 16 KiB are left out). Default 0:
    /// none, and the tracer holds no payload at all.
    pub search_bytes: usize,
}

impl TracerConfig {
    /// For a capture file: no caps (the whole file is one batch), flows
    /// finished when [`Tracer::finish`](crate::Tracer::finish) is called.
    pub fn batch() -> Self {
        TracerConfig {
            max_flows: usize::MAX,
            max_records: usize::MAX,
            max_records_per_flow: usize::MAX,
            ..TracerConfig::live()
        }
    }

    /// For following a bus: bounded memory.
    pub fn live() -> Self {
        TracerConfig {
            max_flows: 100_000,
            max_records: 2_000_000,
            max_records_per_flow: 100_000,
            settle: Duration::from_secs(5),
            idle: Duration::from_secs(3600),
            cycle_bound: 3,
            skew_tolerance: Duration::ZERO,
            receipts: Receipts::Auto,
            keep: Keep::None,
            examples_per_rule: 5,
            listed_flows: 50,
            remember_evicted: 100_000,
            parallel: true,
            recent_flows: 0,
            search_bytes: 0,
        }
    }
}

impl Default for TracerConfig {
    fn default() -> Self {
        TracerConfig::batch()
    }
}
