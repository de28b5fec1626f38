//! `GET /metrics`: Prometheus text. Counts of live things and monotonic counters are read from
//! the manager at scrape time (nothing extra on the hot paths); the two histograms (ping round
//! trip, broadcast fan-out time) are recorded by the library through the `metrics` facade.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use switchboard::{DisconnectReason, Manager};

const RTT_BUCKETS: &[f64] = &[
    0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
const FANOUT_BUCKETS: &[f64] = &[
    0.000_001, 0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5,
];

/// The process-wide Prometheus recorder (a `metrics` recorder is global by design).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("switchboard_ping_rtt_seconds".into()),
                RTT_BUCKETS,
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("switchboard_broadcast_fanout_seconds".into()),
                    FANOUT_BUCKETS,
                )
            })
            .expect("bucket lists are non-empty");
        // Another recorder (an embedding app's) wins; ours then only renders scrape-time values.
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; histograms go there");
        }
        handle
    })
}

/// Registers, at zero, every counter that otherwise appears only with its first event, with
/// each of its label values: alerts on them work from the first scrape. (Counters read from
/// the manager at scrape time are exported whole by [`render`].) Never resets a counter.
pub fn register_at_zero(cluster: bool) {
    for outcome in ["delivered", "refused", "failed", "dropped"] {
        metrics::counter!("switchboard_webhook_events_total", "outcome" => outcome).increment(0);
    }
    for kind in ["connect", "join"] {
        for outcome in ["allowed", "refused", "unavailable"] {
            metrics::counter!("switchboard_proxy_calls_total", "kind" => kind, "outcome" => outcome)
                .increment(0);
        }
    }
    metrics::counter!("switchboard_http_refused_total", "reason" => "max_pending").increment(0);
    if cluster {
        for name in [
            "switchboard_redis_errors_total",
            "switchboard_redis_overloaded_total",
            "switchboard_redis_publish_dropped_total",
            "switchboard_redis_intake_behind_total",
        ] {
            metrics::counter!(name).increment(0);
        }
    }
}

/// Drains histogram samples into their buckets periodically, so memory stays flat between
/// scrapes.
pub async fn upkeep(stop: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => handle().run_upkeep(),
            () = stop.cancelled() => return,
        }
    }
}

/// Open file descriptors of this process (Linux), if readable.
pub fn open_fds() -> Option<usize> {
    std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count())
}

/// Renders every metric, refreshing the scrape-time values from `manager` first.
pub fn render(
    manager: &Manager,
    draining: bool,
    cluster: Option<switchboard::cluster::ClusterStats>,
) -> String {
    let stats = manager.stats();
    metrics::gauge!("switchboard_connections").set(stats.total_connections as f64);
    metrics::gauge!("switchboard_max_connections").set(stats.max_connections as f64);
    metrics::gauge!("switchboard_lobbies").set(stats.active_lobbies as f64);
    metrics::gauge!("switchboard_users").set(stats.users as f64);
    metrics::gauge!("switchboard_history_bytes").set(stats.history_bytes as f64);
    metrics::gauge!("switchboard_draining").set(if draining { 1.0 } else { 0.0 });
    metrics::gauge!("switchboard_tokio_tasks").set(
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks() as f64,
    );
    if let Some(fds) = open_fds() {
        metrics::gauge!("switchboard_open_fds").set(fds as f64);
    }
    metrics::counter!("switchboard_messages_in_total").absolute(stats.messages_in);
    metrics::counter!("switchboard_messages_out_total").absolute(stats.messages_out);
    metrics::counter!("switchboard_bytes_in_total").absolute(stats.bytes_in);
    metrics::counter!("switchboard_bytes_out_total").absolute(stats.bytes_out);
    // Compression work: a broadcast compressed once for all its members counts once.
    metrics::counter!("switchboard_deflated_messages_total").absolute(stats.messages_deflated);
    metrics::counter!("switchboard_queue_overflows_total").absolute(stats.queue_overflows);
    metrics::counter!("switchboard_messages_dropped_total").absolute(stats.messages_dropped);
    // Overload: publishes shed where they entered, deliveries shed for members behind, members
    // behind now and those that fell behind further than the history reaches.
    metrics::counter!("switchboard_shed_publishes_total").absolute(stats.shed_publishes);
    metrics::counter!("switchboard_shed_deliveries_total").absolute(stats.shed_deliveries);
    metrics::counter!("switchboard_catch_ups_lost_total").absolute(stats.catch_ups_lost);
    metrics::gauge!("switchboard_lagging_members").set(stats.lagging_members as f64);
    // Every reason, at zero until it happens: an alert can be written before the first one.
    for reason in DisconnectReason::ALL {
        let word = reason.as_str();
        let count =
            |counts: &std::collections::BTreeMap<&str, u64>| counts.get(word).copied().unwrap_or(0);
        metrics::counter!("switchboard_rejections_total", "reason" => word)
            .absolute(count(&stats.rejections));
        let code = reason
            .close_code()
            .map_or_else(|| "none".to_owned(), |c| c.to_string());
        metrics::counter!("switchboard_closes_total", "code" => code, "reason" => word)
            .absolute(count(&stats.closes));
    }
    if let Some(status) = manager.cluster_status() {
        metrics::gauge!("switchboard_redis_up").set(if status == "up" { 1.0 } else { 0.0 });
    }
    if let Some(c) = cluster {
        metrics::gauge!("switchboard_cluster_nodes").set(c.nodes as f64);
        metrics::gauge!("switchboard_cluster_connections").set(c.total_connections as f64);
        metrics::gauge!("switchboard_cluster_lobbies").set(c.active_lobbies as f64);
        metrics::gauge!("switchboard_cluster_users").set(c.users as f64);
    }
    handle().render()
}
