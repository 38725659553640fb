//! An in-process daemon (no frontends are started by these tests) and a request helper.

#![allow(dead_code)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use ctl::daemon::Daemon;
use serde_json::Value;
use tower::ServiceExt;

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

pub struct App {
    pub router: axum::Router,
    pub dir: tempfile::TempDir,
}

pub fn app() -> Result<App, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    // `false` as the frontend binary: nothing here may start one.
    let d = Daemon::open(dir.path(), "/bin/false".into())?;
    Ok(App {
        router: ctl::api::router(Arc::new(d)),
        dir,
    })
}

/// (status, JSON body or Null, raw body text)
pub async fn send(
    app: &App,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> Result<(u16, Value), Box<dyn std::error::Error>> {
    let mut b = Request::builder().method(method).uri(path);
    if let Some(ct) = content_type {
        b = b.header("content-type", ct);
    }
    let req = b.body(Body::from(body.to_string()))?;
    let resp = app.router.clone().oneshot(req).await?;
    let status = resp.status().as_u16();
    let text = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain"));
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await?;
    let v = if text {
        Value::String(String::from_utf8_lossy(&bytes).into_owned())
    } else if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| format!("{method} {path}: body is not JSON ({e}): {bytes:?}"))?
    };
    Ok((status, v))
}

pub async fn json(
    app: &App,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, Value), Box<dyn std::error::Error>> {
    send(app, method, path, Some("application/json"), body).await
}

pub fn create_body(target: &str) -> String {
    serde_json::json!({"backend": "127.0.0.1:9", "volume": "v", "target": target}).to_string()
}
