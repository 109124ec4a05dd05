//! choreo's flow viewer: the tracer's flows in a browser — the flows list with search and filters, one flow's causal graph, timeline and receipts, the service graph — and the same data as JSON, served beside `/metrics` on one port.
//!
//! ```no_run
//! use std::sync::{Arc, Mutex};
//!
//! use choreo_trace::{Tracer, TracerConfig};
//! use choreo_ui::Viewer;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = TracerConfig::live();
//! Viewer::prepare(&mut config); // hold recent flows and a search window
//! let tracer = Arc::new(Mutex::new(Tracer::new(config, None)));
//! let registry = prometheus::Registry::new();
//! let registries = Arc::new(vec![registry]);
//! let render: choreo_bus::Render = Arc::new(move || choreo_bus::render(&registries));
//! let server = Viewer::new(tracer.clone())
//!     .live(true)
//!     .routes(choreo_bus::MetricsServer::builder(render))
//!     .start("127.0.0.1:9464", tokio_util::sync::CancellationToken::new())
//!     .await?;
//! // Feed the tracer (lock it per record or per batch) while the server runs.
//! # drop(server); Ok(()) }
//! ```
//!
//! # What it reads
//!
//! The viewer keeps no flows of its own: each request locks the tracer,
//! builds its answer from what the tracer holds — the flows in flight, the
//! newest finished flows ([`TracerConfig::recent_flows`]), the search window
//! over the newest events ([`TracerConfig::search_bytes`]), the report's
//! aggregates — and lets go before the answer is sent. Memory stays within
//! the tracer's caps; [`Viewer::prepare`] sets those two.
//!
//! # Pages and API
//!
//! | page | JSON behind it |
//! |---|---|
//! | `/` flows: status, flow, start, duration, who owes; filters, search | `GET /api/flows?status=&flow=&service=&window=&since=&until=&q=&limit=` |
//! | `/flows/{id}` one flow: graph, owed, findings, dead letters, receipts, timeline | `GET /api/flows/{id}`, `GET /api/flows/{id}/graph.svg` |
//! | `/services` the service graph with counts, failures, p50/p99 | `GET /api/services`, `GET /api/services/graph.svg` |
//!
//! The pages refresh from the API every two seconds while open. The fields
//! are described in `docs/ui.md`.
//!
//! # Safety
//!
//! Read-only (GET and HEAD only). Every text from events reaches a page as a
//! text node or escaped, pages run only the embedded script
//! (Content-Security-Policy), graphs are images. No payload is shown unless
//! [`Viewer::show_payloads`] says so.
//! The server's bounds (connections, header time, connection lifetime) are
//! those of [`choreo_bus::ServerBuilder`].

mod http;
mod page;
mod svg;
mod view;

use std::sync::{Arc, Mutex};

use choreo_bus::ServerBuilder;
use choreo_trace::{Tracer, TracerConfig};

/// The flow viewer over a tracer shared with whatever feeds it.
#[derive(Clone)]
pub struct Viewer {
    tracer: Arc<Mutex<Tracer>>,
    live: bool,
    captures: Vec<String>,
    show_payloads: bool,
}

impl std::fmt::Debug for Viewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Viewer")
            .field("live", &self.live)
            .finish_non_exhaustive()
    }
}

impl Viewer {
    /// Finished flows a viewer's tracer holds unless told otherwise.
    pub const RECENT_FLOWS: usize = 10_000;
    /// Bytes of the newest events a viewer's tracer holds for search unless told otherwise.
    pub const SEARCH_BYTES: usize = 64 << 20;

    /// Sets what the tracer holds for a viewer, where `config` does not say
    /// already: the newest [`Viewer::RECENT_FLOWS`] finished flows and a
    /// search window of [`Viewer::SEARCH_BYTES`].
    pub fn prepare(config: &mut TracerConfig) {
        if config.recent_flows == 0 {
            config.recent_flows = Viewer::RECENT_FLOWS;
        }
        if config.search_bytes == 0 {
            config.search_bytes = Viewer::SEARCH_BYTES;
        }
    }

    /// A viewer of `tracer`. Whoever feeds the tracer locks it per record or
    /// per batch; the viewer locks it for each request, briefly.
    pub fn new(tracer: Arc<Mutex<Tracer>>) -> Viewer {
        Viewer {
            tracer,
            live: false,
            captures: Vec::new(),
            show_payloads: false,
        }
    }

    /// Says whether the tracer follows a live source (the pages say so, and
    /// that flows in flight may still change). Default false: a capture.
    pub fn live(mut self, live: bool) -> Viewer {
        self.live = live;
        self
    }

    /// Names the capture files the tracer read, so that the command shown
    /// for a dead letter reads it from them (`choreo dlq show ID --capture
    /// FILE`) rather than from Kafka. Default: none (Kafka).
    pub fn captures(mut self, files: impl IntoIterator<Item = impl Into<String>>) -> Viewer {
        self.captures = files.into_iter().map(Into::into).collect();
        self
    }

    /// Shows events' JSON payloads on a flow's page, those the tracer's
    /// search window still holds. Default false: payloads may hold personal
    /// data, and are then never shown (only searched).
    pub fn show_payloads(mut self, show: bool) -> Viewer {
        self.show_payloads = show;
        self
    }

    /// Adds the pages, the JSON API and the images to `server` (the metrics
    /// server: one port for both).
    pub fn routes(&self, server: ServerBuilder) -> ServerBuilder {
        http::routes(
            server,
            Arc::new(http::Inner {
                tracer: self.tracer.clone(),
                live: self.live,
                captures: self.captures.clone(),
                show_payloads: self.show_payloads,
            }),
        )
    }
}
