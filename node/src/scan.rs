//! The scanner: walks a folder, compares every entry with the index, hashes
//! new and changed files in parallel and records the differences (new
//! versions, tombstones for vanished entries) with fresh sequence numbers.

use std::collections::HashMap;
use std::fs::{self, File, Metadata};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use proto::bep::blocks::{self, block_size, block_size_for_rescan, empty_file_blocks};
use proto::bep::names;
use proto::bep::vector;
use proto::bep::wire::{BlockInfo, FileInfo, FileInfoType, Vector};

use crate::config::{MarkerName, Perms};
use crate::db::{Change, Db, LocalMeta};
use crate::events::Events;
use daemon::sync::MutexExt;

/// Marker Syncthing creates at the root of every folder.
pub const MARKER: &str = ".stfolder";

/// Creates the `.stfolder` marker of a folder that has none, as Syncthing
/// creates it: a directory holding a small text file that says what it is
/// (so cleanup tools and people leave it alone), both made durable.
pub fn create_marker(root: &Path, folder: &str) -> Result<()> {
    use sha2::{Digest, Sha256};
    let marker = root.join(MARKER);
    fs::create_dir(&marker)
        .with_context(|| format!("cannot create the folder marker {}", marker.display()))?;
    // Syncthing's name for the file: the first three bytes of the folder
    // ID's SHA-256, in hex.
    let hash = Sha256::digest(folder.as_bytes());
    let name = format!(
        "syncthing-folder-{:02x}{:02x}{:02x}.txt",
        hash[0], hash[1], hash[2]
    );
    let text = format!(
        "# This directory is a Syncthing folder marker.\n# Do not delete.\n\nfolderID: {folder}\ncreated: {}\n",
        crate::timefmt::rfc3339(SystemTime::now())
    );
    let file = marker.join(name);
    fs::write(&file, text).with_context(|| format!("cannot write {}", file.display()))?;
    for dir in [&marker, &root.to_path_buf()] {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("cannot make {} durable", dir.display()))?;
    }
    Ok(())
}

/// What a folder gets when it starts with nothing of it in the index (just
/// added, through the REST API or the configuration file), as Syncthing
/// does for a folder with no local sequence: its path, with missing parents
/// (mode 0777 less the umask, as Syncthing), and its marker, unless
/// `paused` (then the path only, as Syncthing). A folder the index knows is
/// never created here: its vanished path is an unmounted disk until proven
/// otherwise, and the scan refuses it.
pub fn create_new_folder(
    root: &Path,
    folder: &str,
    paused: bool,
    marker: &MarkerName,
) -> Result<()> {
    if fs::symlink_metadata(root).is_err() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o777)
            .create(root)
            .with_context(|| format!("cannot create the folder path {}", root.display()))?;
        tracing::info!(folder = %folder, path = %root.display(), "created the new folder's path");
    }
    // Another marker name is the operator's to create (Syncthing leaves it
    // alone too): its absence is what stops the folder.
    if !paused
        && marker.is_default()
        && root.is_dir()
        && fs::symlink_metadata(root.join(MARKER)).is_err()
    {
        create_marker(root, folder)?;
    }
    Ok(())
}

/// What a scan did.
#[derive(Debug, Default, Clone)]
pub struct ScanStats {
    pub entries: usize,
    pub unchanged: usize,
    pub hashed_files: usize,
    pub hashed_bytes: u64,
    pub deleted: usize,
    pub changed: usize,
    pub sequence: i64,
    pub seconds: f64,
}

/// Live progress of one scan, for progress output while it runs.
#[derive(Default)]
pub struct Live {
    pub entries: AtomicU64,
    pub hashed_bytes: AtomicU64,
    /// Set when the node stops: the scan ends at the next batch or block
    /// with [`Interrupted`], having recorded nothing half-done (deletions
    /// are only found once every batch is through).
    pub stop: std::sync::atomic::AtomicBool,
}

/// A scan ended early because the node is stopping.
#[derive(Debug, thiserror::Error)]
#[error("scan interrupted: the node is stopping")]
pub struct Interrupted;

/// One entry found on disk.
struct Found {
    name: String,
    path: PathBuf,
    meta: Metadata,
}

/// Entries examined (and recorded) together; bounds the scanner's memory
/// whatever the size of the folder.
const BATCH: usize = 2048;

/// Scans `root` for folder `folder`, recording changes in `db`.
/// `short_id` is our short device ID (version vector counter).
///
/// The walk is processed in batches: look the batch up in the index, hash
/// what changed (on all cores), record it. Names seen are kept in the
/// database, so vanished entries are found without holding the folder in
/// memory.
/// `progress` is called with the folder's sequence after every batch
/// recorded, so index senders can start before a long scan ends.
#[cfg(test)]
pub fn scan(
    db: &Db,
    folder: &str,
    root: &Path,
    short_id: u64,
    progress: &dyn Fn(i64),
    live: &Live,
) -> Result<ScanStats> {
    let target = Target {
        folder,
        root,
        short_id,
        receive_only: false,
        versions_dir: None,
        perms: Perms::Honour,
        marker: &MarkerName::default(),
    };
    let events = crate::events::Events::default();
    scan_folder(db, &events, target, progress, live)
}

