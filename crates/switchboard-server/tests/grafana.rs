//! The Grafana dashboard (deploy/grafana/switchboard.json) and the Prometheus rules
//! (deploy/prometheus/switchboard-rules.yml) query only what the real binary exports: every
//! metric name in their PromQL, with the labels (and label values) they match and group by.
//! Scraped from a standalone server and a cluster node (a real `redis-server`), both after a
//! little traffic so that the histograms have samples.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::redis::Redis;
use common::*;
use serde_json::{Value, json};

/// Labels Prometheus adds to every series at scrape time: never on `/metrics` itself.
const TARGET_LABELS: &[&str] = &["job", "instance"];

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

// ------------------------------------------------------------------------------------------
// What a server exports.

#[derive(Debug, Default)]
struct Family {
    kind: String,
    /// Label name -> every value seen.
    labels: BTreeMap<String, BTreeSet<String>>,
}

/// Metric families of a Prometheus text scrape, by name (`# TYPE` lines; a histogram's
/// `_bucket`/`_sum`/`_count` samples count under its own name).
#[derive(Debug, Default)]
struct Exported {
    families: BTreeMap<String, Family>,
}

impl Exported {
    fn parse(text: &str) -> Exported {
        let mut families: BTreeMap<String, Family> = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                families.entry(name.to_owned()).or_default().kind = kind.trim().to_owned();
            }
        }
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let end = line.find(['{', ' ']).unwrap();
            let sample = &line[..end];
            let family = if families.contains_key(sample) {
                sample
            } else {
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .filter_map(|s| sample.strip_suffix(s))
                    .find(|base| families.get(*base).is_some_and(|f| f.kind == "histogram"))
                    .unwrap_or_else(|| panic!("sample {sample} has no # TYPE"))
            };
            let labels = &mut families.get_mut(family).unwrap().labels;
            if line[end..].starts_with('{') {
                for (name, value) in parse_labels(&line[end + 1..]) {
                    labels.entry(name).or_default().insert(value);
                }
            }
        }
        Exported { families }
    }

    fn merge(&mut self, other: Exported) {
        for (name, family) in other.families {
            let mine = self.families.entry(name).or_default();
            mine.kind = family.kind;
            for (label, values) in family.labels {
                mine.labels.entry(label).or_default().extend(values);
            }
        }
    }

    /// The family a series name belongs to: itself, or a histogram's for its
    /// `_bucket`/`_sum`/`_count` (and only a histogram's).
    fn family(&self, series: &str) -> Option<(&str, &Family)> {
        if let Some((name, f)) = self.families.get_key_value(series) {
            return Some((name, f));
        }
        ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            let base = series.strip_suffix(suffix)?;
            let (name, f) = self.families.get_key_value(base)?;
            (f.kind == "histogram").then_some((name.as_str(), f))
        })
    }
}

/// `a="x",b="y\"z"} 1` -> [(a, x), (b, y"z)].
fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        assert_eq!(chars.next(), Some('"'), "label {name} in {s}");
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => value.push(chars.next().unwrap()),
                '"' => break,
                c => value.push(c),
            }
        }
        out.push((name.trim().to_owned(), value));
        match chars.next() {
            Some(',') if chars.peek() != Some(&'}') => {}
            _ => return out,
        }
    }
}

// ------------------------------------------------------------------------------------------
// What the dashboard and the rules query.

#[derive(Debug, Clone, PartialEq)]
struct Selector {
    name: String,
    /// (label, operator, value)
    matchers: Vec<(String, String, String)>,
}

/// The metric selectors of one PromQL expression and the labels it groups or matches by
/// (`by`, `without`, `on`, `ignoring`, `group_left`, `group_right`).
#[derive(Debug, Default)]
struct Query {
    selectors: Vec<Selector>,
    grouping: Vec<String>,
}

