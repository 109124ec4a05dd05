//! Running a service: what a running service shares, the consumer loop that
//! takes deliveries from the subscription and hands them to the partition
//! workers, shutdown, and the handle a caller awaits.

use rustc_hash::FxHashMap as HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use choreo_core::{Bus, Name, ReceiptHead, SubscribeOptions, Subscription};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::context::ServiceShared;
use super::dispatch::{Run, Workers};
use super::idempotency::Idempotency;
use super::metrics::{Metrics, PublishedCounters};
use super::retry::Retry;
use super::service::{DeadLetterNaming, Service};
use super::worker::{Routes, WorkerRoute};
use crate::identity;
use crate::{Error, Result};

/// Deliveries the consumer loop takes from its subscription at a time.
const BATCH: usize = 64;

/// What the consumer loop and the partition workers of a running service share.
pub(super) struct Runtime<B> {
    pub(super) bus: B,
    pub(super) shared: Arc<ServiceShared>,
    pub(super) group: String,
    pub(super) idempotency: Idempotency,
    pub(super) retry: Arc<Retry>,
    pub(super) metrics: Metrics,
    pub(super) published: PublishedCounters,
    pub(super) in_flight: prometheus::IntGauge,
    pub(super) receipts: Option<Name>,
    pub(super) dead_letter_topic: DeadLetterNaming,
    /// The dead-letter topic of each source topic, named once: one name per
    /// topic, not one per dead letter (the bus caches topics by name).
    pub(super) dead_letter_topics: Mutex<HashMap<Name, Name>>,
    pub(super) shutdown: CancellationToken,
    /// Set once `shutdown` is cancelled (by the watcher, or by whoever reads
    /// the token first).
    pub(super) stopping: AtomicBool,
    pub(super) concurrency: usize,
    /// On the in-process bus: how the workers hold `InProcessBus::settled`
    /// until what they were given is settled and its receipts published.
    pub(super) activity: Option<crate::memory::Activity>,
}

impl<B: Bus> Runtime<B> {
    /// Whether the service is shutting down: deliveries not started yet are
    /// given back. Reads the flag the watcher sets.
    pub(super) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// [`stopping`](Self::stopping), reading the token itself (a lock): the
    /// watcher that sets the flag may not have run yet.
    pub(super) fn stop_requested(&self) -> bool {
        if self.stopping() {
            return true;
        }
        let cancelled = self.shutdown.is_cancelled();
        if cancelled {
            self.stopping.store(true, Ordering::Release);
        }
        cancelled
    }
}

/// A service that has joined its consumer group and is ready to run.
pub(super) struct Joined<B: Bus> {
    sub: B::Subscription,
    pub(super) runtime: Arc<Runtime<B>>,
    routes: Routes,
    partition_queue: usize,
    shutdown_grace: Duration,
}

impl<B: Bus> Joined<B> {
    /// Consumes until shutdown (or until the subscription ends), then lets
    /// the workers finish within the grace period and leaves the group.
    pub(super) async fn run(self) -> Result<()> {
        let Joined {
            mut sub,
            runtime,
            routes,
            partition_queue,
            shutdown_grace,
        } = self;
        let mut workers = Workers::new(runtime.clone(), routes, partition_queue);
        // Mirrors the token in a flag that costs one load to read (reading the
        // token takes a lock), for the checks made per delivery.
        let _watcher = {
            let runtime = runtime.clone();
            AbortOnDrop(tokio::spawn(async move {
                runtime.shutdown.cancelled().await;
                runtime.stopping.store(true, Ordering::Release);
            }))
        };
        consume(&mut sub, &runtime, &mut workers, partition_queue).await;

        // Shutdown: no new deliveries; workers finish what they started (and,
        // when the subscription ended without a shutdown, what they were given).
        if runtime.shutdown.is_cancelled() {
            runtime.stopping.store(true, Ordering::Release);
        }
        // Every sender gone: each worker ends once its queue is empty.
        drain(&runtime, workers.close(), shutdown_grace).await;
        let closed = sub.close().await;
        tracing::info!(service = %runtime.shared.name, "service stopped");
        closed.map_err(|source| Error::Close {
            service: runtime.shared.name.to_string(),
            source: Box::new(source),
        })
    }
}

/// The consumer loop: takes deliveries from `sub` in batches and hands them
/// to the partition workers, in runs of consecutive deliveries of one
/// partition, until shutdown or until the subscription ends.
async fn consume<B: Bus>(
    sub: &mut B::Subscription,
    runtime: &Runtime<B>,
    workers: &mut Workers<B>,
    partition_queue: usize,
) {
    // One wait for the whole loop: registered once, not per delivery.
    let cancelled = runtime.shutdown.cancelled();
    tokio::pin!(cancelled);
    // A run never needs more room than a worker's queue has.
    let max_run = BATCH.min(partition_queue);
    // Deliveries come in batches of those ready at once.
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        if runtime.stopping() {
            return;
        }
        // The next deliveries first: the token is only polled (a lock, and
        // another for its waiter) when there are none to take. While
        // deliveries keep coming, the flag above ends the loop.
        let open = tokio::select! {
            biased;
            open = sub.next_batch(&mut batch, BATCH) => open,
            _ = &mut cancelled => return,
        };
        if !open {
            return;
        }
        // Consecutive deliveries of one partition go to its worker as one
        // run: one hand-over per run, not per delivery. Leaving early
        // drops the rest, not started: given back to the bus.
        let mut run = Run::new();
        for next in batch.drain(..) {
            let delivery = match next {
                Ok(d) => d,
                Err(e) => {
                    runtime.metrics.receive_error(&runtime.shared.name);
                    tracing::warn!(service = %runtime.shared.name, error = %e, "receiving failed");
                    continue;
                }
            };
            let joins = run.first().is_some_and(|first| {
                first.partition() == delivery.partition()
                    && identity::same(&first.envelope().topic, &delivery.envelope().topic)
            });
            if !run.is_empty() && (!joins || run.len() >= max_run) {
                let full = std::mem::take(&mut run);
                if !workers.hand_over(full, cancelled.as_mut()).await {
                    return;
                }
            }
            run.push(delivery);
        }
        if !run.is_empty() && !workers.hand_over(run, cancelled.as_mut()).await {
            return;
        }
    }
}

