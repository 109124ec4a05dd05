//! `choreo trace --follow --group G`: a tracer that restores each partition
//! it is given from a look-back, so that restarts, crashes and rebalances do
//! not show in what it reports (docs/tracing.md, "Restarts and rebalances").

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context as _;
use choreo_core::Timestamp;
use choreo_kafka::{KafkaConfig, LookbackEvent, LookbackOptions, LookbackReader, Restore};
use choreo_trace::{Horizon, Restored, Tracer};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use super::super::kafka::trace_record;

/// The restore's own metric families, served beside the tracer's; every one
/// is listed in docs/metrics.md.
pub(super) const METRICS: &[(&str, &str, &str, &str)] = &[
    (
        "choreo_trace_restoring",
        "gauge",
        "",
        "1 while partitions given to this tracer are being replayed (/health answers 503 then), else 0",
    ),
    (
        "choreo_trace_restore_records_total",
        "counter",
        "",
        "records replayed to rebuild the state of partitions given to this tracer",
    ),
    (
        "choreo_trace_restore_flows_total",
        "counter",
        "outcome",
        "flows rebuilt by a restore: adopted (in flight, judged from now on), judged_before (the previous owner had judged them; dropped unsaid), before_horizon (adopted, begun before the look-back)",
    ),
    (
        "choreo_trace_restore_seconds",
        "histogram",
        "",
        "from a partition assignment that needs a restore to ready (every replay at its committed offset)",
    ),
    (
        "choreo_trace_handed_over_total",
        "counter",
        "",
        "flows given up unjudged to another member (their partition was reassigned, or this tracer left the group)",
    ),
    (
        "choreo_trace_checkpoint_failures_total",
        "counter",
        "",
        "checkpoints (position and clock) the group refused, typically during a rebalance; judging pauses until one is taken (at most 15 s)",
    ),
];

fn help(name: &str) -> &'static str {
    METRICS
        .iter()
        .find(|m| m.0 == name)
        .map_or("choreo tracer restore metric", |m| m.3)
}

/// The restore's metrics on one registry.
struct RestoreMetrics {
    restoring: IntGauge,
    records: IntCounter,
    flows: IntCounterVec,
    seconds: Histogram,
    handed_over: IntCounter,
    checkpoint_failures: IntCounter,
}

impl RestoreMetrics {
    fn new(registry: &Registry) -> anyhow::Result<RestoreMetrics> {
        let m = RestoreMetrics {
            restoring: IntGauge::new("choreo_trace_restoring", help("choreo_trace_restoring"))?,
            records: IntCounter::new(
                "choreo_trace_restore_records_total",
                help("choreo_trace_restore_records_total"),
            )?,
            flows: IntCounterVec::new(
                Opts::new(
                    "choreo_trace_restore_flows_total",
                    help("choreo_trace_restore_flows_total"),
                ),
                &["outcome"],
            )?,
            seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "choreo_trace_restore_seconds",
                    help("choreo_trace_restore_seconds"),
                )
                .buckets(vec![0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0]),
            )?,
            handed_over: IntCounter::new(
                "choreo_trace_handed_over_total",
                help("choreo_trace_handed_over_total"),
            )?,
            checkpoint_failures: IntCounter::new(
                "choreo_trace_checkpoint_failures_total",
                help("choreo_trace_checkpoint_failures_total"),
            )?,
        };
        registry.register(Box::new(m.restoring.clone()))?;
        registry.register(Box::new(m.records.clone()))?;
        registry.register(Box::new(m.flows.clone()))?;
        registry.register(Box::new(m.seconds.clone()))?;
        registry.register(Box::new(m.handed_over.clone()))?;
        registry.register(Box::new(m.checkpoint_failures.clone()))?;
        for outcome in ["adopted", "judged_before", "before_horizon"] {
            m.flows.with_label_values(&[outcome]);
        }
        // Restoring until the first assignment is restored.
        m.restoring.set(1);
        Ok(m)
    }

    fn restored(&self, r: &Restored, replayed: u64, took: std::time::Duration) {
        self.records.inc_by(replayed);
        self.flows.with_label_values(&["adopted"]).inc_by(r.adopted);
        self.flows
            .with_label_values(&["judged_before"])
            .inc_by(r.judged_before);
        self.flows
            .with_label_values(&["before_horizon"])
            .inc_by(r.before_horizon);
        self.seconds.observe(took.as_secs_f64());
    }
}

