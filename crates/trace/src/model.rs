//! Symbols for names, and the topology's answers precomputed per symbol.

use choreo_core::Name;
use choreo_topology::{Emit, Topology};

use crate::util::FastMap;

/// A small integer standing for an event type, service or topic name.
pub(crate) type Sym = u32;

/// The symbol of the empty name.
pub(crate) const EMPTY: Sym = 0;

/// Interns names into symbols: the tracer keeps symbols, not strings, per event.
#[derive(Debug)]
pub(crate) struct Symbols {
    names: Vec<Name>,
    index: FastMap<Name, Sym>,
    /// Direct-mapped cache by the name's address: readers share one
    /// allocation per distinct name, so most lookups hit here without hashing
    /// the text. Each entry holds a clone, which keeps the address from being
    /// reused for another name.
    by_addr: Vec<Option<(Name, Sym)>>,
}

/// Slots of `by_addr`: a capture has a few dozen distinct names, each
/// possibly allocated once per interner (the reading thread's and the
/// tracer's); with few slots two of them would keep evicting each other.
const BY_ADDR: usize = 512;
const _: () = assert!(BY_ADDR.is_power_of_two());

impl Default for Symbols {
    fn default() -> Self {
        let mut s = Symbols {
            names: Vec::new(),
            index: FastMap::default(),
            by_addr: vec![None; BY_ADDR],
        };
        s.intern(&Name::empty());
        s
    }
}

impl Symbols {
    #[inline]
    pub(crate) fn intern(&mut self, name: &Name) -> Sym {
        let addr = name.as_str().as_ptr() as usize;
        // The address's bits mixed by a multiplication; the top bits pick the slot.
        let slot = ((addr ^ name.len()) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            >> (64 - BY_ADDR.trailing_zeros());
        let slot = slot as usize;
        if let Some((n, s)) = &self.by_addr[slot]
            && n.as_str().as_ptr() == name.as_str().as_ptr()
            && n.len() == name.len()
        {
            return *s;
        }
        let s = self.intern_slow(name);
        self.by_addr[slot] = Some((name.clone(), s));
        s
    }

    fn intern_slow(&mut self, name: &Name) -> Sym {
        if let Some(&s) = self.index.get(name.as_str()) {
            return s;
        }
        let s = self.names.len() as Sym;
        self.names.push(name.clone());
        self.index.insert(name.clone(), s);
        s
    }

    pub(crate) fn intern_str(&mut self, name: &str) -> Sym {
        if let Some(&s) = self.index.get(name) {
            return s;
        }
        self.intern(&Name::from(name))
    }

    pub(crate) fn get(&self, name: &str) -> Option<Sym> {
        self.index.get(name).copied()
    }

    #[inline]
    pub(crate) fn name(&self, s: Sym) -> &Name {
        &self.names[s as usize]
    }
}

/// What a reaction must emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    All,
    OneOf,
    Nothing,
}

