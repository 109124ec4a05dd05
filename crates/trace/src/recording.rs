//! Recording a run to a capture file, for `choreo trace`: a [`tap`] that
//! writes every record to a capture [`Writer`].

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use choreo_core::{Bus, SubscribeOptions};
use choreo_topology::Topology;
use tokio_util::sync::CancellationToken;

use crate::capture::{Format, Writer};
use crate::{Error, Result, tap, tap_topics};

/// The consumer group a [`record`]ing reads as.
pub const RECORDER_GROUP: &str = "choreo-recorder";

/// A run being recorded (from [`record`]). [`finish`](Self::finish) it to
/// close the file and see whether every record was written.
#[derive(Debug)]
pub struct Recording {
    path: PathBuf,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<u64>>,
    /// The writer, and the first write error (the tap's sink cannot return one).
    writer: Arc<Mutex<Sink>>,
}

#[derive(Debug)]
struct Sink {
    writer: Option<Writer<BufWriter<File>>>,
    failed: Option<Error>,
}

/// Records everything published on `bus` to the topics of `topology`, their
/// dead-letter topics and the receipts ([`tap_topics`]) into a capture file
/// at `path` (Avro, or JSON lines for `.jsonl`: [`Format::from_path`]), until
/// [`Recording::finish`]. `choreo trace <path> -t <topology file>` traces it.
///
/// It subscribes (as the group [`RECORDER_GROUP`]) before it returns: start
/// it before the services and the first flow. On the in-process bus, the
/// recording has everything, receipts included, once `bus.settled()` has
/// returned.
///
/// ```no_run
/// # async fn run(bus: choreo_bus::InProcessBus, topology: choreo_topology::Topology) -> choreo_trace::Result<()> {
/// let recording = choreo_trace::record(&bus, &topology, "run.avro").await?;
/// // ... start the services, publish ...
/// bus.settled().await;
/// let records = recording.finish().await?;
/// # Ok(()) }
/// ```
pub async fn record<B: Bus>(
    bus: &B,
    topology: &Topology,
    path: impl AsRef<Path>,
) -> Result<Recording> {
    let path = path.as_ref().to_owned();
    let writer = Writer::create(&path, Format::from_path(&path))?;
    let sink = Arc::new(Mutex::new(Sink {
        writer: Some(writer),
        failed: None,
    }));
    let stop = CancellationToken::new();
    let feed = sink.clone();
    let task = tap(
        bus,
        SubscribeOptions::new(RECORDER_GROUP, tap_topics(topology)),
        stop.clone(),
        move |r| {
            // std Mutex: no await is held across it.
            let mut s = feed.lock().unwrap_or_else(|e| e.into_inner());
            if s.failed.is_some() {
                return;
            }
            if let Some(w) = s.writer.as_mut()
                && let Err(e) = w.write(&r)
            {
                s.failed = Some(e);
            }
        },
    )
    .await?;
    Ok(Recording {
        path,
        stop,
        task,
        writer: sink,
    })
}

impl Recording {
    /// The capture file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops recording, writes out the file and returns the number of
    /// records in it; the first error in writing, if there was one.
    pub async fn finish(self) -> Result<u64> {
        self.stop.cancel();
        let tapped = match self.task.await {
            Ok(tapped) => tapped?,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => {
                return Err(Error::Io {
                    path: self.path,
                    action: "record",
                    source: std::io::Error::other(
                        "the recording's task was cancelled: its runtime shut down before finish",
                    ),
                });
            }
        };
        let mut sink = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = sink.failed.take() {
            return Err(e);
        }
        let writer = sink
            .writer
            .take()
            .expect("the writer is only taken by finish");
        let written = writer.records();
        writer.finish()?;
        debug_assert_eq!(written, tapped, "every tapped record is written");
        Ok(written)
    }
}
