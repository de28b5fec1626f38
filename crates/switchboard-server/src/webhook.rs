//! Webhooks: the server tells a backend what its clients do, as signed JSON batches POSTed to
//! `webhook.url`.
//!
//! Events are queued without waiting (a slow or dead receiver never slows a socket, a
//! broadcast or a connect): the queue is bounded in bytes (`webhook.queue_bytes`), and what does
//! not fit is dropped and counted (`switchboard_webhook_events_total{outcome="dropped"}`) and
//! logged (at most once a second, with the count). One task sends batches of at most `webhook.batch_max` events, at most
//! `webhook.batch_ms` after the first one waited, one batch at a time, so events arrive in the
//! order they happened. A batch is retried with exponential backoff and jitter on a timeout, a
//! connection error, 429 or a 5xx, for up to `webhook.max_retry_ms`; any other 4xx is not
//! retried. Delivery is at least once: every event carries an `id` for the receiver's
//! de-duplication.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use crate::backend::{Backend, now_ms};
use crate::config::WebhookConfig;

/// The sending side of the webhooks: cheap to share.
#[derive(Debug)]
pub struct Webhooks {
    cfg: WebhookConfig,
    node: String,
    queue: mpsc::UnboundedSender<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    next_id: AtomicU64,
    /// Drops not logged yet, and when the last drop was logged (ms): a full queue logs at
    /// most once a second, with the count, so an overloaded server does not also flood its log.
    drops_unlogged: AtomicU64,
    drop_logged_ms: AtomicU64,
}

impl Webhooks {
    /// Starts the sender task when `webhook.url` is set.
    pub fn start(cfg: &WebhookConfig, node: &str, backend: Arc<Backend>) -> Option<Arc<Self>> {
        let url = cfg.url.clone()?;
        let (queue, events) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        tokio::spawn(send_batches(
            backend,
            cfg.clone(),
            url,
            events,
            queued.clone(),
        ));
        Some(Arc::new(Self {
            cfg: cfg.clone(),
            node: node.to_owned(),
            queue,
            queued,
            next_id: AtomicU64::new(1),
            drops_unlogged: AtomicU64::new(0),
            drop_logged_ms: AtomicU64::new(0),
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
        self.drops_unlogged.fetch_add(1, Ordering::Relaxed);
        let (now, last) = (now_ms(), self.drop_logged_ms.load(Ordering::Relaxed));
        let due = now.saturating_sub(last) >= 1_000
            && self
                .drop_logged_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        if due {
            let dropped = self.drops_unlogged.swap(0, Ordering::Relaxed);
            tracing::warn!(
                dropped,
                kind,
                "webhook queue full (webhook.queue_bytes): events dropped since the last warning"
            );
        }
    }
}

/// The sender task: batches in order, one at a time, each retried until it is taken, refused
/// for good, or `max_retry` has passed.
async fn send_batches(
    backend: Arc<Backend>,
    cfg: WebhookConfig,
    url: hyper::Uri,
    mut events: mpsc::UnboundedReceiver<Vec<u8>>,
    queued: Arc<AtomicUsize>,
) {
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
        let outcome = deliver(&backend, &cfg, &url, Bytes::from(body)).await;
        metrics::counter!("switchboard_webhook_events_total", "outcome" => outcome)
            .increment(batch.len() as u64);
        queued.fetch_sub(cost, Ordering::SeqCst);
        batch.clear();
    }
}

/// Posts one batch, retrying what may succeed later. The outcome, for the metric.
async fn deliver(
    backend: &Backend,
    cfg: &WebhookConfig,
    url: &hyper::Uri,
    body: Bytes,
) -> &'static str {
    let started = tokio::time::Instant::now();
    let mut backoff = Duration::from_millis(100);
    loop {
        let status = backend
            .post(url, body.clone(), cfg.timeout)
            .await
            .ok()
            .map(|(status, _)| status);
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
