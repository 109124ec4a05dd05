//! The simulation: every service of a topology as simulated handlers on the real runtime.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use choreo_bus::{
    Context, HandlerError, Idempotency, InProcessBus, InProcessSubscription, Metrics, Publisher,
    Retry, Service, ServiceHandle,
};
use choreo_core::{Bus, Envelope, Name, SubscribeOptions, Timestamp};
use choreo_topology::{Emit, Reaction, Topology};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::{Fault, SimConfig};
use crate::{Error, Result};

/// One fault the simulation injected: the truth the tracer's findings are
/// compared with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Injected {
    /// `drop`, `fail`, `down`, `extra`, `wrong-branch` or `duplicate`.
    pub kind: String,
    /// The service at fault (the publisher, for a duplicate).
    pub service: String,
    /// The event being handled (the duplicated event, for a duplicate).
    pub event_type: String,
    /// Its id (empty for `down`).
    pub event_id: String,
    /// Its flow (empty for `down`).
    pub correlation_id: String,
    /// The simulation's flow number (from the payload).
    pub flow: u64,
    /// The attempt, for `fail`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// For `fail`: this was the last attempt, so the event was dead-lettered.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dead_lettered: bool,
    /// Event types emitted because of the fault (`extra`, `wrong-branch`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub emitted: Vec<String>,
    /// Anything else worth knowing (the window of a `down`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// What a run did: the sidecar written beside a capture.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Truth {
    /// The topology's name.
    pub topology: String,
    /// The configuration the run used.
    pub config: SimConfig,
    /// Flows started.
    pub flows_started: u64,
    /// Events published by simulated services and flow starts (receipts and
    /// dead-letter copies not included).
    pub events_published: u64,
    /// When the first flow started.
    pub started: Timestamp,
    /// When the run was quiet: nothing in flight.
    pub finished: Timestamp,
    /// Every fault injected, in the order they happened.
    pub injected: Vec<Injected>,
}

impl Truth {
    /// Injected faults of one kind.
    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Injected> + 'a {
        self.injected.iter().filter(move |i| i.kind == kind)
    }

    /// Writes the sidecar JSON.
    pub fn write(&self, path: &std::path::Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| Error::Io {
            path: path.display().to_string(),
            source: std::io::Error::other(e),
        })?;
        std::fs::write(path, json).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// Reads a sidecar.
    pub fn read(path: &std::path::Path) -> Result<Truth> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Io {
            path: path.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
    }
}

/// How far a run has got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimProgress {
    /// Flows started so far.
    pub flows_started: u64,
    /// Flows to start in all.
    pub flows: u64,
    /// True once every flow has started and the run waits for quiet.
    pub draining: bool,
}

/// A topology, ready to be simulated.
#[derive(Debug, Clone)]
pub struct Simulation {
    topology: Arc<Topology>,
    config: Arc<SimConfig>,
    loops: Arc<Loops>,
    /// Deferred reactions waiting to be published.
    pending: Arc<AtomicUsize>,
}

/// How often an event type may occur along one causal path of a simulated
/// flow: the tracer's default cycle bound (`cycle-bound` is reported above
/// it), so a run without faults is judged clean.
const LOOP_BOUND: u32 = 3;

/// The event types a flow can come back to (signup-kyc's resubmission loop),
/// and which of them each event type can lead to.
#[derive(Debug, Default)]
struct Loops {
    looping: HashSet<String>,
    /// For each event type that can lead to a looping one: those it can reach,
    /// itself included.
    leads_to: HashMap<String, Vec<String>>,
}

