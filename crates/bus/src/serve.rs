//! The HTTP endpoint of a process: Prometheus metrics at `/metrics`, a health
//! check at `/health`, and whatever routes the caller adds — one server on
//! one port, for a service's SDK metrics and for the tracer alike.
//!
//! Served by axum on hyper (HTTP/1.1): `HEAD` is answered wherever `GET` is,
//! an unknown path gets `404 Not Found` saying where the metrics are, and
//! another method `405 Method Not Allowed`. Bounded, so that a client cannot
//! hold the process' resources: at most
//! [`max_connections`](ServerBuilder::max_connections) connections are open
//! at once (more wait to be accepted), a request's head must arrive within
//! [`header_timeout`](ServerBuilder::header_timeout), and a connection is
//! closed once [`connection_lifetime`](ServerBuilder::connection_lifetime)
//! has passed (after the response in progress).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::routing::{MethodRouter, get};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::{Error, Result};

/// Renders the exposition text served at `/metrics`.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Answers `/health`: `Ok(body)` is `200 OK`, `Err(body)` is `503 Service
/// Unavailable` (a readiness probe then keeps the process out of service).
pub type Health = Arc<dyn Fn() -> std::result::Result<String, String> + Send + Sync>;

/// Renders the metrics of several registries in Prometheus' text format.
pub fn render(registries: &[Registry]) -> String {
    let mut families = Vec::new();
    for r in registries {
        families.extend(r.gather());
    }
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
        tracing::warn!(error = %e, "encoding metrics failed");
    }
    String::from_utf8(out).unwrap_or_default()
}

/// How long a connection told to close may take to finish the response in
/// progress before it is dropped.
const CLOSING_GRACE: Duration = Duration::from_secs(5);

/// A running HTTP endpoint, serving metrics and the routes it was built with.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// Binds `addr` and serves `GET /metrics` with `render` until `shutdown`,
    /// with the default bounds and no other routes: the shorthand for
    /// `MetricsServer::builder(render).start(addr, shutdown)`.
    ///
    /// Bind to a loopback address (`127.0.0.1:9464`) unless the endpoint must
    /// be reachable from other hosts: metrics name services and topics.
    pub async fn start(
        addr: &str,
        render: Render,
        shutdown: CancellationToken,
    ) -> Result<MetricsServer> {
        MetricsServer::builder(render).start(addr, shutdown).await
    }

    /// A server that serves `render` at `/metrics`, to which routes can be
    /// added before it starts.
    pub fn builder(render: Render) -> ServerBuilder {
        ServerBuilder {
            render,
            health: None,
            routes: Vec::new(),
            max_connections: 64,
            header_timeout: Duration::from_secs(10),
            connection_lifetime: Duration::from_secs(120),
        }
    }

    /// The address it listens on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections; those open finish on their own bounds.
    pub fn stop(self) {
        self.task.abort();
    }
}

/// A [`MetricsServer`] before it starts: its routes and bounds, one setter
/// each, from [`MetricsServer::builder`].
#[must_use]
pub struct ServerBuilder {
    render: Render,
    health: Option<Health>,
    routes: Vec<(String, MethodRouter)>,
    max_connections: usize,
    header_timeout: Duration,
    connection_lifetime: Duration,
}

impl fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerBuilder")
            .field(
                "routes",
                &self.routes.iter().map(|(p, _)| p).collect::<Vec<_>>(),
            )
            .field("max_connections", &self.max_connections)
            .field("header_timeout", &self.header_timeout)
            .field("connection_lifetime", &self.connection_lifetime)
            .finish_non_exhaustive()
    }
}

impl ServerBuilder {
    /// Serves `path` with `route` (axum's, e.g. `axum::routing::get(handler)`)
    /// beside the metrics. `/` may be taken (by default it answers like
    /// `/health`); `/metrics` and `/health` are the server's own.
    ///
    /// # Panics
    /// When the server starts, if a path is added twice or overlaps the
    /// server's own (axum's rule for overlapping routes).
    pub fn route(mut self, path: impl Into<String>, route: MethodRouter) -> Self {
        self.routes.push((path.into(), route));
        self
    }