const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// A small PromQL tokenizer: identifiers (`[A-Za-z_:][A-Za-z0-9_:]*`) not followed by `(`
/// are metric names, unless they are keywords; `{...}` after one holds its matchers; `[...]`
/// (ranges, subqueries, Grafana's `$__rate_interval`) and string literals are skipped.
fn parse_promql(expr: &str) -> Query {
    // Operators, and aggregations (followed by `by (...)` before their parenthesis).
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut q = Query::default();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < chars.len() && chars[*i].is_whitespace() {
            *i += 1;
        }
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c.is_ascii_digit() || c == '.' {
            // Numbers and durations (0.99, 5m, 1e3).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if is_ident_start(c) {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            skip_ws(&mut j);
            let next = chars.get(j).copied();
            if GROUPING.contains(&word.as_str()) {
                if next == Some('(') {
                    let close = j + chars[j..].iter().position(|c| *c == ')').unwrap();
                    let inside: String = chars[j + 1..close].iter().collect();
                    q.grouping.extend(
                        inside
                            .split(',')
                            .map(str::trim)
                            .filter(|l| !l.is_empty())
                            .map(str::to_owned),
                    );
                    i = close + 1;
                }
            } else if next == Some('(') || KEYWORDS.contains(&word.as_str()) {
                // A function or an aggregation: its arguments are read as they come.
            } else {
                let mut selector = Selector {
                    name: word,
                    matchers: Vec::new(),
                };
                if next == Some('{') {
                    let (matchers, end) = parse_matchers(&chars, j + 1);
                    selector.matchers = matchers;
                    i = end;
                }
                q.selectors.push(selector);
            }
        } else {
            i += 1;
        }
    }
    q
}

/// Reads `label op "value", ...}` from `start`; returns them and the index after `}`.
fn parse_matchers(chars: &[char], start: usize) -> (Vec<(String, String, String)>, usize) {
    let mut out = Vec::new();
    let mut i = start;
    loop {
        while i < chars.len() && (chars[i].is_whitespace() || chars[i] == ',') {
            i += 1;
        }
        if chars[i] == '}' {
            return (out, i + 1);
        }
        let label_start = i;
        while is_ident(chars[i]) {
            i += 1;
        }
        let label: String = chars[label_start..i].iter().collect();
        while chars[i].is_whitespace() {
            i += 1;
        }
        let op_start = i;
        while matches!(chars[i], '=' | '!' | '~') {
            i += 1;
        }
        let op: String = chars[op_start..i].iter().collect();
        while chars[i].is_whitespace() {
            i += 1;
        }
        let quote = chars[i];
        assert!(matches!(quote, '"' | '\'' | '`'), "matcher value at {i}");
        i += 1;
        let mut value = String::new();
        while chars[i] != quote {
            if chars[i] == '\\' {
                i += 1;
            }
            value.push(chars[i]);
            i += 1;
        }
        i += 1;
        out.push((label, op, value));
    }
}

/// One PromQL expression and where it comes from (for the failure message).
#[derive(Debug)]
struct Use {
    origin: String,
    expr: String,
    /// Queried on a standalone server too (everything outside the dashboard's Cluster row).
    standalone: bool,
}

/// Every PromQL expression of the dashboard: its panels' targets (rows expanded or collapsed)
/// and its query variables (`label_values(selector, label)`).
fn dashboard_queries(dashboard: &Value) -> Vec<Use> {
    let mut uses = Vec::new();
    let mut row = String::new();
    let mut panels: Vec<&Value> = Vec::new();
    for p in dashboard["panels"].as_array().unwrap() {
        panels.push(p);
        panels.extend(p["panels"].as_array().into_iter().flatten());
    }
    for p in panels {
        if p["type"] == "row" {
            row = p["title"].as_str().unwrap().to_owned();
            continue;
        }
        for t in p["targets"].as_array().unwrap() {
            uses.push(Use {
                origin: format!(
                    "panel {:?} (row {row}) query {}",
                    p["title"].as_str().unwrap_or(""),
                    t["refId"].as_str().unwrap_or("")
                ),
                expr: t["expr"].as_str().unwrap().to_owned(),
                standalone: row != "Cluster",
            });
        }
    }
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        if v["type"] != "query" {
            continue;
        }
        let query = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .unwrap();
        let args = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {}: {query}", v["name"]));
        let (selector, label) = args.rsplit_once(',').unwrap();
        // As a grouping label, `label` must be on the selector's metric.
        uses.push(Use {
            origin: format!("variable {}", v["name"]),
            expr: format!("sum by ({}) ({selector})", label.trim()),
            standalone: true,
        });
    }
    uses
}

/// The rules file's groups: recording rules (name -> expression) and alerts.
struct Rules {
    recorded: BTreeMap<String, String>,
    alerts: Vec<serde_yaml_ng::Value>,
}

