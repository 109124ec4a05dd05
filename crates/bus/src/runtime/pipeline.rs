//! The pipeline of one delivery: the steps listed on
//! [`Service`](super::Service), in order, and the one place where a
//! delivery's outcome is decided (`Runtime::handle`). Its side paths live
//! beside it: dead-lettering (`dead_letter.rs`), publishing what the handler
//! emitted (`emit.rs`) and the receipt (`receipt.rs`).

use std::sync::Arc;

use choreo_core::{Bus, Delivery, Envelope, EventId, MALFORMED_HEADER, Outcome, Timestamp};
use futures_util::future::Either;
use tower::ServiceExt;

use super::handler::{Failure, FailureKind, Handled, Invocation, is_refused};
use super::metrics::Observation;
use super::running::Runtime;
use super::trace::HandleSpan;
use super::worker::WorkerRoute;

/// The ids of the events a handling published, for its receipt. Room for
/// one inside: most handlers emit one event, or none.
pub(super) type Emitted = smallvec::SmallVec<[EventId; 1]>;

/// How one delivery was settled.
pub(super) struct Settled {
    pub(super) outcome: Outcome,
    pub(super) attempts: u32,
    pub(super) reason: Option<String>,
    pub(super) emitted: Emitted,
}

impl Settled {
    pub(super) fn new(outcome: Outcome, attempts: u32, reason: Option<String>) -> Self {
        Settled {
            outcome,
            attempts,
            reason,
            emitted: Emitted::new(),
        }
    }
}