impl Loops {
    fn of(topology: &Topology) -> Loops {
        let mut next: HashMap<&str, Vec<&str>> = HashMap::new();
        for s in topology.services() {
            for (event, reaction) in &s.reactions {
                next.entry(event.as_str())
                    .or_default()
                    .extend(reaction.emit.events().iter().map(|e| e.name.as_str()));
            }
        }
        // Every type reachable from `from` in one step or more.
        let reach = |from: &str| {
            let mut seen: HashSet<&str> = HashSet::new();
            let mut todo: Vec<&str> = next.get(from).cloned().unwrap_or_default();
            while let Some(e) = todo.pop() {
                if seen.insert(e) {
                    todo.extend(next.get(e).into_iter().flatten());
                }
            }
            seen
        };
        let events: HashSet<&str> = next
            .values()
            .flatten()
            .copied()
            .chain(next.keys().copied())
            .collect();
        let reaches: HashMap<&str, HashSet<&str>> = events.iter().map(|e| (*e, reach(e))).collect();
        let looping: HashSet<String> = reaches
            .iter()
            .filter(|(e, r)| r.contains(*e))
            .map(|(e, _)| (*e).to_owned())
            .collect();
        let leads_to = reaches
            .iter()
            .filter_map(|(e, r)| {
                let mut to: Vec<String> = r
                    .iter()
                    .chain(std::iter::once(e))
                    .filter(|t| looping.contains(**t))
                    .map(|t| (*t).to_owned())
                    .collect();
                to.sort();
                to.dedup();
                (!to.is_empty()).then(|| ((*e).to_owned(), to))
            })
            .collect();
        Loops { looping, leads_to }
    }

    /// Whether the path `seen` has been can go on to `event` without an
    /// event type occurring on it more than [`LOOP_BOUND`] times (one more
    /// time round, at most, for each).
    fn may_go_to(&self, event: &str, seen: &BTreeMap<String, u32>) -> bool {
        self.leads_to.get(event).is_none_or(|to| {
            to.iter()
                .all(|t| seen.get(t).copied().unwrap_or(0) < LOOP_BOUND)
        })
    }

    /// `seen` once the path goes on to `event`.
    fn after(&self, seen: &BTreeMap<String, u32>, event: &str) -> BTreeMap<String, u32> {
        let mut seen = seen.clone();
        if self.looping.contains(event) {
            *seen.entry(event.to_owned()).or_default() += 1;
        }
        seen
    }
}

/// A stable 64-bit hash of the decision inputs, mapped to `[0, 1)`: the same
/// seed gives the same decisions whatever order events are handled in.
fn roll(seed: u64, flow: u64, parts: &[&str], n: u64) -> f64 {
    // FNV-1a over the inputs, then a splitmix64 finaliser.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    eat(&seed.to_le_bytes());
    eat(&flow.to_le_bytes());
    eat(&n.to_le_bytes());
    for p in parts {
        eat(p.as_bytes());
    }
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// What a simulated payload carries: the flow number, how many reactions led
/// to the event (0 for a flow's start), and how often each looping event type
/// occurs along that causal path, the event itself included (only in
/// topologies with loops).
#[derive(Default, Serialize, Deserialize)]
struct Payload {
    flow: u64,
    #[serde(default)]
    hop: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    seen: BTreeMap<String, u32>,
}

fn payload_of(data: &[u8]) -> Payload {
    serde_json::from_slice(data).unwrap_or_default()
}

/// The flow number a simulated payload carries.
fn flow_of(data: &[u8]) -> u64 {
    payload_of(data).flow
}

fn payload(flow: u64, hop: u64, seen: BTreeMap<String, u32>) -> Bytes {
    if seen.is_empty() {
        return Bytes::from(format!("{{\"flow\":{flow},\"hop\":{hop}}}"));
    }
    let p = Payload { flow, hop, seen };
    Bytes::from(serde_json::to_vec(&p).expect("a payload serialises"))
}

/// The event type the `extra` fault emits for `service`: declared nowhere.
pub fn undeclared_event(service: &str) -> String {
    let mut chars = service.chars();
    let cap: String = match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    };
    format!("{}Undeclared", cap.replace(['-', '_', '.'], ""))
}

