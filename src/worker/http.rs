//! The worker's HTTP API: checkpoint requests from the operator, health, readiness, metrics.
//!
//! Every `/v1/` route needs the job's bearer token; a refused request changes nothing.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use tracing::{info, warn};

use super::Shared;
use super::auth::{Refusal, admit};
use super::checkpoints::{Begin, CheckpointStatus, Notice};
use crate::statedir::{self, marker::LocalCheckpointMarker};

/// Body of `POST /v1/checkpoints`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointRequest {
    /// Checkpoint id, chosen by the operator.
    pub id: u64,
    /// Epoch of the worker generation the operator addresses.
    pub epoch: u64,
    /// Stop-with-checkpoint: pause processing first and keep it paused.
    #[serde(default)]
    pub stop: bool,
}

/// Optional body of the complete/abort notices.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoticeRequest {
    /// Epoch of the worker generation the operator addresses.
    pub epoch: Option<u64>,
}

/// The router of the worker API over `shared`.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/checkpoints", post(trigger))
        .route("/v1/checkpoints/{id}", get(status))
        .route("/v1/checkpoints/{id}/complete", post(complete))
        .route("/v1/checkpoints/{id}/abort", post(abort))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

fn refused(r: Refusal, what: &str) -> Response {
    warn!(refused = ?r, request = what, "request refused");
    let mut resp = error(r.status(), r.message());
    if r.status() == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            "Bearer".parse().expect("static header"),
        );
    }
    resp
}

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

fn parse_body<T: serde::de::DeserializeOwned + Default>(
    body: &Bytes,
    allow_empty: bool,
) -> Result<T, Box<Response>> {
    if body.is_empty() && allow_empty {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            format!("invalid request body: {e}; expected JSON like {{\"id\": 7, \"epoch\": 1, \"stop\": false}}"),
        ))
    })
}

/// The body of a request whose caller holds the token and speaks for the current epoch, or
/// the response refusing it.
fn admitted<T: serde::de::DeserializeOwned + Default>(
    shared: &Shared,
    headers: &HeaderMap,
    body: &Bytes,
    allow_empty: bool,
    what: &str,
    epoch: impl Fn(&T) -> Option<u64>,
) -> Result<T, Box<Response>> {
    // The token is checked before the body is even parsed: no information without it.
    let token = shared.token.check(authorization(headers));
    if let Err(r) = &token {
        return Err(Box::new(refused(r.clone(), what)));
    }
    let req: T = parse_body(body, allow_empty)?;
    admit(token, epoch(&req), shared.identity.epoch).map_err(|r| Box::new(refused(r, what)))?;
    Ok(req)
}

async fn trigger(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let req: CheckpointRequest = match admitted(
        &shared,
        &headers,
        &body,
        false,
        "checkpoint",
        |r: &CheckpointRequest| Some(r.epoch),
    ) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let Some(running) = shared.running.get() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the state is not open yet");
    };
    if shared.shutting_down.load(Ordering::SeqCst) {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the worker is shutting down",
        );
    }
    let begin = shared.table().begin(req.id, req.epoch, req.stop);
    match begin {
        Err(e) => return error(e.status(), e.message()),
        Ok(Begin::Repeat(record)) => {
            return (StatusCode::ACCEPTED, axum::Json(record)).into_response();
        }
        Ok(Begin::Start) => {}
    }
    let started = Instant::now();
    info!(checkpoint = req.id, stop = req.stop, "checkpoint requested");
    let snapshot = match running.engine.capture(req.id, req.stop).await {
        Ok(s) => s,
        Err(e) => {
            let reason = format!("native checkpoint failed: {e}");
            shared.metrics.checkpoints_failed.inc();
            shared.finish(req.id, Err(reason.clone()));
            return error(StatusCode::INTERNAL_SERVER_ERROR, reason);
        }
    };
    let task_shared = shared.clone();
    let snapshotter = running.snapshotter.clone();
    let id = req.id;
    let stop = req.stop;
    shared.spawn_upload(async move {
        let shared = task_shared;
        let faults = crate::fault::faults();
        if let Some(delay) = faults.upload_delay_for(shared.identity.subtask) {
            tokio::time::sleep(delay).await;
        }
        let outcome = if faults.fail_upload(shared.identity.epoch) {
            drop(snapshot);
            Err(crate::Error::Other(
                "the store refused the upload (fault injection)".to_owned(),
            ))
        } else {
            snapshotter.upload(snapshot, &shared.store).await
        };
        let outcome = match outcome {
            Ok(handle) => {
                shared
                    .metrics
                    .checkpoint_seconds
                    .observe(started.elapsed().as_secs_f64());
                shared
                    .metrics
                    .checkpoint_uploaded_bytes
                    .inc_by(handle.bytes_uploaded);
                shared
                    .metrics
                    .checkpoint_size_bytes
                    .set(handle.bytes_total as i64);
                shared.metrics.checkpoints_completed.inc();
                // The handle may be an earlier attempt's (this worker before a restart): the
                // marker vouches for the local DB only when the handle describes it.
                if stop && handle.instance_id == snapshotter.instance_id() {
                    // The upload removed the native checkpoint's links: nothing changes the
                    // DB's files from here on, so the marker records what they are now.
                    let db = statedir::db_dir(&shared.identity.state_dir);
                    let mut marker = LocalCheckpointMarker::of_local_db(&handle, &db);
                    if let Err(e) = marker.sync_files(&db) {
                        warn!(error = %e, "cannot sync the local DB's files: the checkpoint marker vouches for them in this boot of the node only");
                    }
                    if let Err(e) = marker.write(&shared.identity.state_dir) {
                        warn!(error = %e, "cannot write the local checkpoint marker");
                    }
                }
                Ok(handle)
            }
            Err(e) => {
                warn!(checkpoint = id, error = %e, "checkpoint upload failed");
                shared.metrics.checkpoints_failed.inc();
                Err(e.to_string())
            }
        };
        let effect = shared.finish(id, outcome);
        shared.apply(effect);
    });
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({ "id": id, "epoch": req.epoch, "stop": stop, "status": "in_progress" })),
    )
        .into_response()
}

