//! The binary's command line for operators: `--print-config` (sources, redaction, output that
//! reads back), `--check-config FILE` (good and bad files, without binding or connecting) and
//! the periodic `summary` log line, each from the real binary.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const JWT_SECRET: &str = "a-jwt-secret-of-at-least-32-bytes!!";

/// A scratch directory for this test, removed at the end.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sb-cli-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The binary with exactly these `SWITCHBOARD_*` variables (none inherited from the test's
/// own environment).
fn switchboard(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    for (name, _) in std::env::vars() {
        if name.starts_with("SWITCHBOARD_") {
            cmd.env_remove(name);
        }
    }
    cmd.args(args).envs(env.iter().copied());
    cmd
}

fn run(args: &[&str], env: &[(&str, &str)]) -> (Output, String, String) {
    let out = switchboard(args, env).output().unwrap();
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    let stderr = String::from_utf8(out.stderr.clone()).unwrap();
    (out, stdout, stderr)
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `name = value` of each line of a `--print-config` output, without the source comment.
fn settings(printed: &str) -> Vec<String> {
    printed
        .lines()
        .filter(|l| !l.starts_with("# The") && l.contains(" # "))
        .map(|l| l.rsplit_once(" # ").unwrap().0.trim_end().to_owned())
        .collect()
}

/// The line of `name` (set or commented out) in a `--print-config` output.
fn line<'a>(printed: &'a str, name: &str) -> &'a str {
    printed
        .lines()
        .find(|l| l.trim_start_matches("# ").starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} in {printed}"))
}

#[test]
fn print_config_shows_each_source_redacts_secrets_and_reads_back() {
    let dir = Dir::new("print");
    let file = dir.file(
        "switchboard.toml",
        "[limits]\nmax_per_lobby = 7\nmax_connections = 50\n\n[api]\nkey = \"file-api-key-123\"\n",
    );
    let env = [
        ("SWITCHBOARD_LIMITS__MAX_CONNECTIONS", "60"),
        ("SWITCHBOARD_AUTH__JWT_SECRET", JWT_SECRET),
        (
            "SWITCHBOARD_WEBHOOK__URL",
            "http://hook:hook-pass@127.0.0.1:9/hook",
        ),
        ("SWITCHBOARD_WEBHOOK__SECRET", "whsec-old,whsec-new"),
        (
            "SWITCHBOARD_REDIS__URL",
            "redis://:redis-pass@127.0.0.1:1/0",
        ),
        ("SWITCHBOARD_REDIS__NODE_ID", "n1"),
    ];
    let (out, printed, stderr) = run(&["--config", path(&file), "--print-config"], &env);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr, "", "a configuration that starts: no note");
    // Each source, as it is.
    let source = |name: &str| line(&printed, name).rsplit_once(" # ").unwrap().1;
    assert!(line(&printed, "limits.max_per_ip").starts_with("limits.max_per_ip = 100 "));
    assert_eq!(source("limits.max_per_ip"), "default");
    assert!(line(&printed, "limits.max_per_lobby").starts_with("limits.max_per_lobby = 7 "));
    assert_eq!(
        source("limits.max_per_lobby"),
        format!("file {}", file.display())
    );
    assert!(line(&printed, "limits.max_connections").starts_with("limits.max_connections = 60 "));
    assert_eq!(
        source("limits.max_connections"),
        "environment SWITCHBOARD_LIMITS__MAX_CONNECTIONS",
        "the environment wins over the file"
    );
    // Secrets: named, never shown.
    for secret in [
        "file-api-key-123",
        JWT_SECRET,
        "whsec-",
        "redis-pass",
        "hook-pass",
    ] {
        assert!(!printed.contains(secret), "{secret} shown in {printed}");
    }
    assert!(line(&printed, "auth.jwt_secret").starts_with("# auth.jwt_secret = (redacted) "));
    assert!(line(&printed, "api.key").starts_with("# api.key = (redacted) "));
    assert!(line(&printed, "webhook.secret").starts_with("# webhook.secret = (redacted) "));
    assert_eq!(
        source("auth.jwt_secret"),
        "environment SWITCHBOARD_AUTH__JWT_SECRET"
    );
    assert!(
        line(&printed, "redis.url").starts_with("redis.url = \"redis://:REDACTED@127.0.0.1:1/0\""),
        "{printed}"
    );
    assert!(
        line(&printed, "webhook.url")
            .starts_with("webhook.url = \"http://hook:REDACTED@127.0.0.1:9/hook\""),
        "{printed}"
    );
    assert!(line(&printed, "log.format").starts_with("log.format = \"text\" "));

    // Read back as a file, with the secrets given again: a valid configuration, the same one.
    let again = dir.file("printed.toml", &printed);
    let secrets = [
        ("SWITCHBOARD_AUTH__JWT_SECRET", JWT_SECRET),
        ("SWITCHBOARD_WEBHOOK__SECRET", "whsec-old,whsec-new"),
        ("SWITCHBOARD_API__KEY", "file-api-key-123"),
    ];
    let (out, stdout, stderr) = run(&["--check-config", path(&again)], &secrets);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.trim(), format!("ok: {}", again.display()));
    let (out, reprinted, stderr) = run(&["--config", path(&again), "--print-config"], &secrets);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(settings(&reprinted), settings(&printed));
    assert_eq!(
        settings(&printed).len(),
        switchboard_server::config::KNOWN.len(),
        "one line per setting"
    );
    assert_eq!(
        line(&reprinted, "limits.max_connections")
            .rsplit_once(" # ")
            .unwrap()
            .1,
        format!("file {}", again.display())
    );
    // The secrets are really not in it: without them its webhook has no signing secret.
    let (out, _, stderr) = run(&["--check-config", path(&again)], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("webhook.secret: is required"), "{stderr}");
}

