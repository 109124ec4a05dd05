//! The in-process bus's metrics: counters updated as events are evicted or
//! publishers wait, and the gauges and totals read from the partitions at
//! scrape time.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, IntGaugeVec, Opts};

use super::Inner;

#[derive(Clone)]
pub(super) struct Counters {
    pub(super) unread_evicted: IntCounterVec,
    pub(super) publish_waits: IntCounterVec,
    pub(super) overflow: IntCounterVec,
    pub(super) stalls: IntCounterVec,
}

impl Counters {
    pub(super) fn new() -> Self {
        let vec = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition")
        };
        Counters {
            unread_evicted: vec(
                "choreo_bus_unread_evicted_total",
                "Events evicted from an in-process partition before a group read them (DropOldest, or a group without members).",
                &["topic", "group"],
            ),
            publish_waits: vec(
                "choreo_bus_publish_waits_total",
                "Publishes from outside handlers that waited for room in a full in-process partition, or for partitions past their bound to drain (WhenFull::Block).",
                &["topic"],
            ),
            overflow: vec(
                "choreo_bus_overflow_total",
                "Events published while handling a delivery, appended past a full in-process partition's bound instead of waiting (WhenFull::Block).",
                &["topic"],
            ),
            stalls: vec(
                "choreo_bus_publish_stalls_total",
                "Periods of Retention::stalled_after in which a waiting publisher saw the group holding the room back settle nothing in this partition.",
                &["topic", "partition", "group"],
            ),
        }
    }
}

/// Exposes `choreo_bus_retained_events{topic,partition}`,
/// `choreo_bus_consumer_lag{topic,partition,group}`,
/// `choreo_bus_appended_total{topic}` and
/// `choreo_bus_retention_evicted_total{topic}` at scrape time, from the
/// partitions' offsets (an append costs no counter update).
pub(super) struct LagCollector {
    pub(super) inner: std::sync::Weak<Inner>,
    pub(super) descs: Vec<Desc>,
}

/// The families [`LagCollector`] exposes, made afresh for each scrape (two
/// scrapes at once then share nothing).
pub(super) struct BusFamilies {
    pub(super) retained: IntGaugeVec,
    pub(super) lag: IntGaugeVec,
    pub(super) appended: IntCounterVec,
    pub(super) evicted: IntCounterVec,
}

impl BusFamilies {
    pub(super) fn new() -> Self {
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition")
        };
        let counter = |name: &str, help: &str| {
            IntCounterVec::new(Opts::new(name, help), &["topic"]).expect("valid metric definition")
        };
        BusFamilies {
            retained: gauge(
                "choreo_bus_retained_events",
                "Events retained in an in-process partition.",
                &["topic", "partition"],
            ),
            lag: gauge(
                "choreo_bus_consumer_lag",
                "Events of an in-process partition not yet settled by a consumer group.",
                &["topic", "partition", "group"],
            ),
            appended: counter(
                "choreo_bus_appended_total",
                "Events appended to in-process partitions.",
            ),
            evicted: counter(
                "choreo_bus_retention_evicted_total",
                "Events evicted from an in-process partition after every active group settled them.",
            ),
        }
    }

    pub(super) fn descs(&self) -> Vec<Desc> {
        [
            self.retained.desc(),
            self.lag.desc(),
            self.appended.desc(),
            self.evicted.desc(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
    }
}

impl LagCollector {
    pub(super) fn new(inner: std::sync::Weak<Inner>) -> Self {
        LagCollector {
            inner,
            descs: BusFamilies::new().descs(),
        }
    }
}

impl Collector for LagCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Some(inner) = self.inner.upgrade() else {
            return Vec::new();
        };
        let f = BusFamilies::new();
        for t in inner.all_topics() {
            let (mut appended, mut evicted) = (0, 0);
            for p in &t.partitions {
                let st = p.lock();
                let end = st.end();
                appended += end;
                evicted += st.base - st.evicted_unread;
                let part = p.index.to_string();
                f.retained
                    .with_label_values(&[t.name.as_str(), &part])
                    .set(st.log.len() as i64);
                for c in &st.cursors {
                    f.lag
                        .with_label_values(&[t.name.as_str(), &part, &c.group])
                        .set(end.saturating_sub(c.committed) as i64);
                }
            }
            f.appended
                .with_label_values(&[t.name.as_str()])
                .inc_by(appended);
            f.evicted
                .with_label_values(&[t.name.as_str()])
                .inc_by(evicted);
        }
        let mut out = f.retained.collect();
        out.extend(f.lag.collect());
        out.extend(f.appended.collect());
        out.extend(f.evicted.collect());
        out
    }
}