    /// Answers `/health` (and `/`, unless a route takes it) with `health`
    /// instead of a plain `200 ok`: for a process that is up but not ready
    /// (a tracer restoring its state, say).
    pub fn health(mut self, health: Health) -> Self {
        self.health = Some(health);
        self
    }

    /// Sets how many connections may be open at once; more wait in the
    /// listen queue until one closes. Default 64.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// Sets how long a client may take to send a request's head; the
    /// connection is closed after it. Default 10 s.
    pub fn header_timeout(mut self, timeout: Duration) -> Self {
        self.header_timeout = timeout;
        self
    }

    /// Sets how long a connection stays open, requests kept alive included;
    /// then it is closed after the response in progress. Default 120 s.
    pub fn connection_lifetime(mut self, lifetime: Duration) -> Self {
        self.connection_lifetime = lifetime;
        self
    }

    /// The routes: the caller's, then the server's own and the answers to
    /// paths and methods that are not served.
    fn router(self) -> Router {
        let render = self.render;
        let metrics = get(move || {
            let text = render();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    text,
                )
            }
        });
        let check = self.health;
        let health = move || {
            let check = check.clone();
            get(move || {
                let answer = match &check {
                    None => Ok("ok: metrics at /metrics\n".to_owned()),
                    Some(check) => check(),
                };
                async move {
                    match answer {
                        Ok(body) => (StatusCode::OK, body),
                        Err(body) => (StatusCode::SERVICE_UNAVAILABLE, body),
                    }
                }
            })
        };
        let mut router = Router::new();
        let mut root = false;
        for (path, route) in self.routes {
            root |= path == "/";
            router = router.route(&path, route);
        }
        if !root {
            router = router.route("/", health());
        }
        router
            .route("/metrics", metrics)
            .route("/health", health())
            .fallback(|| async {
                (
                    StatusCode::NOT_FOUND,
                    "not found: metrics are at /metrics\n",
                )
            })
            .method_not_allowed_fallback(|| async {
                (
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method not allowed: this endpoint serves GET and HEAD\n",
                )
            })
    }

    /// Binds `addr` and serves until `shutdown` is cancelled (or
    /// [`MetricsServer::stop`]).
    pub async fn start(self, addr: &str, shutdown: CancellationToken) -> Result<MetricsServer> {
        let bind_error = |source| Error::Metrics {
            addr: addr.to_owned(),
            source,
        };
        let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
        let local = listener.local_addr().map_err(bind_error)?;
        let limits = Bounds {
            room: Arc::new(Semaphore::new(self.max_connections)),
            header_timeout: self.header_timeout,
            lifetime: self.connection_lifetime,
        };
        let router = self.router();
        let task = tokio::spawn(accept(listener, router, limits, shutdown));
        Ok(MetricsServer { addr: local, task })
    }
}

/// What bounds the server's connections.
struct Bounds {
    /// One permit per connection that may be open.
    room: Arc<Semaphore>,
    header_timeout: Duration,
    lifetime: Duration,
}

/// Accepts connections while there is room for them, until `shutdown`.
async fn accept(
    listener: TcpListener,
    router: Router,
    bounds: Bounds,
    shutdown: CancellationToken,
) {
    loop {
        // Room first: beyond the bound, clients wait in the listen queue.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            permit = bounds.room.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _)) => {
                let conn = connection(stream, router.clone(), &bounds, permit);
                tokio::spawn(conn);
            }
            Err(e) => tracing::warn!(error = %e, "accepting an HTTP connection failed"),
        }
    }
}

/// Serves one connection within the bounds; its permit is given back when it
/// closes.
fn connection(
    stream: TcpStream,
    router: Router,
    bounds: &Bounds,
    permit: OwnedSemaphorePermit,
) -> impl Future<Output = ()> + Send + 'static {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(bounds.header_timeout);
    let lifetime = bounds.lifetime;
    async move {
        let conn = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(router));
        tokio::pin!(conn);
        let served = tokio::select! {
            served = conn.as_mut() => served,
            _ = tokio::time::sleep(lifetime) => {
                conn.as_mut().graceful_shutdown();
                tokio::time::timeout(CLOSING_GRACE, conn)
                    .await
                    .unwrap_or(Ok(()))
            }
        };
        if let Err(e) = served {
            tracing::debug!(error = %e, "an HTTP connection ended with an error");
        }
        drop(permit);
    }
}
