//! `Transaction`: the handler's writes and its emitted events, committed together.

use std::sync::{Arc, Mutex};

use choreo_bus::{Context, EmissionSink, Publisher};
use choreo_core::{Bus, Envelope, Event, EventId};
use deadpool_postgres::{ClientWrapper, Object};

use crate::row::Insert;
use crate::store::PgStore;
use crate::{Error, Result};

/// A database transaction on the service's pool whose events go to the
/// outbox: they are written in the same transaction as the service's own
/// writes, so both commit or neither does.
///
/// Write with [`client`](Transaction::client) (a `tokio_postgres` client
/// with a statement cache), emit with [`Context::emit`] as usual (for a
/// transaction from [`PgStore::begin`]) or [`publish`](Transaction::publish)
/// / [`start_flow`](Transaction::start_flow), then
/// [`commit`](Transaction::commit). Emitted events keep every field the
/// context or publisher stamped — id, correlation, causation, time, trace
/// context — and the relay publishes them exactly so.
///
/// Dropped without [`commit`](Transaction::commit) (an error returned with
/// `?`, a panic, a timeout), it rolls back: its writes and its events are
/// discarded, as if the handler had not run — return an error so that the
/// runtime retries the event.
pub struct Transaction {
    client: Option<Object>,
    store: PgStore,
    /// The handling whose emissions come here, while open.
    ctx: Option<Context>,
    /// The service and the handled event, for a handler's transaction.
    handled: Option<(String, EventId)>,
    events: Arc<Mutex<Vec<Arc<Envelope>>>>,
}

/// Takes a context's emissions into a transaction's event list.
pub(crate) struct Sink(pub(crate) Arc<Mutex<Vec<Arc<Envelope>>>>);

impl EmissionSink for Sink {
    fn accept(&self, event: Arc<Envelope>) -> choreo_core::Result<()> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(event);
        Ok(())
    }
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("open", &self.client.is_some())
            .field("events", &self.events())
            .finish()
    }
}

impl Transaction {
    /// A transaction begun on `client`; with `ctx`, whose emissions are
    /// already diverted to `events`.
    pub(crate) fn open(
        store: PgStore,
        client: Object,
        ctx: Option<Context>,
        events: Arc<Mutex<Vec<Arc<Envelope>>>>,
    ) -> Self {
        Transaction {
            client: Some(client),
            store,
            handled: ctx
                .as_ref()
                .map(|c| (c.service().to_owned(), c.event().id.clone())),
            ctx,
            events,
        }
    }

    /// The connection, inside the transaction: run the service's own
    /// statements on it (`tx.client().execute(…)`,
    /// `tx.client().prepare_cached(…)`). Do not commit or roll back through
    /// it: use [`commit`](Transaction::commit), or drop the transaction.
    pub fn client(&self) -> &ClientWrapper {
        self.client
            .as_ref()
            .expect("a transaction's connection is there until it ends")
    }

    /// Adds a ready envelope to the outbox with this transaction, as it is
    /// (its ids, time, source and trace context are kept).
    pub fn publish(&self, envelope: Envelope) {
        self.push(Arc::new(envelope));
    }

    /// Starts a flow with `event`, as [`Publisher::start_flow`] would, but
    /// through the outbox: published once this transaction commits.
    /// Returns the new flow's correlation id (the event's id).
    pub fn start_flow<B: Bus, E: Event>(
        &self,
        publisher: &Publisher<B>,
        event: &E,
    ) -> Result<EventId> {
        let env = publisher
            .envelope(event, None)
            .map_err(|source| Error::Event { source })?;
        let id = env.id.clone();
        self.publish(env);
        Ok(id)
    }

    /// Publishes `event` as a consequence of `cause` (same flow), as
    /// [`Publisher::publish_caused_by`] would, but through the outbox.
    pub fn publish_caused_by<B: Bus, E: Event>(
        &self,
        publisher: &Publisher<B>,
        event: &E,
        cause: &Envelope,
    ) -> Result<EventId> {
        let env = publisher
            .envelope(event, Some(cause))
            .map_err(|source| Error::Event { source })?;
        let id = env.id.clone();
        self.publish(env);
        Ok(id)
    }

    /// How many events this transaction will write to the outbox.
    pub fn events(&self) -> usize {
        self.events.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn push(&self, env: Arc<Envelope>) {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(env);
    }

    /// Writes the events to the outbox and commits. Emissions after this go
    /// back to the runtime (published after the attempt).
    ///
    /// An error means the transaction did not commit — or, when the
    /// connection was lost during the `COMMIT` itself, that it cannot be
    /// known whether it did. Return it from the handler: the retry runs the
    /// handler again, and for a transaction from [`PgStore::begin`] the
    /// inbox then tells whether the first one committed.
    pub async fn commit(mut self) -> Result<()> {
        if let Some(ctx) = self.ctx.take() {
            ctx.restore_emissions();
        }
        let events = std::mem::take(&mut *self.events.lock().unwrap_or_else(|e| e.into_inner()));
        let client = self.client.take().expect("open until committed");
        let result = async {
            if !events.is_empty() {
                let insert = client
                    .prepare_cached(&self.store.inner.sql.insert_outbox)
                    .await
                    .map_err(|e| Error::db("preparing the outbox insert", e))?;
                let lanes = self.store.inner.lanes;
                let rows: Vec<Insert> = events.iter().map(|e| Insert::new(e, lanes)).collect();
                let params: Vec<_> = rows.iter().map(Insert::params).collect();
                // Pipelined: every row and the COMMIT in one round trip.
                let inserts = futures_util::future::try_join_all(
                    params.iter().map(|p| client.execute(&insert, p)),
                );
                let (inserted, committed) = tokio::join!(inserts, client.batch_execute("COMMIT"));
                inserted.map_err(|e| Error::db("writing the outbox", e))?;
                committed.map_err(|e| Error::db("committing", e))?;
            } else {
                client
                    .batch_execute("COMMIT")
                    .await
                    .map_err(|e| Error::db("committing", e))?;
            }
            Ok(())
        }
        .await;
        match &result {
            Ok(()) => {
                if let Some((service, id)) = &self.handled {
                    self.store.inner.recent.insert(service, id);
                }
            }
            Err(_) => {
                // A failed statement aborted the transaction (the COMMIT then
                // rolls back); make sure before the connection goes back.
                let _ = client.batch_execute("ROLLBACK").await;
            }
        }
        drop(client);
        result
    }

    /// Rolls back: the writes and the events are discarded.
    pub async fn rollback(mut self) -> Result<()> {
        if let Some(ctx) = self.ctx.take() {
            ctx.restore_emissions();
        }
        let client = self.client.take().expect("open until rolled back");
        client
            .batch_execute("ROLLBACK")
            .await
            .map_err(|e| Error::db("rolling back", e))
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        if let Some(ctx) = self.ctx.take() {
            ctx.restore_emissions();
        }
        let Some(client) = self.client.take() else {
            return;
        };
        let discarded = self.events();
        if discarded > 0 {
            tracing::warn!(
                events = discarded,
                "choreo-postgres: a transaction was dropped without commit; its writes and {discarded} emitted event(s) are rolled back"
            );
        }
        // Roll back before the connection goes back to the pool; without a
        // runtime, close the connection instead (the server rolls back).
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if client.batch_execute("ROLLBACK").await.is_err() {
                        let _ = Object::take(client);
                    }
                });
            }
            Err(_) => {
                let _ = Object::take(client);
            }
        }
    }
}
