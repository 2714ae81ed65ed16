//! Showing a running scan: a progress line redrawn in place on a terminal,
//! a plain line every 10 s otherwise (logs stay readable), and the
//! `FolderScanProgress` event.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::model::Node;
use crate::scan;

pub fn stderr_is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}

/// Runs until dropped (the scan's end aborts it).
pub async fn report(node: Arc<Node>, folder: String, live: Arc<scan::Live>) {
    let tty = stderr_is_terminal();
    let every = Duration::from_secs(if tty { 1 } else { 10 });
    let start = Instant::now();
    loop {
        tokio::time::sleep(every).await;
        let entries = live.entries.load(Ordering::Relaxed);
        let mb = live.hashed_bytes.load(Ordering::Relaxed) as f64 / 1e6;
        let rate = mb / start.elapsed().as_secs_f64().max(1e-3);
        node.events
            .scan_progress(&folder, (mb * 1e6) as u64, (mb * 1e6) as u64, rate * 1e6);
        let line = format!(
            "Scanning folder {folder}: {entries} entries, {mb:.0} MB hashed ({rate:.0} MB/s)"
        );
        if tty {
            eprint!("\r\x1b[K{line}");
        } else {
            eprintln!("{line}");
        }
    }
}

/// Ends a progress line drawn in place.
pub fn clear_line() {
    if stderr_is_terminal() {
        eprint!("\r\x1b[K");
    }
}
