//! Partition workers: one that dies is replaced, and the consumer loop never
//! waits for room in the queue of a worker that is gone.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::common::*;
use choreo_bus::{
    BoxError, BoxFuture, Context, HandlerError, Idempotency, IdempotencyStore, Service,
};
use choreo_core::{EventId, Outcome};
use choreo_testkit::wait_until;
use tokio_util::sync::CancellationToken;

/// An idempotency store whose second lookup panics: outside the handler, so
/// the panic ends the partition worker itself.
struct PanicsOnce {
    lookups: AtomicU32,
}

impl IdempotencyStore for PanicsOnce {
    fn contains(&self, _service: &str, _id: &EventId) -> BoxFuture<Result<bool, BoxError>> {
        if self.lookups.fetch_add(1, Ordering::SeqCst) == 1 {
            panic!("the store broke");
        }
        Box::pin(async { Ok(false) })
    }

    fn insert(&self, _service: &str, _id: &EventId) -> BoxFuture<Result<(), BoxError>> {
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test]
async fn a_worker_that_dies_with_runs_queued_is_replaced_and_every_event_is_handled() {
    // Published first, so that the consumer loop hands them over in runs of
    // two (the queue's room) while the worker is busy.
    let bus = orders_waiting(10).await;
    let (_registry, m) = metrics();
    let stop = CancellationToken::new();
    let svc = Service::new("payment")
        .on(|_o: OrderPlaced, _ctx: Context| async {
            // Waiting lets the consumer loop fill the worker's queue before
            // the next lookup panics.
            tokio::task::yield_now().await;
            Ok::<(), HandlerError>(())
        })
        .idempotency(Idempotency::store(Arc::new(PanicsOnce {
            lookups: AtomicU32::new(0),
        })))
        .partition_queue(2)
        .metrics(m)
        .start(&bus, stop.clone())
        .await
        .unwrap();
    wait_until(
        "every order handled, the one whose lookup panicked again",
        PATIENCE,
        || {
            let mut handled: Vec<_> = receipts_with(&bus, Outcome::Acked)
                .into_iter()
                .map(|r| r.event_id)
                .collect();
            handled.sort();
            handled.dedup();
            handled.len() == 10
        },
    )
    .await;
    stop.cancel();
    svc.await.unwrap();
}
