//! A flow built by hand for the rule modules' unit tests: events and receipts by label, times in ms.

use choreo_core::{EventId, Outcome};
use choreo_topology::Topology;

use super::{Ctx, Scratch, analyse};
use crate::config::TracerConfig;
use crate::finding::Rule;
use crate::flow::FlowStatus;
use crate::model::{Model, Symbols};
use crate::store::{Dl, Ev, FlowState, NO_OFFSET, NO_PARTITION, Rc};

/// The order-fulfillment topology of `topologies/`.
pub(crate) const ORDERS: &str = include_str!("../../../../topologies/order-fulfillment.yaml");

/// Epoch of the fixtures' times.
const BASE: i64 = 1_764_000_000_000_000;

/// A flow under construction, and the tracer state needed to judge it.
pub(crate) struct Fixture {
    syms: Symbols,
    model: Option<Model>,
    pub(crate) config: TracerConfig,
    pub(crate) receipts_expected: bool,
    flow: FlowState,
    /// Event type → services with receipts for it, as the tracer keeps it.
    handlers: Vec<Vec<crate::model::Sym>>,
}

/// A finding, with names: (rule, service, event type, label of the event).
pub(crate) type Named = (Rule, String, String, Option<String>);

/// What judging the fixture gave.
#[derive(Debug)]
pub(crate) struct Judged {
    pub(crate) status: FlowStatus,
    pub(crate) findings: Vec<Named>,
    pub(crate) messages: Vec<String>,
    /// (service, label of the event it owes for).
    pub(crate) owed: Vec<(String, String)>,
}

impl Judged {
    /// The findings of `rule`.
    pub(crate) fn of(&self, rule: Rule) -> Vec<&Named> {
        self.findings.iter().filter(|f| f.0 == rule).collect()
    }

    /// The rules found, in order.
    pub(crate) fn rules(&self) -> Vec<Rule> {
        self.findings.iter().map(|f| f.0).collect()
    }
}

fn id(label: &str) -> EventId {
    EventId::parse(label).expect("a label is an id")
}

fn at(ms: i64) -> i64 {
    BASE + ms * 1000
}

impl Fixture {
    /// A flow judged against the topology in `yaml`.
    pub(crate) fn new(yaml: &str) -> Fixture {
        let mut syms = Symbols::default();
        let topology = Topology::parse(yaml, "test.yaml").expect("a valid topology");
        let model = Some(Model::new(&topology, &mut syms));
        Fixture {
            syms,
            model,
            config: TracerConfig::batch(),
            receipts_expected: false,
            flow: FlowState::new(at(0), None),
            handlers: Vec::new(),
        }
    }

    /// A flow judged without a topology.
    pub(crate) fn bare() -> Fixture {
        Fixture {
            syms: Symbols::default(),
            model: None,
            config: TracerConfig::batch(),
            receipts_expected: false,
            flow: FlowState::new(at(0), None),
            handlers: Vec::new(),
        }
    }

    /// The topic the topology declares for `ty` (`misc` when none does).
    fn topic(&mut self, ty: &str) -> crate::model::Sym {
        let declared = self
            .syms
            .get(ty)
            .and_then(|t| self.model.as_ref().and_then(|m| m.topic_of(t)));
        declared.unwrap_or_else(|| self.syms.intern_str("misc"))
    }

    /// Adds event `label` of type `ty` by `source`, caused by the event
    /// labelled `cause`, published at `ms`.
    pub(crate) fn event(
        &mut self,
        label: &str,
        ty: &str,
        source: &str,
        cause: Option<&str>,
        ms: i64,
    ) -> &mut Self {
        let ev = Ev {
            id: id(label),
            cause: cause.map(id),
            ty: self.syms.intern_str(ty),
            source: self.syms.intern_str(source),
            topic: self.topic(ty),
            time: at(ms),
            partition: NO_PARTITION,
            offset: NO_OFFSET,
        };
        self.flow.push_event(ev);
        self
    }

