//! `node serve`: a node (see [`crate::handle`]) run until SIGTERM/SIGINT
//! or a REST shutdown, with logging, the runtime and restarts around it.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use clap::Args;

use crate::handle::{self, StopRequest};

#[derive(Args)]
pub struct ServeArgs {
    /// Home directory: cert.pem, key.pem, config.toml, the index database.
    #[arg(long, env = "NODE_HOME", value_name = "DIR")]
    home: PathBuf,
    /// REST API address HOST:PORT (overrides the configuration, not saved).
    #[arg(long, env = "NODE_GUI_ADDRESS", value_name = "HOST:PORT")]
    gui_address: Option<String>,
    /// REST API key (overrides the configuration, not saved).
    #[arg(long, env = "NODE_GUI_APIKEY", value_name = "KEY")]
    gui_apikey: Option<String>,
    #[command(flatten)]
    log: daemon::LogArgs,
}

/// Blocking work (disk reads, hashing, the index) is bounded where it is
/// spawned; this cap keeps a burst from costing hundreds of thread stacks.
const MAX_BLOCKING_THREADS: usize = 64;

pub fn serve(args: ServeArgs) -> std::process::ExitCode {
    // Recent log lines are kept for /rest/system/log too: the records
    // exist before the subscriber, which holds them, and go to the node.
    let records = Arc::new(crate::events::record::Records::default());
    let feed = records.clone();
    args.log
        .init_with_copy(Some(Arc::new(move |line: &str| feed.log_line(line))));
    let options = handle::Options {
        home: args.home,
        gui_address: args.gui_address,
        gui_apikey: args.gui_apikey,
        records: Some(records),
        // The crash test's fault point (ARCHITECTURE.md), read once here.
        abort_after_archive: std::env::var("NODE_TEST_ABORT_AFTER_ARCHIVE")
            .ok()
            .filter(|n| !n.is_empty()),
    };
    let mut outcome = Ok(None);
    let code = daemon::run_main_with(|b| b.max_blocking_threads(MAX_BLOCKING_THREADS), async {
        outcome = run(options).await;
        Ok(())
    });
    match outcome {
        Ok(Some(StopRequest::Restart)) => {
            exec_self();
            std::process::ExitCode::FAILURE
        }
        Ok(_) => code,
        Err(e) => {
            // As the identity commands report theirs (and operators grep).
            eprintln!("node: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the node until a signal or a REST request stops it, and awaits the
/// stop. Returns what REST asked for, if it was REST.
async fn run(options: handle::Options) -> Result<Option<StopRequest>> {
    // Before the ports open: a SIGTERM from then on stops the node cleanly.
    let mut signals = daemon::shutdown::Signals::install();
    let node = handle::spawn(options).await?;
    eprintln!("My ID: {}", node.node().my_id);
    if let Some(addr) = node.rest_addr() {
        eprintln!("REST API on http://{addr}");
    }
    let asked = tokio::select! {
        _ = signals.recv() => None,
        r = node.stop_requested() => Some(r),
    };
    node.shutdown().await?;
    Ok(asked)
}

/// Replaces the process with a fresh start of the same program and
/// arguments (same PID, so supervisors and tests keep tracking it).
fn exec_self() {
    use std::os::unix::process::CommandExt;
    match std::env::current_exe() {
        Ok(exe) => {
            let err = std::process::Command::new(&exe)
                .args(std::env::args_os().skip(1))
                .exec();
            tracing::error!(error = %err, "restart failed");
        }
        Err(e) => tracing::error!(error = %e, "restart failed: cannot find the node's own program"),
    }
}
