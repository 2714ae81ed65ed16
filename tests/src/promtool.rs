//! `promtool check metrics`: the exposition text every program serves is
//! what Prometheus itself accepts.

use std::io::Write;
use std::process::{Command, Stdio};

/// Fails the test, with promtool's complaint and the text, unless
/// promtool accepts `metrics`.
pub fn assert_accepts(metrics: &str) {
    let promtool = crate::require_program("promtool", "prometheus");
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    check
        .stdin
        .take()
        .expect("promtool's stdin")
        .write_all(metrics.as_bytes())
        .expect("write to promtool");
    let out = check.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{metrics}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
