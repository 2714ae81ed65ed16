//! `node serve`: loads identity, configuration and index, scans the
//! folders, listens, dials configured devices and serves the REST API until
//! SIGTERM/SIGINT or a REST shutdown.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use proto::Identity;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::config::{Config, FolderType};
use crate::db::Db;
use crate::model::{FolderRuntime, FolderState, Node};
use crate::sync::{MutexExt, RwLockExt};
use crate::{pull, rest, scan};

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

/// Next scan-and-pull round after a round with errors or local changes.
const PULL_RETRY: Duration = Duration::from_secs(10);
/// Next round after a pull found local changes (or made conflict copies).
const RESCAN_SOON: Duration = Duration::from_secs(1);

pub fn serve(args: ServeArgs) -> Result<()> {
    // Recent log lines are kept for /rest/system/log too.
    args.log
        .init_with_copy(Some(crate::events::record::log_line));
    // Every peer, REST client and open file is a descriptor.
    daemon::runtime::raise_open_file_limit();
    // Blocking work (disk reads, hashing, the index) is bounded where it is
    // spawned; the cap here keeps a burst from costing hundreds of thread
    // stacks.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(64)
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(run(args));
    // Dropping the runtime would wait for every blocking task still running
    // (a scan, a pull's disk work) however long it takes: give them a few
    // seconds, then exit anyway. The index and the temp files are made to
    // survive an interrupted task, as they survive a crash.
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    result
}

/// How long blocking tasks get to finish once the node has stopped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