/// The folder a scan looks at.
pub struct Target<'a> {
    pub folder: &'a str,
    pub root: &'a Path,
    /// Our short device ID (version vector counter).
    pub short_id: u64,
    /// Every local change is recorded `invalid` (see [`scan_folder`]).
    pub receive_only: bool,
    /// The versions folder when it is inside the folder under another
    /// name than `.stversions` (which is always skipped): treated as
    /// ignored, so nothing in it is ever announced.
    pub versions_dir: Option<String>,
    /// Whether permission bits count (the folder's `ignorePerms`).
    pub perms: Perms,
    /// The folder's marker: without it nothing is scanned.
    pub marker: &'a MarkerName,
}

/// [`scan`], for a folder that is receive-only when `receive_only`: every
/// local change is recorded `invalid` (that is how the index marks a
/// receive-only local change: it is announced invalid, never becomes the
/// global version and is never overwritten until reverted). The changes
/// recorded are told on `events`; the caller counts the hashing figures
/// of the returned stats.
pub fn scan_folder(
    db: &Db,
    events: &Events,
    target: Target<'_>,
    progress: &dyn Fn(i64),
    live: &Live,
) -> Result<ScanStats> {
    let Target {
        folder,
        root,
        short_id,
        receive_only,
        versions_dir,
        perms,
        marker: marker_name,
    } = target;
    let started = Instant::now();
    let marker = root.join(marker_name.as_str());
    if !root.is_dir() {
        bail!(
            "folder {folder:?}: {} is not a directory (missing or unmounted?); not scanning, so nothing is announced as deleted",
            root.display()
        );
    }
    if fs::symlink_metadata(&marker).is_err() {
        // Like Syncthing: the marker is created once, on the first scan. If
        // it vanishes later the folder is most likely an unmounted mount
        // point, and scanning it would announce every file as deleted.
        if db.folder_state(folder)?.1 != 0 {
            bail!(
                "folder {folder:?}: marker {} is missing, so the folder may be unmounted; not scanning. If the folder is intact, recreate the marker ({} {})",
                marker.display(),
                if marker_name.is_default() { "mkdir" } else { "touch" },
                marker.display()
            );
        }
        // A marker of the operator's choosing is never made here: it is
        // what says the storage is mounted.
        if !marker_name.is_default() {
            bail!(
                "folder {folder:?}: marker {} (markerName) does not exist; not scanning until it does (create it on the folder's storage)",
                marker.display()
            );
        }
        create_marker(root, folder)?;
    }
    // Read on every scan, so an edited .stignore takes effect on the next
    // one; a broken one stops the scan (and so the pull) rather than sync
    // or delete what the user meant to ignore.
    let ignores = crate::ignore::Ignores::load(root)
        .with_context(|| format!("folder {folder:?}: not scanning until its .stignore is fixed"))?
        .with_internal_dir(versions_dir);
    let now = unix_now();
    let mut stats = ScanStats::default();
    db.seen_reset(folder)?;
    let ctx = Ctx {
        db,
        events,
        folder,
        short_id,
        now,
        progress,
        live,
        receive_only,
        perms,
    };
    let mut batch = Vec::with_capacity(BATCH);
    walk(root, "", &ignores, &mut |walked| {
        match walked {
            Walked::Entry(found) => batch.push(found),
            Walked::Keep(name) => db.seen_subtree(folder, &name)?,
        }
        if batch.len() >= BATCH {
            scan_batch(&ctx, std::mem::take(&mut batch), &mut stats)?;
        }
        Ok(())
    })?;
    scan_batch(&ctx, batch, &mut stats)?;

    // Entries in the index but gone from disk become tombstones, children
    // before parents so a peer can empty a directory before removing it.
    let mut gone = db.unseen(folder)?;
    gone.sort_by(|a, b| b.0.cmp(&a.0));
    let mut changes = Vec::with_capacity(gone.len());
    let mut newly_ignored = Vec::new();
    for (name, old) in gone {
        if ignores.is_ignored(&name) {
            // Ignored, not deleted: announced invalid with its version
            // (1.19.2's ConvertToIgnoredFileInfo), once.
            if let Some(mut info) = db.file(folder, &name)?.filter(|f| !f.invalid) {
                info.invalid = true;
                info.blocks.clear();
                newly_ignored.push(Change { info, inode: 0 });
            }
            continue;
        }
        let mut version = old.version;
        vector::update(&mut version, short_id, now);
        let recorded = db.file(folder, &name)?;
        // Gone while it was ignored (or otherwise invalid): we never had
        // the cluster's version, so our deletion must not win over it
        // (1.19.2: an empty version, so the global version comes back).
        if !receive_only && recorded.as_ref().is_some_and(|f| f.invalid) {
            version = Vector::default();
        }
        changes.push(Change {
            info: FileInfo {
                name,
                r#type: old.kind,
                deleted: true,
                modified_s: now as i64,
                version: Some(version),
                modified_by: short_id,
                // The content this deletion replaces (2.x carries it on
                // every change; a deletion is a conflict anyway, having
                // no blocks_hash of its own).
                previous_blocks_hash: recorded.map(|f| f.blocks_hash).unwrap_or_default(),
                ..Default::default()
            },
            inode: 0,
        });
    }
    if receive_only {
        for c in &mut changes {
            c.info.invalid = true;
        }
    }
    stats.deleted = changes.len();
    changes.append(&mut newly_ignored);
    stats.changed += changes.len();
    stats.sequence = if changes.is_empty() {
        db.folder_state(folder)?.1
    } else {
        let names = events.local_changes(folder, changes.iter().map(|c| &c.info));
        let seq = db.apply(folder, changes)?;
        events.local_index_updated(folder, names, seq);
        seq
    };
    stats.seconds = started.elapsed().as_secs_f64();
    Ok(stats)
}

