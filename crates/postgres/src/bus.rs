//! `OutboxBus`: a bus whose publishes go through the outbox.

use choreo_core::{Bus, Envelope, SubscribeOptions};

use crate::store::PgStore;

/// A [`Bus`] that writes each published event to the outbox (one committed
/// transaction per publish) and subscribes on the bus beneath. A relay
/// ([`PgStore::relay`] on the inner bus) publishes the rows.
///
/// For code that publishes outside any transaction of its own but wants the
/// outbox's guarantee — the event is durable in the service's database once
/// `publish` returns, and reaches the bus even if the broker is down at that
/// moment: `Publisher::new(&OutboxBus::new(store, bus), "checkout")`. For
/// events that must commit together with the service's writes, use a
/// [`Transaction`](crate::Transaction) instead.
///
/// `publish` returns before the event is on the bus (the relay's lag);
/// dead-letter copies go through the outbox too.
#[derive(Debug, Clone)]
pub struct OutboxBus<B> {
    store: PgStore,
    inner: B,
}

impl<B: Bus> OutboxBus<B> {
    /// Publishes through `store`'s outbox; subscribes on `inner`.
    pub fn new(store: PgStore, inner: B) -> Self {
        OutboxBus { store, inner }
    }

    /// The bus beneath (where the relay publishes).
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// The store.
    pub fn store(&self) -> &PgStore {
        &self.store
    }
}

impl<B: Bus> Bus for OutboxBus<B> {
    type Subscription = B::Subscription;

    async fn publish(&self, envelope: Envelope) -> choreo_core::Result<()> {
        let write = async {
            let tx = self.store.transaction().await?;
            tx.publish(envelope);
            tx.commit().await
        };
        write
            .await
            .map_err(|e| choreo_core::Error::backend("writing the event to the outbox", e))
    }

    async fn subscribe(
        &self,
        options: SubscribeOptions,
    ) -> choreo_core::Result<Self::Subscription> {
        self.inner.subscribe(options).await
    }

    fn backend_name(&self) -> &'static str {
        "postgres-outbox"
    }
}
