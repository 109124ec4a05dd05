//! The inbox as the runtime's idempotency store.

use choreo_bus::{BoxError, BoxFuture, IdempotencyStore};
use choreo_core::EventId;

use crate::store::PgStore;

/// The inbox table as an [`IdempotencyStore`]: the runtime asks it before
/// running a handler, and records the event after the handler succeeded.
///
/// A handler that writes through [`PgStore::begin`] has already recorded
/// the event in its own transaction, atomically with its writes; the
/// runtime's record after it is then a no-op (found in a per-process cache
/// of recent commits, without a round trip). A handler that does not use a
/// transaction of this crate gets the usual idempotency: recorded after its
/// emissions were published.
pub(crate) struct Inbox {
    store: PgStore,
}

impl Inbox {
    pub(crate) fn new(store: PgStore) -> Self {
        Inbox { store }
    }
}

impl IdempotencyStore for Inbox {
    fn contains(&self, service: &str, id: &EventId) -> BoxFuture<Result<bool, BoxError>> {
        let store = self.store.clone();
        let (service, id) = (service.to_owned(), id.clone());
        Box::pin(async move {
            let seen = if store.inner.recent.contains(&service, &id) {
                true
            } else {
                let client = store.connection().await?;
                let stmt = client
                    .prepare_cached(&store.inner.sql.contains_inbox)
                    .await?;
                client
                    .query_one(&stmt, &[&service, &id.to_string()])
                    .await?
                    .get::<_, bool>(0)
            };
            if seen {
                store.inner.metrics.inbox_hit(&service);
            }
            Ok(seen)
        })
    }

    fn insert(&self, service: &str, id: &EventId) -> BoxFuture<Result<(), BoxError>> {
        let store = self.store.clone();
        let (service, id) = (service.to_owned(), id.clone());
        Box::pin(async move {
            if store.inner.recent.contains(&service, &id) {
                return Ok(());
            }
            let client = store.connection().await?;
            let stmt = client.prepare_cached(&store.inner.sql.insert_inbox).await?;
            client.execute(&stmt, &[&service, &id.to_string()]).await?;
            store.inner.recent.insert(&service, &id);
            Ok(())
        })
    }
}