/// What every batch of one scan shares.
struct Ctx<'a> {
    db: &'a Db,
    events: &'a Events,
    folder: &'a str,
    short_id: u64,
    now: u64,
    progress: &'a dyn Fn(i64),
    live: &'a Live,
    receive_only: bool,
    perms: Perms,
}

fn scan_batch(ctx: &Ctx<'_>, found: Vec<Found>, stats: &mut ScanStats) -> Result<()> {
    if found.is_empty() {
        return Ok(());
    }
    if ctx.live.stop.load(Ordering::Relaxed) {
        return Err(Interrupted.into());
    }
    let Ctx {
        db,
        events,
        folder,
        short_id,
        now,
        progress,
        live,
        receive_only,
        perms,
    } = *ctx;
    stats.entries += found.len();
    live.entries
        .fetch_add(found.len() as u64, Ordering::Relaxed);
    let names: Vec<&str> = found.iter().map(|f| f.name.as_str()).collect();
    db.seen_add(folder, &names)?;
    let known = db.local_meta(folder, &names)?;
    drop(names);
    let mut changes = Vec::new();
    let mut to_hash = Vec::new();
    for f in found {
        let old = known.get(&f.name);
        let current = disk_meta(&f.meta);
        if let Some(old) = old {
            if !old.deleted && unchanged(old, &current, perms) {
                stats.unchanged += 1;
                continue;
            }
        }
        let mut version = old.map(|o| o.version.clone()).unwrap_or_default();
        vector::update(&mut version, short_id, now);
        // Back from being ignored (its entry has no on-disk facts): what is
        // on disk may predate the cluster's version, so only our counter
        // is kept and a differing global version is a conflict, never a
        // silent overwrite either way (1.19.2's DropOthers).
        let was_ignored = old.is_some_and(|o| o.inode == 0 && !o.deleted && !receive_only);
        if was_ignored && db.file(folder, &f.name)?.is_some_and(|x| x.invalid) {
            version.counters.retain(|c| c.id == short_id);
        }
        let ft = f.meta.file_type();
        if ft.is_file() {
            let bs = match old {
                Some(o) if o.kind == FileInfoType::File as i32 && !o.deleted => {
                    block_size_for_rescan(current.size as u64, o.block_size as usize)
                }
                _ => block_size(current.size as u64),
            };
            to_hash.push((f, version, bs));
        } else if ft.is_dir() {
            changes.push(Change {
                info: FileInfo {
                    name: f.name,
                    r#type: FileInfoType::Directory as i32,
                    permissions: current.permissions,
                    // As Syncthing: the bits are still sent, marked
                    // meaningless, so no device applies or compares them.
                    no_permissions: perms == Perms::Ignore,
                    modified_s: current.modified_s,
                    modified_ns: current.modified_ns,
                    version: Some(version),
                    modified_by: short_id,
                    ..Default::default()
                },
                inode: current.inode,
            });
        } else if ft.is_symlink() {
            let target = match fs::read_link(&f.path) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(path = %f.path.display(), error = %e, "cannot read symlink; skipped");
                    continue;
                }
            };
            changes.push(Change {
                info: FileInfo {
                    name: f.name,
                    r#type: FileInfoType::Symlink as i32,
                    no_permissions: true,
                    symlink_target: target.into_os_string().into_encoded_bytes(),
                    version: Some(version),
                    modified_by: short_id,
                    ..Default::default()
                },
                inode: current.inode,
            });
        }
    }
    let mut hashed = hash_all(to_hash, short_id, live);
    if perms == Perms::Ignore {
        for c in hashed.iter_mut().flatten() {
            c.info.no_permissions = true;
        }
    }
    // Units skipped for the stop have no result: nothing of this batch may
    // be recorded.
    if live.stop.load(Ordering::Relaxed) {
        return Err(Interrupted.into());
    }
    // Names some device announced, looked up for the batch at once (most
    // new files have none).
    let names: Vec<&str> = hashed
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|c| c.info.name.as_str()))
        .collect();
    let others = db.announced_by_others(folder, &names)?;
    let mut adopted = Vec::new();
    for result in hashed {
        match result {
            Ok(mut change) => {
                stats.hashed_files += 1;
                stats.hashed_bytes += change.info.size as u64;
                let before = known.get(&change.info.name).map(|o| &o.version);
                let announced = if others.contains(&change.info.name) {
                    announced_version(db, folder, &change.info, before, perms)?
                } else {
                    None
                };
                if let Some((version, by)) = announced {
                    change.info.version = Some(version);
                    change.info.modified_by = by;
                    adopted.push(change);
                } else {
                    changes.push(change);
                }
            }
            Err(e) => tracing::warn!(folder, error = %format!("{e:#}"), "file skipped this scan"),
        }
    }
    if receive_only {
        for c in &mut changes {
            c.info.invalid = true;
        }
    }
    // Our new versions say which content they replace (adopted ones are
    // another device's version, as it announced it).
    for c in changes
        .iter_mut()
        .filter(|c| known.contains_key(&c.info.name))
    {
        if let Some(old) = db.file(folder, &c.info.name)? {
            c.info.previous_blocks_hash = old.blocks_hash;
        }
    }
    changes.append(&mut adopted);
    if changes.is_empty() {
        return Ok(());
    }
    // Parents before children (a peer creates the directory first); names
    // sort that way, and the walk visits parents in earlier batches.
    changes.sort_by(|a, b| a.info.name.cmp(&b.info.name));
    stats.changed += changes.len();
    let names = events.local_changes(folder, changes.iter().map(|c| &c.info));
    let seq = db.apply(folder, changes)?;
    events.local_index_updated(folder, names, seq);
    progress(seq);
    Ok(())
}