struct Handler {
    seed: u64,
    service: String,
    reaction: Reaction,
    topology: Arc<Topology>,
    config: Arc<SimConfig>,
    faults: Vec<Fault>,
    truth: Arc<Mutex<Vec<Injected>>>,
    loops: Arc<Loops>,
    /// Publishes the service's deferred reactions.
    publisher: Publisher<SimBus>,
    /// Deferred reactions not published yet.
    pending: Arc<AtomicUsize>,
}

impl Handler {
    fn record(&self, env: &Envelope, flow: u64, kind: &str) -> Injected {
        Injected {
            kind: kind.to_owned(),
            service: self.service.clone(),
            event_type: env.event_type.to_string(),
            event_id: env.id.to_string(),
            correlation_id: env.correlation_id.to_string(),
            flow,
            attempt: None,
            dead_lettered: false,
            emitted: Vec::new(),
            detail: String::new(),
        }
    }

    fn push(&self, injected: Injected) {
        self.truth
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(injected);
    }

    fn applies(&self, event: &Option<String>, handled: &str) -> bool {
        event.as_deref().is_none_or(|e| e == handled)
    }

    async fn handle(&self, env: Arc<Envelope>, ctx: Context) -> Result<(), HandlerError> {
        let Payload { flow, hop, seen } = payload_of(&env.data);
        let handled = env.event_type.as_str();
        let seed = self.seed;
        let svc = self.service.as_str();
        let attempt = ctx.attempt();

        for f in &self.faults {
            if let Fault::Fail {
                event, probability, ..
            } = f
                && self.applies(event, handled)
                && roll(seed, flow, &[svc, handled, "fail"], u64::from(attempt)) < *probability
            {
                let mut i = self.record(&env, flow, "fail");
                i.attempt = Some(attempt);
                i.dead_lettered = attempt >= self.config.max_attempts;
                self.push(i);
                return Err(HandlerError::msg(format!(
                    "injected failure (attempt {attempt})"
                )));
            }
        }

        let latency = self.config.latency_of(svc, handled).sample(roll(
            seed,
            flow,
            &[svc, handled, "latency"],
            0,
        ));
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }

        let emits_something = !matches!(self.reaction.emit, Emit::Nothing);
        for f in &self.faults {
            if let Fault::Drop {
                event, probability, ..
            } = f
                && emits_something
                && self.applies(event, handled)
                && roll(seed, flow, &[svc, handled, "drop"], 0) < *probability
            {
                self.push(self.record(&env, flow, "drop"));
                return Ok(());
            }
        }

        let mut emits: Vec<String> = match &self.reaction.emit {
            Emit::All(events) => events.iter().map(|e| e.name.clone()).collect(),
            Emit::OneOf(events) => {
                let mut weights: Vec<f64> = events
                    .iter()
                    .map(|e| self.config.weights.get(&e.name).copied().unwrap_or(1.0))
                    .collect();
                // A flow that has gone round a loop as often as the bound
                // allows takes a way out, where there is one.
                if !seen.is_empty() {
                    let bounded: Vec<f64> = events
                        .iter()
                        .zip(&weights)
                        .map(|(e, w)| {
                            if self.loops.may_go_to(&e.name, &seen) {
                                *w
                            } else {
                                0.0
                            }
                        })
                        .collect();
                    if bounded.iter().sum::<f64>() > 0.0 {
                        weights = bounded;
                    }
                }
                let total: f64 = weights.iter().sum();
                // The depth in the roll: a flow that comes back to this
                // reaction through a loop (a rejected document resubmitted)
                // draws again, rather than making the same choice forever.
                let mut pick = roll(seed, flow, &[svc, handled, "branch"], hop) * total;
                let mut chosen = events.len() - 1;
                for (i, w) in weights.iter().enumerate() {
                    if pick < *w {
                        chosen = i;
                        break;
                    }
                    pick -= w;
                }
                vec![events[chosen].name.clone()]
            }
            Emit::Nothing => Vec::new(),
        };