/// Waits for the partition workers' `tasks` to end, for at most `grace`;
/// those still running then are abandoned (their deliveries, not settled,
/// are delivered again).
async fn drain<B: Bus>(runtime: &Runtime<B>, mut tasks: JoinSet<()>, grace: Duration) {
    let drained = tokio::time::timeout(grace, async {
        while let Some(r) = tasks.join_next().await {
            if let Err(e) = r
                && e.is_panic()
            {
                tracing::error!(service = %runtime.shared.name, "a partition worker panicked");
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            service = %runtime.shared.name, grace = ?grace,
            "handlers still running after the shutdown grace period were abandoned; their events will be delivered again"
        );
        tasks.shutdown().await;
    }
}

/// A running service, from [`Service::start`]. Await it to wait until the
/// service has shut down (after its shutdown token was cancelled).
#[derive(Debug)]
pub struct ServiceHandle {
    pub(super) name: String,
    pub(super) task: tokio::task::JoinHandle<Result<()>>,
}

impl ServiceHandle {
    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the service has stopped.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl std::future::Future for ServiceHandle {
    type Output = Result<()>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<()>> {
        match std::pin::Pin::new(&mut self.task).poll(cx) {
            std::task::Poll::Pending => std::task::Poll::Pending,
            std::task::Poll::Ready(Ok(r)) => std::task::Poll::Ready(r),
            std::task::Poll::Ready(Err(e)) if e.is_panic() => {
                std::panic::resume_unwind(e.into_panic())
            }
            std::task::Poll::Ready(Err(_)) => std::task::Poll::Ready(Err(Error::Aborted {
                service: self.name.clone(),
            })),
        }
    }
}

/// Aborts a task when dropped: the loop that spawned it may itself be dropped
/// before it returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Service {
    /// Builds the middleware stacks and joins the consumer group.
    pub(super) async fn join<B: Bus>(
        self,
        bus: &B,
        shutdown: CancellationToken,
    ) -> Result<Joined<B>> {
        if self.routes.is_empty() {
            return Err(Error::NoHandlers {
                service: self.name.to_string(),
            });
        }
        let metrics = self
            .metrics
            .clone()
            .unwrap_or_else(|| Metrics::global().clone());
        let group = self
            .config
            .group
            .clone()
            .unwrap_or_else(|| self.name.to_string());
        let shared = Arc::new(ServiceShared {
            name: self.name.clone(),
            codecs: self.codecs.clone(),
            limits: self.config.limits,
        });
        let retry = Arc::new(self.retry.clone());
        let mut routes = Routes::new();
        let mut topics: Vec<String> = Vec::new();
        for r in self.routes {
            let route_metrics = metrics.route(&self.name, &r.topic, &r.event_type);
            let mut svc = (r.handler)(self.timeout);
            for layer in self.layers.iter().rev() {
                svc = layer(svc);
            }
            // Made once here: each worker's routes, and each delivery's route
            // in a concurrent worker, share it.
            let receipt_head = self
                .config
                .receipts
                .is_some()
                .then(|| Arc::new(ReceiptHead::new(&self.name, &r.event_type, &r.topic)));
            routes.push((
                r.event_type.clone(),
                WorkerRoute {
                    stack: svc,
                    metrics: route_metrics,
                    receipt_head,
                },
            ));
            if !topics.iter().any(|t| *t == *r.topic) {
                topics.push(r.topic.to_string());
            }
        }
        let options = SubscribeOptions::new(group.clone(), topics).start_from(self.config.start);
        let sub = bus
            .subscribe(options)
            .await
            .map_err(|source| Error::Subscribe {
                service: self.name.to_string(),
                group: group.clone(),
                source: Box::new(source),
            })?;
        tracing::info!(service = %self.name, group, "service started");
        let runtime = Arc::new(Runtime {
            bus: bus.clone(),
            in_flight: metrics.in_flight(&self.name),
            shared,
            group,
            idempotency: self.idempotency,
            retry,
            published: PublishedCounters::new(self.name.clone(), metrics.clone()),
            metrics,
            receipts: self.config.receipts.clone().map(Name::from),
            dead_letter_topic: self.config.dead_letter_topic.clone(),
            dead_letter_topics: Mutex::default(),
            shutdown: shutdown.clone(),
            stopping: AtomicBool::new(false),
            concurrency: self.config.partition_concurrency.max(1),
            activity: crate::memory::Activity::of(bus),
        });
        Ok(Joined {
            sub,
            runtime,
            routes,
            partition_queue: self.config.partition_queue.max(1),
            shutdown_grace: self.config.shutdown_grace,
        })
    }
}
