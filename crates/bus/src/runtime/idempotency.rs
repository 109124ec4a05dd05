//! Idempotency: an event a service already handled is acked without running
//! its handler again.

use std::fmt;
use std::sync::{Arc, Mutex};

use choreo_core::EventId;

use super::handler::{BoxError, BoxFuture};

/// A store of event ids a service has handled successfully.
///
/// The runtime asks [`contains`](IdempotencyStore::contains) before running a
/// handler and calls [`insert`](IdempotencyStore::insert) after the handler
/// succeeded and its emissions were published — so an id is only recorded
/// once its effects are out. Implement it over a database or Redis to share it
/// between replicas of a service or keep it across restarts; the default
/// [`MemoryStore`] is per process.
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Whether `service` already handled `id`.
    fn contains(&self, service: &str, id: &EventId) -> BoxFuture<Result<bool, BoxError>>;
    /// Records that `service` handled `id`.
    fn insert(&self, service: &str, id: &EventId) -> BoxFuture<Result<(), BoxError>>;
}

/// The bounded in-memory store: remembers at least the last `capacity` ids
/// (and at most twice as many of each kind, UUIDs and text ids), oldest
/// forgotten first.
///
/// Ids are kept in two generations of `capacity` each: new ids go into the
/// current one; when it is full it becomes the previous one and the old
/// previous one is forgotten at once. A lookup checks both. This costs no
/// per-event eviction (no queue of ids, no removal from the table) and reuses
/// the tables' memory once they have grown. UUID ids — every id choreo
/// generates — are stored as 128-bit integers; other ids as their text.
pub struct MemoryStore {
    capacity: usize,
    // std Mutex: never held across an await.
    state: Mutex<MemoryState>,
}

#[derive(Default)]
struct MemoryState {
    uuids: Generations<u128>,
    /// The greatest UUID ever remembered. UUID v7 ids grow with time (and
    /// strictly, for the ids one thread makes), so most new events carry an id
    /// above it: not remembered, known without touching the tables — whose
    /// lookups miss the cache once they hold many ids.
    uuid_high: Option<u128>,
    texts: Generations<EventId>,
}

/// Two generations of remembered keys.
struct Generations<K> {
    current: rustc_hash::FxHashSet<K>,
    previous: rustc_hash::FxHashSet<K>,
}

impl<K> Default for Generations<K> {
    fn default() -> Self {
        Generations {
            current: Default::default(),
            previous: Default::default(),
        }
    }
}

impl<K: std::hash::Hash + Eq> Generations<K> {
    fn contains(&self, k: &K) -> bool {
        self.current.contains(k) || self.previous.contains(k)
    }

    fn insert(&mut self, k: K, capacity: usize) {
        if !self.previous.contains(&k) {
            self.insert_new(k, capacity);
        }
    }

    /// Inserts `k`, known not to be in the previous generation.
    fn insert_new(&mut self, k: K, capacity: usize) {
        if !self.current.insert(k) {
            return;
        }
        if self.current.len() >= capacity {
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.clear();
        }
    }

    fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

impl MemoryStore {
    /// A store remembering at least the last `capacity` ids.
    pub fn new(capacity: usize) -> Self {
        MemoryStore {
            capacity: capacity.max(1),
            state: Mutex::new(MemoryState::default()),
        }
    }

    /// Whether `id` is remembered.
    pub fn contains_now(&self, id: &EventId) -> bool {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match id.as_uuid() {
            Some(u) => {
                let u = u.as_u128();
                st.uuid_high.is_some_and(|high| u <= high) && st.uuids.contains(&u)
            }
            None => st.texts.contains(id),
        }
    }

    /// Remembers `id`; when the current generation is full, the oldest
    /// generation is forgotten.
    pub fn insert_now(&self, id: &EventId) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match id.as_uuid() {
            Some(u) => {
                let u = u.as_u128();
                match st.uuid_high {
                    // Remembered, if at all, in either generation.
                    Some(high) if u <= high => st.uuids.insert(u, self.capacity),
                    // Greater than any id remembered: in neither.
                    _ => {
                        st.uuid_high = Some(u);
                        st.uuids.insert_new(u, self.capacity);
                    }
                }
            }
            None => st.texts.insert(id.clone(), self.capacity),
        }
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.uuids.len() + st.texts.len()
    }

    /// True when none are.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .finish()
    }
}