    /// Adds the receipt of `service` handling `of` (of type `ty`), started at
    /// `ms` and taking `took_ms`, saying it emitted `emitted` events.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn receipt(
        &mut self,
        service: &str,
        of: &str,
        ty: &str,
        outcome: Outcome,
        emitted: u32,
        ms: i64,
        took_ms: i64,
    ) -> &mut Self {
        self.receipts_expected = true;
        let (service, ty) = (self.syms.intern_str(service), self.syms.intern_str(ty));
        if self.handlers.len() <= ty as usize {
            self.handlers.resize(ty as usize + 1, Vec::new());
        }
        if !self.handlers[ty as usize].contains(&service) {
            self.handlers[ty as usize].push(service);
        }
        let rc = Rc {
            event: id(of),
            service,
            ty,
            outcome,
            attempts: 1,
            started: at(ms),
            duration_us: (took_ms * 1000) as u64,
            emitted,
            reason: (outcome == Outcome::DeadLettered).then(|| "it broke".into()),
        };
        self.flow.receipts.push(rc);
        self
    }

    /// Adds a dead-letter copy of `of` by `service`.
    pub(crate) fn dead(&mut self, of: &str, service: &str) -> &mut Self {
        let dl = Dl {
            event: id(of),
            service: self.syms.intern_str(service),
            reason: "it broke".into(),
            attempts: 3,
            at: None,
            malformed: false,
            marker: false,
        };
        self.flow.dead.push(dl);
        self
    }

    /// Adds a receipt of `service` dead-lettering `of` with `reason`.
    pub(crate) fn dead_receipt(
        &mut self,
        service: &str,
        of: &str,
        ty: &str,
        reason: &str,
        ms: i64,
    ) -> &mut Self {
        self.receipt(service, of, ty, Outcome::DeadLettered, 0, ms, 1);
        if let Some(r) = self.flow.receipts.last_mut() {
            r.reason = Some(reason.into());
        }
        self
    }

    /// Marks the record of `of` malformed, as its source found it.
    pub(crate) fn malformed(&mut self, of: &str, problem: &str) -> &mut Self {
        self.flow.dead.push(Dl {
            event: id(of),
            service: crate::model::EMPTY,
            reason: problem.into(),
            attempts: 0,
            at: None,
            malformed: true,
            marker: true,
        });
        self
    }

    /// Publishes the last event added on `topic` instead.
    pub(crate) fn on_topic(&mut self, topic: &str) -> &mut Self {
        let topic = self.syms.intern_str(topic);
        if let Some(e) = self.flow.events.last_mut() {
            e.topic = topic;
        }
        self
    }

    /// Judges the flow as of `now_ms`.
    pub(crate) fn judge(&self, now_ms: i64) -> Judged {
        let ctx = Ctx {
            model: self.model.as_ref(),
            syms: &self.syms,
            config: &self.config,
            receipts_expected: self.receipts_expected,
            handlers: &self.handlers,
        };
        let corr = self
            .flow
            .events
            .first()
            .map_or_else(|| id("none"), |e| e.id.clone());
        let mut scratch = Scratch::default();
        let a = analyse(&ctx, &mut scratch, &corr, &self.flow, at(now_ms));
        let label = |i: u32| self.flow.events[i as usize].id.to_string();
        Judged {
            status: a.status,
            findings: a
                .findings
                .iter()
                .map(|r| {
                    (
                        r.rule,
                        self.syms.name(r.service).to_string(),
                        self.syms.name(r.event_type).to_string(),
                        r.event.map(label),
                    )
                })
                .collect(),
            messages: a.findings.iter().map(|r| r.message.clone()).collect(),
            owed: a
                .owed
                .iter()
                .map(|o| (self.syms.name(o.service).to_string(), label(o.event)))
                .collect(),
        }
    }
}