/// The version a device announced for exactly this file — same bytes,
/// size, modification time and permissions — if it includes everything we
/// had recorded for the name (`before`): the file is that version, as the
/// puller would have recorded it. That is the state a crash leaves between
/// the puller putting a file in place and recording it; bumping our
/// counter instead would make a version concurrent with the cluster's for
/// the same bytes. Returns the version and who modified it.
fn announced_version(
    db: &Db,
    folder: &str,
    file: &FileInfo,
    before: Option<&Vector>,
    perms: Perms,
) -> Result<Option<(Vector, u64)>> {
    for (device, summary) in &db.remote_summaries(folder, &file.name)? {
        let Some(version) = summary.version.as_ref().filter(|v| !v.counters.is_empty()) else {
            continue;
        };
        let includes_ours = before.is_none_or(|ours| {
            matches!(
                vector::compare(version, ours),
                vector::Ordering::Equal | vector::Ordering::Greater
            )
        });
        if summary.deleted
            || summary.invalid
            || summary.r#type != FileInfoType::File as i32
            || summary.size != file.size
            || summary.modified_s != file.modified_s
            || summary.modified_ns != file.modified_ns
            || !includes_ours
        {
            continue;
        }
        let Some(full) = db.remote_file(folder, device, &file.name)? else {
            continue;
        };
        let same_mode = perms == Perms::Ignore
            || full.no_permissions
            || full.permissions & 0o777 == file.permissions & 0o777;
        if same_mode && blocks::same_blocks(&full.blocks, &file.blocks) {
            return Ok(Some((version.clone(), full.modified_by)));
        }
    }
    Ok(None)
}

/// On-disk facts compared between scans.
pub(crate) struct DiskMeta {
    size: i64,
    modified_s: i64,
    modified_ns: i32,
    permissions: u32,
    inode: u64,
    kind: i32,
}

pub(crate) fn disk_meta(m: &Metadata) -> DiskMeta {
    let ft = m.file_type();
    let kind = if ft.is_dir() {
        FileInfoType::Directory
    } else if ft.is_symlink() {
        FileInfoType::Symlink
    } else {
        FileInfoType::File
    };
    let symlink = ft.is_symlink();
    DiskMeta {
        size: if ft.is_file() { m.len() as i64 } else { 0 },
        modified_s: if symlink { 0 } else { m.mtime() },
        modified_ns: if symlink { 0 } else { m.mtime_nsec() as i32 },
        permissions: if symlink {
            0
        } else {
            m.permissions().mode() & 0o777
        },
        inode: m.ino(),
        kind: kind as i32,
    }
}

