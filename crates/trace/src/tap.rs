//! Tapping a bus: a consumer group that hands every record to the tracer (or a capture).

use choreo_core::{Bus, SubscribeOptions, Subscription};
use choreo_topology::Topology;
use tokio_util::sync::CancellationToken;

use crate::{Error, Record, Result};

/// The topics a tap should follow to see whole flows of `topology`: every
/// event topic, their dead-letter topics (`<topic>.dlq`) and the receipts topic.
pub fn tap_topics(topology: &Topology) -> Vec<String> {
    let mut topics: Vec<String> = topology.topics().to_vec();
    for t in topology.topics() {
        topics.push(choreo_core::dead_letter_topic(t));
    }
    topics.push(choreo_core::RECEIPTS_TOPIC.to_owned());
    topics
}

/// Subscribes to `bus` as the consumer group in `options` and spawns a task
/// that hands every delivery to `sink` (as a [`Record`] with its partition and
/// offset), then acks it, until `shutdown` is cancelled or the bus closes.
/// The task resolves to the number of records handed over.
///
/// The sink runs on the tap's task: keep it short (ingest into a tracer
/// behind a `std::sync::Mutex`, write to a capture [`Writer`](crate::capture::Writer)).
///
/// ```no_run
/// # async fn run(topology: choreo_topology::Topology) -> choreo_trace::Result<()> {
/// use std::sync::{Arc, Mutex};
/// use choreo_core::SubscribeOptions;
/// use choreo_trace::{Tracer, TracerConfig, tap, tap_topics};
///
/// let bus = choreo_bus::InProcessBus::new();
/// let tracer = Arc::new(Mutex::new(Tracer::new(TracerConfig::live(), Some(&topology))));
/// let shutdown = tokio_util::sync::CancellationToken::new();
/// let feed = tracer.clone();
/// let task = tap(&bus, SubscribeOptions::new("choreo-tracer", tap_topics(&topology)), shutdown.clone(),
///     move |r| feed.lock().unwrap().ingest(&r)).await?;
/// // ... later
/// shutdown.cancel();
/// let records = task.await.unwrap()?;
/// # Ok(()) }
/// ```
pub async fn tap<B, F>(
    bus: &B,
    options: SubscribeOptions,
    shutdown: CancellationToken,
    mut sink: F,
) -> Result<tokio::task::JoinHandle<Result<u64>>>
where
    B: Bus,
    F: FnMut(Record) + Send + 'static,
{
    let group = options.group.clone();
    let topics = options.topics.clone();
    let mut sub = bus.subscribe(options).await.map_err(|source| Error::Tap {
        group: group.clone(),
        topics: topics.clone(),
        source: Box::new(source),
    })?;
    Ok(tokio::spawn(async move {
        let mut n = 0u64;
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => break,
                d = sub.next() => d,
            };
            match next {
                None => break,
                Some(Err(source)) => {
                    return Err(Error::Tap {
                        group,
                        topics,
                        source: Box::new(source),
                    });
                }
                Some(Ok(d)) => {
                    let record =
                        Record::new((**d.envelope()).clone()).at(d.partition(), d.offset());
                    sink(record);
                    d.ack();
                    n += 1;
                }
            }
        }
        let _ = sub.close().await;
        Ok(n)
    }))
}
