//! `switchboard`: the standalone server. Configuration comes from `--config FILE` and
//! `SWITCHBOARD_*` environment variables; `switchboard --dev` runs in dev mode on 127.0.0.1:8080;
//! `--print-config` shows the configuration and `--check-config FILE` checks one without
//! starting; `switchboard --help` says so.

use std::io::Write;

use anyhow::Context;
use clap::Parser;
use switchboard_server::{LogFormat, ServerConfig};
use tokio::signal::unix::{SignalKind, signal};

fn main() {
    if let Err(error) = start() {
        eprintln!("switchboard: {error:#}");
        std::process::exit(2);
    }
}

fn start() -> anyhow::Result<()> {
    // `--help`, `--version` and a bad argument (with a suggestion) end here, as clap does.
    let cli = switchboard_server::cli::Cli::parse();
    if cli.print_config {
        return print_config(&cli);
    }
    let config = ServerConfig::from_cli(&cli, std::env::vars()).context("invalid configuration")?;
    // The same checks with --check-config and before a start: nothing is bound yet.
    switchboard_server::check(&config).context("invalid configuration")?;
    if let Some(file) = &cli.check_config {
        println!("ok: {}", file.display());
        return Ok(());
    }
    init_logs(&config)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let drained = runtime.block_on(async {
        let listeners = switchboard_server::Listeners::bind(&config)
            .await
            .with_context(|| format!("cannot bind {} / admin_bind", config.bind))?;
        let addr = listeners.public.local_addr()?;
        // The recorder first: the manager looks up its metric handles when it is created.
        switchboard_server::metrics::handle();
        let manager = switchboard_server::handler::new_manager(&config)?;
        // Signals are caught from before the address is printed: a SIGTERM sent as soon as
        // it is read drains instead of killing the process.
        let stop = termination();
        // The first line on stdout: scripts and tests wait for it.
        let mut stdout = std::io::stdout();
        writeln!(stdout, "listening on {addr}")?;
        if let Some(admin) = &listeners.admin {
            writeln!(stdout, "admin listening on {}", admin.local_addr()?)?;
        }
        stdout.flush()?;
        tracing::info!(%addr, node = %config.manager.node_id, "listening");
        switchboard_server::run(listeners, config, manager, stop).await
    })?;
    if !drained {
        tracing::warn!("shutdown deadline passed before every connection ended");
    }
    Ok(())
}

/// `--print-config`: the configuration as read, with sources; a configuration that would not
/// start is printed too, and stderr says why it would not.
fn print_config(cli: &switchboard_server::cli::Cli) -> anyhow::Result<()> {
    let explained =
        ServerConfig::explain_cli(cli, std::env::vars()).context("invalid configuration")?;
    let mut stdout = std::io::stdout();
    stdout.write_all(explained.to_toml().as_bytes())?;
    stdout.flush()?;
    if let Err(error) = explained
        .validate()
        .map_err(anyhow::Error::from)
        .and_then(|()| switchboard_server::check(&explained.config))
    {
        eprintln!("switchboard: note: this configuration would not start: {error:#}");
    }
    Ok(())
}

/// Installs the SIGTERM and SIGINT handlers now; the future resolves on the first of them.
fn termination() -> impl std::future::Future<Output = ()> {
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}

fn init_logs(config: &ServerConfig) -> anyhow::Result<()> {
    // Checked with the other settings already.
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .with_context(|| format!("log.level: invalid filter {:?}", config.log_level))?;
    // Colour only on a terminal: logs piped to a file or journald stay plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}
