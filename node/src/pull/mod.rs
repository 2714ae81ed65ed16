//! Pulling: bringing our copy of a folder to the global version.
//!
//! * [`need`] — global version per name and the need list, from our index
//!   and the remote indexes in the database.
//! * [`requester`] — our Requests on a connection and their Responses.
//! * [`disk`] — safe filesystem steps (no symlink traversal, local-change
//!   checks, temp files, conflict copies).
//! * [`local_ops`] — revert (receive-only) and override (send-only).
//!
//! A round runs in the folder's loop right after a scan, so scanning and
//! pulling never race: directories first (parents before children), then
//! files and symlinks, then deletions (children before parents). A file is
//! assembled in its temp file from blocks found locally and blocks
//! requested from devices announcing the global version, each verified
//! against its SHA-256, then fsynced and renamed over the target: the
//! target is always either the old or the complete new version.

pub mod disk;
pub mod local_ops;
pub mod need;
pub mod requester;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::stream::{self, StreamExt};
use proto::bep::blocks::BLOCK_SIZES;
use proto::bep::global::{is_conflict, temp_basename};
use proto::bep::wire::{BlockInfo, FileInfo, FileInfoType, Request};

use crate::config::FolderConfig;
use crate::db::Change;
use crate::model::Node;
use disk::{basename, LocallyChanged};
use need::Needed;

/// Block data fetched from peers / copied from local files, since start.
pub static PULLED_BYTES: AtomicU64 = AtomicU64::new(0);
pub static REUSED_BYTES: AtomicU64 = AtomicU64::new(0);

/// Requested block data in flight per file.
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

struct Ctx<'a> {
    node: &'a Arc<Node>,
    folder: &'a str,
    root: &'a Path,
    my_short: u64,
    blocks: &'a BlockMap,
    /// Conflict copies made this round (they are new local files to scan).
    conflicts: AtomicUsize,
    /// The folder's `.stignore`, read at the start of the round.
    ignores: crate::ignore::Ignores,
}

/// The need list of `folder` now.
pub fn need_list(node: &Node, folder: &str) -> Result<(Vec<Needed>, need::Totals)> {
    let local = node.db.local_infos(folder)?;
    let remote = node.db.remote_infos(folder)?;
    Ok(need::compute(local, remote))
}

/// Where each block of our live files is: hash → (name, offset, size).
/// A file moved or copied on another device is then built from local data.
type BlockMap = HashMap<Vec<u8>, (String, u64, usize)>;

fn block_map(local: &[FileInfo]) -> BlockMap {
    let mut map = HashMap::new();
    for f in local.iter().filter(|f| !f.deleted && !f.invalid) {
        for b in f.blocks.iter().filter(|b| b.size > 0) {
            map.entry(b.hash.clone())
                .or_insert_with(|| (f.name.clone(), b.offset.max(0) as u64, b.size as usize));
        }
    }
    map
}

