//! Webhooks: the server tells a backend what its clients do, as signed JSON batches POSTed to
//! `webhook.url`.
//!
//! Events are queued without waiting (a slow or dead receiver never slows a socket, a
//! broadcast or a connect): the queue is bounded in bytes (`webhook.queue_bytes`), and what does
//! not fit is dropped and counted (`switchboard_webhook_events_total{outcome="dropped"}`) and
//! logged. One task sends batches of at most `webhook.batch_max` events, at most
//! `webhook.batch_ms` after the first one waited, one batch at a time, so events arrive in the
//! order they happened. A batch is retried with exponential backoff and jitter on a timeout, a
//! connection error, 429 or a 5xx, for up to `webhook.max_retry_ms`; any other 4xx is not
//! retried. Delivery is at least once: every event carries an `id` for the receiver's
//! de-duplication.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Map, Value, json};
use sha2::Sha256;
use tokio::sync::mpsc;

use crate::config::{Secret, WebhookConfig};

/// The sending side of the webhooks: cheap to share.
#[derive(Debug)]
pub struct Webhooks {
    cfg: WebhookConfig,
    node: String,
    queue: mpsc::UnboundedSender<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    next_id: AtomicU64,
}

impl Webhooks {
    /// Starts the sender task when `webhook.url` is set.
    pub fn start(cfg: &WebhookConfig, node: &str) -> Option<Arc<Self>> {
        let url = cfg.url.clone()?;
        let (queue, events) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        tokio::spawn(send_batches(cfg.clone(), url, events, queued.clone()));
        Some(Arc::new(Self {
            cfg: cfg.clone(),
            node: node.to_owned(),
            queue,
            queued,
            next_id: AtomicU64::new(1),
        }))
    }

    /// Whether events of `kind` are posted.
    pub fn wants(&self, kind: &str) -> bool {
        self.cfg.events.contains(kind)
    }

    /// Whether an application message of this type is posted.
    pub fn wants_message(&self, kind: &str) -> bool {
        self.wants("message")
            && (self.cfg.message_types.is_empty() || self.cfg.message_types.contains(kind))
    }

    /// Queues an event of `kind` with `fields` (and its id, type, time and node), unless the
    /// queue is full: then it is dropped, counted and logged. Never waits.
    pub fn emit(&self, kind: &str, fields: Map<String, Value>) {
        if !self.wants(kind) {
            return;
        }
        let seq = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut event = fields;
        event.insert("id".into(), json!(format!("{}-{seq}", self.node)));
        event.insert("type".into(), json!(kind));
        event.insert("time".into(), json!(now_ms()));
        event.insert("node".into(), json!(self.node));
        let encoded = serde_json::to_vec(&event).unwrap_or_default();
        let cost = encoded.len();
        let fits = self
            .queued
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |q| {
                q.checked_add(cost)
                    .filter(|&after| after <= self.cfg.queue_bytes)
            })
            .is_ok();
        if fits && self.queue.send(encoded).is_ok() {
            return;
        }
        if fits {
            self.queued.fetch_sub(cost, Ordering::SeqCst);
        }
        metrics::counter!("switchboard_webhook_events_total", "outcome" => "dropped").increment(1);
        tracing::warn!(
            kind,
            "webhook queue full (webhook.queue_bytes): event dropped"
        );
    }
}

/// `Switchboard-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` for every
/// secret.
pub fn signature(secrets: &[Secret], t: u64, body: &[u8]) -> String {
    let mut header = format!("t={t}");
    for secret in secrets {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.0.as_bytes()) else {
            continue;
        };
        mac.update(format!("{t}.").as_bytes());
        mac.update(body);
        header.push_str(",v1=");
        for byte in mac.finalize().into_bytes() {
            header.push_str(&format!("{byte:02x}"));
        }
    }
    header
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The sender task: batches in order, one at a time, each retried until it is taken, refused
/// for good, or `max_retry` has passed.
async fn send_batches(
    cfg: WebhookConfig,
    url: hyper::Uri,
    mut events: mpsc::UnboundedReceiver<Vec<u8>>,
    queued: Arc<AtomicUsize>,
) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut batch: Vec<Vec<u8>> = Vec::new();
    loop {
        if events.recv_many(&mut batch, cfg.batch_max).await == 0 {
            return;
        }
        // The first event waits at most `batch_wait` for others to join it.
        let deadline = tokio::time::Instant::now() + cfg.batch_wait;
        while batch.len() < cfg.batch_max {
            let room = cfg.batch_max - batch.len();
            match tokio::time::timeout_at(deadline, events.recv_many(&mut batch, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let cost: usize = batch.iter().map(Vec::len).sum();
        let mut body = Vec::with_capacity(cost + batch.len() + 16);
        body.extend_from_slice(b"{\"events\":[");
        for (i, event) in batch.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(event);
        }
        body.extend_from_slice(b"]}");
        let outcome = deliver(&client, &cfg, &url, Bytes::from(body)).await;
        metrics::counter!("switchboard_webhook_events_total", "outcome" => outcome)
            .increment(batch.len() as u64);
        queued.fetch_sub(cost, Ordering::SeqCst);
        batch.clear();
    }
}

/// Posts one batch, retrying what may succeed later. The outcome, for the metric.
async fn deliver(
    client: &Client<HttpConnector, Full<Bytes>>,
    cfg: &WebhookConfig,
    url: &hyper::Uri,
    body: Bytes,
) -> &'static str {
    let started = tokio::time::Instant::now();
    let mut backoff = Duration::from_millis(100);
    loop {
        let t = now_ms() / 1000;
        let request = hyper::Request::post(url.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header("switchboard-signature", signature(&cfg.secrets, t, &body))
            .body(Full::new(body.clone()));
        let Ok(request) = request else {
            return "failed";
        };
        let status = match tokio::time::timeout(cfg.timeout, client.request(request)).await {
            Ok(Ok(response)) => Some(response.status()),
            Ok(Err(_)) | Err(_) => None,
        };
        match status {
            Some(s) if s.is_success() => return "delivered",
            Some(s) if s.is_client_error() && s.as_u16() != 429 => {
                tracing::warn!(status = s.as_u16(), "webhook refused a batch; not retried");
                return "refused";
            }
            _ => {}
        }
        // A timeout, a connection error, 429 or a 5xx: later, with jitter, while time is left.
        let jitter = Duration::from_millis(fastrand::u64(0..=backoff.as_millis() as u64 / 2));
        if started.elapsed() + backoff + jitter > cfg.max_retry {
            tracing::warn!(?status, "webhook batch dropped after webhook.max_retry_ms");
            return "failed";
        }
        tokio::time::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_secret_signs_the_timestamp_and_the_body() {
        let secrets = [Secret("old".into()), Secret("new".into())];
        let header = signature(&secrets, 1_700_000_000, b"{}");
        let parts: Vec<&str> = header.split(',').collect();
        assert_eq!(parts[0], "t=1700000000");
        assert_eq!(parts.len(), 3, "one v1= per secret");
        let mut mac = Hmac::<Sha256>::new_from_slice(b"new").unwrap();
        mac.update(b"1700000000.{}");
        let expected: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(parts[2], format!("v1={expected}"));
        assert_ne!(parts[1], parts[2]);
    }
}
