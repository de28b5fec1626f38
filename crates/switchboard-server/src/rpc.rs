//! RPC: a protocol-v2 client's `rpc` is POSTed, signed, to `webhook.rpc_url`, and the
//! backend's answer becomes the client's `rpc_result`.
//!
//! The request is `{"connection_id","user_id","ip","method","data"}`. A 2xx answer's body is
//! the result's `data` (JSON; an empty body is `null`); anything else fails the call with
//! `rpc_failed`: another status (with the backend's `{"error":{"message":..}}` if it sent
//! one), an answer that is not JSON or larger than 64 KiB, no answer within
//! `webhook.timeout_ms`, an unreachable backend. The library bounds each connection's calls
//! waiting (`webhook.rpc_concurrency`); this module bounds the server's
//! (`webhook.rpc_max_in_flight`): past it a call is refused with `overloaded` at once, so a
//! slow backend costs a bounded number of requests and tasks.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use hyper::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use switchboard::{ClientError, ConnectionInfo, ErrorCode, RpcCall};
use tokio::sync::Semaphore;

use crate::backend::{Backend, CallError, MAX_ANSWER_BYTES};
use crate::config::WebhookConfig;

/// What the backend is asked.
#[derive(Serialize)]
struct Request<'a> {
    connection_id: &'a str,
    user_id: &'a str,
    ip: IpAddr,
    method: &'a str,
    data: &'a RawValue,
}

/// The part of an error answer the client is shown.
#[derive(Deserialize)]
struct Refusal {
    error: RefusalError,
}

#[derive(Deserialize)]
struct RefusalError {
    message: String,
}

/// Where calls go, and the server-wide bound on calls waiting.
#[derive(Debug)]
pub struct Rpc {
    url: hyper::Uri,
    backend: Arc<Backend>,
    timeout: Duration,
    max_in_flight: usize,
    slots: Semaphore,
}

impl Rpc {
    /// RPC, when `webhook.rpc_url` is set.
    pub fn new(cfg: &WebhookConfig, backend: Arc<Backend>) -> Option<Arc<Self>> {
        Some(Arc::new(Self {
            url: cfg.rpc_url.clone()?,
            backend,
            timeout: cfg.timeout,
            max_in_flight: cfg.rpc_max_in_flight,
            slots: Semaphore::new(cfg.rpc_max_in_flight),
        }))
    }

    /// The call of `method` with `data` by `conn`, to run on the manager's tracker. The
    /// request is encoded at once: `data` is borrowed from the client's frame.
    pub fn call(self: &Arc<Self>, conn: &ConnectionInfo, method: &str, data: &RawValue) -> RpcCall {
        let request = Request {
            connection_id: conn.id.as_str(),
            user_id: conn.user_id.as_str(),
            ip: conn.ip,
            method,
            data,
        };
        let body = serde_json::to_vec(&request).unwrap_or_default();
        let rpc = self.clone();
        let method = method.to_owned();
        Box::pin(async move { rpc.post(&method, Bytes::from(body)).await })
    }

    /// Posts one call within the server-wide bound and reads the backend's answer.
    async fn post(&self, method: &str, body: Bytes) -> Result<Box<RawValue>, ClientError> {
        let Ok(_slot) = self.slots.try_acquire() else {
            return Err(ClientError::new(
                ErrorCode::Overloaded,
                format!(
                    "the server has {} calls waiting for the backend \
                     (webhook.rpc_max_in_flight); retry later",
                    self.max_in_flight
                ),
            ));
        };
        let (status, answer) = self
            .backend
            .post(&self.url, body, self.timeout)
            .await
            .map_err(|e| unanswered(method, &e))?;
        if !status.is_success() {
            return Err(refused(status, &answer));
        }
        result(method, &answer)
    }
}

/// A call the backend did not answer usably: the client learns which way, the log the detail.
fn unanswered(method: &str, error: &CallError) -> ClientError {
    tracing::warn!(method, %error, "rpc failed: no usable answer from the backend");
    let message = match error {
        CallError::Timeout(deadline) => format!(
            "the backend did not answer within {} ms",
            deadline.as_millis()
        ),
        CallError::Unreachable(_) => "the backend is unreachable".to_owned(),
        CallError::TooLarge => {
            format!("the backend's answer is larger than {MAX_ANSWER_BYTES} bytes")
        }
    };
    rpc_failed(message)
}

/// A non-2xx answer: the status, and the backend's own message when it sent one.
fn refused(status: StatusCode, answer: &[u8]) -> ClientError {
    let code = status.as_u16();
    match serde_json::from_slice::<Refusal>(answer) {
        Ok(refusal) => rpc_failed(format!(
            "the backend answered HTTP {code}: {}",
            refusal.error.message
        )),
        Err(_) => rpc_failed(format!("the backend answered HTTP {code}")),
    }
}

/// A 2xx answer's body as the result's `data`: JSON, or `null` when empty.
fn result(method: &str, answer: &[u8]) -> Result<Box<RawValue>, ClientError> {
    if answer.iter().all(u8::is_ascii_whitespace) {
        return Ok(RawValue::NULL.to_owned());
    }
    serde_json::from_slice::<Box<RawValue>>(answer).map_err(|e| {
        tracing::error!(method, error = %e, "rpc failed: the backend's answer is not JSON");
        rpc_failed("the backend's answer is not JSON".to_owned())
    })
}

fn rpc_failed(message: String) -> ClientError {
    ClientError::new(ErrorCode::RpcFailed, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_become_results_or_rpc_failed() {
        assert_eq!(result("m", b"").unwrap().get(), "null");
        assert_eq!(result("m", b" \n").unwrap().get(), "null");
        assert_eq!(result("m", br#" {"a":1} "#).unwrap().get(), r#"{"a":1}"#);
        assert_eq!(
            result("m", b"<html>").unwrap_err().code,
            ErrorCode::RpcFailed
        );
        let error = refused(
            StatusCode::BAD_REQUEST,
            br#"{"error":{"message":"no such cart"}}"#,
        );
        assert_eq!(
            (error.code, error.message.as_str()),
            (
                ErrorCode::RpcFailed,
                "the backend answered HTTP 400: no such cart"
            )
        );
        let error = refused(StatusCode::BAD_GATEWAY, b"upstream down");
        assert_eq!(error.message, "the backend answered HTTP 502");
    }
}
