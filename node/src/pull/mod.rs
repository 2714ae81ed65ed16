//! Pulling: bringing our copy of a folder to the global version.
//!
//! * [`need`] — global version per name and what we need, from one name's
//!   entries at a time (streamed from the database, never all in memory).
//! * [`figures`] — what REST and events ask of the index: `db/status`
//!   and `db/completion` figures (kept per index generation in
//!   [`crate::model::summaries`]), a name's global version, the need list.
//! * [`verify`] — fetched blocks hashed several at once and written.
//! * [`disk`] — safe filesystem steps (no symlink traversal, local-change
//!   checks, temp files, conflict copies).
//! * [`dirfd`] (a leaf, `crate::dirfd`) — directory handles: every disk operation of a pull is made
//!   relative to a directory opened from the folder root without crossing
//!   a symlink, never through a path.
//! * [`local_ops`] — revert (receive-only) and override (send-only).
//!
//! A round runs in the folder's loop right after a scan, so scanning and
//! pulling never race. It walks the folder's names a page at a time:
//! ascending for directories (parents before children), files and
//! symlinks (several files at once, with one budget of bytes in flight),
//! then descending for deletions (children before parents). A file is
//! assembled in its temp file from blocks found locally (its old version,
//! or any local file holding the same hash: the `blocks` table) and blocks
//! requested from devices announcing the global version, each verified
//! against its SHA-256, then fsynced and renamed over the target: the
//! target is always either the old or the complete new version.

// A leaf since versioning (below `pull`) works on directory handles too;
// re-exported where the puller's callers have always found it.
pub use crate::dirfd;
pub mod disk;
pub mod figures;
pub mod local_ops;
pub mod need;
pub mod verify;

use std::collections::HashMap;
use std::fs;
use std::io::ErrorKind;
use std::ops::ControlFlow;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::stream::{self, StreamExt};
use proto::bep::blocks::BLOCK_SIZES;
use proto::bep::global::{is_conflict, is_conflict_copy, temp_basename};
use proto::bep::wire::{BlockInfo, FileInfo, FileInfoType, Request};
use tokio::sync::Semaphore;

use crate::config::{FolderConfig, MaxConflicts, Perms};
use crate::db::{Change, Direction};
use crate::dirfd::{Dir, Rename};
use crate::model::Node;
use daemon::sync::MutexExt;
use disk::{basename, dirname, LocallyChanged};
use need::Needed;
use verify::{TempFile, Verifier};

/// Requested block data in flight per round (all files together).
const IN_FLIGHT_BYTES: usize = 32 * 1024 * 1024;
const MAX_IN_FLIGHT: usize = 64;
/// Changes recorded in the index together (small: a file renamed into
/// place but not yet recorded looks like a local change after a crash).
const RECORD_BATCH: usize = 32;

/// What a round did.
#[derive(Debug, Default)]
pub struct RoundStats {
    pub applied: usize,
    pub errors: Vec<(String, String)>,
    /// Something changed locally under us: scan before pulling again.
    pub rescan: bool,
}

struct Ctx {
    node: Arc<Node>,
    folder: String,
    /// The folder's path, for messages; the disk is reached through
    /// `root_dir` only.
    root: PathBuf,
    /// The folder root, held open for the round: every name is reached
    /// from it without crossing a symlink.
    root_dir: Dir,
    /// Conflict copies made this round (they are new local files to scan).
    conflicts: AtomicUsize,
    /// The folder's `maxConflicts`, as it was when the round started.
    max_conflicts: MaxConflicts,
    /// The folder's `ignorePerms`, as it was when the round started.
    perms: Perms,
    /// The folder's `copyOwnershipFromParent`, likewise.
    copy_owner: bool,
    /// Requested block data in flight, in KiB, across the files pulled at
    /// once (memory stays bounded however many run).
    budget: Semaphore,
    /// Verifies and writes fetched blocks; started when the round first
    /// fetches one (most rounds fetch nothing).
    verifier: std::sync::OnceLock<Verifier>,
    /// The folder's `.stignore`, read at the start of the round.
    ignores: crate::ignore::Ignores,
    /// Directories (folder-relative, `""` the root) whose entries changed
    /// since the last recorded batch: made durable once each, right before
    /// the batch is recorded (one fsync per directory and batch, not per
    /// file, as 1.19.2 does). Names, not descriptors: a page may touch
    /// hundreds of directories.
    changed_dirs: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// The folder's versioner (`None`: versioning off): what a remote
    /// change replaces or deletes is kept through it.
    versioner: Option<crate::versioning::Versioner>,
}