/// The clocks and horizons of the partitions being restored, by partition
/// number (topics keyed by correlation id put a flow on one number).
#[derive(Default)]
struct Horizons {
    by_partition: HashMap<u32, Horizon>,
    /// Partitions committed without a clock (a checkpoint that lost its
    /// second half, or a group another reader committed).
    clockless: BTreeSet<u32>,
    /// The latest event time replayed per partition: the clock of a
    /// clockless partition — earlier than its previous owner's, so verdicts
    /// may repeat but none is lost.
    latest: HashMap<u32, Timestamp>,
}

impl Horizons {
    fn add(&mut self, r: &Restore) {
        self.partition(r.partition.1, r.clock, r.committed, r.cut);
    }

    /// Partition number `partition` of one topic is restored: with its
    /// previous owner's `clock` (µs) when checkpointed, `committed` when the
    /// group had an offset for it, `cut` when older records were left out.
    fn partition(&mut self, partition: i32, clock: Option<i64>, committed: bool, cut: bool) {
        let p = partition.max(0) as u32;
        if committed && clock.is_none() {
            self.clockless.insert(p);
        }
        let h = self.by_partition.entry(p).or_default();
        let clock = clock.map(Timestamp::from_micros);
        // The earliest of the topics' clocks: judging earlier than the
        // previous owner did may repeat a verdict, judging later would lose one.
        h.clock = match (h.clock, clock) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        h.cut |= cut;
    }

    fn replayed(&mut self, partition: Option<u32>, time: Timestamp) {
        if let Some(p) = partition {
            let t = self.latest.entry(p).or_insert(time);
            *t = (*t).max(time);
        }
    }