/// How a service deduplicates deliveries. Default: a [`MemoryStore`] remembering at least the last 100 000 ids.
#[derive(Clone)]
pub struct Idempotency {
    pub(crate) store: StoreKind,
}

#[derive(Clone)]
pub(crate) enum StoreKind {
    Off,
    // The built-in store is called directly: no boxed future per event.
    Memory(Arc<MemoryStore>),
    Custom(Arc<dyn IdempotencyStore>),
}

impl Default for Idempotency {
    fn default() -> Self {
        Idempotency::memory(100_000)
    }
}

impl fmt::Debug for Idempotency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.store {
            StoreKind::Off => f.write_str("Idempotency::Off"),
            StoreKind::Memory(m) => write!(f, "Idempotency::Memory({})", m.capacity),
            StoreKind::Custom(_) => f.write_str("Idempotency::Custom"),
        }
    }
}

impl Idempotency {
    /// Remember at least the last `capacity` handled ids in memory (see [`MemoryStore`]).
    pub fn memory(capacity: usize) -> Self {
        Idempotency {
            store: StoreKind::Memory(Arc::new(MemoryStore::new(capacity))),
        }
    }

    /// Use a store of your own.
    pub fn store(store: Arc<dyn IdempotencyStore>) -> Self {
        Idempotency {
            store: StoreKind::Custom(store),
        }
    }

    /// No deduplication: every delivery runs the handler.
    pub fn off() -> Self {
        Idempotency {
            store: StoreKind::Off,
        }
    }

    pub(crate) async fn contains(&self, service: &str, id: &EventId) -> bool {
        match &self.store {
            StoreKind::Off => false,
            StoreKind::Memory(m) => m.contains_now(id),
            StoreKind::Custom(s) => match s.contains(service, id).await {
                Ok(seen) => seen,
                Err(e) => {
                    // Failing open: at-least-once, the handler runs again.
                    tracing::warn!(service, event_id = %id, error = %e, "idempotency store lookup failed; handling the event");
                    false
                }
            },
        }
    }

    pub(crate) async fn insert(&self, service: &str, id: &EventId) {
        match &self.store {
            StoreKind::Off => {}
            StoreKind::Memory(m) => m.insert_now(id),
            StoreKind::Custom(s) => {
                if let Err(e) = s.insert(service, id).await {
                    tracing::warn!(service, event_id = %id, error = %e, "idempotency store insert failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_store_remembers_at_least_capacity_and_forgets_the_oldest() {
        let s = MemoryStore::new(2);
        let ids: Vec<EventId> = (0..5).map(|_| EventId::new()).collect();
        s.insert_now(&ids[0]);
        s.insert_now(&ids[1]);
        s.insert_now(&ids[1]);
        assert_eq!(s.len(), 2);
        for id in &ids[2..] {
            s.insert_now(id);
        }
        // The last two (at least) are remembered; the oldest generation is gone.
        assert!(!s.contains_now(&ids[0]) && !s.contains_now(&ids[1]));
        assert!(ids[2..].iter().all(|id| s.contains_now(id)));
        assert!(s.len() <= 4);
    }

    #[test]
    fn memory_store_finds_ids_below_the_greatest_one_remembered() {
        // Out of time order: the check against the greatest id must not hide
        // an older id that was remembered after a newer one.
        let s = MemoryStore::new(100);
        let older = EventId::new();
        let newer = EventId::new();
        assert!(older.as_uuid() < newer.as_uuid());
        s.insert_now(&newer);
        assert!(!s.contains_now(&older));
        s.insert_now(&older);
        assert!(s.contains_now(&older) && s.contains_now(&newer));
        assert!(
            !s.contains_now(&EventId::new()),
            "a newer id is not remembered"
        );
    }

    #[test]
    fn memory_store_keeps_text_ids_apart_from_uuids() {
        let s = MemoryStore::new(10);
        let text = EventId::parse("order-42/attempt-1").unwrap();
        let uuid = EventId::new();
        s.insert_now(&text);
        assert!(s.contains_now(&text) && !s.contains_now(&uuid));
        // A UUID written in upper case is a text id: not the same id.
        let upper = EventId::parse(&uuid.to_string().to_uppercase()).unwrap();
        s.insert_now(&uuid);
        assert!(s.contains_now(&uuid) && !s.contains_now(&upper));
        assert_eq!(s.len(), 2);
    }
}
