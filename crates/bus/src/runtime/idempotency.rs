//! Idempotency: an event a service already handled is acked without running
//! its handler again.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
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
/// of each kind, oldest forgotten first.
///
/// UUID ids — every id choreo generates — are stored as 128-bit integers.
/// UUID v7 ids grow with time (strictly, for the ids one thread makes), so
/// most ids a service handles are greater than any it handled before. Those
/// go to the end of a sorted ring of the last `capacity` such ids: appending
/// writes memory next to the last write, an id above the ring's end is known
/// to be new without a lookup, and an id below it is found by binary search.
/// Ids that arrive out of order (from producers whose clocks differ, from a
/// partition behind the others) and UUIDs of other versions (random ones
/// would pin the ring's end) go to a hash set kept in two generations of
/// `capacity` each: when the current one is full it becomes the previous one,
/// and the old previous one is forgotten. Other ids (text) are kept the same
/// way.
pub struct MemoryStore {
    capacity: usize,
    // std Mutex: never held across an await.
    state: Mutex<MemoryState>,
    /// The high 64 bits (the millisecond time and the first random bits) of
    /// the greatest UUID v7 ever inserted (forgetting ids does not lower it).
    /// A v7 id above it was never seen, which `contains_now` answers without
    /// the lock.
    greatest_high: AtomicU64,
}

#[derive(Default)]
struct MemoryState {
    /// UUIDs remembered in increasing order, the greatest last.
    ascending: VecDeque<u128>,
    /// UUIDs that were not above every id remembered when they came.
    stragglers: Generations<u128>,
    texts: Generations<EventId>,
}

impl MemoryState {
    fn contains_uuid(&self, u: u128) -> bool {
        if !is_v7(u) {
            return self.stragglers.contains(&u);
        }
        // Above every id in the ring means never seen: a v7 straggler was
        // below the ring's end when it came, and the end only grows.
        self.ascending.back().is_some_and(|&last| u <= last)
            && (self.ascending.binary_search(&u).is_ok() || self.stragglers.contains(&u))
    }

    fn insert_uuid(&mut self, u: u128, capacity: usize) {
        if !is_v7(u) {
            // Not time-ordered: never in the ring.
            self.stragglers.insert(u, capacity);
            return;
        }
        match self.ascending.back() {
            Some(&last) if u <= last => {
                if self.ascending.binary_search(&u).is_err() {
                    self.stragglers.insert(u, capacity);
                }
            }
            _ => {
                if self.ascending.len() >= capacity {
                    self.ascending.pop_front();
                }
                self.ascending.push_back(u);
            }
        }
    }
}

/// Whether a UUID (as an integer) is a version 7 one: time-ordered.
fn is_v7(u: u128) -> bool {
    (u >> 76) & 0xf == 7
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
        if self.previous.contains(&k) || !self.current.insert(k) {
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
            greatest_high: AtomicU64::new(0),
        }
    }

    /// Whether `id` is remembered.
    pub fn contains_now(&self, id: &EventId) -> bool {
        let uuid = id.as_uuid().map(|u| u.as_u128());
        if let Some(u) = uuid
            && is_v7(u)
            && (u >> 64) as u64 > self.greatest_high.load(Ordering::Acquire)
        {
            return false;
        }
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match uuid {
            Some(u) => st.contains_uuid(u),
            None => st.texts.contains(id),
        }
    }

    /// Remembers `id`, forgetting the oldest ids beyond the capacity.
    pub fn insert_now(&self, id: &EventId) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match id.as_uuid() {
            Some(u) => {
                let u = u.as_u128();
                st.insert_uuid(u, self.capacity);
                let high = (u >> 64) as u64;
                // Only written under the lock: no read-modify-write needed.
                if is_v7(u) && high > self.greatest_high.load(Ordering::Relaxed) {
                    self.greatest_high.store(high, Ordering::Release);
                }
            }
            None => st.texts.insert(id.clone(), self.capacity),
        }
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.ascending.len() + st.stragglers.len() + st.texts.len()
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
///
/// Two deliveries of one id that overlap (a duplicate handled by another
/// worker, or on the same partition with
/// [`partition_concurrency`](crate::Service::partition_concurrency) above one,
/// while the first is still being handled) are not both handled: the second
/// waits for the first to settle, then is a duplicate if the first was acked
/// and is handled if it was not. Within one process; between replicas it is
/// the store's own guarantee.
#[derive(Clone)]
pub struct Idempotency {
    pub(crate) store: StoreKind,
    /// The ids being handled now, each with what its waiters wait on once
    /// one waits.
    in_flight: Arc<InFlight>,
}

/// std Mutex: never held across an await. The `Notify` is made by the first
/// delivery that waits: most ids are never waited for, and their claims
/// allocate nothing.
type InFlight = Mutex<rustc_hash::FxHashMap<EventId, Option<Arc<tokio::sync::Notify>>>>;

