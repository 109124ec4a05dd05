//! The aggregates folded from finished flows: flows by name and status, findings by rule and site, the service graph with latencies.

use std::collections::BTreeMap;

use choreo_core::Outcome;

use crate::analysis::Analysis;
use crate::config::TracerConfig;
use crate::finding::{Finding, Rule};
use crate::flow::FlowStatus;
use crate::metrics::{EdgeMetrics, TraceMetrics};
use crate::model::{EMPTY, Model, Sym, Symbols};
use crate::report::{
    EdgeReport, EvictReason, FlowBrief, FlowNameReport, FlowTotals, OutboxReport, RuleReport,
    RuleSite,
};
use crate::stats::Histogram;
use crate::store::FlowState;
use crate::util::FastMap;

#[derive(Debug, Default, Clone)]
pub(crate) struct FlowStats {
    started: u64,
    /// Starts moved here (+) or away (−) once a flow's name was known.
    moved: i64,
    completed: u64,
    failed: u64,
    in_progress: u64,
    stuck: u64,
    recovered: u64,
    evicted: u64,
    duration: Histogram,
}

#[derive(Default)]
pub(crate) struct EdgeStats {
    count: u64,
    failed: u64,
    redelivered: u64,
    duplicates: u64,
    inferred: u64,
    queue: Histogram,
    handler: Histogram,
    latency: Histogram,
    metrics: Option<EdgeMetrics>,
}

/// Everything folded from finished flows.
#[derive(Default)]
pub(crate) struct Aggregates {
    edges: FastMap<(Sym, Sym, Sym), EdgeStats>,
    by_flow: FastMap<Option<usize>, FlowStats>,
    findings: FastMap<(Rule, Sym, Sym), u64>,
    examples: BTreeMap<Rule, Vec<Finding>>,
    briefs: Vec<FlowBrief>,
    /// Per publishing service: how long its events waited in its outbox.
    outbox: FastMap<Sym, Histogram>,
}

impl Aggregates {
    /// An event relayed from `service`'s outbox `micros` after its handler
    /// wrote it.
    pub(crate) fn outbox_lag(&mut self, service: Sym, micros: i64) {
        self.outbox.entry(service).or_default().record(micros);
    }

    /// The outbox lag of each service that published through one, by name.
    pub(crate) fn outbox_reports(&self, syms: &Symbols) -> Vec<OutboxReport> {
        let mut out: Vec<OutboxReport> = self
            .outbox
            .iter()
            .map(|(s, h)| OutboxReport {
                service: label(syms.name(*s)).to_owned(),
                lag: h.summary(),
            })
            .collect();
        out.sort_by(|a, b| a.service.cmp(&b.service));
        out
    }

    pub(crate) fn started(&mut self, name: Option<usize>) {
        self.by_flow.entry(name).or_default().started += 1;
    }

    /// Adds everything `other` folded after what this one folded: the
    /// same result as folding both in one, in that order.
    pub(crate) fn merge(&mut self, other: Aggregates, config: &TracerConfig) {
        for (k, e) in other.edges {
            match self.edges.get_mut(&k) {
                Some(mine) => {
                    mine.count += e.count;
                    mine.failed += e.failed;
                    mine.redelivered += e.redelivered;
                    mine.duplicates += e.duplicates;
                    mine.inferred += e.inferred;
                    mine.queue.merge(&e.queue);
                    mine.handler.merge(&e.handler);
                    mine.latency.merge(&e.latency);
                }
                None => {
                    self.edges.insert(k, e);
                }
            }
        }
        for (k, f) in other.by_flow {
            let mine = self.by_flow.entry(k).or_default();
            mine.started += f.started;
            mine.moved += f.moved;
            mine.completed += f.completed;
            mine.failed += f.failed;
            mine.in_progress += f.in_progress;
            mine.stuck += f.stuck;
            mine.recovered += f.recovered;
            mine.evicted += f.evicted;
            mine.duration.merge(&f.duration);
        }
        for (k, n) in other.findings {
            *self.findings.entry(k).or_default() += n;
        }
        for (_, examples) in other.examples {
            for f in examples {
                self.push_example(f, config);
            }
        }
        for b in other.briefs {
            self.push_brief(b, config);
        }
        for (k, h) in other.outbox {
            self.outbox.entry(k).or_default().merge(&h);
        }
    }

    pub(crate) fn wants_brief(&self, status: FlowStatus, config: &TracerConfig) -> bool {
        matches!(status, FlowStatus::Stuck | FlowStatus::Failed)
            && self.briefs.len() < config.listed_flows
    }

    pub(crate) fn push_brief(&mut self, brief: FlowBrief, config: &TracerConfig) {
        if self.briefs.len() < config.listed_flows {
            self.briefs.push(brief);
        }
    }