impl<B: Bus> Runtime<B> {
    /// Handles one delivery inside its spans (see [`handle`](Self::handle)).
    ///
    /// Not an `async fn`: an async fn's future holds the futures it awaits,
    /// and each awaited future is copied whole when it starts, so every level
    /// of nesting adds to what each delivery copies. This returns the
    /// handling's future itself, boxed only when spans are recorded.
    pub(super) fn process<'a>(
        &'a self,
        d: Delivery,
        route: &'a mut WorkerRoute,
        started: Timestamp,
    ) -> impl Future<Output = (Observation, Option<Timestamp>)> + Send + 'a {
        let span = HandleSpan::start(
            d.envelope(),
            &self.shared.name,
            &self.group,
            d.partition(),
            d.offset(),
        );
        if span.is_quiet() {
            Either::Left(self.handle(d, route, span, started))
        } else {
            let spans = span.clone();
            Either::Right(Box::pin(
                spans.instrument(self.handle(d, route, span, started)),
            ))
        }
    }

    /// The one place where a delivery's outcome is decided; the steps are
    /// listed on [`Service`](super::Service).
    ///
    /// One function from start to settlement, for the reason given at
    /// [`process`](Self::process); the paths off the common one (dead-letters,
    /// retries, several emitted events) are boxed, so their futures take no
    /// room in this one.
    ///
    /// `started` is a clock reading taken just before. Returns what the
    /// handling measured, for the caller to record, and the reading that
    /// ended it when nothing followed that reading (the next handling may
    /// start there); with receipts on, publishing the receipt follows it.
    async fn handle(
        &self,
        d: Delivery,
        route: &mut WorkerRoute,
        span: HandleSpan,
        started: Timestamp,
    ) -> (Observation, Option<Timestamp>) {
        let env = d.envelope().clone();
        let (partition, offset) = (d.partition(), d.offset());
        let name = &self.shared.name;
        let refused = if let Some(problem) = env.headers.get_str(MALFORMED_HEADER) {
            // The backend could only partly read the record: no handler can
            // be trusted with it.
            Some(format!("malformed record: {problem}"))
        } else {
            // Too large to trust a handler with (its producer ignored the limits).
            self.shared
                .limits
                .violation(&env)
                .map(|problem| format!("refused: {problem}"))
        };
        // Held until the delivery is settled (see `Idempotency`).
        let claim = match refused {
            Some(_) => None,
            None => self.idempotency.claim(name, &env.id).await,
        };
        let settled = match refused {
            Some(reason) => Box::pin(self.dead_letter(d, &env, route, reason, 0)).await,
            None if claim.is_none() => {
                d.ack();
                Settled::new(Outcome::Duplicate, 0, None)
            }
            None => match self.attempts(&env, route).await {
                Ok(handled) => {
                    let attempts = handled.attempts;
                    let published = if handled.emitted.len() <= 1 {
                        match handled.emitted.into_iter().next() {
                            // The ids are for the receipt.
                            Some(e) => self.publish_one(e, &span).await.map(|id| {
                                let mut ids = Emitted::new();
                                if self.receipts.is_some() {
                                    ids.push(id);
                                }
                                ids
                            }),
                            None => Ok(Emitted::new()),
                        }
                    } else {
                        Box::pin(self.publish_all(handled.emitted, &span))
                            .await
                            .map(Emitted::from_vec)
                    };
                    match published {
                        Ok(ids) => {
                            d.ack();
                            self.idempotency.insert(name, &env.id).await;
                            let mut settled = Settled::new(Outcome::Acked, attempts, None);
                            settled.emitted = ids;
                            settled
                        }
                        // Refused (too large for the backend, say): the
                        // next delivery would emit the same, forever.
                        Err(e) if is_refused(&e) => {
                            let reason = format!("publishing the handler's events failed: {e}");
                            Box::pin(self.dead_letter(d, &env, route, reason, attempts)).await
                        }
                        Err(e) => {
                            d.redeliver();
                            let reason = format!("publishing the handler's events failed: {e}");
                            Settled::new(Outcome::Redelivered, attempts, Some(reason))
                        }
                    }
                }
                Err(failure) if failure.kind == FailureKind::Interrupted => {
                    d.redeliver();
                    let reason = format!("shutdown during retries: {}", failure.reason());
                    Settled::new(Outcome::Redelivered, failure.attempts.max(1), Some(reason))
                }
                Err(failure) => {
                    let (reason, attempts) = (failure.reason(), failure.attempts.max(1));
                    Box::pin(self.dead_letter(d, &env, route, reason, attempts)).await
                }
            },
        };
        drop(claim);
        let ended = Timestamp::now();
        let elapsed_us = ended.micros_since(started).max(0) as u64;
        let observation = Observation {
            outcome: settled.outcome,
            queue: started.micros_since(env.time).max(0) as f64 / 1e6,
            duration: elapsed_us as f64 / 1e6,
        };
        span.finish(settled.outcome.as_str(), settled.reason.as_deref());
        if let Some(topic) = &self.receipts {
            let place = (partition, offset);
            let head = route.receipt_head.as_deref();
            let envelope = self.receipt(topic, &env, place, settled, (started, ended), head);
            if let Err(e) = self.bus.publish_shared(envelope).await {
                self.receipt_lost(topic, &e);
            }
            return (observation, None);
        }
        (observation, Some(ended))
    }

    /// Runs attempts through the middleware stack until one succeeds or the
    /// retry policy gives up. Retries happen in place, so later events of the
    /// partition wait and ordering is kept.
    async fn attempts(
        &self,
        env: &Arc<Envelope>,
        route: &mut WorkerRoute,
    ) -> Result<Handled, Failure> {
        let mut attempt = 1;
        loop {
            let invocation = Invocation {
                envelope: env.clone(),
                attempt,
                shared: self.shared.clone(),
            };
            let result = match route.stack.ready().await {
                Ok(svc) => tower::Service::call(svc, invocation).await,
                Err(e) => Err(e),
            };
            let mut failure = match result {
                Ok(handled) => return Ok(handled),
                Err(e) => Failure::from_box(e),
            };
            failure.attempts = attempt;
            if !self.retry.allows(&failure, attempt) {
                return Err(failure);
            }
            if self.shutdown.is_cancelled() {
                failure.kind = FailureKind::Interrupted;
                return Err(failure);
            }
            tracing::debug!(
                service = %self.shared.name, event_id = %env.id, attempt,
                error = %failure.message, "handler failed; retrying"
            );
            route.metrics.retries.inc();
            let delay = self.retry.delay(attempt);
            // Shutdown cuts the wait short; the next attempt then runs at
            // once, and if it fails too the delivery is given back. Boxed: the
            // wait takes no room in the future of a first attempt.
            Box::pin(async {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = self.shutdown.cancelled() => {}
                }
            })
            .await;
            attempt += 1;
        }
    }
}
