//! Handing deliveries to the partition workers: one worker per partition,
//! each behind a queue bounded in deliveries (`partition_queue`).

use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;

use choreo_core::{Bus, Delivery, Name};
use tokio::sync::{Semaphore, SemaphorePermit, TryAcquireError, mpsc};
use tokio::task::JoinSet;

use super::running::Runtime;
use super::worker::Routes;
use crate::identity;

/// Consecutive deliveries of one partition, handed to its worker at once.
pub(super) type Run = Vec<Delivery>;

/// The way to one partition worker: its queue of runs, and the room that
/// bounds how many deliveries wait in it (`partition_queue`). The queue
/// itself is unbounded: the room is counted in deliveries, whatever the
/// sizes of the runs.
#[derive(Clone)]
struct WorkerQueue {
    runs: mpsc::UnboundedSender<Run>,
    room: Arc<Semaphore>,
}

/// The partition workers of a consumer loop, by partition, and their tasks.
/// Most runs go to the same worker as the one before: its queue is kept at
/// hand, found without hashing.
pub(super) struct Workers<B: Bus> {
    runtime: Arc<Runtime<B>>,
    /// What each new worker starts with.
    routes: Routes,
    partition_queue: usize,
    by_partition: HashMap<(Name, u32), WorkerQueue>,
    last: Option<(Name, u32, WorkerQueue)>,
    tasks: JoinSet<()>,
}

impl<B: Bus> Workers<B> {
    pub(super) fn new(runtime: Arc<Runtime<B>>, routes: Routes, partition_queue: usize) -> Self {
        Workers {
            runtime,
            routes,
            partition_queue,
            by_partition: HashMap::default(),
            last: None,
            tasks: JoinSet::new(),
        }
    }

    /// Starts a partition worker.
    fn start(&mut self) -> WorkerQueue {
        let (runs, rx) = mpsc::unbounded_channel();
        let room = Arc::new(Semaphore::new(self.partition_queue));
        let (rt, routes, r) = (self.runtime.clone(), self.routes.clone(), room.clone());
        // In a `handling` scope: what its handlers publish to the in-process
        // bus never waits for room, which they may themselves hold back.
        self.tasks.spawn(crate::memory::handling(async move {
            // However the worker ends (a panic included), its room closes:
            // a sender waiting for room learns the worker is gone.
            let _closed = CloseOnDrop(r.clone());
            rt.worker(rx, r, routes).await
        }));
        WorkerQueue { runs, room }
    }

    /// Hands `run` (not empty) to the worker of its partition, started if
    /// there is none yet: at once when its queue has room for the
    /// run, else once it has. Returns false, dropping the run (not started,
    /// so given back to the bus), if the service is shut down while it waits.
    pub(super) async fn hand_over(
        &mut self,
        run: Run,
        cancelled: std::pin::Pin<&mut tokio_util::sync::WaitForCancellationFuture<'_>>,
    ) -> bool {
        let first = &run[0];
        let (topic, partition) = (&first.envelope().topic, first.partition());
        let hit =
            matches!(&self.last, Some((t, p, _)) if *p == partition && identity::same(t, topic));
        if !hit {
            let queue = match self.by_partition.get(&(topic.clone(), partition)) {
                Some(q) => q.clone(),
                None => {
                    let q = self.start();
                    self.by_partition
                        .insert((topic.clone(), partition), q.clone());
                    q
                }
            };
            self.last = Some((topic.clone(), partition, queue));
        }
        let queue = &self.last.as_ref().expect("set when missed").2;
        let n = u32::try_from(run.len()).expect("a run is at most a batch");
        // The room taken is given back by the worker when it takes the run;
        // a closed room means the worker is gone.
        let permit = match queue.room.try_acquire_many(n) {
            Err(TryAcquireError::NoPermits) => tokio::select! {
                biased;
                _ = cancelled => return false,
                permit = queue.room.acquire_many(n) => permit.ok(),
            },
            taken => taken.ok(),
        };
        let has_room = permit.map(SemaphorePermit::forget).is_some();
        if !has_room {
            self.stopped(run);
            // Yield: a worker that stops at once, every time (the runtime is
            // shutting down and drops new tasks unpolled), must not make the
            // consumer loop spin without ever letting that runtime drop it.
            tokio::task::yield_now().await;
            return true;
        }
        if let Err(mpsc::error::SendError(run)) = queue.runs.send(run) {
            self.stopped(run);
            tokio::task::yield_now().await;
        }
        true
    }

    /// A partition worker stopped unexpectedly (it panicked): forget it, so
    /// the partition's next delivery starts a new one, and give `run` back to
    /// the bus.
    fn stopped(&mut self, run: Run) {
        let first = &run[0];
        tracing::error!(service = %self.runtime.shared.name, partition = first.partition(), "a partition worker stopped unexpectedly; starting a new one");
        self.last = None;
        self.by_partition
            .remove(&(first.envelope().topic.clone(), first.partition()));
        drop(run);
    }

    /// Drops every queue, so that each worker ends once it has handled what
    /// it was given, and returns their tasks.
    pub(super) fn close(self) -> JoinSet<()> {
        self.tasks
    }
}

/// Closes a partition worker's room when the worker ends.
struct CloseOnDrop(Arc<Semaphore>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}