    pub(crate) fn wants_example(&self, rule: Rule, config: &TracerConfig) -> bool {
        self.examples
            .get(&rule)
            .is_none_or(|v| v.len() < config.examples_per_rule)
    }

    pub(crate) fn push_example(&mut self, f: Finding, config: &TracerConfig) {
        let v = self.examples.entry(f.rule).or_default();
        // One example per flow: the report shows different flows.
        if v.len() < config.examples_per_rule
            && !v.iter().any(|x| x.correlation_id == f.correlation_id)
        {
            v.push(f);
        }
    }

    pub(crate) fn fold_flow(
        &mut self,
        state: &FlowState,
        a: &Analysis,
        evicted: Option<EvictReason>,
        syms: &Symbols,
        model: Option<&Model>,
        metrics: Option<&TraceMetrics>,
    ) {
        let flow_name = a.name.and_then(|n| model.map(|m| m.flows[n].name.as_str()));
        if a.name != state.name {
            // Started was counted under the flow the first record suggested;
            // the whole flow says otherwise. Kept as a difference, so folds on
            // several threads add up.
            self.by_flow.entry(state.name).or_default().moved -= 1;
            self.by_flow.entry(a.name).or_default().moved += 1;
        }
        let st = self.by_flow.entry(a.name).or_default();
        match a.status {
            FlowStatus::Completed => st.completed += 1,
            FlowStatus::Failed => st.failed += 1,
            FlowStatus::InProgress => st.in_progress += 1,
            FlowStatus::Stuck => st.stuck += 1,
            FlowStatus::Recovered => st.recovered += 1,
        }
        if matches!(
            evicted,
            Some(
                EvictReason::FlowCap
                    | EvictReason::RecordCap
                    | EvictReason::FlowRecordCap
                    | EvictReason::Idle
            )
        ) {
            st.evicted += 1;
        }
        let duration = match (a.status, a.end) {
            (FlowStatus::Completed | FlowStatus::Recovered | FlowStatus::Failed, Some(end)) => {
                Some(end.saturating_sub(a.start))
            }
            _ => None,
        };
        if matches!(a.status, FlowStatus::Completed | FlowStatus::Recovered)
            && let Some(d) = duration
        {
            st.duration.record(d);
        }
        if let Some(m) = metrics {
            m.flow_finished(flow_name, a.status, duration);
        }
        for f in &a.findings {
            *self
                .findings
                .entry((f.rule, f.service, f.event_type))
                .or_default() += 1;
            // Notes (a recovered flow) are no violations: alerts on the
            // counter stay quiet for them.
            if let Some(m) = metrics.filter(|_| f.rule.is_violation()) {
                m.violation(f.rule, syms.name(f.service));
            }
        }
        // Edges from receipts.
        for r in &state.receipts {
            let ev = state.events.iter().find(|e| e.id == r.event);
            let producer = ev.map_or(EMPTY, |e| e.source);
            let edge = self.edge(producer, r.ty, r.service, syms, metrics);
            let failed = matches!(r.outcome, Outcome::DeadLettered | Outcome::Redelivered);
            match r.outcome {
                Outcome::Duplicate => edge.duplicates += 1,
                Outcome::Redelivered => edge.redelivered += 1,
                Outcome::DeadLettered => edge.failed += 1,
                // Ignored receipts are never attached to a flow.
                Outcome::Acked | Outcome::Ignored => {}
            }
            if r.outcome == Outcome::Duplicate {
                continue;
            }
            edge.count += 1;
            let handler = r.duration_us as i64;
            edge.handler.record(handler);
            let queue = ev.map(|e| r.started.saturating_sub(e.time).max(0));
            if let Some(q) = queue {
                edge.queue.record(q);
                edge.latency.record(q.saturating_add(handler));
            }
            if let Some(em) = &edge.metrics {
                em.observe(failed, queue, Some(handler));
            }
        }
        // Edges seen only through causation (no receipt from the consumer).
        let mut pairs: Vec<(usize, Sym)> = Vec::new();
        for kid in &state.events {
            let Some(cause) = &kid.cause else { continue };
            let Some(p) = state.events.iter().position(|e| &e.id == cause) else {
                continue;
            };
            if pairs.contains(&(p, kid.source)) {
                continue;
            }
            pairs.push((p, kid.source));
            let parent = &state.events[p];
            if state
                .receipts
                .iter()
                .any(|r| r.event == parent.id && r.service == kid.source)
            {
                continue;
            }
            let first = state
                .events
                .iter()
                .filter(|e| e.cause.as_ref() == Some(&parent.id) && e.source == kid.source)
                .map(|e| e.time)
                .min()
                .unwrap_or(kid.time);
            let edge = self.edge(parent.source, parent.ty, kid.source, syms, metrics);
            edge.count += 1;
            edge.inferred += 1;
            let latency = first.saturating_sub(parent.time).max(0);
            edge.latency.record(latency);
            if let Some(em) = &edge.metrics {
                em.observe(false, Some(latency), None);
            }
        }
    }