impl Ctx {
    /// The losing local version of a conflict (the regular file `base` of
    /// `dir`, for `name`) becomes a conflict copy; with `maxConflicts` 0
    /// Syncthing removes it, but with versioning on it is kept in the
    /// versions folder instead: no remote change destroys data that
    /// cannot be restored.
    fn keep_losing(&self, dir: &Dir, name: &str, base: &str, incoming: &FileInfo) -> Result<()> {
        if let (MaxConflicts::Discard, Some(v)) = (self.max_conflicts, &self.versioner) {
            if v.archive_deleted(&self.root_dir, dir, name, SystemTime::now())? {
                tracing::info!(folder = %self.folder, file = ?name,
                    "losing local version kept in the versions folder (maxConflicts is 0)");
                return Ok(());
            }
        }
        disk::move_to_conflict(dir, name, base, incoming, self.max_conflicts)
    }

    /// `maxConflicts` for a local write caught in the last moment before
    /// the swap: that version sits under the temp name, where the
    /// versioner does not take it, so with versioning on it is kept as a
    /// conflict copy rather than discarded.
    /// `copyOwnershipFromParent`: the new entry `base` of `dir` (for
    /// `name`) gets the directory's owner and group.
    fn copy_owner(&self, dir: &Dir, base: &str, name: &str) -> Result<()> {
        if self.copy_owner {
            dir.give_own_owner(base)
                .with_context(|| format!("cannot give {name:?} its directory's owner"))?;
        }
        Ok(())
    }

    fn raced_conflicts(&self) -> MaxConflicts {
        match (self.max_conflicts, &self.versioner) {
            (MaxConflicts::Discard, Some(_)) => MaxConflicts::Unlimited,
            (m, _) => m,
        }
    }

    fn verifier(&self) -> &Verifier {
        self.verifier.get_or_init(|| {
            Verifier::start(std::thread::available_parallelism().map_or(2, |n| n.get()))
        })
    }

    /// Notes that an entry of `name`'s directory changed.
    fn dir_changed(&self, name: &str) {
        let dir = dirname(name);
        let mut dirs = self.changed_dirs.locked();
        // Most files land in a directory already listed: no allocation.
        if !dirs.contains(dir) {
            dirs.insert(dir.to_string());
        }
    }
}

/// Runs disk work (opens, writes, fsyncs, renames) on the blocking pool,
/// so files pulled at once overlap their disk waits and the runtime's
/// threads stay free for the network.
async fn on_disk<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| anyhow!("disk task failed: {e}"))?
}

/// Files pulled at the same time: their requests, disk work and fsyncs
/// overlap (memory stays bounded by the round's byte budget).
const PARALLEL_FILES: usize = 16;

/// Needed items looked at per database pass: bounds the memory of a pull
/// round whatever the size of the folder.
const PAGE: usize = 256;

/// Which needed items a pass takes.
type Want = fn(&Needed) -> bool;

