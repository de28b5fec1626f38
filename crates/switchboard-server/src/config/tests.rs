use super::*;
use switchboard::{SlowConsumerPolicy, UserPolicy};

fn vars(pairs: &[(&str, &str)]) -> Result<ServerConfig, ConfigError> {
    ServerConfig::from_vars(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
}

#[test]
fn redis_tls_settings_need_a_rediss_url_and_verification() {
    let dev = ("SWITCHBOARD_DEV_MODE", "true");
    let ca = ("SWITCHBOARD_REDIS__CA_FILE", "/ca.pem");
    let plain = ("SWITCHBOARD_REDIS__URL", "redis://127.0.0.1:6379");
    let tls = ("SWITCHBOARD_REDIS__URL", "rediss://127.0.0.1:6380");
    assert_eq!(vars(&[dev, plain, ca]).unwrap_err().field, "redis.ca_file");
    assert!(vars(&[dev, tls, ca]).is_ok());
    let insecure = (
        "SWITCHBOARD_REDIS__URL",
        "rediss://127.0.0.1:6380/#insecure",
    );
    let e = vars(&[dev, insecure]).unwrap_err();
    assert_eq!(e.field, "redis.url");
    let cert = ("SWITCHBOARD_REDIS__CLIENT_CERT_FILE", "/c.pem");
    let e = vars(&[dev, tls, cert]).unwrap_err();
    assert_eq!(e.field, "redis.client_cert_file");
    let queue = ("SWITCHBOARD_REDIS__OUTBOUND_MAX_BYTES", "0");
    assert_eq!(
        vars(&[dev, tls, queue]).unwrap_err().field,
        "redis.outbound_max_bytes"
    );
}

const SECRET: &str = "0123456789abcdef0123456789abcdef";

#[test]
fn rpc_bounds_are_at_least_one_and_the_connections_is_the_librarys() {
    let dev = ("SWITCHBOARD_DEV_MODE", "true");
    let c = vars(&[dev, ("SWITCHBOARD_WEBHOOK__RPC_CONCURRENCY", "3")]).unwrap();
    assert_eq!(c.manager.limits.max_rpc_in_flight, 3);
    assert_eq!(
        ServerConfig::default().manager.limits.max_rpc_in_flight,
        8,
        "the default"
    );
    let e = vars(&[dev, ("SWITCHBOARD_WEBHOOK__RPC_CONCURRENCY", "0")]).unwrap_err();
    assert_eq!(e.field, "webhook.rpc_concurrency", "named as it was set");
    let e = vars(&[dev, ("SWITCHBOARD_WEBHOOK__RPC_MAX_IN_FLIGHT", "0")]).unwrap_err();
    assert_eq!(e.field, "webhook.rpc_max_in_flight");
    let url = ("SWITCHBOARD_WEBHOOK__RPC_URL", "http://127.0.0.1:9/rpc");
    assert_eq!(vars(&[dev, url]).unwrap_err().field, "webhook.secret");
    vars(&[dev, url, ("SWITCHBOARD_WEBHOOK__SECRET", "s")]).unwrap();
}

#[test]
fn dev_mode_only_when_asked_for() {
    let e = vars(&[]).unwrap_err();
    assert_eq!(e.field, "auth.jwt_secret");
    assert!(e.reason.contains("--dev"), "{e}");
    let c = vars(&[("SWITCHBOARD_DEV_MODE", "true")]).unwrap();
    assert!(c.dev_mode);
    assert_eq!(c.bind.to_string(), "127.0.0.1:8080");
    let c = ServerConfig::from_args(["--dev".to_owned()], []).unwrap();
    assert!(c.dev_mode && c.pages_enabled());
    let e = ServerConfig::from_args(["--deb".to_owned()], []).unwrap_err();
    assert!(e.reason.contains("unexpected argument '--deb'"), "{e}");
    assert!(
        e.reason.contains("tip: a similar argument exists: '--dev'"),
        "{e}"
    );
    let c = vars(&[("SWITCHBOARD_AUTH__JWT_SECRET", SECRET)]).unwrap();
    assert!(!c.dev_mode && !c.pages_enabled());
}

#[test]
fn config_file_as_one_argument_or_two() {
    let file = std::env::temp_dir().join(format!("sb-config-{}.toml", std::process::id()));
    std::fs::write(&file, "dev_mode = true\nbind = \"127.0.0.1:9999\"\n").unwrap();
    let path = file.display().to_string();
    for args in [
        vec![format!("--config={path}")],
        vec!["--config".into(), path.clone()],
    ] {
        let c = ServerConfig::from_args(args.clone(), []).unwrap();
        assert_eq!(c.bind.to_string(), "127.0.0.1:9999", "{args:?}");
    }
    let e = ServerConfig::from_args(["--config=".to_owned()], []).unwrap_err();
    assert!(e.reason.contains("--config <FILE>"), "{e}");
    let _ = std::fs::remove_file(file);
}

#[test]
fn secrets_must_be_real() {
    for var in ["SWITCHBOARD_AUTH__JWT_SECRET", "SWITCHBOARD_API__KEY"] {
        let e = vars(&[("SWITCHBOARD_DEV_MODE", "true"), (var, "")]).unwrap_err();
        assert!(e.reason.contains("empty"), "{var}: {e}");
    }
    let e = vars(&[("SWITCHBOARD_AUTH__JWT_SECRET", &SECRET[1..])]).unwrap_err();
    assert_eq!(e.field, "auth.jwt_secret");
    assert!(e.reason.contains("31 bytes"), "{e}");
}

#[test]
fn backend_urls_are_http_and_signed() {
    let proxy = (
        "SWITCHBOARD_AUTH__CONNECT_URL",
        "http://127.0.0.1:9/connect",
    );
    let e = vars(&[proxy]).unwrap_err();
    assert_eq!(
        e.field, "webhook.secret",
        "every call to the backend is signed"
    );
    let signed = ("SWITCHBOARD_WEBHOOK__SECRET", "s");
    let c = vars(&[proxy, signed]).unwrap();
    assert!(
        !c.dev_mode,
        "the connect proxy is auth enough: no JWT key, no dev mode"
    );
    let e = vars(&[("SWITCHBOARD_AUTH__CONNECT_URL", "ws://b/connect"), signed]).unwrap_err();
    assert_eq!(e.field, "auth.connect_url");
    let e = vars(&[proxy, signed, ("SWITCHBOARD_DEV_MODE", "true")]).unwrap_err();
    assert_eq!(
        e.field, "dev_mode",
        "dev mode contradicts the connect proxy"
    );
    let join = ("SWITCHBOARD_AUTH__JOIN_URL", "ftp://x");
    let e = vars(&[("SWITCHBOARD_DEV_MODE", "true"), join, signed]).unwrap_err();
    assert_eq!(e.field, "auth.join_url");
    let e = vars(&[proxy, signed, ("SWITCHBOARD_AUTH__PROXY_CONCURRENCY", "0")]).unwrap_err();
    assert_eq!(e.field, "auth");
    let c = vars(&[
        proxy,
        signed,
        ("SWITCHBOARD_AUTH__FORWARD_HEADERS", "Cookie, X-Session"),
    ])
    .unwrap();
    assert_eq!(c.proxy.forward_headers, ["cookie", "x-session"]);
}

#[test]
fn dev_mode_contradicts_a_key() {
    for (var, value) in [
        ("SWITCHBOARD_AUTH__JWT_SECRET", SECRET),
        ("SWITCHBOARD_AUTH__JWT_PUBLIC_KEY_FILE", "/etc/key.pem"),
    ] {
        let e = vars(&[("SWITCHBOARD_DEV_MODE", "true"), (var, value)]).unwrap_err();
        assert_eq!(e.field, "dev_mode", "{var}");
        assert!(e.reason.contains("contradicts"), "{e}");
    }
}

#[test]
fn an_api_without_a_key_listens_only_on_loopback() {
    let e = vars(&[
        ("SWITCHBOARD_DEV_MODE", "true"),
        ("SWITCHBOARD_ADMIN_BIND", "0.0.0.0:9090"),
    ])
    .unwrap_err();
    assert_eq!(e.field, "api.key");
    vars(&[
        ("SWITCHBOARD_DEV_MODE", "true"),
        ("SWITCHBOARD_ADMIN_BIND", "0.0.0.0:9090"),
        ("SWITCHBOARD_API__KEY", "k"),
    ])
    .unwrap();
    // Without dev mode and without a key the API is off (403), wherever it listens.
    vars(&[
        ("SWITCHBOARD_AUTH__JWT_SECRET", SECRET),
        ("SWITCHBOARD_ADMIN_BIND", "0.0.0.0:9090"),
    ])
    .unwrap();
}

#[test]
fn environment_names_map_to_fields() {
    let c = vars(&[
        ("SWITCHBOARD_DEV_MODE", "on"),
        ("SWITCHBOARD_LIMITS__MAX_PER_LOBBY", "7"),
        ("SWITCHBOARD_USER_POLICY", "multi"),
        ("SWITCHBOARD_HEALTH__PING_INTERVAL_MS", "1500"),
        ("SWITCHBOARD_QUEUE__ON_FULL", "drop"),
        (
            "SWITCHBOARD_ALLOWED_ORIGINS",
            "https://a.example, https://b.example/",
        ),
        ("OTHER_VAR", "ignored"),
    ])
    .unwrap();
    assert_eq!(c.manager.limits.max_per_lobby, 7);
    assert_eq!(c.manager.user_policy, UserPolicy::Multi);
    assert_eq!(c.manager.ping_interval, Duration::from_millis(1500));
    assert_eq!(c.manager.on_full, SlowConsumerPolicy::Drop);
    assert_eq!(
        c.allowed_origins,
        ["https://a.example", "https://b.example"]
    );
}

#[test]
fn bad_values_name_the_field() {
    let e = vars(&[("SWITCHBOARD_LIMITS__MAX_PER_LOBBY", "many")]).unwrap_err();
    assert_eq!(e.field, "limits.max_per_lobby");
    let e = vars(&[("SWITCHBOARD_LIMITS__MAX_PER_LOBBY", "0")]).unwrap_err();
    assert_eq!(e.field, "limits.max_per_lobby");
    let e = vars(&[("SWITCHBOARD_LIMITS__MAX_PER_LOBY", "3")]).unwrap_err();
    assert!(e.to_string().contains("unknown setting"), "{e}");
    let e = vars(&[
        ("SWITCHBOARD_REDIS__URL", "redis://127.0.0.1:1"),
        ("SWITCHBOARD_REDIS__NODE_TTL_MS", "1000"),
    ])
    .unwrap_err();
    assert_eq!(e.field, "redis.node_ttl_ms");
    let e = vars(&[("SWITCHBOARD_TRUSTED_PROXIES", "10.0.0.0/8,nope")]).unwrap_err();
    assert_eq!(e.field, "trusted_proxies");
}

#[test]
fn ipv6_prefix_and_mapped_proxies() {
    let c = vars(&[
        ("SWITCHBOARD_DEV_MODE", "true"),
        ("SWITCHBOARD_LIMITS__IPV6_PREFIX", "56"),
        (
            "SWITCHBOARD_TRUSTED_PROXIES",
            "::ffff:10.0.0.0/104, fd00::/8",
        ),
    ])
    .unwrap();
    assert_eq!(c.manager.limits.ipv6_prefix, 56);
    let nets: Vec<String> = c.trusted_proxies.iter().map(|n| n.to_string()).collect();
    assert_eq!(nets, ["10.0.0.0/8", "fd00::/8"]);
    for bad in ["47", "129", "300"] {
        let e = vars(&[
            ("SWITCHBOARD_DEV_MODE", "true"),
            ("SWITCHBOARD_LIMITS__IPV6_PREFIX", bad),
        ])
        .unwrap_err();
        assert_eq!(e.field, "limits.ipv6_prefix", "{bad}");
    }
}

#[test]
fn dev_mode_is_never_on_a_public_bind() {
    let e = vars(&[("SWITCHBOARD_BIND", "0.0.0.0:8080")]).unwrap_err();
    assert_eq!(e.field, "auth.jwt_secret");
    let e = vars(&[
        ("SWITCHBOARD_BIND", "0.0.0.0:8080"),
        ("SWITCHBOARD_DEV_MODE", "true"),
    ])
    .unwrap_err();
    assert_eq!(e.field, "dev_mode");
    let c = vars(&[
        ("SWITCHBOARD_BIND", "0.0.0.0:8080"),
        ("SWITCHBOARD_AUTH__JWT_SECRET", SECRET),
    ])
    .unwrap();
    assert!(!c.dev_mode);
}

#[test]
fn toml_file_then_environment_wins() {
    let dir = std::env::temp_dir().join(format!("sb-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("c.toml");
    let toml = r#"
bind = "127.0.0.1:9000"
dev_mode = true
user_policy = "reject"
trusted_proxies = ["10.0.0.0/8", "192.168.1.1"]
[limits]
max_per_lobby = 3
max_connections = 50
[client]
allow_direct = false
"#;
    std::fs::write(&file, toml).unwrap();
    let env = [(
        "SWITCHBOARD_LIMITS__MAX_PER_LOBBY".to_string(),
        "4".to_string(),
    )];
    let c = ServerConfig::load(Some(&file), env).unwrap();
    assert_eq!(c.bind.port(), 9000);
    assert_eq!(c.manager.user_policy, UserPolicy::Reject);
    assert_eq!(c.manager.limits.max_per_lobby, 4, "environment wins");
    assert_eq!(c.manager.limits.max_connections, 50);
    assert!(!c.manager.client.allow_direct);
    assert_eq!(c.trusted_proxies.len(), 2);
    std::fs::write(&file, "[limits]\nmax_per_lobby = \"ten\"\n").unwrap();
    let e = ServerConfig::load(Some(&file), []).unwrap_err();
    assert_eq!(e.field, "limits.max_per_lobby");
    assert!(e.reason.contains("c.toml"), "{e}");
    std::fs::write(&file, "[limits\n").unwrap();
    let e = ServerConfig::load(Some(&file), []).unwrap_err();
    assert!(e.reason.contains("TOML"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_example_file_is_valid_and_documents_every_name() {
    let example = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../config/switchboard.example.toml"
    ));
    let mut c = ServerConfig::default();
    c.apply_toml(example).unwrap();
    // Each name appears as an assignment, set or commented out, in its section.
    for name in KNOWN {
        let (section, key) = name.rsplit_once('.').unwrap_or(("", name));
        let in_section = if section.is_empty() {
            example.split("\n[").next().unwrap()
        } else {
            example
                .split(&format!("[{section}]"))
                .nth(1)
                .unwrap_or_else(|| panic!("section [{section}] missing"))
        };
        let assigned = in_section.lines().any(|l| {
            l.trim_start_matches('#')
                .trim_start()
                .starts_with(&format!("{key} ="))
        });
        assert!(assigned, "{name} is not documented in the example config");
    }
}

#[test]
fn secrets_never_show_in_debug() {
    let c = vars(&[
        (
            "SWITCHBOARD_AUTH__JWT_SECRET",
            "hunter2-hunter2-hunter2-hunter2!",
        ),
        ("SWITCHBOARD_API__KEY", "k3y"),
    ])
    .unwrap();
    let shown = format!("{c:?}");
    assert!(
        !shown.contains("hunter2") && !shown.contains("k3y"),
        "{shown}"
    );
}

/// The names the example file shows with an example value instead of a default, commented
/// out: those without a default (secrets, URLs, files, optional names) and the random node id.
const NO_DEFAULT_IN_EXAMPLE: &[&str] = &[
    "auth.jwt_secret",
    "auth.jwt_public_key_file",
    "auth.issuer",
    "auth.audience",
    "auth.connect_url",
    "auth.join_url",
    "api.key",
    "admin_bind",
    "webhook.url",
    "webhook.secret",
    "webhook.rpc_url",
    "webhook.ca_file",
    "redis.url",
    "redis.node_id",
    "redis.ca_file",
    "redis.client_cert_file",
    "redis.client_key_file",
];

/// The example file's `key = value` line of each setting (commented or not), by dotted name.
fn example_lines(example: &str) -> std::collections::BTreeMap<String, (String, bool)> {
    let mut lines = std::collections::BTreeMap::new();
    let mut section = String::new();
    for line in example.lines() {
        if let Some(name) = line.strip_prefix('[') {
            section = name.trim_end_matches(']').to_owned();
            continue;
        }
        let commented = line.starts_with('#');
        let assignment = line.trim_start_matches('#').trim_start();
        let Some((key, _)) = assignment.split_once(" = ") else {
            continue;
        };
        let name = if section.is_empty() {
            key.to_owned()
        } else {
            format!("{section}.{key}")
        };
        if KNOWN.contains(&name.as_str()) {
            // The first one: a later `key = ...` in prose does not count.
            lines
                .entry(name)
                .or_insert((assignment.to_owned(), commented));
        }
    }
    lines
}

#[test]
fn every_default_in_the_example_file_is_the_real_one() {
    let example = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../config/switchboard.example.toml"
    ));
    let lines = example_lines(example);
    let defaults = ServerConfig::default();
    for name in KNOWN {
        let (assignment, commented) = &lines[*name];
        let default = defaults.get(name).unwrap();
        if NO_DEFAULT_IN_EXAMPLE.contains(name) {
            assert!(
                default.is_none() || *name == "redis.node_id",
                "{name} has a default ({default:?}): show it in the example"
            );
            assert!(
                commented,
                "{name} has no default: its example value stays commented out"
            );
            continue;
        }
        assert!(default.is_some(), "{name} has no default: list it as such");
        // The example's value, read as the file reader reads it, gives the default back.
        let settings = toml_settings(assignment)
            .unwrap_or_else(|e| panic!("{name}: {assignment:?} is not TOML: {e}"));
        let mut shown = ServerConfig::default();
        for (_, value) in settings {
            shown.set(name, &value).unwrap();
        }
        assert_eq!(
            shown.get(name).unwrap(),
            default,
            "the example says {assignment:?}, the default is {default:?}"
        );
    }
}

#[test]
fn every_name_has_a_getter_that_set_reads_back() {
    let busy = vars(&[
        ("SWITCHBOARD_AUTH__JWT_SECRET", SECRET),
        ("SWITCHBOARD_API__KEY", "k"),
        (
            "SWITCHBOARD_ALLOWED_ORIGINS",
            "https://a.example,https://b.example",
        ),
        ("SWITCHBOARD_TRUSTED_PROXIES", "10.0.0.0/8,192.168.1.1"),
        ("SWITCHBOARD_ADMIN_BIND", "127.0.0.1:9090"),
        ("SWITCHBOARD_WEBHOOK__URL", "http://127.0.0.1:9/hook"),
        ("SWITCHBOARD_WEBHOOK__SECRET", "old,new"),
        ("SWITCHBOARD_WEBHOOK__MESSAGE_TYPES", "chat,\"quoted\""),
        ("SWITCHBOARD_REDIS__URL", "redis://:pw@127.0.0.1:6379"),
        ("SWITCHBOARD_USER_POLICY", "multi"),
        ("SWITCHBOARD_QUEUE__ON_FULL", "drop"),
        ("SWITCHBOARD_LOG__FORMAT", "json"),
        ("SWITCHBOARD_LOG__SUMMARY_INTERVAL_MS", "0"),
        ("SWITCHBOARD_PAGES__ENABLED", "true"),
        ("SWITCHBOARD_TEST_CLOCK_OFFSET_MS", "-5"),
    ])
    .unwrap();
    for config in [ServerConfig::default(), busy] {
        let mut copy = ServerConfig::default();
        for name in KNOWN {
            let value = config
                .get(name)
                .unwrap_or_else(|e| panic!("{name} has no getter: {e}"));
            let Some(value) = value else { continue };
            let text = format!("x = {}", {
                let mut out = String::new();
                print::write_value(&mut out, &value);
                out
            });
            for (_, value) in toml_settings(&text).unwrap() {
                copy.set(name, &value)
                    .unwrap_or_else(|e| panic!("{name} = {value:?}: {e}"));
            }
        }
        for name in KNOWN {
            assert_eq!(copy.get(name), config.get(name), "{name}");
        }
    }
    assert!(ServerConfig::default().get("limits.nope").is_err());
}

#[test]
fn sources_default_file_environment_and_command_line() {
    let dir = std::env::temp_dir().join(format!("sb-sources-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("c.toml");
    std::fs::write(
        &file,
        "[limits]\nmax_per_lobby = 7\nmax_connections = 50\n[api]\nkey = \"file-key\"\n",
    )
    .unwrap();
    let cli = <crate::cli::Cli as clap::Parser>::try_parse_from([
        "switchboard",
        "--dev",
        "--config",
        file.to_str().unwrap(),
    ])
    .unwrap();
    let env = [
        ("SWITCHBOARD_LIMITS__MAX_CONNECTIONS", "60"),
        (
            "SWITCHBOARD_REDIS__URL",
            "redis://app:s3cret@127.0.0.1:6379/0",
        ),
        ("SWITCHBOARD_WEBHOOK__SECRET", "whsec-1,whsec-2"),
        ("SWITCHBOARD_WEBHOOK__URL", "http://127.0.0.1:9/hook"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    let explained = ServerConfig::explain_cli(&cli, env).unwrap();
    assert_eq!(*explained.source("limits.max_per_ip"), Source::Default);
    assert_eq!(
        *explained.source("limits.max_per_lobby"),
        Source::File(file.clone())
    );
    assert_eq!(
        *explained.source("limits.max_connections"),
        Source::Env("SWITCHBOARD_LIMITS__MAX_CONNECTIONS".into()),
        "the environment wins over the file"
    );
    assert_eq!(*explained.source("dev_mode"), Source::CommandLine("--dev"));
    let printed = explained.to_toml();
    let line = |name: &str| {
        printed
            .lines()
            .find(|l| l.trim_start_matches("# ").starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} in {printed}"))
    };
    assert!(
        line("limits.max_per_ip").ends_with("# default"),
        "{printed}"
    );
    assert!(
        line("limits.max_per_lobby").starts_with("limits.max_per_lobby = 7 ")
            && line("limits.max_per_lobby").ends_with(&format!("# file {}", file.display())),
        "{printed}"
    );
    assert!(
        line("limits.max_connections").starts_with("limits.max_connections = 60 ")
            && line("limits.max_connections")
                .ends_with("# environment SWITCHBOARD_LIMITS__MAX_CONNECTIONS"),
        "{printed}"
    );
    assert!(line("api.key").starts_with("# api.key = (redacted) "));
    assert!(line("webhook.secret").starts_with("# webhook.secret = (redacted) "));
    assert!(
        line("redis.url").starts_with("redis.url = \"redis://app:REDACTED@127.0.0.1:6379/0\""),
        "{printed}"
    );
    for secret in ["file-key", "whsec", "s3cret"] {
        assert!(!printed.contains(secret), "{secret} in {printed}");
    }
    assert_eq!(
        printed.lines().count(),
        KNOWN.len() + 3,
        "one line per setting after the header"
    );
    // The output is a config file that gives the same settings back (the secrets aside).
    let mut again = ServerConfig::default();
    again.apply_toml(&printed).unwrap();
    for name in KNOWN {
        if !SECRETS.contains(name) && *name != "redis.url" {
            assert_eq!(again.get(name), explained.config.get(name), "{name}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_misspelt_name_gets_a_suggestion() {
    for (var, meant) in [
        ("SWITCHBOARD_LIMITS__MAX_PER_LOBY", "limits.max_per_lobby"),
        ("SWITCHBOARD_LIMITS_MAX_PER_LOBBY", "limits.max_per_lobby"),
        ("SWITCHBOARD_MAX_PER_LOBBY", "limits.max_per_lobby"),
        (
            "SWITCHBOARD_LOG__SUMMARY_INTERVAL",
            "log.summary_interval_ms",
        ),
    ] {
        let e = vars(&[("SWITCHBOARD_DEV_MODE", "true"), (var, "3")]).unwrap_err();
        assert!(
            e.reason
                .contains(&format!("unknown setting; did you mean `{meant}`?")),
            "{var}: {e}"
        );
    }
    let e = vars(&[("SWITCHBOARD_FLUX_CAPACITOR", "1")]).unwrap_err();
    assert_eq!(
        e.reason,
        "unknown setting (from SWITCHBOARD_FLUX_CAPACITOR)"
    );
}

#[test]
fn a_combination_that_cannot_work_says_where_its_setting_came_from() {
    let e = vars(&[
        ("SWITCHBOARD_DEV_MODE", "true"),
        ("SWITCHBOARD_LIMITS__MAX_PER_LOBBY", "0"),
    ])
    .unwrap_err();
    assert_eq!(e.field, "limits.max_per_lobby");
    assert!(
        e.reason
            .ends_with("(from SWITCHBOARD_LIMITS__MAX_PER_LOBBY)"),
        "{e}"
    );
    let e = ServerConfig::from_args(
        ["--dev".to_owned()],
        [("SWITCHBOARD_BIND".to_owned(), "0.0.0.0:1".to_owned())],
    )
    .unwrap_err();
    assert_eq!(e.field, "dev_mode");
    assert!(e.reason.ends_with("(from --dev)"), "{e}");
    let e = vars(&[]).unwrap_err();
    assert!(
        !e.reason.contains("(from"),
        "a default: no source to name: {e}"
    );
}

#[test]
fn log_settings() {
    let dev = ("SWITCHBOARD_DEV_MODE", "true");
    assert_eq!(vars(&[dev]).unwrap().log_format, LogFormat::Text);
    for (value, format) in [
        ("text", LogFormat::Text),
        ("human", LogFormat::Text),
        ("json", LogFormat::Json),
    ] {
        let c = vars(&[dev, ("SWITCHBOARD_LOG__FORMAT", value)]).unwrap();
        assert_eq!(c.log_format, format, "{value}");
    }
    let e = vars(&[dev, ("SWITCHBOARD_LOG__FORMAT", "xml")]).unwrap_err();
    assert!(e.reason.contains("expected text or json"), "{e}");
    let e = vars(&[dev, ("SWITCHBOARD_LOG__LEVEL", "switchboard=loud")]).unwrap_err();
    assert_eq!(e.field, "log.level");
    let c = vars(&[dev, ("SWITCHBOARD_LOG__SUMMARY_INTERVAL_MS", "0")]).unwrap();
    assert!(c.log_summary_interval.is_zero(), "0 turns it off");
    let e = vars(&[dev, ("SWITCHBOARD_LOG__SUMMARY_INTERVAL_MS", "500")]).unwrap_err();
    assert_eq!(e.field, "log.summary_interval_ms");
    assert_eq!(
        ServerConfig::default().log_summary_interval,
        Duration::from_secs(60)
    );
}