fn load_rules(path: &Path) -> Rules {
    let doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut recorded = BTreeMap::new();
    let mut alerts = Vec::new();
    for group in doc["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            if let Some(name) = rule["record"].as_str() {
                let expr = rule["expr"].as_str().unwrap().to_owned();
                assert!(
                    recorded.insert(name.to_owned(), expr).is_none(),
                    "{name} recorded twice"
                );
            } else {
                assert!(
                    rule["alert"].is_string(),
                    "neither record nor alert: {rule:?}"
                );
                alerts.push(rule.clone());
            }
        }
    }
    Rules { recorded, alerts }
}

fn rule_queries(rules: &Rules) -> Vec<Use> {
    let mut uses: Vec<Use> = rules
        .recorded
        .iter()
        .map(|(name, expr)| Use {
            origin: format!("recording rule {name}"),
            expr: expr.clone(),
            standalone: false,
        })
        .collect();
    for alert in &rules.alerts {
        uses.push(Use {
            origin: format!("alert {}", alert["alert"].as_str().unwrap()),
            expr: alert["expr"].as_str().unwrap().to_owned(),
            standalone: false,
        });
    }
    uses
}

// ------------------------------------------------------------------------------------------
// The check.

/// What a series name in a query stands for: an exported family's labels, or a recorded
/// rule's (the labels its expression keeps, with the values of the metrics under it).
fn labels_of(
    name: &str,
    exported: &Exported,
    rules: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, BTreeSet<String>>, String> {
    if name.contains(':') {
        let expr = rules
            .get(name)
            .ok_or_else(|| format!("{name} is not a recording rule of the rules file"))?;
        let q = parse_promql(expr);
        let mut labels = BTreeMap::new();
        for label in q.grouping.iter().filter(|l| *l != "le") {
            let mut values = BTreeSet::new();
            for s in &q.selectors {
                let source = labels_of(&s.name, exported, rules)?;
                values.extend(source.get(label).into_iter().flatten().cloned());
            }
            labels.insert(label.clone(), values);
        }
        return Ok(labels);
    }
    let (_, family) = exported
        .family(name)
        .ok_or_else(|| format!("{name} is not exported"))?;
    let mut labels = family.labels.clone();
    labels.remove("le");
    if name.ends_with("_bucket") {
        labels.insert("le".to_owned(), BTreeSet::new());
    }
    Ok(labels)
}

/// Everything wrong with one expression against what the servers export.
fn problems(expr: &str, exported: &Exported, rules: &BTreeMap<String, String>) -> Vec<String> {
    let q = parse_promql(expr);
    let mut out = Vec::new();
    let mut available: BTreeSet<String> = TARGET_LABELS.iter().map(|l| l.to_string()).collect();
    if q.selectors.is_empty() {
        out.push("no metric in it".to_owned());
    }
    for s in &q.selectors {
        if !s.name.starts_with("switchboard_") && !s.name.contains(':') {
            out.push(format!("{} is not a Switchboard metric", s.name));
            continue;
        }
        let labels = match labels_of(&s.name, exported, rules) {
            Ok(l) => l,
            Err(e) => {
                out.push(e);
                continue;
            }
        };
        available.extend(labels.keys().cloned());
        for (label, op, value) in &s.matchers {
            if TARGET_LABELS.contains(&label.as_str()) {
                continue;
            }
            let Some(values) = labels.get(label) else {
                out.push(format!("{} has no label {label}", s.name));
                continue;
            };
            let literal = !value.contains('$');
            let wanted: Vec<&str> = match op.as_str() {
                "=" | "!=" if literal => vec![value.as_str()],
                // A plain alternation (`a|b`) names values too.
                "=~" | "!~"
                    if value
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || "_|".contains(c)) =>
                {
                    value.split('|').collect()
                }
                _ => Vec::new(),
            };
            for v in wanted {
                if !values.contains(v) {
                    out.push(format!(
                        "{}{{{label}}} is never {v:?} (only {values:?})",
                        s.name
                    ));
                }
            }
        }
    }
    for label in &q.grouping {
        if !available.contains(label) {
            out.push(format!("groups by {label}, which none of its metrics has"));
        }
    }
    out
}