#[test]
fn print_config_of_a_configuration_that_would_not_start_says_why() {
    let (out, printed, stderr) = run(&["--print-config"], &[]);
    assert!(out.status.success(), "{stderr}");
    assert!(line(&printed, "dev_mode").starts_with("dev_mode = false "));
    assert!(
        stderr.contains("would not start: auth.jwt_secret: no auth configured"),
        "{stderr}"
    );
    let (out, printed, _) = run(&["--dev", "--print-config"], &[]);
    assert!(out.status.success());
    assert!(line(&printed, "dev_mode").ends_with("# command line --dev"));
    // A value that cannot be read at all: nothing to print.
    let (out, printed, stderr) = run(
        &["--print-config"],
        &[("SWITCHBOARD_LIMITS__MAX_PER_LOBBY", "lots")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(printed, "");
    assert!(stderr.contains("limits.max_per_lobby"), "{stderr}");
}

#[test]
fn check_config_accepts_a_good_file_without_binding_or_connecting() {
    let dir = Dir::new("good");
    // The port is taken and Redis is not there: a start would fail, a check does not try.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let bind = held.local_addr().unwrap();
    let file = dir.file(
        "good.toml",
        &format!(
            "bind = \"{bind}\"\nuser_policy = \"multi\"\n\n[auth]\njwt_secret = \"{JWT_SECRET}\"\n\n\
             [redis]\nurl = \"redis://127.0.0.1:1\"\n\n[log]\nformat = \"human\"\n"
        ),
    );
    let (out, stdout, stderr) = run(&["--check-config", path(&file)], &[]);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout, format!("ok: {}\n", file.display()));
    assert_eq!(stderr, "");
    // --check-config names the file: --config with it is a mistake.
    let (out, _, stderr) = run(
        &["--check-config", path(&file), "--config", path(&file)],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("cannot be used with"), "{stderr}");
}

#[test]
fn check_config_names_the_bad_setting() {
    let dir = Dir::new("bad");
    let dev = "dev_mode = true\n";
    let missing_key = dir.0.join("missing.pem");
    /// What is wrong, the file, the environment, what the error says.
    type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>, &'a [&'a str]);
    let cases: Vec<Case> = vec![
        (
            "unknown name, with a suggestion",
            format!("{dev}[limits]\nmax_per_loby = 3\n"),
            vec![],
            &[
                "limits.max_per_loby: unknown setting",
                "did you mean `limits.max_per_lobby`?",
            ],
        ),
        (
            "bad value",
            format!("{dev}[queue]\non_full = \"explode\"\n"),
            vec![],
            &["queue.on_full", "close or drop"],
        ),
        (
            "bad combination: dev mode off loopback",
            format!("{dev}bind = \"0.0.0.0:8080\"\n"),
            vec![],
            &["dev_mode", "non-loopback", "(in "],
        ),
        (
            "bad combination: node TTL under two heartbeats",
            format!(
                "{dev}[redis]\nurl = \"redis://127.0.0.1:1\"\nheartbeat_ms = 2000\nnode_ttl_ms = 3000\n"
            ),
            vec![],
            &["redis.node_ttl_ms", "twice"],
        ),
        (
            "the environment is applied as at start-up",
            dev.to_owned(),
            vec![("SWITCHBOARD_LIMITS__MAX_PER_LOBBY", "0")],
            &["limits.max_per_lobby: must be at least 1 (from SWITCHBOARD_LIMITS__MAX_PER_LOBBY)"],
        ),
        (
            "no auth",
            String::new(),
            vec![],
            &["auth.jwt_secret", "no auth configured"],
        ),
        (
            "a start-up check beyond the settings: the key file",
            format!(
                "[auth]\njwt_public_key_file = \"{}\"\n",
                missing_key.display()
            ),
            vec![],
            &["auth.jwt_public_key_file", "cannot read"],
        ),
        (
            "a start-up check beyond the settings: the Redis URL",
            format!("{dev}[redis]\nurl = \"http://127.0.0.1:6379\"\n"),
            vec![],
            &["redis.url"],
        ),
        (
            "a bad log filter",
            format!("{dev}[log]\nlevel = \"switchboard=loud\"\n"),
            vec![],
            &["log.level"],
        ),
        (
            "a summary more often than the samples",
            format!("{dev}[log]\nsummary_interval_ms = 10\n"),
            vec![],
            &["log.summary_interval_ms"],
        ),
        (
            "not TOML",
            "[limits\n".to_owned(),
            vec![],
            &["not valid TOML"],
        ),
    ];
    for (i, (what, text, env, needles)) in cases.iter().enumerate() {
        let file = dir.file(&format!("bad-{i}.toml"), text);
        let (out, stdout, stderr) = run(&["--check-config", path(&file)], env);
        assert_eq!(out.status.code(), Some(2), "{what}: {stderr}");
        assert_eq!(stdout, "", "{what}");
        assert!(
            stderr.starts_with("switchboard: invalid configuration: "),
            "{what}: {stderr}"
        );
        for needle in *needles {
            assert!(stderr.contains(needle), "{what}: {needle} in {stderr}");
        }
    }
    let (out, _, stderr) = run(&["--check-config", path(&dir.0.join("nowhere.toml"))], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("cannot read"), "{stderr}");
}

