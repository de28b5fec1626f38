//! The load generator's command line: `--help` for the tool and for each scenario, `--version`,
//! and a misspelt option named with the right one suggested, before any connection is made.
#![allow(missing_docs, clippy::unwrap_used)]

fn run(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_switchboard-bench"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn help_for_the_tool_and_each_scenario() {
    let help = run(&["--help"]);
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for scenario in ["idle", "fanout", "churn", "stale", "lobbies", "webhook"] {
        assert!(text.contains(scenario), "{scenario} in {text}");
        let own = run(&[scenario, "--help"]);
        let text = String::from_utf8_lossy(&own.stdout);
        assert!(own.status.success(), "{scenario}: {text}");
        // The common options, with their defaults.
        assert!(
            text.contains("[default: 127.0.0.1:8080]"),
            "{scenario}: {text}"
        );
        assert!(text.contains("--max-secs"), "{scenario}: {text}");
    }
    let fanout = String::from_utf8_lossy(&run(&["fanout", "--help"]).stdout).to_string();
    assert!(fanout.contains("--members <MEMBERS>") && fanout.contains("[default: 1000]"));
    // The overload curve: documented with its default, and only with `--sweep`.
    assert!(
        fanout.contains("--past-saturation") && fanout.contains("[default: off"),
        "{fanout}"
    );
    assert!(
        fanout.contains("--payload-kind <PAYLOAD_KIND>") && fanout.contains("chat"),
        "{fanout}"
    );
    let bad_kind = run(&["fanout", "--payload-kind", "lorem"]);
    assert_eq!(bad_kind.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_kind.stderr).contains("padding"));
    let alone = run(&["fanout", "--past-saturation"]);
    assert_eq!(alone.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&alone.stderr).contains("--sweep"));
}

#[test]
fn version_and_mistakes() {
    let version = run(&["--version"]);
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("switchboard-bench {}", env!("CARGO_PKG_VERSION"))
    );
    let typo = run(&["fanout", "--memebrs", "3"]);
    let text = String::from_utf8_lossy(&typo.stderr);
    assert_eq!(typo.status.code(), Some(2));
    assert!(
        text.contains("'--memebrs'") && text.contains("'--members'"),
        "{text}"
    );
    let bad_value = run(&["idle", "--conns", "many"]);
    let text = String::from_utf8_lossy(&bad_value.stderr);
    assert_eq!(bad_value.status.code(), Some(2));
    assert!(text.contains("--conns") && text.contains("many"), "{text}");
    let unknown = run(&["fanuot"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("'fanout'"));
}