    /// Counts per flow name, busiest first, and their sum (`in_flight` left at 0).
    pub(crate) fn flow_reports(&self, model: Option<&Model>) -> (Vec<FlowNameReport>, FlowTotals) {
        let flow_label = |n: Option<usize>| -> String {
            n.and_then(|n| model.map(|m| m.flows[n].name.to_string()))
                .unwrap_or_else(|| "unknown".to_owned())
        };
        let mut totals = FlowTotals::default();
        let mut by_flow: Vec<FlowNameReport> = self
            .by_flow
            .iter()
            .filter(|(_, s)| {
                s.started as i64 + s.moved != 0
                    || s.completed + s.failed + s.in_progress + s.stuck + s.recovered + s.evicted
                        > 0
            })
            .map(|(n, s)| {
                let ft = FlowTotals {
                    started: u64::try_from(s.started as i64 + s.moved).unwrap_or(0),
                    completed: s.completed,
                    failed: s.failed,
                    in_progress: s.in_progress,
                    stuck: s.stuck,
                    recovered: s.recovered,
                    evicted: s.evicted,
                    in_flight: 0,
                };
                totals.started += ft.started;
                totals.completed += ft.completed;
                totals.failed += ft.failed;
                totals.in_progress += ft.in_progress;
                totals.stuck += ft.stuck;
                totals.recovered += ft.recovered;
                totals.evicted += ft.evicted;
                FlowNameReport {
                    flow: flow_label(*n),
                    totals: ft,
                    duration: s.duration.summary(),
                }
            })
            .collect();
        by_flow.sort_by(|a, b| {
            b.totals
                .started
                .cmp(&a.totals.started)
                .then(a.flow.cmp(&b.flow))
        });
        (by_flow, totals)
    }

    /// Findings per rule, most frequent first, with their sites and examples.
    pub(crate) fn rule_reports(&self, syms: &Symbols) -> Vec<RuleReport> {
        let mut rules: BTreeMap<Rule, (u64, Vec<RuleSite>)> = BTreeMap::new();
        for ((rule, svc, ty), count) in &self.findings {
            let e = rules.entry(*rule).or_default();
            e.0 += count;
            e.1.push(RuleSite {
                service: syms.name(*svc).to_string(),
                event_type: syms.name(*ty).to_string(),
                count: *count,
            });
        }
        let mut findings: Vec<RuleReport> = rules
            .into_iter()
            .map(|(rule, (count, mut by))| {
                by.sort_by(|a, b| {
                    b.count
                        .cmp(&a.count)
                        .then_with(|| a.service.cmp(&b.service))
                        .then_with(|| a.event_type.cmp(&b.event_type))
                });
                RuleReport {
                    rule,
                    summary: rule.summary(),
                    count,
                    by,
                    examples: self.examples.get(&rule).cloned().unwrap_or_default(),
                }
            })
            .collect();
        findings.sort_by(|a, b| b.count.cmp(&a.count).then(a.rule.cmp(&b.rule)));
        findings
    }

    /// The service graph's edges, busiest first.
    pub(crate) fn edge_reports(&self, syms: &Symbols) -> Vec<EdgeReport> {
        let mut edges: Vec<EdgeReport> = self
            .edges
            .iter()
            .map(|((p, ty, c), s)| EdgeReport {
                producer: label(syms.name(*p)).to_owned(),
                event_type: syms.name(*ty).to_string(),
                consumer: label(syms.name(*c)).to_owned(),
                count: s.count,
                failed: s.failed,
                redelivered: s.redelivered,
                duplicates: s.duplicates,
                inferred: s.inferred,
                queue: s.queue.summary(),
                handler: s.handler.summary(),
                latency: s.latency.summary(),
            })
            .collect();
        edges.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| a.producer.cmp(&b.producer))
                .then_with(|| a.event_type.cmp(&b.event_type))
                .then_with(|| a.consumer.cmp(&b.consumer))
        });
        edges
    }

    /// The stuck and failed flows listed.
    pub(crate) fn briefs(&self) -> &[FlowBrief] {
        &self.briefs
    }

    fn edge(
        &mut self,
        producer: Sym,
        ty: Sym,
        consumer: Sym,
        syms: &Symbols,
        metrics: Option<&TraceMetrics>,
    ) -> &mut EdgeStats {
        self.edges
            .entry((producer, ty, consumer))
            .or_insert_with(|| EdgeStats {
                metrics: metrics.map(|m| {
                    m.edge(
                        label(syms.name(producer)),
                        syms.name(ty),
                        label(syms.name(consumer)),
                    )
                }),
                ..EdgeStats::default()
            })
    }
}

fn label(name: &str) -> &str {
    if name.is_empty() { "unknown" } else { name }
}