/// One pull round for `folder` (not sendonly, not paused).
pub async fn round(node: &Arc<Node>, folder: &FolderConfig) -> Result<RoundStats> {
    let n2 = node.clone();
    let id = folder.id.clone();
    let (need, blocks) = tokio::task::spawn_blocking(move || -> Result<_> {
        let local = n2.db.local_infos(&id)?;
        let blocks = block_map(&local);
        let remote = n2.db.remote_infos(&id)?;
        Ok((need::compute(local, remote).0, blocks))
    })
    .await
    .map_err(|e| anyhow!("need computation failed: {e}"))??;
    let mut stats = RoundStats::default();
    if need.is_empty() {
        return Ok(stats);
    }
    let ctx = Ctx {
        node,
        folder: &folder.id,
        root: &folder.path,
        my_short: node.my_id.short().0,
        blocks: &blocks,
        conflicts: AtomicUsize::new(0),
        ignores: crate::ignore::Ignores::load(&folder.path)
            .context("not pulling until the folder's .stignore is fixed")?,
    };
    let kind = |n: &Needed| {
        if n.global.deleted {
            2
        } else if n.global.r#type == FileInfoType::Directory as i32 {
            0
        } else {
            1
        }
    };
    let mut dirs: Vec<&Needed> = need.iter().filter(|n| kind(n) == 0).collect();
    let mut files: Vec<&Needed> = need.iter().filter(|n| kind(n) == 1).collect();
    let mut deletes: Vec<&Needed> = need.iter().filter(|n| kind(n) == 2).collect();
    dirs.sort_by(|a, b| a.global.name.cmp(&b.global.name));
    files.sort_by(|a, b| a.global.name.cmp(&b.global.name));
    deletes.sort_by(|a, b| b.global.name.cmp(&a.global.name));
    let mut pending: Vec<Change> = Vec::new();
    for n in dirs.into_iter().chain(files).chain(deletes) {
        let name = n.global.name.clone();
        let result = match disk::check_name(&name) {
            Err(e) => Err(e),
            Ok(()) if ctx.ignores.is_ignored(&name) => Ok(disk::ignored_entry(&n.global)),
            Ok(()) => apply(&ctx, n).await,
        };
        match result {
            Ok(change) => {
                pending.push(change);
                stats.applied += 1;
                if pending.len() >= RECORD_BATCH {
                    record(node, &folder.id, std::mem::take(&mut pending))?;
                }
            }
            Err(e) if e.downcast_ref::<LocallyChanged>().is_some() => {
                tracing::info!(folder = %folder.id, file = %name, "changed locally while pulling; rescanning first");
                stats.rescan = true;
            }
            Err(e) => {
                let msg = format!("{e:#}");
                tracing::warn!(folder = %folder.id, file = %name, error = %msg, "cannot pull");
                stats.errors.push((name, msg));
            }
        }
    }
    record(node, &folder.id, pending)?;
    if ctx.conflicts.load(Ordering::Relaxed) > 0 {
        stats.rescan = true;
    }
    Ok(stats)
}

/// Records pulled entries (our version becomes the global one) and wakes
/// the index senders.
fn record(node: &Node, folder: &str, changes: Vec<Change>) -> Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let seq = node.db.apply(folder, changes)?;
    if let Some(rt) = node.folder_runtime(folder) {
        rt.sequence.send_replace(seq);
    }
    Ok(())
}

