//! Reference figures the benchmark tests print beside ours.

/// OpenSSL's single-core SHA-256 rate in MB/s (16 KiB blocks), or 0 when
/// it cannot be read.
pub fn openssl_sha256_mb_s() -> f64 {
    let out = std::process::Command::new("openssl")
        .args(["speed", "-evp", "sha256", "-seconds", "2"])
        .output()
        .expect("run openssl speed");
    let text = String::from_utf8_lossy(&out.stdout);
    // Last line: "sha256  a b c d e f" in 1000s of bytes per second.
    text.lines()
        .rev()
        .find(|l| l.starts_with("sha256") || l.starts_with("SHA256"))
        .and_then(|l| l.split_whitespace().nth(5))
        .and_then(|v| v.trim_end_matches('k').parse::<f64>().ok())
        .map_or(0.0, |k| k / 1000.0)
}