/// Like Syncthing: a directory changes only with its permissions (not its
/// mtime, which moves whenever an entry inside changes), a symlink when it
/// is replaced, a file with its size, mtime, permissions or inode.
/// Permissions do not count with [`Perms::Ignore`] (a filesystem without
/// them may report any mode, and a mode that cannot be set must not be
/// announced as an edit).
pub(crate) fn unchanged(old: &LocalMeta, new: &DiskMeta, perms: Perms) -> bool {
    if old.kind != new.kind {
        return false;
    }
    let same_perms = perms == Perms::Ignore || old.permissions == new.permissions;
    match FileInfoType::try_from(new.kind) {
        // A directory entry without an inode was recorded while ignored.
        Ok(FileInfoType::Directory) => same_perms && old.inode != 0,
        Ok(FileInfoType::Symlink) => old.inode == new.inode,
        _ => {
            old.size == new.size
                && old.modified_s == new.modified_s
                && old.modified_ns == new.modified_ns
                && same_perms
                && old.inode == new.inode
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Temp files of an interrupted pull are reused for a day, then removed
/// (like Syncthing's keepTemporariesH = 24). The inode change time counts:
/// a pull sets the temp file's mtime to the incoming one before renaming.
const KEEP_TEMPORARIES_S: i64 = 24 * 3600;

fn remove_if_stale(path: &Path) {
    let Ok(m) = fs::symlink_metadata(path) else {
        return;
    };
    let age = unix_now() as i64 - m.ctime();
    if !m.is_dir() && age > KEEP_TEMPORARIES_S {
        match fs::remove_file(path) {
            Ok(()) => {
                tracing::info!(path = %path.display(), "removed a temporary file older than a day")
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove an old temporary file")
            }
        }
    }
}

/// What the walk reports.
enum Walked {
    Entry(Found),
    /// `name` (and everything below it) could not be read this time: keep
    /// what the index says, rather than announcing it as deleted.
    Keep(String),
}

/// Depth-first walk handing every indexable entry below `dir` to `out`,
/// a directory before its content. Symlinks are recorded, never followed.
fn walk(
    dir: &Path,
    prefix: &str,
    ignores: &crate::ignore::Ignores,
    out: &mut dyn FnMut(Walked) -> Result<()>,
) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if !prefix.is_empty() => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot list directory; its entries are kept as they were");
            return out(Walked::Keep(prefix.to_string()));
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot list directory {}", dir.display()))
        }
    };
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot list directory; its entries are kept as they were");
                return out(Walked::Keep(prefix.to_string()));
            }
        };
        let os_name = entry.file_name();
        let Some(base) = os_name.to_str() else {
            tracing::warn!(dir = %dir.display(), name = ?os_name, "file name is not UTF-8; skipped");
            continue;
        };
        let name = if prefix.is_empty() {
            base.to_string()
        } else {
            format!("{prefix}/{base}")
        };
        if names::is_temporary(&name) {
            remove_if_stale(&entry.path());
            continue;
        }
        if names::is_internal(&name) {
            continue;
        }
        // Names travel in Unicode NFC. Syncthing renames other forms on
        // disk; we do not touch users' files, so such an entry (and what is
        // below it) is skipped with a warning.
        if !unicode_normalization::is_nfc(base) {
            tracing::warn!(path = %entry.path().display(),
                "file name is not in Unicode NFC (e.g. copied from macOS); skipped: rename it to sync it");
            continue;
        }
        if names::validate(&name).is_err() {
            continue;
        }
        if ignores.is_ignored(&name) {
            // Neither scanned nor announced. An ignored directory is still
            // walked when a `!` pattern may un-ignore something inside.
            if entry.file_type().is_ok_and(|t| t.is_dir()) && !ignores.skip_ignored_dirs() {
                walk(&entry.path(), &name, ignores, out)?;
            }
            continue;
        }
        let path = entry.path();
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            // Vanished between listing and stat: the next scan sees it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot stat; kept as it was");
                out(Walked::Keep(name))?;
                continue;
            }
        };
        let ft = meta.file_type();
        if !(ft.is_file() || ft.is_dir() || ft.is_symlink()) {
            continue; // sockets, fifos, devices are not synced
        }
        let is_dir = ft.is_dir();
        out(Walked::Entry(Found {
            name: name.clone(),
            path: path.clone(),
            meta,
        }))?;
        if is_dir {
            walk(&path, &name, ignores, out)?;
        }
    }
    Ok(())
}

/// Blocks per unit of hashing work: large files are cut into runs of this
/// many blocks, hashed on all cores at once (a studio's big media files
/// would otherwise hash on one core).
const BLOCKS_PER_UNIT: u64 = 64;

/// A run of consecutive blocks of one file.
struct Unit {
    file: usize,
    offset: u64,
    len: u64,
}

