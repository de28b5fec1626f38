//! The command line: `--config FILE`, `--dev`, `--print-config` and `--check-config FILE`, with
//! `--help` and `--version` (clap). Every other setting is a config-file key or a
//! `SWITCHBOARD_*` environment variable, listed in `config/switchboard.example.toml`.

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
stdout is `listening on ADDR`; SIGTERM or SIGINT drains and exits. Exit status 2: a bad \
setting (the message names it) or a failed start."
)]
pub struct Cli {
    /// A TOML configuration file [default: none; or SWITCHBOARD_CONFIG].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Dev mode: the token is the user id, loopback binds only, demo page and dashboard on
    /// [default: off; or SWITCHBOARD_DEV_MODE=true].
    #[arg(long)]
    pub dev: bool,
    /// Print the effective configuration (defaults, then the --config file, then the
    /// environment, then --dev) as TOML, each setting with its source, secrets redacted; then
    /// exit. A configuration that would not start is printed too, with a note on stderr.
    #[arg(long, conflicts_with = "check_config")]
    pub print_config: bool,
    /// Check FILE as a start would (the environment and --dev applied, every start-up check),
    /// without binding a port or connecting to Redis; print `ok: FILE` and exit 0, or name the
    /// bad setting and exit 2.
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    pub check_config: Option<PathBuf>,
}
