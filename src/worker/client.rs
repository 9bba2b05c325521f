//! A typed client of the worker API (see `docs/worker.md`), for the operator's checkpoint
//! coordinator and for tests.

use std::time::Duration;

use serde_json::json;

use super::checkpoints::{CheckpointRecord, Notice};
use crate::error::{Error, Result};

/// Why a worker refused a request: what the caller should do differs per kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// 401: the token is missing or wrong (fix the Secret).
    Unauthorized(String),
    /// 403: the worker runs another epoch (a stale request; drop it).
    Fenced(String),
    /// 404: the worker does not know that checkpoint (it restarted, or was never asked).
    Unknown(String),
    /// 409: the id was used with other parameters, or is older than a completed one.
    Conflict(String),
    /// 503: the state is not open yet, or the worker is stopping (retry later).
    Unavailable(String),
    /// Any other answer.
    Other {
        /// HTTP status.
        status: u16,
        /// The worker's error message.
        message: String,
    },
}

impl Refused {
    fn from_answer(status: u16, message: String) -> Self {
        match status {
            401 => Refused::Unauthorized(message),
            403 => Refused::Fenced(message),
            404 => Refused::Unknown(message),
            409 => Refused::Conflict(message),
            503 => Refused::Unavailable(message),
            _ => Refused::Other { status, message },
        }
    }
}

/// Calls one job's workers with the job's bearer token.
#[derive(Clone)]
pub struct WorkerClient {
    http: reqwest::Client,
    token: String,
    timeout: Duration,
}

impl std::fmt::Debug for WorkerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkerClient { token: <redacted> }")
    }
}

impl WorkerClient {
    /// A client sending `token`, with `timeout` per request.
    pub fn new(token: &str, timeout: Duration) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            // A job's rounds call a worker one request after another: one connection to keep.
            .pool_max_idle_per_host(1)
            .build()
            .map_err(|e| Error::Other(format!("cannot build an HTTP client: {e}")))?;
        Ok(Self {
            http,
            token: token.to_owned(),
            timeout,
        })
    }

    /// This client's connections and timeout, sending `token`: the clients of many jobs share
    /// one connection pool and TLS set-up.
    pub fn with_token(&self, token: &str) -> Self {
        Self {
            token: token.to_owned(),
            ..self.clone()
        }
    }

    async fn send(
        &self,
        base: &str,
        what: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<(u16, serde_json::Value)> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| Error::Other(format!("worker {base}: {what}: {e}")))?;
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(serde_json::Value::Null);
        Ok((status, body))
    }

    fn refused(status: u16, body: &serde_json::Value) -> Refused {
        let message = body["error"]
            .as_str()
            .map_or_else(|| body.to_string(), str::to_owned);
        Refused::from_answer(status, message)
    }

    /// `POST /v1/checkpoints`: asks the worker at `base` (e.g. `http://10.0.0.5:8080`) for
    /// checkpoint `id`. `Ok(Ok(()))` once the native checkpoint is taken (the upload runs on).
    pub async fn trigger(
        &self,
        base: &str,
        id: u64,
        epoch: u64,
        stop: bool,
    ) -> Result<Result<(), Refused>> {
        let req = self
            .http
            .post(format!("{base}/v1/checkpoints"))
            .json(&json!({ "id": id, "epoch": epoch, "stop": stop }));
        let (status, body) = self.send(base, "trigger checkpoint", req).await?;
        Ok(if status == 202 {
            Ok(())
        } else {
            Err(Self::refused(status, &body))
        })
    }

    /// `GET /v1/checkpoints/{id}`.
    pub async fn status(&self, base: &str, id: u64) -> Result<Result<CheckpointRecord, Refused>> {
        self.status_after(base, id, Duration::ZERO).await
    }

    /// `GET /v1/checkpoints/{id}?waitMs=`: the status once the checkpoint's capture or upload
    /// has ended on the worker, or after `wait` (at most `MAX_STATUS_WAIT`).
    pub async fn status_after(
        &self,
        base: &str,
        id: u64,
        wait: Duration,
    ) -> Result<Result<CheckpointRecord, Refused>> {
        let req = if wait.is_zero() {
            self.http.get(format!("{base}/v1/checkpoints/{id}"))
        } else {
            let url = format!("{base}/v1/checkpoints/{id}?waitMs={}", wait.as_millis());
            self.http.get(url).timeout(wait + self.timeout)
        };
        let (status, body) = self.send(base, "checkpoint status", req).await?;
        if status != 200 {
            return Ok(Err(Self::refused(status, &body)));
        }
        serde_json::from_value(body)
            .map(Ok)
            .map_err(|e| Error::Other(format!("worker {base}: unreadable checkpoint status: {e}")))
    }

    /// `POST /v1/checkpoints/{id}/complete` or `/abort`.
    pub async fn notify(
        &self,
        base: &str,
        id: u64,
        notice: Notice,
        epoch: u64,
    ) -> Result<Result<(), Refused>> {
        let verb = match notice {
            Notice::Complete => "complete",
            Notice::Abort => "abort",
        };
        let req = self
            .http
            .post(format!("{base}/v1/checkpoints/{id}/{verb}"))
            .json(&json!({ "epoch": epoch }));
        let (status, body) = self.send(base, verb, req).await?;
        Ok(if status == 200 {
            Ok(())
        } else {
            Err(Self::refused(status, &body))
        })
    }

    /// `GET /readyz`: true when the worker's state is open and it serves.
    pub async fn ready(&self, base: &str) -> bool {
        matches!(
            self.http.get(format!("{base}/readyz")).send().await,
            Ok(r) if r.status().is_success()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_what_the_caller_should_do() {
        assert!(matches!(
            Refused::from_answer(401, "x".into()),
            Refused::Unauthorized(_)
        ));
        assert!(matches!(
            Refused::from_answer(403, "x".into()),
            Refused::Fenced(_)
        ));
        assert!(matches!(
            Refused::from_answer(404, "x".into()),
            Refused::Unknown(_)
        ));
        assert!(matches!(
            Refused::from_answer(409, "x".into()),
            Refused::Conflict(_)
        ));
        assert!(matches!(
            Refused::from_answer(503, "x".into()),
            Refused::Unavailable(_)
        ));
        assert_eq!(
            Refused::from_answer(500, "boom".into()),
            Refused::Other {
                status: 500,
                message: "boom".into()
            }
        );
    }

    #[test]
    fn records_round_trip_through_json() {
        use super::super::checkpoints::CheckpointStatus;
        let r = CheckpointRecord {
            id: 4,
            epoch: 2,
            stop: true,
            status: CheckpointStatus::Failed {
                reason: "disk full".into(),
            },
            notice: Some(Notice::Abort),
        };
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains("\"status\":\"failed\""), "{text}");
        let back: CheckpointRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
    }
}
