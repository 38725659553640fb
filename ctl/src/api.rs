//! The HTTP/JSON API (documented in `ctl/openapi.json`; `tests/openapi.rs` checks the two
//! agree). Handlers are thin: they parse, take the session's lock, and call [`ops`].
//!
//! Rules:
//! * Errors are JSON `{"error": "..."}` (plus `state`, `untouched` where they help), with
//!   4xx for anything the caller can fix: malformed JSON 400, wrong types 422, illegal
//!   transitions 409, unknown session 404. A 5xx means the daemon or a frontend failed.
//! * Every action is idempotent (see `state`).

use std::sync::Arc;

use axum::extract::{FromRequest, Path, Query, Request, State as AxState};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::daemon::Daemon;
use crate::ops;
use crate::session::CreateRequest;
use crate::state::Action;

/// Every route the router serves: (method, path). The OpenAPI test compares this list with
/// the document and asks the router for each entry.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/health"),
    ("GET", "/metrics"),
    ("GET", "/v1/sessions"),
    ("POST", "/v1/sessions"),
    ("GET", "/v1/sessions/{id}"),
    ("DELETE", "/v1/sessions/{id}"),
    ("POST", "/v1/sessions/{id}/start"),
    ("POST", "/v1/sessions/{id}/pause"),
    ("POST", "/v1/sessions/{id}/resume"),
    ("POST", "/v1/sessions/{id}/cutover"),
    ("POST", "/v1/sessions/{id}/abort"),
    ("GET", "/v1/sessions/{id}/map"),
];

pub fn router(d: Arc<Daemon>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/sessions", get(list).post(create))
        .route("/v1/sessions/{id}", get(show).delete(delete))
        .route("/v1/sessions/{id}/start", post(start))
        .route("/v1/sessions/{id}/pause", post(pause))
        .route("/v1/sessions/{id}/resume", post(resume))
        .route("/v1/sessions/{id}/cutover", post(cutover))
        .route("/v1/sessions/{id}/abort", post(abort))
        .route("/v1/sessions/{id}/map", get(map))
        .fallback(not_found)
        .method_not_allowed_fallback(not_allowed)
        .with_state(d)
}

/// An error answer: status and a JSON body with at least `error`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: Value,
}

impl ApiError {
    pub fn new(status: StatusCode, msg: impl std::fmt::Display) -> ApiError {
        ApiError {
            status,
            body: json!({ "error": msg.to_string() }),
        }
    }

    pub fn with(mut self, key: &str, v: Value) -> ApiError {
        if let Some(o) = self.body.as_object_mut() {
            o.insert(key.into(), v);
        }
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, body = %self.body, "request failed");
        }
        (self.status, Json(self.body)).into_response()
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e)
    }
}

/// `Json` whose rejections (malformed JSON 400, wrong types 422, no JSON content type 415)
/// answer in our error format.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(r) => Err(ApiError::new(r.status(), r.body_text())),
        }
    }
}

type Answer = Result<Response, ApiError>;

async fn health() -> Json<Value> {
    Json(json!({ "ok": true, "version": env!("CARGO_PKG_VERSION") }))
}

/// Prometheus text: sessions per state and each running session's progress.
async fn metrics(AxState(d): AxState<Arc<Daemon>>) -> Answer {
    let sessions = d.db.call(|s| s.list()).await?;
    let text = crate::metrics::render(&sessions);
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

#[derive(serde::Deserialize)]
struct MapQuery {
    cells: Option<u32>,
}

/// `?cells=N`: chunk states counted per cell (N clamped to 1..=4096; default 256).
async fn map(
    AxState(d): AxState<Arc<Daemon>>,
    Path(id): Path<String>,
    q: Result<Query<MapQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let Query(q) = q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    Ok(Json(ops::map(&d, &id, q.cells.unwrap_or(256)).await?).into_response())
}

async fn list(AxState(d): AxState<Arc<Daemon>>) -> Answer {
    let sessions = d.db.call(|s| s.list()).await?;
    Ok(Json(json!({ "sessions": sessions })).into_response())
}

async fn create(
    AxState(d): AxState<Arc<Daemon>>,
    JsonBody(req): JsonBody<CreateRequest>,
) -> Answer {
    let s = ops::create(&d, req).await?;
    Ok((StatusCode::CREATED, Json(s)).into_response())
}

async fn show(AxState(d): AxState<Arc<Daemon>>, Path(id): Path<String>) -> Answer {
    Ok(Json(ops::show(&d, &id).await?).into_response())
}

async fn delete(AxState(d): AxState<Arc<Daemon>>, Path(id): Path<String>) -> Answer {
    ops::delete(&d, &id).await?;
    Ok(Json(json!({ "id": id, "deleted": true })).into_response())
}

async fn act(d: Arc<Daemon>, id: String, a: Action) -> Answer {
    Ok(Json(ops::act(&d, &id, a).await?).into_response())
}

async fn start(AxState(d): AxState<Arc<Daemon>>, Path(id): Path<String>) -> Answer {
    act(d, id, Action::Start).await
}

async fn pause(AxState(d): AxState<Arc<Daemon>>, Path(id): Path<String>) -> Answer {
    act(d, id, Action::Pause).await
}

async fn resume(AxState(d): AxState<Arc<Daemon>>, Path(id): Path<String>) -> Answer {
    act(d, id, Action::Resume).await
}

async fn cutover(AxState(d): AxState<Arc<Daemon>>, Path(id): Path<String>) -> Answer {
    act(d, id, Action::Cutover).await
}

async fn abort(AxState(d): AxState<Arc<Daemon>>, Path(id): Path<String>) -> Answer {
    act(d, id, Action::Abort).await
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no route {method} {uri}"))
}

async fn not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{uri} does not take {method}"),
    )
}