#[test]
fn help_lists_the_config_options() {
    let (out, help, _) = run(&["--help"], &[]);
    assert!(out.status.success());
    for needle in [
        "--print-config",
        "source",
        "secrets redacted",
        "--check-config <FILE>",
        "without binding a port or connecting to Redis",
    ] {
        assert!(help.contains(needle), "{needle} in {help}");
    }
}

/// A server started by a test, killed (by its own handle) when the test ends.
struct Server {
    child: Child,
    addr: std::net::SocketAddr,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(env: &[(&str, &str)]) -> Self {
        let mut child = switchboard(&["--dev"], env)
            .env("SWITCHBOARD_BIND", "127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (send, lines) = tokio::sync::mpsc::unbounded_channel();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in stderr.lines() {
                let Ok(line) = line else { return };
                if send.send(line).is_err() {
                    return;
                }
            }
        });
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let addr = first
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("first line was {first:?}"))
            .parse()
            .unwrap();
        Self {
            child,
            addr,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next stderr line that `wanted` accepts, within 10 s.
    async fn line(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .unwrap_or_else(|_| panic!("no {what} line in:\n{}", self.seen.join("\n")))
                .unwrap_or_else(|| panic!("stderr ended before {what}"));
            self.seen.push(line.clone());
            if wanted(&line) {
                return line;
            }
        }
    }
}