async fn apply(ctx: &Ctx<'_>, n: &Needed) -> Result<Change> {
    let g = &n.global;
    if n.local.as_ref().is_some_and(|l| l.invalid) {
        bail!("changed locally in this receive-only folder; the local change is kept (POST /rest/db/revert?folder= to take the remote version)");
    }
    if g.deleted {
        return delete(ctx, n);
    }
    match FileInfoType::try_from(g.r#type) {
        Ok(FileInfoType::File) => pull_file(ctx, n).await,
        Ok(FileInfoType::Directory) => make_dir(ctx, n),
        Ok(FileInfoType::Symlink)
        | Ok(FileInfoType::SymlinkFile)
        | Ok(FileInfoType::SymlinkDirectory) => make_symlink(ctx, n),
        Err(_) => bail!("unknown entry type {}", g.r#type),
    }
}

fn unchanged_or_bail(ctx: &Ctx<'_>, name: &str, target: &Path) -> Result<()> {
    if !disk::local_unchanged(&ctx.node.db, ctx.folder, name, target)? {
        return Err(LocallyChanged.into());
    }
    Ok(())
}

/// Where `name` goes: (its directory, its path). Parents are created.
fn locate(ctx: &Ctx<'_>, name: &str, create: bool) -> Result<Option<(PathBuf, PathBuf)>> {
    Ok(disk::parent_dir(ctx.root, name, create)?.map(|dir| {
        let target = dir.join(basename(name));
        (dir, target)
    }))
}

/// Our index entry for a pulled item: the global entry, with the on-disk
/// facts the scanner compares (so the next scan sees it unchanged).
fn recorded(g: &FileInfo, target: &Path) -> Result<Change> {
    let m = fs::symlink_metadata(target)
        .with_context(|| format!("cannot stat {}", target.display()))?;
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
fn keep_conflicting(ctx: &Ctx<'_>, n: &Needed, dir: &Path, target: &Path) -> Result<()> {
    let Some(local) = n.local.as_ref().filter(|l| !l.deleted) else {
        return Ok(());
    };
    let is_file = fs::symlink_metadata(target).is_ok_and(|m| m.is_file());
    if is_file && is_conflict(local, &n.global, ctx.my_short) {
        disk::move_to_conflict(dir, &n.global.name, target, &n.global)?;
        ctx.conflicts.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

fn make_dir(ctx: &Ctx<'_>, n: &Needed) -> Result<Change> {
    let g = &n.global;
    let (dir, target) = locate(ctx, &g.name, true)?.context("parent directory missing")?;
    unchanged_or_bail(ctx, &g.name, &target)?;
    match fs::symlink_metadata(&target) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!("a file or symlink is in the way of this directory"),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            fs::create_dir(&target)
                .with_context(|| format!("cannot create {}", target.display()))?;
            disk::sync_dir(&dir);
        }
        Err(e) => return Err(e).with_context(|| format!("cannot stat {}", target.display())),
    }
    if !g.no_permissions {
        fs::set_permissions(&target, fs::Permissions::from_mode(g.permissions & 0o777))
            .with_context(|| format!("cannot set permissions of {}", target.display()))?;
    }
    recorded(g, &target)
}

fn make_symlink(ctx: &Ctx<'_>, n: &Needed) -> Result<Change> {
    let g = &n.global;
    if g.symlink_target.is_empty() || g.symlink_target.contains(&0) {
        bail!("invalid symlink target");
    }
    let (dir, target) = locate(ctx, &g.name, true)?.context("parent directory missing")?;
    unchanged_or_bail(ctx, &g.name, &target)?;
    if fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
        bail!("a directory is in the way of this symlink");
    }
    let temp = dir.join(temp_basename(basename(&g.name)));
    match fs::symlink_metadata(&temp) {
        Ok(m) if m.is_dir() => bail!("{} is a directory", temp.display()),
        Ok(_) => fs::remove_file(&temp)?,
        Err(_) => {}
    }
    std::os::unix::fs::symlink(OsStr::from_bytes(&g.symlink_target), &temp)
        .with_context(|| format!("cannot create symlink {}", temp.display()))?;
    unchanged_or_bail(ctx, &g.name, &target)?;
    keep_conflicting(ctx, n, &dir, &target)?;
    fs::rename(&temp, &target)
        .with_context(|| format!("cannot rename into {}", target.display()))?;
    disk::sync_dir(&dir);
    recorded(g, &target)
}

fn delete(ctx: &Ctx<'_>, n: &Needed) -> Result<Change> {
    let g = &n.global;
    let tombstone = Change {
        info: FileInfo {
            invalid: false,
            ..g.clone()
        },
        inode: 0,
    };
    let Some((dir, target)) = locate(ctx, &g.name, false)? else {
        return Ok(tombstone);
    };
    unchanged_or_bail(ctx, &g.name, &target)?;
    match fs::symlink_metadata(&target) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(tombstone),
        Err(e) => return Err(e).with_context(|| format!("cannot stat {}", target.display())),
        Ok(m) if m.is_dir() => {
            // Our leftover temp files and (?d)-ignored files go; other
            // ignored files keep the directory.
            disk::clear_dir_for_delete(&target, &g.name, &ctx.ignores)?;
            fs::remove_dir(&target).with_context(|| {
                format!(
                    "cannot remove directory {} (does it hold files the other devices do not have?)",
                    target.display()
                )
            })?;
        }
        Ok(_) => {
            fs::remove_file(&target)
                .with_context(|| format!("cannot remove {}", target.display()))?;
        }
    }
    disk::sync_dir(&dir);
    Ok(tombstone)
}

fn mtime(g: &FileInfo) -> SystemTime {
    let ns = g.modified_ns.clamp(0, 999_999_999) as u32;
    UNIX_EPOCH + Duration::new(g.modified_s.max(0) as u64, ns)
}

/// [`pull_file_into_place`]; on a full disk its temp file is removed (it
/// would keep the disk full for everything else) and the error says so.
async fn pull_file(ctx: &Ctx<'_>, n: &Needed) -> Result<Change> {
    let result = pull_file_into_place(ctx, n).await;
    match result {
        Err(e) if disk::is_disk_full(&e) => {
            disk::remove_temp(ctx.root, &n.global.name);
            Err(e.context("the folder's disk is full; the partial file was removed and the pull resumes when space is freed"))
        }
        r => r,
    }
}