/// Hashes files on all cores. Returns results in input order.
fn hash_all(work: Vec<(Found, Vector, usize)>, short_id: u64, live: &Live) -> Vec<Result<Change>> {
    if work.is_empty() {
        return Vec::new();
    }
    let mut units = Vec::new();
    for (i, (found, _, bs)) in work.iter().enumerate() {
        let size = found.meta.len();
        let step = *bs as u64 * BLOCKS_PER_UNIT;
        let mut offset = 0;
        loop {
            let len = step.min(size - offset);
            units.push(Unit {
                file: i,
                offset,
                len,
            });
            offset += len;
            if offset >= size {
                break;
            }
        }
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(units.len());
    let next = AtomicUsize::new(0);
    let results: Mutex<HashMap<usize, Result<Vec<BlockInfo>>>> = Mutex::new(HashMap::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                if live.stop.load(Ordering::Relaxed) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(unit) = units.get(i) else {
                    break;
                };
                let (found, _, bs) = &work[unit.file];
                let r = hash_range(&found.path, unit.offset, unit.len, *bs);
                if r.is_ok() {
                    live.hashed_bytes.fetch_add(unit.len, Ordering::Relaxed);
                }
                results.locked().insert(i, r);
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    let mut per_file: Vec<Result<Vec<BlockInfo>>> = work.iter().map(|_| Ok(Vec::new())).collect();
    for (i, unit) in units.iter().enumerate() {
        let r = results
            .remove(&i)
            .unwrap_or_else(|| Err(anyhow::anyhow!("hashing worker failed")));
        if let Ok(acc) = &mut per_file[unit.file] {
            match r {
                Ok(mut blocks) => acc.append(&mut blocks),
                Err(e) => per_file[unit.file] = Err(e),
            }
        }
    }
    work.into_iter()
        .zip(per_file)
        .map(|((found, version, bs), blocks)| finish_file(found, version, bs, blocks?, short_id))
        .collect()
}

/// Bytes read per system call while hashing: enough whole blocks to fill
/// the multi-buffer hasher's 16 lanes (`hash_blocks`) for blocks up to
/// 1 MiB, fewer lanes for larger blocks so that a hashing thread never
/// holds more than this.
const READ_CHUNK: usize = 16 << 20;
/// Blocks per read (and per multi-buffer call) at most.
const LANES: usize = 16;

/// Hashes `len` bytes of `path` from `offset` in blocks of `bs`.
fn hash_range(path: &Path, offset: u64, len: u64, bs: usize) -> Result<Vec<BlockInfo>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let chunk = bs * (READ_CHUNK / bs).clamp(1, LANES);
    let mut buf = vec![0u8; chunk.min(len as usize)];
    let mut blocks = Vec::new();
    let mut pos = offset;
    while pos < offset + len {
        let want = buf.len().min((offset + len - pos) as usize);
        let n = read_full_at(&file, &mut buf[..want], pos)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n < want {
            bail!("{} shrank while being hashed", path.display());
        }
        blocks.extend(blocks::hash_blocks(pos, &buf[..n], bs));
        pos += n as u64;
    }
    Ok(blocks)
}

/// The FileInfo of a hashed file, if it did not change since the walk.
fn finish_file(
    found: Found,
    version: Vector,
    bs: usize,
    mut blocks_out: Vec<BlockInfo>,
    short_id: u64,
) -> Result<Change> {
    let after = fs::symlink_metadata(&found.path)?;
    let before = &found.meta;
    if after.len() != before.len()
        || after.mtime() != before.mtime()
        || after.mtime_nsec() != before.mtime_nsec()
        || after.ino() != before.ino()
    {
        bail!("{} changed while being hashed", found.path.display());
    }
    if blocks_out.is_empty() {
        blocks_out = empty_file_blocks();
    }
    let m = disk_meta(&after);
    Ok(Change {
        info: FileInfo {
            name: found.name,
            r#type: FileInfoType::File as i32,
            size: m.size,
            permissions: m.permissions,
            modified_s: m.modified_s,
            modified_ns: m.modified_ns,
            version: Some(version),
            modified_by: short_id,
            block_size: bs as i32,
            blocks_hash: blocks::blocks_hash(&blocks_out),
            blocks: blocks_out,
            ..Default::default()
        },
        inode: m.inode,
    })
}

/// Reads at `offset` until `buf` is full or EOF.
fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::bep::blocks::hash_block;

    #[test]
    fn a_new_folder_gets_its_path_and_marker() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("a/b/new");
        create_new_folder(&root, "f-1", false, &MarkerName::default()).unwrap();
        assert!(root.is_dir());
        let inside: Vec<_> = fs::read_dir(root.join(MARKER))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(inside.len(), 1);
        assert!(inside[0].starts_with("syncthing-folder-") && inside[0].ends_with(".txt"));
        // Again: nothing to do, nothing fails.
        create_new_folder(&root, "f-1", false, &MarkerName::default()).unwrap();
        // Paused: the path only, as Syncthing.
        let paused = dir.path().join("paused");
        create_new_folder(&paused, "p", true, &MarkerName::default()).unwrap();
        assert!(paused.is_dir() && !paused.join(MARKER).exists());
    }

    #[test]
    fn large_files_hashed_in_parallel_units_match_sequential_hashing() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let root = dir.path().join("f");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&home).unwrap();
        // 20 MiB + 5 bytes: 161 blocks of 128 KiB in 3 units.
        let data: Vec<u8> = (0..(20 << 20) + 5)
            .map(|i: u32| (i * 7 / 3) as u8)
            .collect();
        fs::write(root.join("big"), &data).unwrap();
        let db = Db::open(&home).unwrap();
        scan(&db, "f", &root, 1, &|_| {}, &Live::default()).unwrap();
        let f = &db.files_since("f", 0, 10).unwrap()[0];
        let expected: Vec<BlockInfo> = data
            .chunks(131072)
            .enumerate()
            .map(|(i, c)| hash_block(i as u64 * 131072, c))
            .collect();
        assert_eq!(f.blocks.len(), 161);
        assert_eq!(f.blocks, expected);
        assert_eq!(f.blocks_hash, blocks::blocks_hash(&expected));
    }

    /// 2.x's rule: every local change says which content it replaced, so
    /// a device holding that content takes it as an update, not a
    /// conflict.
    #[test]
    fn every_change_carries_the_blocks_hash_it_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let root = dir.path().join("f");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&home).unwrap();
        fs::write(root.join("a.txt"), b"one").unwrap();
        let db = Db::open(&home).unwrap();
        scan(&db, "f", &root, 42, &|_| {}, &Live::default()).unwrap();
        let first = db.file("f", "a.txt").unwrap().unwrap();
        assert!(
            first.previous_blocks_hash.is_empty(),
            "a new file replaces nothing"
        );
        // Different size and mtime: seen changed.
        fs::write(root.join("a.txt"), b"two, longer").unwrap();
        let f = fs::File::options()
            .write(true)
            .open(root.join("a.txt"))
            .unwrap();
        f.set_modified(UNIX_EPOCH + std::time::Duration::from_secs(1_000_000))
            .unwrap();
        scan(&db, "f", &root, 42, &|_| {}, &Live::default()).unwrap();
        let second = db.file("f", "a.txt").unwrap().unwrap();
        assert_ne!(second.blocks_hash, first.blocks_hash);
        assert_eq!(second.previous_blocks_hash, first.blocks_hash);
        fs::remove_file(root.join("a.txt")).unwrap();
        scan(&db, "f", &root, 42, &|_| {}, &Live::default()).unwrap();
        let gone = db.file("f", "a.txt").unwrap().unwrap();
        assert!(gone.deleted && gone.blocks_hash.is_empty());
        assert_eq!(gone.previous_blocks_hash, second.blocks_hash);
        // What is sent of them passes 2.1.2's rules.
        for f in [first, second, gone] {
            proto::bep::rules::check_file_info(&f).unwrap();
        }
    }

    /// `ignorePerms`: entries are announced without meaningful bits, and a
    /// mode change alone is not a change (a filesystem without
    /// permissions may report any mode).
    #[test]
    fn ignored_permissions_are_never_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let (home, root) = (dir.path().join("home"), dir.path().join("f"));
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::create_dir_all(&home).unwrap();
        fs::write(root.join("a"), b"a").unwrap();
        let db = Db::open(&home).unwrap();
        let scan_ignoring = |db: &Db| {
            let target = Target {
                folder: "f",
                root: &root,
                short_id: 1,
                receive_only: false,
                versions_dir: None,
                perms: Perms::Ignore,
                marker: &MarkerName::default(),
            };
            scan_folder(db, &Events::default(), target, &|_| {}, &Live::default()).unwrap()
        };
        let first = scan_ignoring(&db);
        let files = db.files_since("f", 0, 100).unwrap();
        assert!(files.iter().all(|f| f.no_permissions), "{files:?}");
        for p in ["a", "sub"] {
            fs::set_permissions(root.join(p), fs::Permissions::from_mode(0o700)).unwrap();
        }
        let again = scan_ignoring(&db);
        assert_eq!((again.changed, again.sequence), (0, first.sequence));
        // Honoured, the same mode change is one.
        let s = scan(&db, "f", &root, 1, &|_| {}, &Live::default()).unwrap();
        assert_eq!(s.changed, 2);
    }

    /// A marker of the operator's choosing is never created: the scan
    /// refuses until it exists.
    #[test]
    fn another_marker_is_never_made() {
        let dir = tempfile::tempdir().unwrap();
        let (home, root) = (dir.path().join("home"), dir.path().join("f"));
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&home).unwrap();
        let db = Db::open(&home).unwrap();
        let marker = MarkerName::new(".mounted").unwrap();
        let run = || {
            let target = Target {
                folder: "f",
                root: &root,
                short_id: 1,
                receive_only: false,
                versions_dir: None,
                perms: Perms::Honour,
                marker: &marker,
            };
            scan_folder(&db, &Events::default(), target, &|_| {}, &Live::default())
        };
        let e = run().unwrap_err();
        assert!(format!("{e:#}").contains(".mounted"), "{e:#}");
        create_new_folder(&root, "f", false, &marker).unwrap();
        assert!(!root.join(MARKER).exists() && !root.join(".mounted").exists());
        fs::write(root.join(".mounted"), b"").unwrap();
        run().unwrap();
        assert!(!root.join(MARKER).exists());
    }

    #[test]
    fn scans_hashes_and_skips_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let root = dir.path().join("f");
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::create_dir_all(&home).unwrap();
        fs::write(root.join("hello.txt"), b"hello world\n").unwrap();
        fs::write(root.join("sub/empty"), b"").unwrap();
        fs::write(root.join("sub/.syncthing.x.tmp"), b"temp").unwrap();
        fs::write(root.join(".stignore"), b"").unwrap();
        std::os::unix::fs::symlink("hello.txt", root.join("link")).unwrap();
        let db = Db::open(&home).unwrap();
        let s = scan(&db, "f", &root, 42, &|_| {}, &Live::default()).unwrap();
        assert_eq!((s.entries, s.hashed_files, s.changed), (4, 2, 4));
        assert!(root.join(MARKER).is_dir());
        let files = db.files_since("f", 0, 100).unwrap();
        let names: Vec<_> = files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["hello.txt", "link", "sub", "sub/empty"]);
        let hello = &files[0];
        assert_eq!(hello.blocks_hash.len(), 32);
        assert_eq!(hello.blocks, vec![hash_block(0, b"hello world\n")]);
        assert_eq!(hello.version.as_ref().unwrap().counters[0].id, 42);
        assert_eq!(files[1].symlink_target, b"hello.txt");

        // Nothing changed: nothing hashed, no new sequence.
        let s2 = scan(&db, "f", &root, 42, &|_| {}, &Live::default()).unwrap();
        assert_eq!((s2.hashed_files, s2.changed, s2.sequence), (0, 0, 4));

        // A vanished marker (unmounted folder) stops the scan: nothing is
        // announced as deleted.
        // (The marker holds Syncthing's text file, as Syncthing makes it.)
        let inside: Vec<_> = fs::read_dir(root.join(MARKER)).unwrap().collect();
        assert_eq!(inside.len(), 1);
        fs::remove_dir_all(root.join(MARKER)).unwrap();
        let err = scan(&db, "f", &root, 42, &|_| {}, &Live::default()).unwrap_err();
        assert!(format!("{err:#}").contains("unmounted"));
        // And so does a vanished folder path.
        let gone = home.join("gone");
        let err = scan(&db, "f", &gone, 42, &|_| {}, &Live::default()).unwrap_err();
        assert!(format!("{err:#}").contains("missing or unmounted"));
        fs::create_dir(root.join(MARKER)).unwrap();

        // A name not in NFC ("e" + combining acute) is skipped.
        fs::write(root.join("cafe\u{301}.txt"), b"x").unwrap();
        let s5 = scan(&db, "f", &root, 42, &|_| {}, &Live::default()).unwrap();
        assert_eq!(s5.changed, 0);
        fs::remove_file(root.join("cafe\u{301}.txt")).unwrap();

        // An unreadable directory keeps its entries (not deleted).
        fs::set_permissions(root.join("sub"), fs::Permissions::from_mode(0o000)).unwrap();
        let readable = fs::read_dir(root.join("sub")).is_ok(); // root ignores modes
        let s4 = scan(&db, "f", &root, 42, &|_| {}, &Live::default()).unwrap();
        fs::set_permissions(root.join("sub"), fs::Permissions::from_mode(0o755)).unwrap();
        if !readable {
            assert_eq!(s4.deleted, 0);
        }
        let s4 = scan(&db, "f", &root, 42, &|_| {}, &Live::default()).unwrap();
        assert_eq!(s4.deleted, 0);
        let seq4 = s4.sequence;

        // Modify one, delete one.
        fs::write(root.join("hello.txt"), b"hello again\n").unwrap();
        fs::remove_file(root.join("sub/empty")).unwrap();
        let s3 = scan(&db, "f", &root, 42, &|_| {}, &Live::default()).unwrap();
        assert_eq!((s3.hashed_files, s3.deleted, s3.sequence), (1, 1, seq4 + 2));
        let tail = db.files_since("f", seq4, 100).unwrap();
        assert_eq!(tail[0].name, "hello.txt");
        assert!(tail[1].deleted && tail[1].name == "sub/empty" && tail[1].blocks.is_empty());
    }

    /// A crash between the puller's rename and its record leaves on disk
    /// exactly what a device announced: the scan records that version, not
    /// a version of ours concurrent with it for the same bytes.
    #[test]
    fn a_file_exactly_as_announced_takes_the_announced_version() {
        use proto::bep::wire::Counter;
        use std::time::{Duration, UNIX_EPOCH};
        let dir = tempfile::tempdir().unwrap();
        let (home, root) = (dir.path().join("home"), dir.path().join("f"));
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&home).unwrap();
        let db = Db::open(&home).unwrap();
        let path = root.join("a.txt");
        fs::write(&path, b"ours\n").unwrap();
        scan(&db, "f", &root, 42, &|_| {}, &Live::default()).unwrap();
        let ours = db.file("f", "a.txt").unwrap().unwrap().version.unwrap();

        // Another device's newer version (it saw ours).
        let theirs = proto::DeviceId::from_slice(&[7u8; 32]).unwrap();
        let mut version = ours.clone();
        version.counters.push(Counter { id: 99, value: 5 });
        let content = b"their newer content\n";
        let announced = FileInfo {
            name: "a.txt".into(),
            size: content.len() as i64,
            modified_s: 1_700_000_000,
            modified_ns: 123_456_789,
            permissions: 0o644,
            version: Some(version.clone()),
            modified_by: 99,
            blocks: vec![hash_block(0, content)],
            ..Default::default()
        };
        db.remote_files("f", &theirs, std::slice::from_ref(&announced), true)
            .unwrap();
        let put_in_place = |data: &[u8], mode: u32| {
            fs::write(&path, data).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let at = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
            fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(at)
                .unwrap();
        };

        // Their file, renamed into place but not recorded: theirs it is.
        put_in_place(content, 0o644);
        scan(&db, "f", &root, 42, &|_| {}, &Live::default()).unwrap();
        let rec = db.file("f", "a.txt").unwrap().unwrap();
        assert_eq!(rec.version.as_ref(), Some(&version));
        assert_eq!(rec.modified_by, 99);
        assert_eq!(rec.blocks, announced.blocks);

        // Other bytes at the same time, or another mode: a change of ours,
        // with our counter raised.
        let other = b"not what they announced\n";
        for (data, mode) in [(&other[..], 0o644), (&content[..], 0o600)] {
            put_in_place(data, mode);
            scan(&db, "f", &root, 42, &|_| {}, &Live::default()).unwrap();
            let rec = db.file("f", "a.txt").unwrap().unwrap();
            let v = rec.version.unwrap();
            assert_eq!(vector::compare(&v, &version), vector::Ordering::Greater);
            assert_eq!(rec.modified_by, 42);
        }

        // Their bytes again, but we have a change they never saw: ours.
        put_in_place(content, 0o644);
        scan(&db, "f", &root, 42, &|_| {}, &Live::default()).unwrap();
        let rec = db.file("f", "a.txt").unwrap().unwrap();
        assert_eq!(rec.modified_by, 42);
        assert!(
            vector::compare(rec.version.as_ref().unwrap(), &version) == vector::Ordering::Greater
        );
    }
}
