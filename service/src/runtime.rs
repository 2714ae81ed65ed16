//! Running a server's async main and turning its outcome into an exit code.

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

/// Runs `main` on a multi-threaded tokio runtime. An error is logged once,
/// with its whole context chain, and becomes exit code 1.
pub fn run_main<F>(main: F) -> ExitCode
where
    F: Future<Output = anyhow::Result<()>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(main);
    // Dropping the runtime would wait for blocking tasks still running
    // however long they take; a stopped server exits within a few seconds.
    runtime.shutdown_timeout(Duration::from_secs(5));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
