//! What the load generator's tests share: the real server's configuration for them.

use std::time::Duration;

use switchboard_server::ServerConfig;

/// A dev-mode server on 127.0.0.1:0 with no rate limits (the load generator connects and
/// sends as fast as it can) and a short shutdown.
pub(crate) fn load_test_config() -> ServerConfig {
    let mut config = ServerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        dev_mode: true,
        drain: Duration::from_millis(100),
        deadline: Duration::from_secs(2),
        ..ServerConfig::default()
    };
    config.manager.rate.messages_per_sec = 0;
    config.manager.rate.connects_per_ip_per_sec = 0;
    config
}