/// Two clients in one lobby exchange a few broadcasts, then keep reading (so the server's
/// health pings are answered); scrapes until the histograms (and `also`) have samples.
async fn scrape_after_traffic(p: &Process, also: &[&str]) -> Exported {
    let mut a = connect(p.addr, "grafana", "alice").await;
    let mut b = connect(p.addr, "grafana", "bob").await;
    a.expect("member_joined", "bob's join").await;
    for i in 0..3 {
        a.send(broadcast(json!(i))).await;
        b.expect("message", "alice's broadcast").await;
    }
    let readers: Vec<_> = [a, b]
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                while let Some(Ok(_)) = futures_util::StreamExt::next(&mut c.ws).await {}
            })
        })
        .collect();
    let wanted: Vec<&str> = [
        "switchboard_ping_rtt_seconds",
        "switchboard_broadcast_fanout_seconds",
    ]
    .into_iter()
    .chain(also.iter().copied())
    .collect();
    let deadline = Instant::now() + WAIT;
    let exported = loop {
        let r = http(p.addr, "GET", "/metrics", None, None).await;
        assert_eq!(r.status, 200);
        let e = Exported::parse(&r.body);
        if wanted.iter().all(|m| e.families.contains_key(*m)) {
            break e;
        }
        let missing: Vec<_> = wanted
            .iter()
            .filter(|m| !e.families.contains_key(**m))
            .collect();
        assert!(Instant::now() < deadline, "never exported: {missing:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for r in readers {
        r.abort();
    }
    exported
}

#[tokio::test]
async fn the_dashboard_and_the_rules_query_only_what_the_server_exports() {
    // Read the files first: a broken one fails before any process starts.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_file("deploy/grafana/switchboard.json")).unwrap(),
    )
    .unwrap();
    let rules = load_rules(&repo_file("deploy/prometheus/switchboard-rules.yml"));
    let dash_uses = dashboard_queries(&dashboard);
    let rule_uses = rule_queries(&rules);
    assert!(dash_uses.len() > 20 && rules.recorded.len() > 10 && rules.alerts.len() >= 6);

    let fast_pings = [("SWITCHBOARD_HEALTH__PING_INTERVAL_MS", "50")];
    let standalone = Process::start(&fast_pings, None);
    let standalone = scrape_after_traffic(&standalone, &[]).await;
    let redis = Redis::start();
    let url = redis.url();
    let node = Process::start(
        &[
            fast_pings[0],
            ("SWITCHBOARD_REDIS__URL", &url),
            ("SWITCHBOARD_REDIS__NODE_ID", "grafana"),
            ("SWITCHBOARD_REDIS__HEARTBEAT_MS", "100"),
        ],
        None,
    );
    let mut everything = scrape_after_traffic(
        &node,
        &[
            "switchboard_redis_up",
            "switchboard_cluster_nodes",
            "switchboard_redis_outbound_bytes",
        ],
    )
    .await;
    let no_rules = BTreeMap::new();

    let mut failures = Vec::new();
    // Outside the Cluster row, a standalone server has every metric a panel shows.
    for u in dash_uses.iter().filter(|u| u.standalone) {
        for p in problems(&u.expr, &standalone, &no_rules) {
            failures.push(format!("{} (standalone): {p}\n    {}", u.origin, u.expr));
        }
    }
    everything.merge(standalone);
    for u in dash_uses.iter().chain(&rule_uses) {
        for p in problems(&u.expr, &everything, &rules.recorded) {
            failures.push(format!("{}: {p}\n    {}", u.origin, u.expr));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Every family the server exports is charted somewhere (a new metric gets a panel).
    let charted: BTreeSet<String> = dash_uses
        .iter()
        .flat_map(|u| parse_promql(&u.expr).selectors)
        .filter_map(|s| everything.family(&s.name).map(|(n, _)| n.to_owned()))
        .collect();
    let uncharted: Vec<_> = everything
        .families
        .keys()
        .filter(|f| !charted.contains(*f))
        .collect();
    assert!(uncharted.is_empty(), "no panel shows {uncharted:?}");

    // The check catches what it is there for.
    for (wrong, why) in [
        ("rate(switchboard_close_total[5m])", "is not exported"),
        (
            "rate(switchboard_closes_total_count[5m])",
            "is not exported",
        ),
        (
            "switchboard_closes_total{reason=\"slow_consumers\"}",
            "is never",
        ),
        (
            "switchboard_closes_total{outcome=\"x\"}",
            "has no label outcome",
        ),
        (
            "sum by (kind) (switchboard_rpc_calls_total)",
            "groups by kind",
        ),
        (
            "sum by (le) (switchboard_ping_rtt_seconds_sum)",
            "groups by le",
        ),
        (
            "instance:switchboard_closes:rate1m",
            "is not a recording rule",
        ),
        (
            "instance:switchboard_closes:rate5m{reason=\"lag\"}",
            "is never",
        ),
        (
            "instance:switchboard_webhook_events:rate5m{outcome=~\"dropped|lost\"}",
            "is never",
        ),
    ] {
        let found = problems(wrong, &everything, &rules.recorded);
        assert!(
            found.iter().any(|p| p.contains(why)),
            "{wrong}: expected {why:?}, got {found:?}"
        );
    }
    assert!(
        problems(
            "switchboard_ping_rtt_seconds_bucket",
            &everything,
            &no_rules
        )
        .is_empty()
    );
}

/// What makes the dashboard importable and readable, and the alerts actionable.
#[test]
fn panels_have_units_and_alerts_say_what_to_do() {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_file("deploy/grafana/switchboard.json")).unwrap(),
    )
    .unwrap();
    let vars = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        vars.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "a Prometheus data source variable"
    );
    let mut ids = BTreeSet::new();
    for p in dashboard["panels"].as_array().unwrap() {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "panel id {} twice",
            p["id"]
        );
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().unwrap();
        let unit = p["fieldConfig"]["defaults"]["unit"].as_str().unwrap_or("");
        assert!(!unit.is_empty(), "panel {title:?} has no unit");
        assert!(
            !p["description"].as_str().unwrap_or("").is_empty(),
            "{title:?}"
        );
        for source in std::iter::once(&p["datasource"]).chain(
            p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| &t["datasource"]),
        ) {
            assert_eq!(source["uid"], "${datasource}", "panel {title:?}");
        }
    }

    let rules = load_rules(&repo_file("deploy/prometheus/switchboard-rules.yml"));
    for alert in &rules.alerts {
        let name = alert["alert"].as_str().unwrap();
        assert!(alert["for"].is_string(), "{name} has no for:");
        assert!(
            alert["labels"]["severity"].is_string(),
            "{name} has no severity"
        );
        for a in ["summary", "description"] {
            assert!(alert["annotations"][a].is_string(), "{name} has no {a}");
        }
    }
    let redis_down = rules
        .alerts
        .iter()
        .find(|a| a["alert"] == "SwitchboardRedisDown")
        .unwrap();
    assert_eq!(
        redis_down["expr"].as_str().unwrap(),
        "switchboard_redis_up == 0"
    );
    assert_eq!(redis_down["for"].as_str().unwrap(), "1m");
}