    fn of(&self, partition: u32) -> Horizon {
        let mut h = self
            .by_partition
            .get(&partition)
            .copied()
            .unwrap_or_default();
        if self.clockless.contains(&partition) {
            let latest = self.latest.get(&partition).copied();
            h.clock = match (h.clock, latest) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        h
    }
}

/// How long judging pauses while the group refuses checkpoints: long enough
/// for a rebalance to end, short of a broker that refuses them for good (an
/// ACL missing), which must not stop the tracer judging.
const UNCOVERED_PAUSE: std::time::Duration = std::time::Duration::from_secs(15);

/// The tracer's second: judge, then checkpoint what was judged; and while the
/// group refuses checkpoints (it rebalances), judge nothing more, since the
/// partitions' next owner would say again whatever was judged here since the
/// last checkpoint taken.
#[derive(Default)]
struct Seconds {
    /// A tick whose verdicts were written but whose checkpoint was refused:
    /// its clock, and when the first refusal came.
    uncovered: Option<(Timestamp, std::time::Instant)>,
    /// Checkpoints were refused for [`UNCOVERED_PAUSE`]: judging goes on
    /// without them until one is taken.
    without: bool,
}

/// What a second did.
#[derive(Debug, PartialEq, Eq)]
enum Second {
    /// Judged as of its clock, and the group took the checkpoint.
    Judged,
    /// Judged, but the checkpoint was refused: judging pauses.
    Refused(String),
    /// Judged nothing: the checkpoint of an earlier tick is still refused.
    Paused(String),
    /// Judged, the checkpoint refused, and judging goes on without them:
    /// they were refused for [`UNCOVERED_PAUSE`].
    Without(String),
}

impl Second {
    /// Says what the second did on standard error, and counts refusals.
    fn report(&self, failures: &IntCounter) {
        let said = match self {
            Second::Judged => return,
            Second::Refused(e) => {
                format!("checkpoint refused, judging paused until the group takes it: {e}")
            }
            Second::Paused(e) => format!("checkpoint refused again, judging still paused: {e}"),
            Second::Without(e) => format!(
                "checkpoint refused (refused for {} or more: judging goes on without them): {e}",
                choreo_topology::format_duration(UNCOVERED_PAUSE)
            ),
        };
        failures.inc();
        eprintln!("choreo: {said}");
    }
}

impl Seconds {
    /// One second at `now` (`at` on the monotonic clock): `tick` judges as of
    /// a clock, `checkpoint` commits what was read with a clock, `again`
    /// commits the refused checkpoint again as it was (with the positions of
    /// its tick, not those read since: those were not judged as of its
    /// clock).
    fn second<E: std::fmt::Display>(
        &mut self,
        now: Timestamp,
        at: std::time::Instant,
        again: impl FnOnce() -> Result<(), E>,
        checkpoint: impl FnOnce(Timestamp) -> Result<(), E>,
        tick: impl FnOnce(Timestamp),
    ) -> Second {
        if let Some((_, since)) = self.uncovered {
            match again() {
                Ok(()) => self.uncovered = None,
                Err(e) if at.duration_since(since) < UNCOVERED_PAUSE => {
                    return Second::Paused(e.to_string());
                }
                Err(_) => {
                    self.uncovered = None;
                    self.without = true;
                }
            }
        }
        tick(now);
        // After the verdicts are written: what was read has been judged as of
        // `now` (killed in between, the next owner repeats a verdict rather
        // than lose one).
        match checkpoint(now) {
            Ok(()) => {
                self.without = false;
                Second::Judged
            }
            Err(e) if self.without => Second::Without(e.to_string()),
            Err(e) => {
                self.uncovered = Some((now, at));
                Second::Refused(e.to_string())
            }
        }
    }

    /// A second now on `reader`, judged by `tick`, said on standard error
    /// (refusals counted in `failures`).
    fn on(&mut self, reader: &LookbackReader, tick: impl FnOnce(Timestamp), failures: &IntCounter) {
        self.second(
            Timestamp::now(),
            std::time::Instant::now(),
            || reader.checkpoint_again(),
            |clock| reader.checkpoint(clock.as_micros()),
            tick,
        )
        .report(failures);
    }