/// `name=value` of a text log line.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|part| part.strip_prefix(name)?.strip_prefix('='))
}

#[tokio::test]
async fn a_summary_line_every_period_and_a_line_per_connect_and_disconnect() {
    let mut server = Server::start(&[("SWITCHBOARD_LOG__SUMMARY_INTERVAL_MS", "1000")]);
    let summary = |l: &str| l.contains(" summary ");
    let first = server.line("summary", summary).await;
    assert!(first.contains(" INFO "), "{first}");
    for name in [
        "connections",
        "lobbies",
        "users",
        "connects_per_s",
        "disconnects_per_s",
        "messages_in_per_s",
        "messages_out_per_s",
        "dropped",
        "slow_consumer_closes",
        "period_s",
    ] {
        assert!(field(&first, name).is_some(), "{name} in {first}");
    }
    assert_eq!(field(&first, "node"), None, "a single node has no node id");

    let client = common::connect(server.addr, "lobby-1", "alice").await;
    let connected = server.line("connect", |l| l.contains(" connected ")).await;
    assert_eq!(field(&connected, "user"), Some("alice"), "{connected}");
    server
        .line("summary with the connection", |l| {
            summary(l) && field(l, "connections") == Some("1")
        })
        .await;
    client.close().await;
    let disconnected = server
        .line("disconnect", |l| l.contains(" disconnected "))
        .await;
    assert_eq!(field(&disconnected, "user"), Some("alice"));
    assert!(field(&disconnected, "reason").is_some(), "{disconnected}");
    // The first summary without the connection covers the period it closed in.
    let after = server
        .line("summary after the close", |l| {
            summary(l) && field(l, "connections") == Some("0")
        })
        .await;
    let rate: f64 = field(&after, "disconnects_per_s").unwrap().parse().unwrap();
    assert!(rate > 0.0, "{after}");
    assert!(
        server.seen.iter().all(|l| !l.contains('\u{1b}')),
        "no colour codes when stderr is not a terminal: {:?}",
        server.seen
    );
}

#[tokio::test]
async fn json_summary_lines_carry_the_node_id_in_cluster_mode() {
    // Redis is not there: the node serves with local limits and still summarises.
    let mut server = Server::start(&[
        ("SWITCHBOARD_LOG__FORMAT", "json"),
        ("SWITCHBOARD_LOG__SUMMARY_INTERVAL_MS", "1000"),
        ("SWITCHBOARD_REDIS__URL", "redis://127.0.0.1:1"),
        ("SWITCHBOARD_REDIS__NODE_ID", "summary_node"),
        ("SWITCHBOARD_REDIS__HEARTBEAT_MS", "100"),
        ("SWITCHBOARD_REDIS__NODE_TTL_MS", "300"),
    ]);
    let line = server
        .line("JSON summary", |l| l.contains("\"summary\""))
        .await;
    let json: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(json["level"], "INFO");
    let fields = &json["fields"];
    assert_eq!(fields["message"], "summary");
    assert_eq!(fields["node"], "summary_node");
    assert_eq!(fields["connections"], 0);
    assert!(fields["messages_out_per_s"].is_f64(), "{line}");
    assert!(fields["slow_consumer_closes"].is_u64(), "{line}");
}