/// `promtool check rules` and `promtool test rules` (promtool comes with the Debian package
/// `prometheus`, which scripts/test.sh installs); the dashboard's expressions go through
/// promtool's parser as rules.
#[test]
fn promtool_accepts_the_rules_and_their_tests() {
    assert!(
        Command::new("promtool").arg("--version").output().is_ok(),
        "promtool is not installed: apt-get install prometheus (scripts/test.sh does)"
    );
    let run = |args: &[&str]| {
        let out = Command::new("promtool").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let dir = repo_file("deploy/prometheus");
    run(&[
        "check",
        "rules",
        dir.join("switchboard-rules.yml").to_str().unwrap(),
    ]);
    run(&[
        "test",
        "rules",
        dir.join("switchboard-rules.test.yml").to_str().unwrap(),
    ]);

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_file("deploy/grafana/switchboard.json")).unwrap(),
    )
    .unwrap();
    let rules: Vec<Value> = dashboard_queries(&dashboard)
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let expr = u
                .expr
                .replace("$__rate_interval", "1m")
                .replace("$job", ".*")
                .replace("$instance", ".*");
            json!({"record": format!("dashboard:query_{i}"), "expr": expr})
        })
        .collect();
    let file =
        std::env::temp_dir().join(format!("switchboard-dashboard-{}.yml", std::process::id()));
    // JSON is YAML.
    std::fs::write(
        &file,
        json!({"groups": [{"name": "dashboard", "rules": rules}]}).to_string(),
    )
    .unwrap();
    run(&["check", "rules", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
}