        for f in &self.faults {
            match f {
                Fault::WrongBranch { probability, .. } => {
                    if let Emit::OneOf(events) = &self.reaction.emit
                        && events.len() >= 2
                        && roll(seed, flow, &[svc, handled, "wrong-branch"], 0) < *probability
                    {
                        let other = events
                            .iter()
                            .map(|e| e.name.clone())
                            .find(|n| !emits.contains(n))
                            .expect("a one_of with two branches has another branch");
                        emits.push(other);
                        let mut i = self.record(&env, flow, "wrong-branch");
                        i.emitted = emits.clone();
                        self.push(i);
                    }
                }
                Fault::Extra { probability, .. }
                    if roll(seed, flow, &[svc, handled, "extra"], 0) < *probability =>
                {
                    let extra = undeclared_event(svc);
                    ctx.emit_raw(
                        extra.clone(),
                        env.topic.clone(),
                        payload(flow, hop + 1, seen.clone()),
                    )?;
                    let mut i = self.record(&env, flow, "extra");
                    i.emitted = vec![extra];
                    self.push(i);
                }
                _ => {}
            }
        }

        if let Some(delay) = self.config.deferred_of(svc, handled)
            && !emits.is_empty()
        {
            // Acked now; the reaction is published later, as caused by the
            // event — a callback, an upload — through the service's
            // publisher, as `Publisher::publish_caused_by` does.
            let wait = delay.sample(roll(seed, flow, &[svc, handled, "deferred"], 0));
            let (publisher, pending) = (self.publisher.clone(), self.pending.clone());
            let topology = self.topology.clone();
            let source = self.service.clone();
            let loops = self.loops.clone();
            pending.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                for name in emits {
                    let topic = topology.topic_of(&name).unwrap_or("unknown").to_owned();
                    let seen = loops.after(&seen, &name);
                    let data = payload(flow, hop + 1, seen);
                    let event = Envelope::new(Name::from(name), Name::from(topic), data)
                        .with_source(source.as_str())
                        .caused_by(&env);
                    if let Err(e) = publisher.publish(event).await {
                        tracing::warn!(service = %source, error = %e, "a deferred reaction was not published");
                    }
                }
                pending.fetch_sub(1, Ordering::SeqCst);
            });
            return Ok(());
        }
        for name in emits {
            let topic = self
                .topology
                .topic_of(&name)
                .unwrap_or("unknown")
                .to_owned();
            let seen = self.loops.after(&seen, &name);
            ctx.emit_raw(name, topic, payload(flow, hop + 1, seen))?;
        }
        Ok(())
    }
}

/// The bus the simulated services use: the in-process bus, delivering some
/// events twice when a `duplicate` fault is configured.
#[derive(Clone)]
struct SimBus {
    inner: InProcessBus,
    duplicate: f64,
    seed: u64,
    truth: Arc<Mutex<Vec<Injected>>>,
    published: Arc<std::sync::atomic::AtomicU64>,
    domain: Arc<Vec<String>>,
}

impl Bus for SimBus {
    type Subscription = InProcessSubscription;

    async fn publish(&self, envelope: Envelope) -> choreo_core::Result<()> {
        if !self.domain.iter().any(|t| *t == *envelope.topic) {
            return self.inner.publish(envelope).await;
        }
        self.published
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let flow = flow_of(&envelope.data);
        let twice = self.duplicate > 0.0
            && roll(
                self.seed,
                flow,
                &[&envelope.source, &envelope.event_type, "duplicate"],
                0,
            ) < self.duplicate;
        if !twice {
            return self.inner.publish(envelope).await;
        }
        let copy = envelope.clone();
        self.inner.publish(envelope).await?;
        self.truth
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Injected {
                kind: "duplicate".into(),
                service: copy.source.to_string(),
                event_type: copy.event_type.to_string(),
                event_id: copy.id.to_string(),
                correlation_id: copy.correlation_id.to_string(),
                flow,
                attempt: None,
                dead_lettered: false,
                emitted: Vec::new(),
                detail: String::new(),
            });
        self.inner.publish(copy).await
    }

    async fn subscribe(
        &self,
        options: SubscribeOptions,
    ) -> choreo_core::Result<InProcessSubscription> {
        self.inner.subscribe(options).await
    }

    fn backend_name(&self) -> &'static str {
        "in-process"
    }
}

