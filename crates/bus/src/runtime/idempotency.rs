//! Idempotency: an event a service already handled is acked without running
//! its handler again.

use std::collections::VecDeque;
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

/// The bounded in-memory store: remembers the last `capacity` ids per service
/// (oldest forgotten first).
pub struct MemoryStore {
    capacity: usize,
    // std Mutex: never held across an await.
    state: Mutex<MemoryState>,
}

#[derive(Default)]
struct MemoryState {
    seen: rustc_hash::FxHashSet<EventId>,
    order: VecDeque<EventId>,
}

impl MemoryStore {
    /// A store remembering up to `capacity` ids.
    pub fn new(capacity: usize) -> Self {
        MemoryStore {
            capacity: capacity.max(1),
            state: Mutex::new(MemoryState::default()),
        }
    }

    /// Whether `id` is remembered.
    pub fn contains_now(&self, id: &EventId) -> bool {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .seen
            .contains(id)
    }

    /// Remembers `id`, forgetting the oldest id when full.
    pub fn insert_now(&self, id: &EventId) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !st.seen.insert(id.clone()) {
            return;
        }
        st.order.push_back(id.clone());
        if st.order.len() > self.capacity
            && let Some(old) = st.order.pop_front()
        {
            st.seen.remove(&old);
        }
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .order
            .len()
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

/// How a service deduplicates deliveries. Default: a [`MemoryStore`] of 100 000 ids.
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
    /// Remember the last `capacity` handled ids in memory.
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
    fn memory_store_forgets_oldest_beyond_capacity() {
        let s = MemoryStore::new(2);
        let (a, b, c) = (EventId::new(), EventId::new(), EventId::new());
        s.insert_now(&a);
        s.insert_now(&b);
        s.insert_now(&b);
        assert_eq!(s.len(), 2);
        s.insert_now(&c);
        assert!(!s.contains_now(&a));
        assert!(s.contains_now(&b) && s.contains_now(&c));
    }
}