/// Up to [`PAGE`] needed items after `after` in `dir` order that `want`
/// keeps, and the last name looked at (`None`: the folder is done).
fn need_page(
    node: &Node,
    folder: &str,
    after: Option<&str>,
    dir: Direction,
    want: Want,
) -> Result<(Vec<Needed>, Option<String>)> {
    let mut page = Vec::new();
    let mut last = None;
    let mut t = need::Totals::default();
    node.db.for_each_entry(folder, after, dir, |e| {
        last = Some(e.name.clone());
        if let Some(n) = need::evaluate(e, &mut t).filter(want) {
            page.push(n);
            if page.len() >= PAGE {
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    })?;
    if page.len() < PAGE {
        // The stream ended before the page filled up.
        last = None;
    }
    Ok((page, last))
}

/// Loads the whole global and local entries of a needed item (the need
/// computation works on summaries). `None` when the global entry changed
/// meanwhile: the next round sees the new one.
fn load(node: &Node, folder: &str, mut n: Needed) -> Result<Option<Needed>> {
    let Some(global) = node.db.remote_file(folder, &n.from, &n.global.name)? else {
        return Ok(None);
    };
    if global.version != n.global.version {
        return Ok(None);
    }
    n.local = node.db.file(folder, &n.global.name)?;
    n.global = global;
    Ok(Some(n))
}

/// One pull round for `folder` (not sendonly, not paused): directories,
/// files and symlinks in ascending name order (parents first), then
/// deletions in descending order (children first), a page at a time.
pub async fn round(node: &Arc<Node>, folder: &FolderConfig) -> Result<RoundStats> {
    let ctx = Arc::new(Ctx {
        node: node.clone(),
        folder: folder.id.clone(),
        root: folder.path.clone(),
        root_dir: Dir::open(&folder.path)
            .with_context(|| format!("cannot open the folder {}", folder.path.display()))?,
        conflicts: AtomicUsize::new(0),
        max_conflicts: folder.max_conflicts,
        perms: folder.perms(),
        copy_owner: folder.copy_ownership_from_parent,
        budget: Semaphore::new(IN_FLIGHT_BYTES / 1024),
        ignores: crate::ignore::Ignores::load(&folder.path)
            .context("not pulling until the folder's .stignore is fixed")?
            .with_internal_dir(crate::versioning::in_folder_dir(folder)),
        changed_dirs: Default::default(),
        verifier: Default::default(),
        versioner: crate::versioning::Versioner::for_folder(
            folder,
            crate::versioning::Metrics::of(&node.metrics, &folder.id),
        ),
    });
    let mut stats = RoundStats::default();
    let mut pending: Vec<Change> = Vec::new();
    let passes: [(Direction, Want); 2] = [
        (Direction::Ascending, |n| !n.global.deleted),
        (Direction::Descending, |n| n.global.deleted),
    ];
    // ignoreDelete: the deletion pass is skipped, as Syncthing skips
    // needed deletions: the file stays on disk and our index keeps the
    // version we had (announced as before), so the deletion stays needed
    // and a later local edit still wins over it.
    let passes = if folder.ignore_delete {
        &passes[..1]
    } else {
        &passes[..]
    };
    for &(dir, want) in passes {
        let mut after: Option<String> = None;
        loop {
            let (n2, id, from) = (node.clone(), folder.id.clone(), after.clone());
            let (page, last) = tokio::task::spawn_blocking(move || {
                need_page(&n2, &id, from.as_deref(), dir, want)
            })
            .await
            .map_err(|e| anyhow!("need computation failed: {e}"))??;
            // Directories, symlinks and deletions in order (parents exist
            // before their children, children go before their parents, and
            // a symlink is in place before any name below it is tried, so
            // that name is refused instead of getting a directory made for
            // it); files of the page then several at a time.
            let (ordered, parallel): (Vec<Needed>, Vec<Needed>) = page
                .into_iter()
                .partition(|n| n.global.deleted || n.global.r#type != FileInfoType::File as i32);
            for n in ordered {
                let name = n.global.name.clone();
                let result = pull_one(&ctx, n).await;
                settle(&ctx, name, result, &mut stats, &mut pending)?;
            }
            let mut results = stream::iter(parallel.into_iter().map(|n| {
                let ctx = &ctx;
                async move {
                    let name = n.global.name.clone();
                    (name, pull_one(ctx, n).await)
                }
            }))
            .buffer_unordered(PARALLEL_FILES);
            while let Some((name, result)) = results.next().await {
                settle(&ctx, name, result, &mut stats, &mut pending)?;
            }
            drop(results);
            // Applied items are recorded before the next page is computed,
            // so it does not offer them again.
            record(&ctx, std::mem::take(&mut pending))?;
            match last {
                Some(l) => after = Some(l),
                None => break,
            }
        }
    }
    if ctx.conflicts.load(Ordering::Relaxed) > 0 {
        stats.rescan = true;
    }
    Ok(stats)
}

/// Checks the name, loads the whole entries and applies one needed item.
/// `Ok(None)`: the global entry changed meanwhile (the next round sees it).
async fn pull_one(ctx: &Arc<Ctx>, n: Needed) -> Result<Option<Change>> {
    disk::check_name(&n.global.name)?;
    if ctx.ignores.is_ignored(&n.global.name) {
        return Ok(Some(disk::ignored_entry(&n.global)));
    }
    match load(&ctx.node, &ctx.folder, n)? {
        Some(n) => {
            let n = Arc::new(n);
            ctx.node.events.item_started(&ctx.folder, &n.global);
            let r = apply(ctx, &n).await;
            ctx.node.events.item_finished(
                &ctx.folder,
                &n.global,
                r.as_ref().err().map(|e| format!("{e:#}")),
            );
            r.map(Some)
        }
        None => Ok(None),
    }
}

/// Books the outcome of one item: recorded (in batches), a reason to
/// rescan, or a pull error.
fn settle(
    ctx: &Ctx,
    name: String,
    result: Result<Option<Change>>,
    stats: &mut RoundStats,
    pending: &mut Vec<Change>,
) -> Result<()> {
    match result {
        Ok(None) => {}
        Ok(Some(change)) => {
            pending.push(change);
            stats.applied += 1;
            if pending.len() >= RECORD_BATCH {
                record(ctx, std::mem::take(pending))?;
            }
        }
        Err(e) if e.downcast_ref::<LocallyChanged>().is_some() => {
            tracing::info!(folder = %ctx.folder, file = ?name, "changed locally while pulling; rescanning first");
            stats.rescan = true;
        }
        Err(e) => {
            let msg = format!("{e:#}");
            // Names come from peers: Debug formatting escapes control characters.
            tracing::warn!(folder = %ctx.folder, file = ?name, error = ?msg, "cannot pull");
            stats.errors.push((name, msg));
        }
    }
    Ok(())
}

/// Records pulled entries (our version becomes the global one) and wakes
/// the index senders. The directories they changed are made durable
/// first: the index never records a rename a crash could undo.
fn record(ctx: &Ctx, changes: Vec<Change>) -> Result<()> {
    let dirs = std::mem::take(&mut *ctx.changed_dirs.locked());
    for dir in &dirs {
        // Reopened the safe way; one that became a symlink meanwhile is
        // not synced (nothing of ours was renamed through it).
        if let Ok(d) = ctx.root_dir.open_beneath(dir) {
            let _ = d.sync();
        }
    }
    if changes.is_empty() {
        return Ok(());
    }
    let (node, folder) = (&ctx.node, ctx.folder.as_str());
    let names = node
        .events
        .remote_changes(folder, changes.iter().map(|c| &c.info));
    let seq = node.db.apply(folder, changes)?;
    node.events.local_index_updated(folder, names, seq);
    if let Some(rt) = node.folder_runtime(folder) {
        rt.sequence.send_replace(seq);
    }
    Ok(())
}

async fn apply(ctx: &Arc<Ctx>, n: &Arc<Needed>) -> Result<Change> {
    let g = &n.global;
    if n.local.as_ref().is_some_and(|l| l.invalid) {
        bail!("changed locally in this receive-only folder; the local change is kept (POST /rest/db/revert?folder= to take the remote version)");
    }
    let (c, m) = (ctx.clone(), n.clone());
    if g.deleted {
        return on_disk(move || delete(&c, &m)).await;
    }
    match FileInfoType::try_from(g.r#type) {
        Ok(FileInfoType::File) => pull_file(ctx, n).await,
        Ok(FileInfoType::Directory) => on_disk(move || make_dir(&c, &m)).await,
        Ok(FileInfoType::Symlink)
        | Ok(FileInfoType::SymlinkFile)
        | Ok(FileInfoType::SymlinkDirectory) => on_disk(move || make_symlink(&c, &m)).await,
        Err(_) => bail!("unknown entry type {}", g.r#type),
    }
}

/// Fails with [`LocallyChanged`] unless `name` (in `dir`) is as the index
/// says.
fn unchanged_or_bail(ctx: &Ctx, name: &str, dir: &Dir) -> Result<()> {
    if !disk::local_unchanged(
        &ctx.node.db,
        &ctx.folder,
        name,
        dir,
        basename(name),
        ctx.perms,
    )? {
        return Err(LocallyChanged.into());
    }
    Ok(())
}

/// The directory `name` goes in, held open (reached without crossing a
/// symlink); missing parents are created when `create`.
fn locate(ctx: &Ctx, name: &str, create: bool) -> Result<Option<Dir>> {
    let found = disk::parent_dir(&ctx.root_dir, name, create);
    if let Err(e) = &found {
        if e.downcast_ref::<disk::NotADirectory>().is_some() {
            ctx.node.metrics.pull_refused_not_a_dir.inc();
        }
    }
    found
}

/// Our index entry for a pulled item: the global entry, with the on-disk
/// facts the scanner compares (so the next scan sees it unchanged).
fn recorded(g: &FileInfo, dir: &Dir) -> Result<Change> {
    let m = dir
        .stat(basename(&g.name))
        .with_context(|| format!("cannot stat {:?}", g.name))?;
    let mut info = g.clone();
    info.invalid = false;
    if m.file_type().is_symlink() {
        // The scanner records every symlink as SYMLINK (not the
        // deprecated file/directory kinds).
        info.r#type = FileInfoType::Symlink as i32;
        info.permissions = 0;
    } else {
        info.permissions = m.mode() & 0o777;
        if m.is_file() {
            info.modified_s = m.mtime();
            info.modified_ns = m.mtime_nsec() as i32;
        }
    }
    Ok(Change {
        info,
        inode: m.ino(),
    })
}

/// If the local entry at `target` is a regular file in a version that
/// conflicts with `g`, it is moved aside as a conflict copy.
///
/// A conflict copy that a newer version would replace is kept too: conflict
/// copies exist only to hold an edit that lost, and Syncthing 1.19.2
/// renames a new conflict copy over an existing one of the same name (same
/// second, same winner), which then reaches us as an ordinary newer
/// version and would otherwise destroy the edit everywhere.
///
/// Syncthing 2.1.3 never versions the losing side of a conflict: it
/// becomes a conflict copy, or with `maxConflicts` 0 it is removed
/// outright; we keep it in the versions folder then ([`Ctx::keep_losing`]).
fn keep_conflicting(ctx: &Ctx, n: &Needed, dir: &Dir) -> Result<()> {
    let Some(local) = n.local.as_ref().filter(|l| !l.deleted) else {
        return Ok(());
    };
    let base = basename(&n.global.name);
    if !dir.stat(base).is_ok_and(|m| m.is_file()) || same_content(local, &n.global) {
        return Ok(());
    }
    if is_conflict(local, &n.global) || is_conflict_copy(&n.global.name) {
        ctx.keep_losing(dir, &n.global.name, base, &n.global)?;
        ctx.conflicts.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Whether two versions of a file hold the same bytes (then nothing is
/// lost by replacing one with the other, and 1.19.2 makes no conflict copy
/// either: it only updates the metadata).
fn same_content(a: &FileInfo, b: &FileInfo) -> bool {
    a.size == b.size && proto::bep::blocks::same_blocks(&a.blocks, &b.blocks)
}

fn make_dir(ctx: &Ctx, n: &Needed) -> Result<Change> {
    let g = &n.global;
    let dir = locate(ctx, &g.name, true)?.context("parent directory missing")?;
    let base = basename(&g.name);
    unchanged_or_bail(ctx, &g.name, &dir)?;
    match dir.stat(base) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!("a file or symlink is in the way of this directory"),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            dir.mkdir(base, 0o777)
                .with_context(|| format!("cannot create {:?}", g.name))?;
            ctx.dir_changed(&g.name);
            ctx.copy_owner(&dir, base, &g.name)?;
        }
        Err(e) => return Err(e).with_context(|| format!("cannot stat {:?}", g.name)),
    }
    if !g.no_permissions && ctx.perms == Perms::Honour {
        // The peer chooses the mode: set on the directory opened without
        // following a symlink, never by path.
        dir.child(base)
            .and_then(|d| d.set_permissions(g.permissions & 0o777))
            .with_context(|| format!("cannot set permissions of {:?}", g.name))?;
    }
    recorded(g, &dir)
}

fn make_symlink(ctx: &Ctx, n: &Needed) -> Result<Change> {
    let g = &n.global;
    if g.symlink_target.is_empty() || g.symlink_target.contains(&0) {
        bail!("invalid symlink target");
    }
    let dir = locate(ctx, &g.name, true)?.context("parent directory missing")?;
    let base = basename(&g.name);
    unchanged_or_bail(ctx, &g.name, &dir)?;
    if dir.stat(base).is_ok_and(|m| m.is_dir()) {
        bail!("a directory is in the way of this symlink");
    }
    let temp = temp_basename(base);
    match dir.stat(&temp) {
        Ok(m) if m.is_dir() => bail!("{temp:?} is a directory"),
        Ok(_) => dir.remove_file(&temp)?,
        Err(_) => {}
    }
    dir.symlink(&g.symlink_target, &temp)
        .with_context(|| format!("cannot create the symlink {temp:?}"))?;
    ctx.copy_owner(&dir, &temp, &g.name)?;
    unchanged_or_bail(ctx, &g.name, &dir)?;
    keep_conflicting(ctx, n, &dir)?;
    // A regular file replaced by a symlink is kept, as Syncthing does.
    if let Some(v) = &ctx.versioner {
        v.archive_deleted(&ctx.root_dir, &dir, &g.name, SystemTime::now())?;
    }
    dir.rename(&temp, &dir, base, Rename::Replace)
        .with_context(|| format!("cannot rename into {:?}", g.name))?;
    ctx.dir_changed(&g.name);
    recorded(g, &dir)
}

fn delete(ctx: &Ctx, n: &Needed) -> Result<Change> {
    let g = &n.global;
    let tombstone = Change {
        info: FileInfo {
            invalid: false,
            ..g.clone()
        },
        inode: 0,
    };
    let Some(dir) = locate(ctx, &g.name, false)? else {
        return Ok(tombstone);
    };
    let base = basename(&g.name);
    unchanged_or_bail(ctx, &g.name, &dir)?;
    match dir.stat(base) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(tombstone),
        Err(e) => return Err(e).with_context(|| format!("cannot stat {:?}", g.name)),
        Ok(m) if m.is_dir() => {
            // Our leftover temp files and (?d)-ignored files go; other
            // ignored files keep the directory. Its contents are reached
            // through its own descriptor (a symlink swapped in fails).
            let inner = dir
                .child(base)
                .with_context(|| format!("cannot open the directory {:?}", g.name))?;
            disk::clear_dir_for_delete(&inner, &g.name, &ctx.ignores)?;
            dir.remove_dir(base).with_context(|| {
                format!(
                    "cannot remove directory {:?} (does it hold files the other devices do not have?)",
                    g.name
                )
            })?;
        }
        Ok(m) => {
            // 2.x: a deletion is an ordinary version that may win over a
            // concurrent edit of ours; the edit is then kept as a conflict
            // copy, never lost (symlinks are not kept, as in Syncthing).
            let edited = n
                .local
                .as_ref()
                .is_some_and(|l| !l.deleted && is_conflict(l, g));
            if edited && m.is_file() {
                ctx.keep_losing(&dir, &g.name, base, g)?;
                ctx.conflicts.fetch_add(1, Ordering::Relaxed);
            } else if let Some(v) = ctx.versioner.as_ref().filter(|_| m.is_file()) {
                // Kept in the versions folder instead of removed (symlinks
                // are not versioned, as in Syncthing).
                v.archive_deleted(&ctx.root_dir, &dir, &g.name, SystemTime::now())?;
            } else {
                dir.remove_file(base)
                    .with_context(|| format!("cannot remove {:?}", g.name))?;
            }
        }
    }
    ctx.dir_changed(&g.name);
    Ok(tombstone)
}

fn mtime(g: &FileInfo) -> SystemTime {
    let ns = g.modified_ns.clamp(0, 999_999_999) as u32;
    UNIX_EPOCH + Duration::new(g.modified_s.max(0) as u64, ns)
}

/// [`pull_file_into_place`]; on a full disk its temp file is removed (it
/// would keep the disk full for everything else) and the error says so.
async fn pull_file(ctx: &Arc<Ctx>, n: &Arc<Needed>) -> Result<Change> {
    let result = pull_file_into_place(ctx, n).await;
    match result {
        // A full versions folder (another disk) is the versioner's own
        // error: the complete temp file stays for the retry.
        Err(e)
            if disk::is_disk_full(&e) && e.downcast_ref::<crate::versioning::Error>().is_none() =>
        {
            disk::remove_temp(&ctx.root_dir, &n.global.name);
            Err(e.context("the folder's disk is full; the partial file was removed and the pull resumes when space is freed"))
        }
        r => r,
    }
}

/// A file being pulled: its temp file, open, holding every block found
/// locally; `missing` are the blocks to request.
struct Prepared {
    file: Arc<fs::File>,
    /// The temp file's name in `dir`.
    temp: String,
    /// The directory of the target, held from the first check to the
    /// rename into place.
    dir: Dir,
    missing: Vec<(usize, BlockInfo)>,
}

/// Disk work first (on the blocking pool), the requests for the missing
/// blocks, then the disk work that puts the file in place.
async fn pull_file_into_place(ctx: &Arc<Ctx>, n: &Arc<Needed>) -> Result<Change> {
    let (c, m) = (ctx.clone(), n.clone());
    let mut p = on_disk(move || prepare_file(&c, &m)).await?;
    let missing = std::mem::take(&mut p.missing);
    let shown = ctx.root.join(dirname(&n.global.name)).join(&p.temp);
    fetch_missing(ctx, n, &p.file, &shown, missing).await?;
    let (c, m) = (ctx.clone(), n.clone());
    on_disk(move || finish_file(&c, &m, p)).await
}

/// Requests the blocks not found locally (bounded in flight) and writes
/// them into the temp file.
async fn fetch_missing(
    ctx: &Ctx,
    n: &Needed,
    file: &Arc<fs::File>,
    temp: &Path,
    missing: Vec<(usize, BlockInfo)>,
) -> Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    let block_size = n
        .global
        .blocks
        .first()
        .map_or(1, |b| b.size.max(1) as usize);
    let in_flight = (IN_FLIGHT_BYTES / block_size).clamp(1, MAX_IN_FLIGHT);
    let sink = Arc::new(TempFile::new(file.clone(), temp.to_path_buf()));
    // However this ends (done, failed, or dropped with the round), no
    // block is written afterwards.
    let _closed = CloseOnDrop(sink.clone());
    let mut results = stream::iter(missing.into_iter().map(|(i, b)| {
        let sink = sink.clone();
        async move {
            let kib = (b.size.max(0) as u32).div_ceil(1024).max(1);
            let _permit = ctx
                .budget
                .acquire_many(kib)
                .await
                .map_err(|_| anyhow!("pull round ended"))?;
            fetch_block(ctx, n, i, &b, &sink).await
        }
    }))
    .buffer_unordered(in_flight);
    while let Some(r) = results.next().await {
        // The first failure ends the file; the temp file keeps what
        // arrived for the next attempt.
        r?;
    }
    Ok(())
}

struct CloseOnDrop(Arc<TempFile>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Checks the target, opens the temp file and fills it with every block
/// available locally: already in the temp file (an interrupted pull), in
/// the old version, or in any other indexed file.
fn prepare_file(ctx: &Ctx, n: &Needed) -> Result<Prepared> {
    let g = &n.global;
    let max_block = BLOCK_SIZES[BLOCK_SIZES.len() - 1];
    let mut expected = 0i64;
    for b in &g.blocks {
        if b.size < 0 || b.size as usize > max_block || b.offset != expected || b.hash.len() != 32 {
            bail!("invalid block list");
        }
        expected += b.size as i64;
    }
    if expected != g.size.max(0) {
        bail!("block list does not add up to the file size");
    }
    let dir = locate(ctx, &g.name, true)?.context("parent directory missing")?;
    let base = basename(&g.name);
    unchanged_or_bail(ctx, &g.name, &dir)?;
    if dir.stat(base).is_ok_and(|m| m.is_dir()) {
        bail!("a directory is in the way of this file");
    }
    let temp = temp_basename(base);
    disk::check_space(&dir, g.size.max(0) as u64, &temp, &ctx.root)?;
    let file = Arc::new(disk::open_temp(&dir, &temp)?);
    let temp_len = file.metadata()?.len();

    // Blocks of the old version, usable by hash.
    let mut old_blocks = HashMap::new();
    if let Some(l) = n.local.as_ref().filter(|l| !l.deleted) {
        for b in &l.blocks {
            old_blocks.insert(
                b.hash.clone(),
                (b.offset.max(0) as u64, b.size.max(0) as usize),
            );
        }
    }
    let old = if old_blocks.is_empty() {
        None
    } else {
        disk::open_existing(&dir, base)
    };
    let mut missing: Vec<(usize, BlockInfo)> = Vec::new();
    // Other local files holding blocks we need, opened once each.
    let mut others: HashMap<String, Option<fs::File>> = HashMap::new();
    for (i, b) in g.blocks.iter().enumerate() {
        let (off, size) = (b.offset as u64, b.size as usize);
        if size == 0 {
            continue;
        }
        // A temp file from an interrupted pull keeps its verified blocks.
        if off + size as u64 <= temp_len && disk::read_verified(&file, off, size, &b.hash).is_some()
        {
            ctx.node.metrics.reused_bytes.inc_by(size as u64);
            ctx.node.events.progress.block(
                &ctx.folder,
                &g.name,
                size,
                crate::events::progress::Source::Reused,
            );
            continue;
        }
        let local = match (old.as_ref(), old_blocks.get(&b.hash)) {
            (Some(f), Some(&(o, s))) if s == size => disk::read_verified(f, o, s, &b.hash),
            _ => None,
        };
        let local = local.or_else(|| {
            let (other, o, s) = ctx.node.db.find_block(&ctx.folder, &b.hash).ok()??;
            if s != size {
                return None;
            }
            let f = others.entry(other.clone()).or_insert_with(|| {
                let d = locate(ctx, &other, false).ok()??;
                disk::open_existing(&d, basename(&other))
            });
            disk::read_verified(f.as_ref()?, o, s, &b.hash)
        });
        if let Some(data) = local {
            file.write_all_at(&data, off)
                .with_context(|| format!("cannot write {temp:?}"))?;
            ctx.node.metrics.reused_bytes.inc_by(size as u64);
            ctx.node.events.progress.block(
                &ctx.folder,
                &g.name,
                size,
                crate::events::progress::Source::Copied,
            );
            continue;
        }
        missing.push((i, b.clone()));
    }
    Ok(Prepared {
        file,
        temp,
        dir,
        missing,
    })
}

/// Completes the temp file (size, mode, mtime, fsync) and swaps it into
/// place, unless the target changed locally meanwhile.
fn finish_file(ctx: &Ctx, n: &Needed, p: Prepared) -> Result<Change> {
    let g = &n.global;
    let Prepared {
        file, temp, dir, ..
    } = p;
    // Only when needed (a reused temp file longer than the new version):
    // every block is written, so the length is usually right already, and
    // some filesystems refuse ftruncate on an open file (fusefat: EPERM).
    let size = g.size.max(0) as u64;
    if file.metadata()?.len() != size {
        file.set_len(size)
            .with_context(|| format!("cannot set the size of {temp:?}"))?;
    }
    if g.no_permissions || ctx.perms == Perms::Ignore {
        // No mode to apply: the temp file's private 0600 is widened to
        // what a new file gets. A filesystem without permissions refuses
        // (FAT answers ENOSYS); its files have whatever mode its mount
        // gives, so the refusal changes nothing.
        if let Err(e) = file.set_permissions(fs::Permissions::from_mode(0o644)) {
            tracing::debug!(file = ?g.name, error = %e, "mode not set (permissions ignored)");
        }
    } else {
        file.set_permissions(fs::Permissions::from_mode(g.permissions & 0o777))
            .with_context(|| format!("cannot set the permissions of {:?}", g.name))?;
    }
    if ctx.copy_owner {
        let (uid, gid) = dir.owner()?;
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
            .with_context(|| format!("cannot give {:?} its directory's owner", g.name))?;
    }
    file.set_modified(mtime(g))?;
    file.sync_all()
        .with_context(|| format!("cannot flush {temp:?} to disk"))?;
    drop(file);

    // The target may have changed while we fetched: check again right
    // before replacing it (and once more in the swap itself). All in the
    // directory held since the first check, whatever its path now leads to.
    unchanged_or_bail(ctx, &g.name, &dir)?;
    keep_conflicting(ctx, n, &dir)?;
    let base = basename(&g.name);
    // The old file is kept (a hard link in the versions folder) before
    // the new one replaces it: a crash in between leaves the old file in
    // place, and the redo finds it already kept.
    // A change of metadata only (same bytes) keeps no version, as in
    // Syncthing, which then only updates the file in place.
    let now = SystemTime::now();
    let same = n
        .local
        .as_ref()
        .is_some_and(|l| !l.deleted && same_content(l, g));
    let kept = match ctx.versioner.as_ref().filter(|_| !same) {
        Some(v) => v.before_replace(&ctx.root_dir, &dir, &g.name, now)?,
        None => None,
    };
    if kept.is_some() && ctx.node.abort_after_archive.as_deref() == Some(g.name.as_str()) {
        tracing::error!(file = ?g.name, "NODE_TEST_ABORT_AFTER_ARCHIVE: aborting after the archive");
        std::process::abort();
    }
    disk::swap_into_place(
        &ctx.node.db,
        &ctx.folder,
        &g.name,
        &dir,
        (&temp, base),
        g,
        (ctx.raced_conflicts(), ctx.perms),
    )?;
    if let (Some(k), Some(v)) = (kept, &ctx.versioner) {
        k.finish(v, now);
    }
    ctx.dir_changed(&g.name);
    recorded(g, &dir)
}

/// Fetches block `i` from a device announcing the global version, trying
/// each connected one in turn (starting at a different one per block to
/// spread the load) until the data matches its hash, and writes it into
/// `sink`.
async fn fetch_block(
    ctx: &Ctx,
    n: &Needed,
    i: usize,
    b: &BlockInfo,
    sink: &Arc<TempFile>,
) -> Result<()> {
    // Each device's connection for this block: a secondary when it has
    // some (see `Node::requester_for`).
    let peers: Vec<_> = n
        .sources
        .iter()
        .filter_map(|d| ctx.node.requester_for(d).map(|r| (*d, r)))
        .collect();
    if peers.is_empty() {
        bail!("no connected device has this version");
    }
    let mut last = anyhow!("no attempt");
    for k in 0..peers.len() {
        let (dev, r) = &peers[(i + k) % peers.len()];
        let req = Request {
            id: 0,
            folder: ctx.folder.to_string(),
            name: n.global.name.clone(),
            offset: b.offset,
            size: b.size,
            hash: b.hash.clone(),
            from_temporary: false,
            block_no: i as i32,
        };
        // Never send what 2.1.2 disconnects on (a block of a peer's index
        // without a hash, say): this block cannot be had, from anyone.
        proto::bep::rules::check_request(&req)
            .with_context(|| format!("block {i} cannot be requested"))?;
        let data = match r.request(req).await {
            Ok(data) => data,
            Err(e) => {
                last = e.context(format!("block {i} from {dev}"));
                continue;
            }
        };
        let len = data.len();
        // A failed write (a full disk) ends the file at once.
        if ctx
            .verifier()
            .verify_and_write(data, b.clone(), sink.clone())
            .await?
        {
            ctx.node.metrics.pulled_bytes.inc_by(len as u64);
            ctx.node.events.progress.block(
                &ctx.folder,
                &n.global.name,
                len,
                crate::events::progress::Source::Pulled,
            );
            return Ok(());
        }
        tracing::warn!(device = %dev, file = ?n.global.name, block = i,
            "block data does not match its hash; trying another device");
        last = anyhow!("block {i} from {dev} does not match its hash");
    }
    Err(last)
}