async fn run(args: ServeArgs) -> Result<()> {
    let home = args.home.clone();
    let identity = Identity::load(&home.join("cert.pem"), &home.join("key.pem")).with_context(
        || {
            format!(
                "cannot load the device identity from {}; create one with `node generate --home {}`",
                home.display(),
                home.display()
            )
        },
    )?;
    // One node per home: two would share the index database and identity.
    let _lock = lock_home(&home)?;
    let config = Config::load(&home)?;
    let mut gui = config.gui.clone();
    if let Some(a) = args.gui_address {
        gui.address = a;
    }
    if let Some(k) = args.gui_apikey {
        gui.api_key = k;
    }
    let db = Db::open(&home)?;
    let node = Arc::new(Node::new(home, gui, identity, config.clone(), db));
    eprintln!("My ID: {}", node.my_id);
    tracing::info!(id = %node.my_id, "starting");
    crate::events::starting(&node.home, &node.my_id);

    // Folders (an initial scan, then periodic/on-demand ones) and dialers.
    apply_config(&node)?;

    // Listeners (TCP, relays), discovery; fails if a TCP address cannot be bound.
    crate::connect::start(&node).await?;
    if !node.gui.address.is_empty() {
        rest::check_listen_address(&node)?;
        let listener = TcpListener::bind(&node.gui.address)
            .await
            .with_context(|| format!("cannot listen for the REST API on {}", node.gui.address))?;
        eprintln!("REST API on http://{}", listener.local_addr()?);
        tokio::spawn(rest::serve(node.clone(), listener));
    }
    crate::events::startup_complete(&node.my_id);

    let mut stop = node.shutdown.subscribe();
    tokio::select! {
        _ = daemon::shutdown::signal() => {}
        _ = stop.wait_for(|s| *s) => {}
    }
    tracing::info!("shutting down");
    // New connections are refused from here on (see conn::run).
    node.shutdown.send_replace(true);
    for (_, c) in node.connections() {
        let _ = c.close.try_send("device is shutting down".into());
    }
    // Give the Close messages a moment to leave.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}

/// Puts the current configuration in effect: folders get their runtime
/// state and scan loop, devices a dial loop, and every connection is
/// told to send a new ClusterConfig. Called at start and after every REST
/// change. (Listeners follow the configuration on their own, see `connect`.)
pub fn apply_config(node: &Arc<Node>) -> Result<()> {
    let config = node.config();
    crate::events::bus().set_labels(&config);
    for f in &config.folders {
        if node.folder_runtime(&f.id).is_some() {
            continue;
        }
        let (_, seq) = node.db.folder_state(&f.id)?;
        let (scan_tx, scan_rx) = mpsc::channel(1);
        let rt = Arc::new(FolderRuntime {
            sequence: watch::channel(seq).0,
            state: std::sync::Mutex::new(FolderState::ScanWaiting),
            scan_now: scan_tx,
            pull_errors: std::sync::Mutex::new(Vec::new()),
        });
        node.folders.write_locked().insert(f.id.clone(), rt);
        tokio::spawn(scan_loop(node.clone(), f.id.clone(), scan_rx));
    }
    crate::connect::ensure_dialers(node);
    for (_, c) in node.connections() {
        let _ = c.config_changed.try_send(());
    }
    Ok(())
}

async fn scan_loop(node: Arc<Node>, folder: String, mut scan_rx: mpsc::Receiver<()>) {
    let mut watcher = None;
    loop {
        let Some(f) = node
            .config()
            .folders
            .iter()
            .find(|f| f.id == folder)
            .cloned()
        else {
            node.folders.write_locked().remove(&folder);
            return;
        };
        let Some(rt) = node.folder_runtime(&folder) else {
            return;
        };
        crate::events::set_state(&folder, &rt.state, FolderState::Scanning);
        let n2 = node.clone();
        let (fid, path) = (f.id.clone(), f.path.clone());
        let short = node.my_id.short().0;
        let receive_only = f.kind == FolderType::ReceiveOnly;
        let rt2 = rt.clone();
        let live = Arc::new(scan::Live::default());
        let live2 = live.clone();
        let reporter = tokio::spawn(report_progress(folder.clone(), live.clone()));
        let result = tokio::task::spawn_blocking(move || {
            scan::scan_folder(
                &n2.db,
                &fid,
                &path,
                short,
                receive_only,
                &|seq| {
                    rt2.sequence.send_replace(seq);
                },
                &live2,
            )
        })
        .await;
        reporter.abort();
        if stderr_is_terminal() {
            eprint!("\r\x1b[K");
        }
        crate::events::set_state(&folder, &rt.state, FolderState::Idle);
        // The watcher starts after the first successful scan (the folder
        // exists then) and lives as long as this loop.
        if watcher.is_none() && f.fs_watcher_enabled && matches!(result, Ok(Ok(_))) {
            let delay =
                Duration::from_secs(f.fs_watcher_delay_s.min(crate::config::MAX_INTERVAL_S));
            match crate::watch::start(&f.path, delay, rt.scan_now.clone()) {
                Ok(w) => watcher = Some(w),
                Err(e) => tracing::warn!(folder = %folder, error = %format!("{e:#}"),
                    "no filesystem watcher; changes are found by periodic rescans"),
            }
        }
        let scanned_ok = matches!(result, Ok(Ok(_)));
        match result {
            Ok(Ok(stats)) => {
                let rate = stats.hashed_bytes as f64 / 1e6 / stats.seconds.max(1e-9);
                eprintln!(
                    "Scanned folder {folder}: {} entries, {} hashed ({:.1} MB, {:.0} MB/s), {} unchanged, {} deleted, sequence {} in {:.2} s",
                    stats.entries,
                    stats.hashed_files,
                    stats.hashed_bytes as f64 / 1e6,
                    rate,
                    stats.unchanged,
                    stats.deleted,
                    stats.sequence,
                    stats.seconds
                );
                tracing::info!(folder = %folder, entries = stats.entries, hashed_files = stats.hashed_files,
                    hashed_bytes = stats.hashed_bytes, unchanged = stats.unchanged, deleted = stats.deleted,
                    sequence = stats.sequence, seconds = stats.seconds, "scan complete");
                rt.sequence.send_replace(stats.sequence);
            }
            Ok(Err(e)) => {
                tracing::error!(folder = %folder, error = %format!("{e:#}"), "scan failed")
            }
            Err(e) => tracing::error!(folder = %folder, error = %e, "scan task failed"),
        }
        // Then bring the folder to the global version (never for sendonly:
        // remote changes are not applied there).
        let mut retry_soon = None;
        if scanned_ok && !f.read_only() && !f.paused {
            crate::events::set_state(&folder, &rt.state, FolderState::Syncing);
            match pull::round(&node, &f).await {
                Ok(stats) => {
                    if stats.applied > 0 || !stats.errors.is_empty() {
                        tracing::info!(folder = %folder, applied = stats.applied,
                            errors = stats.errors.len(), "pull round done");
                    }
                    // Something changed locally under us (scan it, then
                    // pull again), or items failed (a device may be back
                    // soon): go again soon.
                    if stats.rescan {
                        retry_soon = Some(RESCAN_SOON);
                    } else if !stats.errors.is_empty() {
                        retry_soon = Some(PULL_RETRY);
                    }
                    crate::events::folder_errors(&folder, &stats.errors);
                    *rt.pull_errors.locked() = stats.errors;
                }
                Err(e) => {
                    tracing::error!(folder = %folder, error = %format!("{e:#}"), "pull failed");
                    retry_soon = Some(PULL_RETRY);
                }
            }
            crate::events::set_state(&folder, &rt.state, FolderState::Idle);
        }
        // Jitter the interval (±25 %) so many folders do not scan together.
        // Validation caps the setting; the clamp keeps the arithmetic
        // below from ever overflowing a Duration.
        let base = f.rescan_interval_s.clamp(1, crate::config::MAX_INTERVAL_S) as f64;
        let mut wait = Duration::from_secs_f64(base * (0.75 + rand::random::<f64>() * 0.5));
        if let Some(soon) = retry_soon {
            wait = wait.min(soon);
        }
        tokio::select! {
            r = scan_rx.recv() => if r.is_none() { return },
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Holds an exclusive lock on `home/node.lock` for the life of the process.
fn lock_home(home: &std::path::Path) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let path = home.join("node.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock(2) on a descriptor we own; released when it closes.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        anyhow::bail!(
            "another node is already running with home {} (lock {} is held)",
            home.display(),
            path.display()
        );
    }
    Ok(file)
}

fn stderr_is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}

/// While a scan runs: a progress line redrawn in place on a terminal,
/// otherwise a plain line every 10 s (logs stay readable).
async fn report_progress(folder: String, live: Arc<scan::Live>) {
    let tty = stderr_is_terminal();
    let every = Duration::from_secs(if tty { 1 } else { 10 });
    let start = std::time::Instant::now();
    loop {
        tokio::time::sleep(every).await;
        let entries = live.entries.load(std::sync::atomic::Ordering::Relaxed);
        let mb = live.hashed_bytes.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e6;
        let rate = mb / start.elapsed().as_secs_f64().max(1e-3);
        crate::events::scan_progress(&folder, (mb * 1e6) as u64, (mb * 1e6) as u64, rate * 1e6);
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