/// One reaction: `service` on an event emits `emits` (all, one of, nothing) within `within_us`.
#[derive(Debug, Clone)]
pub(crate) struct ReactionInfo {
    pub(crate) service: Sym,
    pub(crate) kind: Kind,
    pub(crate) emits: Vec<Sym>,
    pub(crate) within_us: Option<i64>,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct TypeInfo {
    /// The topic the topology declares for it.
    pub(crate) topic: Sym,
    /// The reactions to this event type.
    pub(crate) consumers: Vec<ReactionInfo>,
    /// The flow this event starts.
    pub(crate) starts: Option<usize>,
    /// The flows it may take part in.
    pub(crate) member_of: Vec<usize>,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct ServiceInfo {
    /// Events emitted on its own (flow starts).
    pub(crate) emits: Vec<Sym>,
    /// Reactions, by the event reacted to.
    pub(crate) reactions: Vec<(Sym, usize)>,
}

#[derive(Debug, Clone)]
pub(crate) struct FlowInfo {
    pub(crate) name: Name,
    pub(crate) ends: Vec<Sym>,
    pub(crate) within_us: Option<i64>,
}

/// The topology, indexed by symbol.
#[derive(Debug)]
pub(crate) struct Model {
    pub(crate) name: String,
    pub(crate) types: Vec<Option<TypeInfo>>,
    pub(crate) services: Vec<Option<ServiceInfo>>,
    pub(crate) flows: Vec<FlowInfo>,
    /// A service's `sources` → the service (indexed by the source's symbol).
    aliases: Vec<Sym>,
}

fn micros(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

impl Model {
    pub(crate) fn new(t: &Topology, syms: &mut Symbols) -> Model {
        let flows: Vec<FlowInfo> = t
            .flows()
            .map(|f| FlowInfo {
                name: Name::from(f.name.as_str()),
                ends: f
                    .ends_with
                    .iter()
                    .map(|e| syms.intern_str(&e.name))
                    .collect(),
                within_us: f.within.map(micros),
            })
            .collect();
        let mut types: Vec<Option<TypeInfo>> = Vec::new();
        let mut services: Vec<Option<ServiceInfo>> = Vec::new();
        for e in t.events() {
            let s = syms.intern_str(&e.name) as usize;
            if types.len() <= s {
                types.resize(s + 1, None);
            }
            let consumers = t
                .consumers_of(&e.name)
                .map(|(svc, r)| ReactionInfo {
                    service: syms.intern_str(&svc.name),
                    kind: match &r.emit {
                        Emit::All(_) => Kind::All,
                        Emit::OneOf(_) => Kind::OneOf,
                        Emit::Nothing => Kind::Nothing,
                    },
                    emits: r
                        .emit
                        .events()
                        .iter()
                        .map(|x| syms.intern_str(&x.name))
                        .collect(),
                    within_us: r.within.map(micros),
                })
                .collect();
            let starts = t.flows().position(|f| f.starts_with.name == e.name);
            let member_of = t
                .flows_of(&e.name)
                .filter_map(|f| t.flows().position(|g| g.name == f.name))
                .collect();
            types[s] = Some(TypeInfo {
                topic: syms.intern_str(&e.topic),
                consumers,
                starts,
                member_of,
            });
        }
        for svc in t.services() {
            let s = syms.intern_str(&svc.name) as usize;
            if services.len() <= s {
                services.resize(s + 1, None);
            }
            let emits = svc.emits.iter().map(|e| syms.intern_str(&e.name)).collect();
            let reactions = svc
                .reactions
                .keys()
                .map(|on| {
                    let on_sym = syms.intern_str(on);
                    let idx = t
                        .consumers_of(on)
                        .position(|(c, _)| c.name == svc.name)
                        .unwrap_or(0);
                    (on_sym, idx)
                })
                .collect();
            services[s] = Some(ServiceInfo { emits, reactions });
        }
        let mut aliases: Vec<Sym> = Vec::new();
        for svc in t.services() {
            let service = syms.intern_str(&svc.name);
            for source in &svc.sources {
                let alias = syms.intern_str(source) as usize;
                if aliases.len() <= alias {
                    aliases.extend((aliases.len()..=alias).map(|i| i as Sym));
                }
                aliases[alias] = service;
            }
        }
        Model {
            name: t.name().to_owned(),
            types,
            services,
            flows,
            aliases,
        }
    }

    /// The service an event `source` stands for: the service that lists it
    /// in its `sources`, else the source itself.
    #[inline]
    pub(crate) fn canonical(&self, source: Sym) -> Sym {
        self.aliases.get(source as usize).copied().unwrap_or(source)
    }

    /// The topic the topology declares for event type `ty`.
    pub(crate) fn topic_of(&self, ty: Sym) -> Option<Sym> {
        self.event(ty).map(|t| t.topic)
    }

    #[inline]
    pub(crate) fn event(&self, s: Sym) -> Option<&TypeInfo> {
        self.types.get(s as usize).and_then(Option::as_ref)
    }

    #[inline]
    pub(crate) fn service(&self, s: Sym) -> Option<&ServiceInfo> {
        self.services.get(s as usize).and_then(Option::as_ref)
    }

    /// The reaction of `service` to event type `on`.
    pub(crate) fn reaction(&self, service: Sym, on: Sym) -> Option<&ReactionInfo> {
        let svc = self.service(service)?;
        let &(_, idx) = svc.reactions.iter().find(|(e, _)| *e == on)?;
        self.event(on)?.consumers.get(idx)
    }

    /// The tightest `within` of `service`'s reactions that emit `ty`: how
    /// long after its cause such an event comes, at most.
    pub(crate) fn emitted_within(&self, service: Sym, ty: Sym) -> Option<i64> {
        self.types
            .iter()
            .flatten()
            .flat_map(|t| &t.consumers)
            .filter(|r| r.service == service && r.emits.contains(&ty))
            .filter_map(|r| r.within_us)
            .min()
    }

    /// The flow a run whose first event has type `root` belongs to.
    pub(crate) fn flow_started_by(&self, root: Sym) -> Option<usize> {
        self.event(root)?.starts
    }

    /// The flow an event most likely belongs to when its flow's first event is unknown.
    pub(crate) fn flow_of(&self, event: Sym) -> Option<usize> {
        let info = self.event(event)?;
        info.starts.or_else(|| info.member_of.first().copied())
    }
}