impl Simulation {
    /// A simulation of `topology`. Fails when a fault names a service or an
    /// event the topology does not have, or when nothing starts a flow.
    pub fn new(topology: Topology, config: SimConfig) -> Result<Simulation> {
        for f in &config.faults {
            if let Some(s) = f.service()
                && topology.service(s).is_none()
            {
                let known: Vec<&str> = topology.services().map(|s| s.name.as_str()).collect();
                return Err(Error::Config(format!(
                    "--{} names service '{s}', which topology '{}' does not declare (services: {})",
                    f.kind(),
                    topology.name(),
                    known.join(", ")
                )));
            }
            if let Fault::Drop {
                event: Some(e),
                service,
                ..
            }
            | Fault::Fail {
                event: Some(e),
                service,
                ..
            } = f
                && topology.reaction(service, e).is_none()
            {
                return Err(Error::Config(format!(
                    "--{} {service}:{e}: service '{service}' does not react to '{e}' in topology '{}'",
                    f.kind(),
                    topology.name()
                )));
            }
        }
        for target in config.latencies.keys() {
            let (service, event) = match target.split_once(':') {
                Some((s, e)) => (s, Some(e)),
                None => (target.as_str(), None),
            };
            let known = match event {
                Some(e) => topology.reaction(service, e).is_some(),
                None => topology.service(service).is_some(),
            };
            if !known {
                return Err(Error::Config(format!(
                    "--latency-of {target}=…: topology '{}' has no reaction '{target}' (write SERVICE or SERVICE:EVENT of a declared reaction)",
                    topology.name()
                )));
            }
        }
        for target in config.deferred.keys() {
            let (service, event) = match target.split_once(':') {
                Some((s, e)) => (s, Some(e)),
                None => (target.as_str(), None),
            };
            let known = match event {
                Some(e) => topology.reaction(service, e).is_some(),
                None => topology.service(service).is_some(),
            };
            if !known {
                return Err(Error::Config(format!(
                    "--deferred {target}=…: topology '{}' has no reaction '{target}' (write SERVICE or SERVICE:EVENT of a declared reaction)",
                    topology.name()
                )));
            }
        }
        for event in config.weights.keys() {
            if topology.event(event).is_none() {
                return Err(Error::Config(format!(
                    "--weight {event}=…: topology '{}' declares no event '{event}'",
                    topology.name()
                )));
            }
        }
        if topology.flows().len() == 0 {
            return Err(Error::Config(format!(
                "topology '{}' declares no flow, so the simulation has nothing to start: add a `flows:` section",
                topology.name()
            )));
        }
        if config.flows > 0 && config.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
            return Err(Error::Config(
                "--rate must be a positive number of flows per second".into(),
            ));
        }
        Ok(Simulation {
            loops: Arc::new(Loops::of(&topology)),
            topology: Arc::new(topology),
            config: Arc::new(config),
            pending: Arc::default(),
        })
    }

    /// The topology.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The configuration.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// The consumer groups of the simulated services (one per service).
    pub fn groups(&self) -> Vec<String> {
        self.topology
            .services()
            .filter(|s| !s.reactions.is_empty())
            .map(|s| s.name.clone())
            .collect()
    }

    /// Every topic the run may write to: the topology's, plus the dead-letter
    /// topics and the receipts topic.
    pub fn topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.topology.topics().to_vec();
        for t in self.topology.topics() {
            topics.push(choreo_core::dead_letter_topic(t));
        }
        topics.push(choreo_core::RECEIPTS_TOPIC.to_owned());
        topics
    }

    fn service(
        &self,
        name: &str,
        bus: &SimBus,
        metrics: &Metrics,
        truth: &Arc<Mutex<Vec<Injected>>>,
    ) -> Service {
        let decl = self.topology.service(name).expect("a declared service");
        let faults: Vec<Fault> = self
            .config
            .faults
            .iter()
            .filter(|f| f.service() == Some(name))
            .cloned()
            .collect();
        let mut service = Service::new(name.to_owned())
            .retry(
                Retry::default()
                    .max_attempts(self.config.max_attempts)
                    .backoff(Duration::from_millis(5), Duration::from_millis(50)),
            )
            // Duplicates are injected on purpose; the idempotency middleware is
            // what removes their effect, as in production.
            .idempotency(Idempotency::default())
            .partition_concurrency(self.config.concurrency.max(1))
            .shutdown_grace(Duration::from_secs(2))
            .metrics(metrics.clone());
        for (event, reaction) in &decl.reactions {
            let handler = Arc::new(Handler {
                seed: self.config.seed,
                service: name.to_owned(),
                reaction: reaction.clone(),
                topology: self.topology.clone(),
                config: self.config.clone(),
                faults: faults.clone(),
                truth: truth.clone(),
                loops: self.loops.clone(),
                publisher: Publisher::new(bus, name.to_owned()).metrics(metrics.clone()),
                pending: self.pending.clone(),
            });
            let topic = self
                .topology
                .topic_of(event)
                .unwrap_or("unknown")
                .to_owned();
            service = service.on_envelope(
                event.clone(),
                topic,
                move |env: Arc<Envelope>, ctx: Context| {
                    let handler = handler.clone();
                    async move { handler.handle(env, ctx).await }
                },
            );
        }
        service
    }

    /// Runs the simulation on `bus`: starts every service, starts the flows,
    /// applies the faults, and returns once every flow has settled (nothing in
    /// flight, every window over). `progress` is called as flows start.
    pub async fn run(
        &self,
        bus: &InProcessBus,
        metrics: &Metrics,
        progress: &(dyn Fn(SimProgress) + Send + Sync),
    ) -> Result<Truth> {
        for t in self.topology.topics() {
            bus.create_topic(t, self.config.partitions.max(1));
        }
        let truth: Arc<Mutex<Vec<Injected>>> = Arc::default();
        let duplicate = self
            .config
            .faults
            .iter()
            .filter_map(|f| match f {
                Fault::Duplicate { probability } => Some(*probability),
                _ => None,
            })
            .fold(0.0, f64::max);
        let sim_bus = SimBus {
            inner: bus.clone(),
            duplicate,
            seed: self.config.seed,
            truth: truth.clone(),
            published: Arc::default(),
            domain: Arc::new(self.topology.topics().to_vec()),
        };

        // Start every reacting service.
        let running: Arc<Mutex<HashMap<String, (CancellationToken, ServiceHandle)>>> =
            Arc::default();
        for name in self.groups() {
            let token = CancellationToken::new();
            let handle = self
                .service(&name, &sim_bus, metrics, &truth)
                .start(&sim_bus, token.clone())
                .await
                .map_err(|source| Error::Runtime {
                    source: Box::new(source),
                })?;
            running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name, (token, handle));
        }

        let start = Instant::now();
        let started = Timestamp::now();

        // Down windows: stop the service, start it again (same group: it resumes).
        let mut windows = Vec::new();
        for f in &self.config.faults {
            if let Fault::Down {
                service,
                from,
                until,
            } = f
            {
                let (service, from, until) = (service.clone(), *from, *until);
                let this = self.clone();
                let (sim_bus, metrics, truth, running) = (
                    sim_bus.clone(),
                    metrics.clone(),
                    truth.clone(),
                    running.clone(),
                );
                windows.push(tokio::spawn(async move {
                    tokio::time::sleep_until((start + from).into()).await;
                    let old = running
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&service);
                    if let Some((token, handle)) = old {
                        token.cancel();
                        handle.await.map_err(|source| Error::Runtime {
                            source: Box::new(source),
                        })?;
                    }
                    truth
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(Injected {
                            kind: "down".into(),
                            service: service.clone(),
                            event_type: String::new(),
                            event_id: String::new(),
                            correlation_id: String::new(),
                            flow: 0,
                            attempt: None,
                            dead_lettered: false,
                            emitted: Vec::new(),
                            detail: match until {
                                Some(until) => format!(
                                    "down from {} to {} after the start",
                                    crate::config::fmt_duration(from),
                                    crate::config::fmt_duration(until)
                                ),
                                None => format!(
                                    "down from {} after the start to the end of the run",
                                    crate::config::fmt_duration(from)
                                ),
                            },
                        });
                    let Some(until) = until else {
                        return Ok::<(), Error>(());
                    };
                    tokio::time::sleep_until((start + until).into()).await;
                    let token = CancellationToken::new();
                    let handle = this
                        .service(&service, &sim_bus, &metrics, &truth)
                        .start(&sim_bus, token.clone())
                        .await
                        .map_err(|source| Error::Runtime {
                            source: Box::new(source),
                        })?;
                    running
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(service, (token, handle));
                    Ok::<(), Error>(())
                }));
            }
        }

        // Start the flows, spread over the topology's flows.
        let flows: Vec<(String, String, String)> = self
            .topology
            .flows()
            .map(|f| {
                let start = f.starts_with.name.clone();
                let topic = self
                    .topology
                    .topic_of(&start)
                    .unwrap_or("unknown")
                    .to_owned();
                let source = self
                    .topology
                    .emitters_of(&start)
                    .find(|e| e.reaction.is_none())
                    .map(|e| e.service.name.clone())
                    .unwrap_or_else(|| "external".to_owned());
                (start, topic, source)
            })
            .collect();
        let publishers: HashMap<String, Publisher<SimBus>> = flows
            .iter()
            .map(|(_, _, source)| {
                (
                    source.clone(),
                    Publisher::new(&sim_bus, source.clone()).metrics(metrics.clone()),
                )
            })
            .collect();
        for n in 0..self.config.flows {
            if let Some(rate) = self.config.rate {
                tokio::time::sleep_until((start + Duration::from_secs_f64(n as f64 / rate)).into())
                    .await;
            }
            let (event, topic, source) = &flows[(n as usize) % flows.len()];
            let env = Envelope::new(
                Name::from(event.as_str()),
                Name::from(topic.as_str()),
                payload(n, 0, self.loops.after(&BTreeMap::new(), event)),
            )
            .with_source(source.as_str());
            publishers[source]
                .publish(env)
                .await
                .map_err(|source| Error::Runtime {
                    source: Box::new(source),
                })?;
            if n % 64 == 0 || n + 1 == self.config.flows {
                progress(SimProgress {
                    flows_started: n + 1,
                    flows: self.config.flows,
                    draining: false,
                });
            }
        }
        progress(SimProgress {
            flows_started: self.config.flows,
            flows: self.config.flows,
            draining: true,
        });

        for w in windows {
            w.await
                .map_err(|e| Error::Config(format!("a down window task failed: {e}")))??;
        }
        // A service down to the end never settles its backlog: leave it out.
        let down_for_good: Vec<&str> = self
            .config
            .faults
            .iter()
            .filter_map(|f| match f {
                Fault::Down {
                    service,
                    until: None,
                    ..
                } => Some(service.as_str()),
                _ => None,
            })
            .collect();
        let groups: Vec<String> = self
            .groups()
            .into_iter()
            .filter(|g| !down_for_good.contains(&g.as_str()))
            .collect();
        // Quiet, and no deferred reaction left to publish (whose events would
        // start the handling again).
        loop {
            while self.pending.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            wait_quiet(bus, &groups).await;
            if self.pending.load(Ordering::SeqCst) == 0 {
                break;
            }
        }
        let finished = Timestamp::now();

        let all: Vec<(String, (CancellationToken, ServiceHandle))> = running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for (_, (token, _)) in &all {
            token.cancel();
        }
        for (_, (_, handle)) in all {
            handle.await.map_err(|source| Error::Runtime {
                source: Box::new(source),
            })?;
        }
        let injected = std::mem::take(&mut *truth.lock().unwrap_or_else(|e| e.into_inner()));
        Ok(Truth {
            topology: self.topology.name().to_owned(),
            config: (*self.config).clone(),
            flows_started: self.config.flows,
            events_published: sim_bus.published.load(std::sync::atomic::Ordering::Relaxed),
            started,
            finished,
            injected,
        })
    }
}