async fn pull_file_into_place(ctx: &Ctx<'_>, n: &Needed) -> Result<Change> {
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
    let (dir, target) = locate(ctx, &g.name, true)?.context("parent directory missing")?;
    unchanged_or_bail(ctx, &g.name, &target)?;
    if fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
        bail!("a directory is in the way of this file");
    }
    let temp = dir.join(temp_basename(basename(&g.name)));
    disk::check_space(&dir, g.size.max(0) as u64, &temp)?;
    let file = disk::open_temp(&temp)?;
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
        disk::open_existing(&target)
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
            REUSED_BYTES.fetch_add(size as u64, Ordering::Relaxed);
            continue;
        }
        let local = match (old.as_ref(), old_blocks.get(&b.hash)) {
            (Some(f), Some(&(o, s))) if s == size => disk::read_verified(f, o, s, &b.hash),
            _ => None,
        };
        let local = local.or_else(|| {
            let (other, o, s) = ctx.blocks.get(&b.hash)?;
            let (o, s) = (*o, *s);
            if s != size {
                return None;
            }
            let f = others.entry(other.clone()).or_insert_with(|| {
                let (_, path) = locate(ctx, other, false).ok()??;
                disk::open_existing(&path)
            });
            disk::read_verified(f.as_ref()?, o, s, &b.hash)
        });
        if let Some(data) = local {
            file.write_all_at(&data, off)
                .with_context(|| format!("cannot write {}", temp.display()))?;
            REUSED_BYTES.fetch_add(size as u64, Ordering::Relaxed);
            continue;
        }
        missing.push((i, b.clone()));
    }
    drop(old);
    drop(others);

    if !missing.is_empty() {
        let block_size = g.blocks.first().map_or(1, |b| b.size.max(1) as usize);
        let in_flight = (IN_FLIGHT_BYTES / block_size).clamp(1, MAX_IN_FLIGHT);
        let file_ref = &file;
        let temp_ref = &temp;
        let mut results = stream::iter(missing.into_iter().map(|(i, b)| async move {
            let data = fetch_block(ctx, n, i, &b).await?;
            file_ref
                .write_all_at(&data, b.offset as u64)
                .with_context(|| format!("cannot write {}", temp_ref.display()))?;
            Ok::<(), anyhow::Error>(())
        }))
        .buffer_unordered(in_flight);
        while let Some(r) = results.next().await {
            // The first failure ends the file; the temp file keeps what
            // arrived for the next attempt.
            r?;
        }
    }

    file.set_len(g.size.max(0) as u64)?;
    let mode = if g.no_permissions {
        0o644
    } else {
        g.permissions & 0o777
    };
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.set_modified(mtime(g))?;
    file.sync_all()
        .with_context(|| format!("cannot flush {} to disk", temp.display()))?;
    drop(file);

    // The target may have changed while we fetched: check again right
    // before replacing it.
    unchanged_or_bail(ctx, &g.name, &target)?;
    keep_conflicting(ctx, n, &dir, &target)?;
    fs::rename(&temp, &target)
        .with_context(|| format!("cannot rename into {}", target.display()))?;
    disk::sync_dir(&dir);
    recorded(g, &target)
}

/// Fetches block `i` from a device announcing the global version, trying
/// each connected one in turn (starting at a different one per block to
/// spread the load) until the data matches its hash.
async fn fetch_block(ctx: &Ctx<'_>, n: &Needed, i: usize, b: &BlockInfo) -> Result<Vec<u8>> {
    let conns = ctx.node.connections();
    let peers: Vec<_> = n
        .sources
        .iter()
        .filter_map(|d| conns.get(d).map(|c| (*d, c.requester.clone())))
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
            weak_hash: b.weak_hash,
            block_no: i as i32,
        };
        match r.request(req).await {
            Ok(data) if disk::block_matches(&data, b) => {
                PULLED_BYTES.fetch_add(data.len() as u64, Ordering::Relaxed);
                return Ok(data);
            }
            Ok(_) => {
                tracing::warn!(device = %dev, file = %n.global.name, block = i,
                    "block data does not match its hash; trying another device");
                last = anyhow!("block {i} from {dev} does not match its hash");
            }
            Err(e) => last = e.context(format!("block {i} from {dev}")),
        }
    }
    Err(last)
}
