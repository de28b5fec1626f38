//! The command line: `--config FILE` and `--dev`, with `--help` and `--version` (clap). Every
//! other setting is a config-file key or a `SWITCHBOARD_*` environment variable, listed in
//! `config/switchboard.example.toml`.

use std::path::PathBuf;

use clap::Parser;

/// Switchboard: a WebSocket connection manager for real-time applications.
#[derive(Debug, Parser)]
#[command(
    name = "switchboard",
    version,
    after_help = "Settings: every key of config/switchboard.example.toml, in a TOML file (--config) \
or as an environment variable that wins over the file: `limits.max_per_lobby` is \
SWITCHBOARD_LIMITS__MAX_PER_LOBBY. Without --dev the server needs auth: auth.jwt_secret (HS256), \
auth.jwt_public_key_file (RS256) or auth.connect_url (the backend decides). The first line on \
stdout is `listening on ADDR`; SIGTERM or SIGINT drains and exits."
)]
pub struct Cli {
    /// A TOML configuration file [default: none; or SWITCHBOARD_CONFIG].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Dev mode: the token is the user id, loopback binds only, demo page and dashboard on
    /// [default: off; or SWITCHBOARD_DEV_MODE=true].
    #[arg(long)]
    pub dev: bool,
}