/// Waits until every consumer group in `groups` has settled everything
/// published to the topics it consumes, and nothing new was published, over
/// a short stable period.
pub async fn wait_quiet(bus: &InProcessBus, groups: &[String]) {
    let mut last: Option<u64> = None;
    let mut stable = 0;
    loop {
        let mut settled = true;
        let mut total_end = 0u64;
        for t in bus.topics() {
            let Some(stats) = bus.topic_stats(&t) else {
                continue;
            };
            for p in stats.partitions {
                total_end += p.end;
                for g in p.groups {
                    if groups.contains(&g.group) && g.committed < p.end {
                        settled = false;
                    }
                }
            }
        }
        if settled && last == Some(total_end) {
            stable += 1;
            if stable >= 3 {
                return;
            }
        } else {
            stable = 0;
        }
        last = Some(total_end);
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolls_are_stable_and_spread() {
        let a = roll(7, 3, &["payment", "OrderPlaced", "branch"], 0);
        assert_eq!(a, roll(7, 3, &["payment", "OrderPlaced", "branch"], 0));
        assert_ne!(a, roll(8, 3, &["payment", "OrderPlaced", "branch"], 0));
        let n = 10_000;
        let below: usize = (0..n).filter(|i| roll(1, *i, &["x"], 0) < 0.25).count();
        assert!((2_200..2_800).contains(&below), "{below}");
    }

    #[test]
    fn loops_are_found_and_bounded() {
        let load = |f: &str| {
            Topology::from_path(format!(
                "{}/../../topologies/{f}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap()
        };
        assert!(
            Loops::of(&load("order-fulfillment.yaml"))
                .looping
                .is_empty()
        );
        let kyc = Loops::of(&load("signup-kyc.yaml"));
        let mut looping: Vec<&str> = kyc.looping.iter().map(String::as_str).collect();
        looping.sort();
        assert_eq!(
            looping,
            ["DocumentsRejected", "KycRequested", "ResubmissionRequested"]
        );
        let seen = |n: u32| {
            ["KycRequested", "DocumentsRejected", "ResubmissionRequested"]
                .map(|t| (t.to_owned(), n))
                .into_iter()
                .collect::<BTreeMap<_, _>>()
        };
        // Round twice: once more is allowed; three times: only the way out.
        assert!(kyc.may_go_to("DocumentsRejected", &seen(2)));
        assert!(!kyc.may_go_to("DocumentsRejected", &seen(3)));
        assert!(kyc.may_go_to("DocumentsVerified", &seen(3)));
        assert!(kyc.may_go_to("AccountClosed", &seen(3)));
        assert_eq!(kyc.after(&seen(1), "KycRequested")["KycRequested"], 2);
        assert_eq!(kyc.after(&seen(1), "AccountClosed"), seen(1));
    }

    #[test]
    fn undeclared_event_names_are_camel_cased() {
        assert_eq!(undeclared_event("payment"), "PaymentUndeclared");
        assert_eq!(undeclared_event("kyc-check"), "KyccheckUndeclared");
    }
}
