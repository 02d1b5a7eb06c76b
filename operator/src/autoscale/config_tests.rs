//! Checks `config/prometheus` and `config/grafana`: promtool accepts the rules, the dashboard
//! parses, and every metric their PromQL names is one that something in GrokCast exports.
//!
//! The exported names are read from the exporters' own source (the agent's and grokcast-serve's
//! metric registrations) and from the autoscaler's registry, so renaming a metric there breaks
//! this test instead of silently emptying a dashboard panel.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::metrics::AutoscalerMetrics;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `"grokcast_..."` string literals registered in an exporter's source file.
fn names_in_source(path: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.starts_with("grokcast_") && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
        .map(str::to_owned)
        .collect()
}

fn with_suffixes(names: impl IntoIterator<Item = String>) -> BTreeSet<String> {
    names
        .into_iter()
        .flat_map(|n| ["", "_bucket", "_count", "_sum"].map(|s| format!("{n}{s}")))
        .collect()
}

fn exported() -> BTreeSet<String> {
    let mut names = with_suffixes(names_in_source(&repo().join("agent/src/metrics.rs")));
    names.extend(with_suffixes(names_in_source(
        &repo().join("engines/src/server/metrics.rs"),
    )));
    let registry = ::prometheus::Registry::new();
    let metrics = AutoscalerMetrics::register(&registry).unwrap();
    // Touch every vector so gather() lists it.
    metrics
        .replicas
        .with_label_values(&["VoiceAgent", "ns", "a", "current"])
        .set(1.0);
    metrics.slo_seconds.with_label_values(&["ns", "a"]).set(0.8);
    metrics.gpus.with_label_values(&["ns", "p", "x"]).set(1.0);
    metrics
        .gpus_missing
        .with_label_values(&["ns", "p", "x"])
        .set(0.0);
    metrics
        .scale_events
        .with_label_values(&["VoiceAgent", "ns", "up", "CallLoad"])
        .inc();
    names.extend(registry.gather().iter().map(|f| f.name().to_owned()));
    // vLLM's own metrics (vLLM's documented names; no vLLM runs here).
    names.extend(with_suffixes([
        "vllm:time_to_first_token_seconds".to_owned()
    ]));
    names.insert("vllm:num_requests_waiting".into());
    names
}

/// Metric names a PromQL expression uses (identifiers that look like GrokCast or vLLM series).
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Label values and strings are not metric names.
    let unquoted: String = expr.split('"').step_by(2).collect::<Vec<_>>().join(" ");
    unquoted
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| {
            t.starts_with("grokcast_") || t.starts_with("vllm:") || t.contains(":grokcast_")
        })
        .map(str::to_owned)
        .collect()
}

fn require_tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let required = std::env::var_os("GROKCAST_REQUIRE_PROMETHEUS").is_some()
            || std::env::var_os("GROKCAST_REQUIRE_MODELS").is_some();
        assert!(!required, "{name} not found (apt-get install prometheus)");
        eprintln!("SKIPPED: {name} not on PATH (apt-get install prometheus)");
    }
    found
}

#[test]
fn promtool_accepts_the_rules() {
    let Some(promtool) = require_tool("promtool") else {
        return;
    };
    let rules = repo().join("config/prometheus/grokcast-rules.yaml");
    promtool_succeeds(&promtool, &["check", "rules"], &rules);
}

/// Runs `promtool ARGS FILE` and fails with its output unless it succeeds.
fn promtool_succeeds(promtool: &Path, args: &[&str], file: &Path) {
    let out = std::process::Command::new(promtool)
        .args(args)
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn burn_rate_alerts_follow_each_agents_own_slo() {
    // promtool's rule unit tests: one agent breaching its 500 ms SLO pages, another with the
    // same turns under its 1.5 s SLO does not, and a healthy agent raises nothing.
    let Some(promtool) = require_tool("promtool") else {
        return;
    };
    let tests = repo().join("config/prometheus/tests/grokcast-rules.test.yaml");
    promtool_succeeds(&promtool, &["test", "rules"], &tests);
}

#[test]
fn promtool_rejects_a_broken_rule() {
    // The check above must be able to fail: a rule file with bad PromQL does.
    let Some(promtool) = require_tool("promtool") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("grokcast-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "groups:\n  - name: x\n    rules:\n      - record: a:b\n        expr: sum(rate(x[5m])\n",
    )
    .unwrap();
    let out = std::process::Command::new(promtool)
        .arg("check")
        .arg("rules")
        .arg(&bad)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
}

#[test]
fn rules_only_use_exported_metrics() {
    let text =
        std::fs::read_to_string(repo().join("config/prometheus/grokcast-rules.yaml")).unwrap();
    let known = exported();
    let recorded: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record:"))
        .map(|n| n.trim().to_owned())
        .collect();
    assert!(recorded.len() >= 6, "{recorded:?}");
    let mut used = BTreeSet::new();
    for name in metric_names(&text) {
        if !recorded.contains(&name) {
            assert!(
                known.contains(&name),
                "rules use {name}, which nothing exports"
            );
            used.insert(name);
        }
    }
    for must in [
        "grokcast_turn_latency_seconds_bucket",
        "grokcast_turns_over_slo_total",
        "grokcast_turn_latency_seconds_count",
    ] {
        assert!(used.contains(must), "{must} not used: {used:?}");
    }
}

#[test]
fn dashboard_parses_and_only_uses_exported_metrics() {
    let path = repo().join("config/grafana/grokcast-slo.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let known = exported();
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut titles = BTreeSet::new();
    let mut used = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("every panel has a title");
        titles.insert(title.to_owned());
        let targets = panel["targets"]
            .as_array()
            .expect("every panel queries something");
        for target in targets {
            // The slow-turns panel searches Tempo, not Prometheus; tests/chart checks that its
            // TraceQL asks for what the agent's traces carry.
            if target["datasource"]["type"] == "tempo" {
                assert_eq!(target["queryType"], "traceql", "{title}");
                continue;
            }
            let expr = target["expr"].as_str().expect("expr");
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{title}: no metric in {expr}");
            for name in names {
                assert!(
                    known.contains(&name),
                    "panel {title:?} uses {name}, which nothing exports"
                );
                used.insert(name);
            }
        }
    }
    for must in [
        "grokcast_turn_latency_seconds_bucket",
        "grokcast_stage_latency_seconds_bucket",
        "grokcast_active_calls",
        "grokcast_autoscaler_replicas",
        "grokcast_autoscaler_gpus",
    ] {
        assert!(used.contains(must), "dashboard does not chart {must}");
    }
    assert_eq!(titles.len(), panels.len(), "panel titles are unique");
    // Variables that query Prometheus (the agent's SLO for the slow-turns search) use
    // exported metrics too.
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if variable["datasource"]["type"] == "prometheus" {
            let query = variable["query"]["query"].as_str().expect("a query");
            for name in metric_names(query) {
                assert!(
                    known.contains(&name),
                    "variable {} uses {name}, which nothing exports",
                    variable["name"]
                );
            }
        }
    }
}

#[test]
fn metric_name_extraction_ignores_label_values() {
    let names = metric_names(
        r#"sum(rate(grokcast_calls_total{outcome="grokcast_fake"}[5m])) / vllm:num_requests_waiting"#,
    );
    assert_eq!(
        names,
        ["grokcast_calls_total", "vllm:num_requests_waiting"]
            .map(str::to_owned)
            .into_iter()
            .collect()
    );
}