    /// The group's assignment changed: the partitions that moved are their
    /// new owners', and the next checkpoint of those kept covers what was
    /// judged here.
    fn reassigned(&mut self) {
        self.uncovered = None;
    }
}

/// Traces Kafka live as a member of `options.group` until interrupted
/// (ctrl-c or SIGTERM): restores every partition it is given before judging
/// its flows, ticks and checkpoints every second while settled, and serves
/// its metrics, with `/health` answering 503 "restoring" until ready. On the
/// way out it checkpoints once more and hands its flows in flight over to the
/// group (they are not judged here: the next owner restores them).
pub(super) fn follow(
    tracer: &Arc<Mutex<Tracer>>,
    kconfig: &KafkaConfig,
    options: LookbackOptions,
    addr: &str,
    registry: &Registry,
    viewer: Option<choreo_ui::Viewer>,
) -> anyhow::Result<()> {
    let rt = super::super::runtime()?;
    // The tracer, locked for each record or tick: the viewer locks it
    // between them (std Mutex: no await is held across it).
    let lock = || tracer.lock().unwrap_or_else(PoisonError::into_inner);
    let metrics = RestoreMetrics::new(registry)?;
    let ready = Arc::new(AtomicBool::new(false));
    rt.block_on(async move {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let registries = Arc::new(vec![registry.clone()]);
        let render: choreo_bus::Render = Arc::new(move || choreo_bus::render(&registries));
        let flag = ready.clone();
        let health: choreo_bus::Health = Arc::new(move || {
            if flag.load(Ordering::Relaxed) {
                Ok("ok: tracing live; metrics at /metrics\n".to_owned())
            } else {
                Err("restoring: replaying the look-back of the partitions given to this tracer; metrics at /metrics\n".to_owned())
            }
        });
        let mut server = choreo_bus::MetricsServer::builder(render).health(health);
        if let Some(v) = &viewer {
            server = v.routes(server);
        }
        let server = server
            .start(addr, shutdown.clone())
            .await
            .with_context(|| format!("cannot serve metrics at {addr}"))?;
        let group = options.group.clone();
        let lookback = options.lookback;
        let mut reader = LookbackReader::open(kconfig, options)
            .await
            .context("cannot read Kafka")?;
        eprintln!(
            "choreo: tracing Kafka live in group '{group}' (look-back {}); metrics at http://{}/metrics, readiness at /health{}; ctrl-c prints the report and stops",
            choreo_topology::format_duration(lookback),
            server.local_addr(),
            if viewer.is_some() {
                format!(", flow viewer at http://{}/", server.local_addr())
            } else {
                String::new()
            }
        );
        let idle = lock().config().idle;
        if lookback < idle {
            eprintln!(
                "choreo: note: --lookback {} is shorter than the idle timeout ({}): a flow in flight longer than the look-back when its partition moves is judged without its beginning (marked before_horizon)",
                choreo_topology::format_duration(lookback),
                choreo_topology::format_duration(idle)
            );
        }
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("cannot watch for SIGTERM")?;
        let interrupted = tokio::signal::ctrl_c();
        tokio::pin!(interrupted);
        let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
        let mut horizons = Horizons::default();
        let mut seconds = Seconds::default();
        let result = loop {
            tokio::select! {
                _ = &mut interrupted => break Ok(()),
                _ = terminate.recv() => break Ok(()),
                _ = every.tick() => {
                    // Judging only while every partition is live: a flow
                    // still restoring is not this tracer's yet, and between a
                    // revocation and the next assignment the partitions'
                    // next owner starts from the last checkpoint.
                    if reader.settled() {
                        seconds.on(&reader, |clock| lock().tick(clock), &metrics.checkpoint_failures);
                    }
                }
                ev = reader.next() => match ev {
                    None => break Ok(()),
                    Some(Err(e)) => break Err(anyhow::Error::new(e).context("reading Kafka")),
                    Some(Ok(LookbackEvent::Record { record, replayed })) => {
                        let record = trace_record(record);
                        if replayed {
                            horizons.replayed(record.partition, record.envelope.time);
                            lock().ingest_replayed(&record);
                        } else {
                            lock().ingest(&record);
                        }
                    }
                    Some(Ok(LookbackEvent::Assigned { kept, restoring })) => {
                        seconds.reassigned();
                        for r in &restoring {
                            horizons.add(r);
                        }
                        let to_replay: i64 = restoring.iter().map(|r| r.until - r.from).sum();
                        let clocks = restoring.iter().filter(|r| r.clock.is_some()).count();
                        eprintln!(
                            "choreo: assigned {} partitions: {} kept, {} to restore ({to_replay} records to replay; {clocks} with a checkpointed clock)",
                            kept.len() + restoring.len(),
                            kept.len(),
                            restoring.len()
                        );
                        // Nothing to restore (partitions kept, or none): ready now.
                        let now_ready = reader.settled();
                        ready.store(now_ready, Ordering::Relaxed);
                        metrics.restoring.set(i64::from(!now_ready));
                    }
                    Some(Ok(LookbackEvent::Revoked { partitions })) => {
                        let still: BTreeSet<u32> = reader
                            .assignment()
                            .iter()
                            .map(|(_, p)| (*p).max(0) as u32)
                            .collect();
                        let lost: BTreeSet<u32> = partitions
                            .iter()
                            .map(|(_, p)| (*p).max(0) as u32)
                            .filter(|p| !still.contains(p))
                            .collect();
                        let n = lock().hand_over(|p| lost.contains(&p));
                        metrics.handed_over.inc_by(n);
                        eprintln!(
                            "choreo: {} partitions went to other members: {n} flows in flight handed over",
                            partitions.len()
                        );
                    }
                    Some(Ok(LookbackEvent::Ready { partitions, replayed, took })) => {
                        let map = std::mem::take(&mut horizons);
                        let r = lock().restored(Timestamp::now(), |p| map.of(p));
                        metrics.restored(&r, replayed, took);
                        if reader.settled() {
                            ready.store(true, Ordering::Relaxed);
                            metrics.restoring.set(0);
                        }
                        eprintln!(
                            "choreo: ready: {partitions} partitions restored in {:.3}s from {replayed} records: {} flows in flight taken over ({} begun before the look-back), {} judged already",
                            took.as_secs_f64(),
                            r.adopted,
                            r.before_horizon,
                            r.judged_before
                        );
                    }
                    Some(Ok(_)) => {}
                },
            }
        };
        if reader.settled() {
            // A last second: judged and checkpointed, unless a refused
            // checkpoint is still not taken (the flows due now are then left
            // to the next owner rather than widen what it says again).
            seconds.on(&reader, |clock| lock().tick(clock), &metrics.checkpoint_failures);
        }
        // The rest is the group's: whoever gets these partitions next
        // restores and judges these flows.
        let n = lock().hand_over(|_| true);
        metrics.handed_over.inc_by(n);
        if n > 0 {
            eprintln!("choreo: {n} flows in flight handed over to group '{group}'");
        }
        drop(reader);
        shutdown.cancel();
        server.stop();
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::cell::RefCell;
    use std::time::{Duration, Instant};

    /// A group that refuses checkpoints while `refusing`, and what the
    /// seconds did: the clocks checkpointed (taken or not; a checkpoint
    /// committed again is its refused clock again) and judged.
    #[derive(Default)]
    struct Group {
        refusing: bool,
        refused: Option<i64>,
        committed: Vec<(i64, bool)>,
        judged: Vec<i64>,
    }

    impl Group {
        fn commit(&mut self, clock: i64) -> Result<(), &'static str> {
            self.committed.push((clock, !self.refusing));
            if self.refusing {
                self.refused = Some(clock);
                Err("rebalance in progress")
            } else {
                self.refused = None;
                Ok(())
            }
        }
    }

    fn second(seconds: &mut Seconds, group: &RefCell<Group>, t: i64, at: Instant) -> Second {
        seconds.second(
            Timestamp::from_micros(t),
            at,
            || {
                let mut g = group.borrow_mut();
                match g.refused {
                    Some(clock) => g.commit(clock),
                    None => Ok(()),
                }
            },
            |clock| group.borrow_mut().commit(clock.as_micros()),
            |clock| group.borrow_mut().judged.push(clock.as_micros()),
        )
    }

    #[test]
    fn a_refused_checkpoint_pauses_judging_until_its_tick_is_covered() {
        let group = RefCell::new(Group::default());
        let mut s = Seconds::default();
        let t0 = Instant::now();
        let at = |n: u64| t0 + Duration::from_secs(n);
        assert_eq!(second(&mut s, &group, 1, at(1)), Second::Judged);
        group.borrow_mut().refusing = true;
        assert!(matches!(
            second(&mut s, &group, 2, at(2)),
            Second::Refused(_)
        ));
        // Refused still: tick 2's checkpoint is tried again, nothing judged.
        assert!(matches!(
            second(&mut s, &group, 3, at(3)),
            Second::Paused(_)
        ));
        assert!(matches!(
            second(&mut s, &group, 4, at(4)),
            Second::Paused(_)
        ));
        group.borrow_mut().refusing = false;
        // Taken: tick 2 covered first, then judging as of now.
        assert_eq!(second(&mut s, &group, 5, at(5)), Second::Judged);
        let g = group.into_inner();
        assert_eq!(g.judged, vec![1, 2, 5]);
        assert_eq!(
            g.committed,
            vec![
                (1, true),
                (2, false),
                (2, false),
                (2, false),
                (2, true),
                (5, true)
            ]
        );
    }

    #[test]
    fn checkpoints_refused_for_good_do_not_stop_judging() {
        let group = RefCell::new(Group {
            refusing: true,
            ..Group::default()
        });
        let mut s = Seconds::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let pause = UNCOVERED_PAUSE.as_millis() as u64;
        assert!(matches!(
            second(&mut s, &group, 1, at(0)),
            Second::Refused(_)
        ));
        assert!(matches!(
            second(&mut s, &group, 2, at(pause - 1)),
            Second::Paused(_)
        ));
        // Refused for the whole pause: judging goes on, every second.
        assert!(matches!(
            second(&mut s, &group, 3, at(pause)),
            Second::Without(_)
        ));
        assert!(matches!(
            second(&mut s, &group, 4, at(pause + 1000)),
            Second::Without(_)
        ));
        assert_eq!(group.borrow().judged, vec![1, 3, 4]);
        // A broker that takes checkpoints again: judged and covered, and a
        // refusal after that pauses again.
        group.borrow_mut().refusing = false;
        assert_eq!(second(&mut s, &group, 5, at(pause + 2000)), Second::Judged);
        group.borrow_mut().refusing = true;
        assert!(matches!(
            second(&mut s, &group, 6, at(pause + 3000)),
            Second::Refused(_)
        ));
        assert!(matches!(
            second(&mut s, &group, 7, at(pause + 4000)),
            Second::Paused(_)
        ));
        assert_eq!(group.borrow().judged, vec![1, 3, 4, 5, 6]);
    }

    #[test]
    fn a_new_assignment_ends_the_pause() {
        let group = RefCell::new(Group {
            refusing: true,
            ..Group::default()
        });
        let mut s = Seconds::default();
        let t0 = Instant::now();
        assert!(matches!(second(&mut s, &group, 1, t0), Second::Refused(_)));
        s.reassigned();
        group.borrow_mut().refusing = false;
        assert_eq!(second(&mut s, &group, 2, t0), Second::Judged);
        assert_eq!(group.borrow().committed, vec![(1, false), (2, true)]);
    }

    #[test]
    fn a_partition_number_is_judged_as_of_its_earliest_clock() {
        let mut h = Horizons::default();
        h.partition(0, Some(2_000), true, false);
        h.partition(0, Some(1_000), true, true);
        h.partition(1, None, false, false);
        let zero = h.of(0);
        assert_eq!(zero.clock, Some(Timestamp::from_micros(1_000)));
        assert!(zero.cut, "cut when any topic's replay was cut");
        assert_eq!(h.of(1).clock, None, "never committed: judged as of now");
        assert_eq!(h.of(7), Horizon::default(), "not restored");
    }

    #[test]
    fn a_partition_committed_without_a_clock_is_judged_as_of_its_latest_replayed_event() {
        let mut h = Horizons::default();
        h.partition(3, None, true, false);
        h.replayed(Some(3), Timestamp::from_micros(500));
        h.replayed(Some(3), Timestamp::from_micros(900));
        h.replayed(Some(3), Timestamp::from_micros(700));
        h.replayed(Some(4), Timestamp::from_micros(5_000));
        assert_eq!(h.of(3).clock, Some(Timestamp::from_micros(900)));
        // Another topic of the same number with a clock: the earlier of the two.
        h.partition(3, Some(800), true, false);
        assert_eq!(h.of(3).clock, Some(Timestamp::from_micros(800)));
    }
}
