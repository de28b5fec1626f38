//! The adapter's settings ([`RedisConfig`]), TLS files, and the Redis client built from them.

use super::*;

/// What the adapter needs to know.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RedisConfig {
    /// `redis://host:port/db`, or `rediss://` for TLS (verified against the system's roots,
    /// or against `tls.ca_pem` alone when set).
    pub url: String,
    /// TLS (`rediss://`) trust and client identity; empty: the system's roots, no client
    /// certificate.
    pub tls: TlsFiles,
    /// This node's name (the manager's `node_id`).
    pub node_id: String,
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// A node silent for longer than this is dead: its state is freed.
    pub node_ttl: Duration,
    /// Namespace of every key and channel.
    pub key_prefix: String,
    /// The limits and policy to enforce cluster-wide.
    pub limits: switchboard::Limits,
    /// The user policy, cluster-wide.
    pub user_policy: UserPolicy,
    /// Join/leave events on at all.
    pub presence_events: bool,
    /// No join/leave events in lobbies with more users than this.
    pub events_max_members: usize,
    /// Broadcasts kept per lobby, cluster-wide, for recovery on any node.
    pub history: HistoryConfig,
    /// Bytes of frames waiting to be published (client and API frames); past it a publish is
    /// refused and its caller told ([`Published::Overloaded`]). The node's own messages
    /// (presence events, closes) may use as much again, so clients cannot crowd them out.
    pub outbound_max_bytes: usize,
    /// Test only: shifts this node's wall clock by this many ms, to show that liveness does
    /// not depend on it (`SWITCHBOARD_TEST_CLOCK_OFFSET_MS` in the server). 0 in production.
    pub clock_offset_ms: i64,
}

impl RedisConfig {
    /// Settings for `url`, taking node id, limits, policy and presence from the manager's.
    pub fn new(url: impl Into<String>, manager: &switchboard::Config) -> Self {
        Self {
            url: url.into(),
            tls: TlsFiles::default(),
            node_id: manager.node_id.clone(),
            heartbeat: Duration::from_millis(2_000),
            node_ttl: Duration::from_millis(6_000),
            key_prefix: "switchboard:".into(),
            limits: manager.limits,
            user_policy: manager.user_policy,
            presence_events: manager.presence.events,
            events_max_members: manager.presence.events_max_members,
            history: manager.history,
            outbound_max_bytes: DEFAULT_OUTBOUND_MAX_BYTES,
            clock_offset_ms: 0,
        }
    }

    /// Whether the URL and the TLS files can work, as [`RedisCluster::start`] would find
    /// them, without connecting (for `switchboard --check-config`).
    pub fn check(&self) -> Result<(), UrlError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        client(self).map(drop)
    }
}

/// PEM files for `rediss://` URLs.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct TlsFiles {
    /// Trust only these certificates (PEM), instead of the system's roots: a private CA or a
    /// self-signed Redis.
    pub ca_file: Option<PathBuf>,
    /// A client certificate chain and its key (PEM), for a Redis that requires them
    /// (`tls-auth-clients yes`, Redis's default).
    pub client_cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub client_key_file: Option<PathBuf>,
}

/// A bad Redis configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UrlError {
    /// The URL (or the TLS settings with it) cannot work.
    #[error("redis.url: {0}")]
    Url(#[from] redis::RedisError),
    /// A TLS file cannot be read.
    #[error("{setting}: cannot read {}: {error}", path.display())]
    File {
        /// The setting naming the file.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
}

/// The Redis client for `cfg`: plain, or TLS with the configured trust and identity.
pub(crate) fn client(cfg: &RedisConfig) -> Result<redis::Client, UrlError> {
    let tls = &cfg.tls;
    if tls.ca_file.is_none() && tls.client_cert_file.is_none() {
        return Ok(redis::Client::open(cfg.url.as_str())?);
    }
    let read = |setting: &'static str, path: &PathBuf| {
        std::fs::read(path).map_err(|error| UrlError::File {
            setting,
            path: path.clone(),
            error,
        })
    };
    let root_cert = tls
        .ca_file
        .as_ref()
        .map(|p| read("redis.ca_file", p))
        .transpose()?;
    let client_tls = match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read("redis.client_cert_file", cert)?,
            client_key: read("redis.client_key_file", key)?,
        }),
        _ => None,
    };
    Ok(redis::Client::build_with_tls(
        cfg.url.as_str(),
        redis::TlsCertificates {
            client_tls,
            root_cert,
        },
    )?)
}
