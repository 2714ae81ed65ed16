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
    run_main_with(|b| b, main)
}

/// [`run_main`] with a say in how the runtime is built (the node caps its
/// blocking threads, say).
///
/// `main` is expected to have awaited its own tasks (see
/// [`crate::Shutdown`]); what is left when it returns are blocking calls
/// that cannot be interrupted (a `read` on a stalled disk). They get
/// [`BLOCKING_GRACE`], then the process exits without them: the programs'
/// files are made to survive an interrupted write, as they survive a crash.
pub fn run_main_with<F>(
    configure: impl FnOnce(&mut tokio::runtime::Builder) -> &mut tokio::runtime::Builder,
    main: F,
) -> ExitCode
where
    F: Future<Output = anyhow::Result<()>>,
{
    raise_open_file_limit();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    let runtime = match configure(&mut builder).build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(main);
    runtime.shutdown_timeout(BLOCKING_GRACE);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// How long blocking calls still running at exit are waited for.
pub const BLOCKING_GRACE: Duration = Duration::from_secs(2);

/// Raises the soft limit of open files to the hard limit, once at start,
/// and logs the limit in force. Every connection of a server is a file
/// descriptor and the usual soft default (1024) is far below what the
/// hard limit allows; hitting it makes `accept` fail for everyone.
/// Returns the soft limit in force, if it could be read.
pub fn raise_open_file_limit() -> Option<libc::rlim_t> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        let e = std::io::Error::last_os_error();
        tracing::warn!(error = %e, "cannot read the open files limit (RLIMIT_NOFILE)");
        return None;
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        } else {
            let e = std::io::Error::last_os_error();
            tracing::warn!(error = %e, soft = before, hard = lim.rlim_max, "cannot raise the open files limit");
        }
    }
    tracing::info!(
        limit = lim.rlim_cur,
        was = before,
        "open files limit (RLIMIT_NOFILE)"
    );
    Some(lim.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_file_limit_is_raised_to_the_hard_limit() {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        // Start from a lowered soft limit, as a default shell gives.
        let low = libc::rlimit {
            rlim_cur: lim.rlim_max.min(256),
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &low) }, 0);
        let got = raise_open_file_limit().unwrap();
        assert_eq!(got, lim.rlim_max);
        let mut now = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut now) }, 0);
        assert_eq!(now.rlim_cur, lim.rlim_max);
    }
}
