//! The routes: pages, their script and style, the JSON API and the SVG images, as axum handlers over the shared tracer.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use choreo_bus::ServerBuilder;
use choreo_core::EventId;
use choreo_trace::{FlowTrace, Tracer};

use crate::page;
use crate::svg;
use crate::view::{self, Filter, FlowsParams, Held};

/// What every handler shares.
pub(crate) struct Inner {
    pub(crate) tracer: Arc<Mutex<Tracer>>,
    pub(crate) live: bool,
    pub(crate) captures: Vec<String>,
    pub(crate) show_payloads: bool,
}

/// A flow as the tracer holds it, with what its page needs besides.
pub(crate) struct Found {
    pub(crate) flow: FlowTrace,
    pub(crate) held: Held,
    pub(crate) now: Option<choreo_core::Timestamp>,
    /// Its events' payloads still held, when they are to be shown.
    pub(crate) payloads: Vec<(EventId, String)>,
}

impl Inner {
    /// The tracer, locked. std Mutex: no await is held across it, and every
    /// handler builds its answer under it and lets go before sending it, so
    /// a slow client never holds the tracer.
    fn lock(&self) -> MutexGuard<'_, Tracer> {
        self.tracer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The flow `id` names, and where it is held; `Err` is the page's answer.
    fn flow(&self, id: &str) -> Result<Found, String> {
        let Some(id) = EventId::parse(id.trim()) else {
            return Err(format!(
                "'{id}' is not a correlation id (the id of a flow's first event); search for the flow instead"
            ));
        };
        let mut tracer = self.lock();
        let held = if tracer.recent().any(|t| t.correlation_id == id) {
            Held::Recent
        } else {
            Held::InFlight
        };
        let now = tracer.now();
        let payloads = if self.show_payloads {
            tracer.held_payloads(&id)
        } else {
            Vec::new()
        };
        match tracer.flow(&id) {
            Some(flow) => Ok(Found {
                flow,
                held,
                now,
                payloads,
            }),
            None => Err(format!(
                "flow {id} is not held by the tracer: it never was seen, or it finished longer ago than the newest flows held (search by what you know of it)"
            )),
        }
    }
}

type Shared = State<Arc<Inner>>;

/// Adds the viewer's routes to `server`.
pub(crate) fn routes(server: ServerBuilder, inner: Arc<Inner>) -> ServerBuilder {
    server
        .route("/", get(flows_page))
        .route("/flows/{id}", get(flow_page).with_state(inner.clone()))
        .route("/services", get(services_page))
        .route("/ui/app.js", get(app_js))
        .route("/ui/app.css", get(app_css))
        .route("/api/flows", get(api_flows).with_state(inner.clone()))
        .route("/api/flows/{id}", get(api_flow).with_state(inner.clone()))
        .route(
            "/api/flows/{id}/graph.svg",
            get(api_flow_graph).with_state(inner.clone()),
        )
        .route("/api/services", get(api_services).with_state(inner.clone()))
        .route(
            "/api/services/graph.svg",
            get(api_services_graph).with_state(inner),
        )
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, page::CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response {
    match serde_json::to_string(value) {
        Ok(body) => (
            status,
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot write the answer as JSON: {e}"),
        ),
    }
}

fn error(status: StatusCode, message: String) -> Response {
    let body = serde_json::json!({ "error": message });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn svg(body: String) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("image/svg+xml"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response()
}

async fn flows_page() -> Response {
    html(StatusCode::OK, page::flows())
}

async fn services_page() -> Response {
    html(StatusCode::OK, page::services())
}

async fn flow_page(State(inner): Shared, Path(id): Path<String>) -> Response {
    match inner.flow(&id) {
        Ok(_) => html(StatusCode::OK, page::flow(&id)),
        Err(why) => html(StatusCode::NOT_FOUND, page::not_found(&why)),
    }
}

async fn app_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        page::APP_JS,
    )
        .into_response()
}

async fn app_css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        page::APP_CSS,
    )
        .into_response()
}

async fn api_flows(State(inner): Shared, Query(params): Query<FlowsParams>) -> Response {
    let filter = match Filter::from_params(params) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let list = view::flows(&mut inner.lock(), &filter, inner.live);
    json(StatusCode::OK, &list)
}

async fn api_flow(State(inner): Shared, Path(id): Path<String>) -> Response {
    match inner.flow(&id) {
        Ok(found) => json(StatusCode::OK, &view::flow(&found, &inner)),
        Err(why) => error(StatusCode::NOT_FOUND, why),
    }
}

async fn api_flow_graph(State(inner): Shared, Path(id): Path<String>) -> Response {
    match inner.flow(&id) {
        Ok(found) => svg(svg::flow_graph(&found.flow)),
        Err(why) => error(StatusCode::NOT_FOUND, why),
    }
}

async fn api_services(State(inner): Shared) -> Response {
    let page = view::services(&inner.lock(), inner.live);
    json(StatusCode::OK, &page)
}

async fn api_services_graph(State(inner): Shared) -> Response {
    let report = inner.lock().report();
    svg(svg::service_graph(&report.services, &report.edges))
}