/// The right to handle an id, held while it is handled; dropping it (after
/// the id was recorded, or not) lets a delivery of the same id that waits go on.
#[must_use = "the claim is released when dropped"]
pub(crate) struct Claim {
    held: Option<(Arc<InFlight>, EventId)>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some((in_flight, id)) = self.held.take() {
            let waiters = in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            if let Some(Some(w)) = waiters {
                w.notify_waiters();
            }
        }
    }
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
            in_flight: Arc::default(),
        }
    }

    /// Use a store of your own.
    pub fn store(store: Arc<dyn IdempotencyStore>) -> Self {
        Idempotency {
            store: StoreKind::Custom(store),
            in_flight: Arc::default(),
        }
    }

    /// No deduplication: every delivery runs the handler.
    pub fn off() -> Self {
        Idempotency {
            store: StoreKind::Off,
            in_flight: Arc::default(),
        }
    }

    /// Claims `id` for handling: `None` when it was already handled (a
    /// duplicate). A delivery of the same id being handled now is waited for
    /// first (see the type's docs).
    pub(crate) async fn claim(&self, service: &str, id: &EventId) -> Option<Claim> {
        if matches!(self.store, StoreKind::Off) {
            return Some(Claim { held: None });
        }
        loop {
            let waiting = {
                let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
                match in_flight.get_mut(id) {
                    // Created under the lock: the release that follows cannot
                    // be missed (notify_waiters reaches every future created
                    // before it, polled or not).
                    Some(w) => w.get_or_insert_with(Arc::default).clone().notified_owned(),
                    None => {
                        in_flight.insert(id.clone(), None);
                        break;
                    }
                }
            };
            waiting.await;
        }
        let claim = Claim {
            held: Some((self.in_flight.clone(), id.clone())),
        };
        // Looked up once claimed: an overlapping delivery that was acked
        // recorded the id before releasing it.
        if self.contains(service, id).await {
            return None;
        }
        Some(claim)
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
    fn ids_sharing_the_greatest_ids_high_bits_are_looked_up() {
        // Two v7 ids with the same time and first random bits.
        let high: u128 = (0x0190_b3c4_1d2e_7a8b_u128) << 64;
        let id = |v: u128| {
            let h = format!("{v:032x}");
            let text = format!(
                "{}-{}-{}-{}-{}",
                &h[..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..]
            );
            EventId::parse(&text).expect("an id")
        };
        let (low, lower) = (
            id(high | 0x8000_0000_0000_0009),
            id(high | 0x8000_0000_0000_0005),
        );
        let s = MemoryStore::new(10);
        s.insert_now(&low);
        assert!(s.contains_now(&low));
        assert!(!s.contains_now(&lower), "never inserted");
        s.insert_now(&lower);
        assert!(
            s.contains_now(&lower),
            "remembered although below the greatest"
        );
        let later = id((0x0190_b3c4_1d2f_7000_u128 << 64) | 0x8000_0000_0000_0001);
        assert!(!s.contains_now(&later));
        s.insert_now(&later);
        assert!(s.contains_now(&later) && s.contains_now(&low));
    }

    #[test]
    fn memory_store_remembers_the_last_capacity_ids_and_forgets_the_oldest() {
        let s = MemoryStore::new(2);
        let ids: Vec<EventId> = (0..5).map(|_| EventId::new()).collect();
        s.insert_now(&ids[0]);
        s.insert_now(&ids[1]);
        s.insert_now(&ids[1]);
        assert_eq!(s.len(), 2);
        for id in &ids[2..] {
            s.insert_now(id);
        }
        assert!(ids[..3].iter().all(|id| !s.contains_now(id)));
        assert!(ids[3..].iter().all(|id| s.contains_now(id)));
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn memory_store_keeps_ids_that_came_out_of_order_apart() {
        let s = MemoryStore::new(3);
        let ids: Vec<EventId> = (0..8).map(|_| EventId::new()).collect();
        // 0 and 1 come late, after 2 and 3.
        for i in [2, 3, 0, 1] {
            s.insert_now(&ids[i]);
        }
        assert!(ids[..4].iter().all(|id| s.contains_now(id)));
        // Pushed out of the ring by newer ids, in order...
        for id in &ids[4..7] {
            s.insert_now(id);
        }
        assert!(!s.contains_now(&ids[2]) && !s.contains_now(&ids[3]));
        // ...while the late ones are kept by their own bound.
        assert!(s.contains_now(&ids[0]) && s.contains_now(&ids[1]));
        assert!(ids[4..7].iter().all(|id| s.contains_now(id)));
        assert!(!s.contains_now(&ids[7]));
        // A forgotten id that comes again is remembered again, as a late one.
        s.insert_now(&ids[2]);
        assert!(s.contains_now(&ids[2]));
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
    fn memory_store_keeps_random_uuids_out_of_the_ring() {
        // A v4 UUID is (almost always) greater than every v7 one: in the ring
        // it would send every later id the slow way.
        let s = MemoryStore::new(10);
        let random = EventId::parse("f47ac10b-58cc-4372-a567-0e02b2c3d479").unwrap();
        s.insert_now(&random);
        let later = EventId::new();
        s.insert_now(&later);
        assert!(s.contains_now(&random) && s.contains_now(&later));
        let st = s.state.lock().unwrap();
        assert_eq!(st.ascending.len(), 1, "the v7 id is in the ring");
        assert_eq!(st.stragglers.len(), 1, "the v4 one is not");
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