/// Query of `GET /v1/checkpoints/{id}`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StatusQuery {
    /// Answer once the checkpoint's capture or upload has ended, or after this many
    /// milliseconds (at most [`MAX_STATUS_WAIT`]): the operator learns of a final checkpoint's
    /// handle when it is written, not at its next poll.
    pub wait_ms: Option<u64>,
}

/// The longest `GET /v1/checkpoints/{id}?waitMs=` holds its answer.
pub const MAX_STATUS_WAIT: Duration = Duration::from_secs(10);

async fn status(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    Query(query): Query<StatusQuery>,
) -> Response {
    if let Err(r) = shared.token.check(authorization(&headers)) {
        return refused(r, "checkpoint status");
    }
    let wait = Duration::from_millis(query.wait_ms.unwrap_or(0)).min(MAX_STATUS_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        // Registered before the table is read: an upload ending in between still wakes it.
        let settled = shared.settled.notified();
        tokio::pin!(settled);
        settled.as_mut().enable();
        let record = match shared.table().get(id) {
            Ok(record) => record.clone(),
            Err(e) => return error(e.status(), e.message()),
        };
        let running = matches!(record.status, CheckpointStatus::InProgress);
        if !running || tokio::time::timeout_at(deadline, settled).await.is_err() {
            return (StatusCode::OK, axum::Json(record)).into_response();
        }
    }
}

async fn complete(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    body: Bytes,
) -> Response {
    notice(shared, headers, id, body, Notice::Complete)
}

async fn abort(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    body: Bytes,
) -> Response {
    notice(shared, headers, id, body, Notice::Abort)
}

fn notice(shared: Arc<Shared>, headers: HeaderMap, id: u64, body: Bytes, n: Notice) -> Response {
    if let Err(resp) = admitted(
        &shared,
        &headers,
        &body,
        true,
        "checkpoint notice",
        |r: &NoticeRequest| r.epoch,
    ) {
        return *resp;
    }
    let effect = shared.table().notify(id, n);
    match effect {
        Ok(effect) => {
            info!(checkpoint = id, notice = ?n, "checkpoint notice");
            shared.apply(effect);
            (StatusCode::OK, axum::Json(json!({ "id": id, "notice": n }))).into_response()
        }
        Err(e) => error(e.status(), e.message()),
    }
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    if shared.shutting_down.load(Ordering::SeqCst) {
        return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    match shared.running.get() {
        None => error(StatusCode::SERVICE_UNAVAILABLE, "opening the state"),
        Some(_) => {
            let paused_by = shared.table().stopped_by();
            let body = json!({
                "epoch": shared.identity.epoch,
                "subtask": shared.identity.subtask,
                "keyGroupRange": shared.identity.range,
                "processing": paused_by.is_none(),
                "stoppedByCheckpoint": paused_by,
            });
            (StatusCode::OK, axum::Json(body)).into_response()
        }
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    if let Some(running) = shared.running.get() {
        shared.metrics.keys.set(running.estimated_keys() as i64);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.encode(),
    )
        .into_response()
}
