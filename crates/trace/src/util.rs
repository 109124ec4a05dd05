//! Small shared helpers: the tracer's hash map, a name interner.

use choreo_core::Name;

/// A `HashMap` with rustc's Fx hasher. Keys are event ids (UUID v7, whose
/// low bits are random) and short names; SipHash's flood resistance buys
/// nothing there and costs a third of the ingest time.
pub(crate) type FastMap<K, V> = rustc_hash::FxHashMap<K, V>;

/// Turns repeated strings (event types, topics, services) into shared
/// [`Name`]s, so decoding a million records allocates each name once.
///
/// Bounded: a capture with ever-new names (a corrupt or hostile file) must not
/// grow it without limit; past the bound new names are allocated each time.
pub(crate) struct Interner {
    /// The first few names, scanned before hashing: a capture has a handful
    /// of types, topics and services, and comparing a few short strings is
    /// cheaper than hashing one.
    recent: Vec<Name>,
    /// A direct-mapped cache in front of `recent`, by length and end bytes:
    /// most lookups compare one string instead of scanning the list.
    slots: [Option<Name>; SLOTS],
    names: FastMap<Box<str>, Name>,
}

impl Default for Interner {
    fn default() -> Self {
        Interner {
            recent: Vec::new(),
            slots: std::array::from_fn(|_| None),
            names: FastMap::default(),
        }
    }
}

const INTERNER_BOUND: usize = 16 * 1024;
const RECENT: usize = 24;
const SLOTS: usize = 64;

#[inline(always)]
fn slot(raw: &[u8]) -> usize {
    let (first, last) = match raw {
        [] => (0, 0),
        [f, .., l] => (*f, *l),
        [f] => (*f, *f),
    };
    (raw.len() ^ (usize::from(first) << 2) ^ (usize::from(last) << 4) ^ usize::from(last >> 3))
        % SLOTS
}

impl Interner {
    /// The name with these bytes, if it is among the first few interned.
    #[inline]
    pub(crate) fn find_bytes(&mut self, raw: &[u8]) -> Option<Name> {
        let slot = &mut self.slots[slot(raw)];
        if let Some(n) = slot
            && n.as_bytes() == raw
        {
            return Some(n.clone());
        }
        let found = self.recent.iter().find(|n| n.as_bytes() == raw).cloned();
        if found.is_some() {
            slot.clone_from(&found);
        }
        found
    }

    #[inline]
    pub(crate) fn name(&mut self, s: &str) -> Name {
        if let Some(n) = self.find_bytes(s.as_bytes()) {
            return n;
        }
        if let Some(n) = self.names.get(s) {
            return n.clone();
        }
        let n = global_name(s);
        if self.recent.len() < RECENT {
            self.recent.push(n.clone());
        } else if self.names.len() < INTERNER_BOUND {
            self.names.insert(Box::from(s), n.clone());
        }
        n
    }
}

/// Distinct names kept for the whole process at most.
const GLOBAL_BOUND: usize = 4096;

/// The process-wide name for `s`: the first few thousand distinct names are
/// kept as `&'static str` (leaked once, bounded), so a record's names are
/// plain copies — no reference count shared by the reading and the tracing
/// threads, whose cache line would otherwise travel between the cores on
/// every record. Past the bound, names are shared strings as usual.
pub(crate) fn global_name(s: &str) -> Name {
    static NAMES: std::sync::OnceLock<std::sync::Mutex<FastMap<Box<str>, &'static str>>> =
        std::sync::OnceLock::new();
    let map = NAMES.get_or_init(Default::default);
    // std Mutex: held for a lookup, only when a reader meets a name it has not cached.
    let Ok(mut map) = map.lock() else {
        return Name::from(s);
    };
    if let Some(&n) = map.get(s) {
        return Name::from_static(n);
    }
    if map.len() >= GLOBAL_BOUND {
        return Name::from(s);
    }
    let leaked: &'static str = Box::leak(Box::from(s));
    map.insert(Box::from(s), leaked);
    Name::from_static(leaked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interner_shares_names() {
        let mut i = Interner::default();
        let a = i.name("orders");
        let b = i.name("orders");
        assert_eq!(a, b);
        assert_eq!(a.as_str(), "orders");
    }
}
