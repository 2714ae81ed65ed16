//! Metrics text both ways scrapers ask for it. `prometheus-client` writes
//! OpenMetrics; Prometheus without an `Accept: application/openmetrics-text`
//! header, `promtool check metrics` and plain `curl | grep` users read the
//! classic 0.0.4 text format, where a counter family carries its `_total`
//! suffix in `# HELP`/`# TYPE` and there is no `# EOF`.

/// Content type of [`classic_text`]'s output.
pub const CLASSIC_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Content type of `prometheus_client::encoding::text::encode`'s output.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether the request's `Accept` header value asks for OpenMetrics.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|v| v.contains("application/openmetrics-text"))
}

/// OpenMetrics text rewritten in the classic Prometheus text format.
pub fn classic_text(open_metrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_get_their_suffix_and_the_eof_goes() {
        let om = "# HELP x_bytes Bytes.\n# TYPE x_bytes counter\nx_bytes_total 5\n\
                  # HELP y Now.\n# TYPE y gauge\ny{a=\"b\"} 1\n# EOF\n";
        assert_eq!(
            classic_text(om),
            "# HELP x_bytes_total Bytes.\n# TYPE x_bytes_total counter\nx_bytes_total 5\n\
             # HELP y Now.\n# TYPE y gauge\ny{a=\"b\"} 1\n"
        );
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text; version=1.0.0"
        )));
        assert!(!wants_openmetrics(Some("text/plain")));
        assert!(!wants_openmetrics(None));
    }
}
