//! The monitoring files in deploy/ query only metrics our programs really
//! export: every metric named in the Grafana dashboards and the Prometheus
//! rules must appear as a sample on a live `/metrics` of discosrv,
//! relaysrv or node, started here with a little traffic each.

use e2e::discovery::Discosrv;
use e2e::node::NodeHome;
use e2e::relay::RelayServer;
use e2e::wait;
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

const PREFIXES: &[&str] = &["syncthing_discovery_", "relaysrv_", "node_"];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("deploy")
}

/// Metric names in a PromQL expression: identifiers with one of our
/// prefixes, not part of a recording rule's `level:metric:op` name.
fn metric_names(expr: &str, out: &mut BTreeSet<String>) {
    for token in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
        if token.contains(':') {
            continue;
        }
        if PREFIXES.iter().any(|p| token.starts_with(p)) {
            out.insert(token.to_string());
        }
    }
}

fn exprs_in_json(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", Value::String(e)) => metric_names(e, out),
                    _ => exprs_in_json(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| exprs_in_json(v, out)),
        _ => {}
    }
}

/// Every metric the dashboards and rules query, with the file naming it.
fn queried_metrics() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in ["grafana", "prometheus/rules"] {
        for e in std::fs::read_dir(deploy_dir().join(dir)).unwrap() {
            files.push(e.unwrap().path());
        }
    }
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let mut names = BTreeSet::new();
        match f.extension().and_then(|e| e.to_str()) {
            Some("json") => {
                let v: Value =
                    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
                exprs_in_json(&v, &mut names);
            }
            Some("yml" | "yaml") => {
                // Only expressions: the `expr:` value and its folded
                // continuation lines (annotations are prose).
                let mut in_expr = false;
                for line in text.lines() {
                    let t = line.trim_start();
                    if let Some(rest) = t.strip_prefix("expr:") {
                        in_expr = true;
                        metric_names(rest, &mut names);
                    } else if in_expr && !t.contains(": ") && !t.starts_with('-') {
                        metric_names(t, &mut names);
                    } else {
                        in_expr = false;
                    }
                }
            }
            _ => continue,
        }
        let file = f.strip_prefix(deploy_dir()).unwrap().display().to_string();
        out.extend(names.into_iter().map(|n| (n, file.clone())));
    }
    out
}

/// Names of the samples in a Prometheus text exposition.
fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

fn node_metrics(home: &NodeHome) -> String {
    ureq::get(&format!("http://127.0.0.1:{}/metrics", home.gui_port))
        .set("X-API-Key", &home.api_key)
        .timeout(Duration::from_secs(10))
        .call()
        .expect("node /metrics")
        .into_string()
        .unwrap()
}

#[test]
fn dashboards_and_rules_query_only_metrics_seen_live() {
    let queried = queried_metrics();
    assert!(queried.len() >= 20, "too few metrics found: {queried:?}");
    let tmp = tempfile::tempdir().unwrap();

    // discosrv: one lookup, so the per-method series exist.
    let disco = Discosrv::start(&tmp.path().join("disco"), &[]);
    let _ = disco.lookup("AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA");

    // relaysrv: one malformed connection, so a reject is counted.
    let relay = RelayServer::start(&tmp.path().join("relay"), &[]);
    if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", relay.port)) {
        let _ = s.write_all(b"\x16\x03\x01\x00\x05hello, not TLS");
    }
    let rejected = wait::until(Duration::from_secs(20), Duration::from_millis(100), || {
        relay
            .metrics()
            .contains("relaysrv_rejects_total{")
            .then_some(())
    });
    assert!(
        rejected.is_some(),
        "no reject counted:\n{}",
        relay.metrics()
    );

    // node: a folder and a configured device that never connects.
    let home = NodeHome::generate(&tmp.path().join("node"), "ship");
    let folder = tmp.path().join("folder");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("a.txt"), b"some bytes").unwrap();
    let absent = disco.id.unwrap().to_string();
    home.add_device(&absent, &["tcp://127.0.0.1:9"]);
    home.add_folder("f", &folder, "sendreceive", &[&absent]);
    let node = home.start();
    node.wait_scanned("f", 1, Duration::from_secs(30));

    let mut seen = sample_names(&disco.metrics());
    seen.extend(sample_names(&relay.metrics()));
    seen.extend(sample_names(&node_metrics(&home)));

    // A histogram is queried through its _bucket/_sum/_count samples.
    let missing: Vec<String> = queried
        .iter()
        .filter(|(name, _)| !seen.contains(name.as_str()))
        .map(|(name, file)| format!("{name} (in {file})"))
        .collect();
    eprintln!(
        "{} metric queries checked against {} live series names",
        queried.len(),
        seen.len()
    );
    assert!(
        missing.is_empty(),
        "queried but not exported by our programs:\n  {}\nseen:\n  {}",
        missing.join("\n  "),
        seen.iter().cloned().collect::<Vec<_>>().join("\n  ")
    );
    drop(node);
}
