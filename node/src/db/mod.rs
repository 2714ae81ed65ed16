//! The persistent index: an SQLite database in the home directory holding,
//! per folder, our index ID and sequence counter, every local file entry
//! (as its BEP FileInfo, plus the on-disk facts the scanner compares to
//! skip unchanged files), and what each remote device announced (its index
//! ID and the highest sequence received), for delta index exchange.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use anyhow::{Context, Result};
use prost::Message as _;
use proto::bep::wire::{FileInfo, FileInfoType, Vector};
use proto::DeviceId;
use rusqlite::{params, Connection, OptionalExtension};

use daemon::sync::MutexExt;

mod blocks;
pub mod figures;
pub mod global;

pub use global::{Direction, Entry};

/// File name of the database in the home directory.
pub const FILE_NAME: &str = "index.sqlite3";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS folders (
    folder   TEXT PRIMARY KEY,
    index_id INTEGER NOT NULL,
    sequence INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS files (
    folder      TEXT NOT NULL,
    name        TEXT NOT NULL,
    sequence    INTEGER NOT NULL,
    kind        INTEGER NOT NULL,
    deleted     INTEGER NOT NULL,
    size        INTEGER NOT NULL,
    modified_s  INTEGER NOT NULL,
    modified_ns INTEGER NOT NULL,
    permissions INTEGER NOT NULL,
    inode       INTEGER NOT NULL,
    block_size  INTEGER NOT NULL,
    version     BLOB NOT NULL,
    info        BLOB NOT NULL,
    invalid     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (folder, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS files_by_sequence ON files (folder, sequence);
CREATE TABLE IF NOT EXISTS remote_files (
    folder  TEXT NOT NULL,
    device  BLOB NOT NULL,
    name    TEXT NOT NULL,
    deleted INTEGER NOT NULL,
    invalid INTEGER NOT NULL,
    size    INTEGER NOT NULL,
    version BLOB NOT NULL,
    info    BLOB,
    kind        INTEGER NOT NULL DEFAULT 0,
    modified_s  INTEGER NOT NULL DEFAULT 0,
    modified_ns INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (folder, device, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS remote_files_by_name ON remote_files (folder, name);
CREATE TABLE IF NOT EXISTS remotes (
    folder       TEXT NOT NULL,
    device       BLOB NOT NULL,
    index_id     INTEGER NOT NULL,
    max_sequence INTEGER NOT NULL,
    PRIMARY KEY (folder, device)
);
CREATE TABLE IF NOT EXISTS blocks (
    folder TEXT NOT NULL,
    hash   BLOB NOT NULL,
    name   TEXT NOT NULL,
    offset INTEGER NOT NULL,
    size   INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS blocks_by_hash ON blocks (folder, hash);
CREATE INDEX IF NOT EXISTS blocks_by_name ON blocks (folder, name);
";

/// `PRAGMA user_version` of the current layout. 2: summary columns for the
/// streamed global state and the block table.
const LAYOUT: i64 = 2;

/// Databases from before the puller kept only a summary of remote entries;
/// the whole FileInfo (blocks, mtime, …) is needed to pull. Such a database
/// forgets what peers announced and asks them for a full index again
/// (max sequence 0 in our ClusterConfig).
fn migrate_remote_infos(conn: &Connection) -> Result<()> {
    let has_info = conn
        .prepare("SELECT 1 FROM pragma_table_info('remote_files') WHERE name = 'info'")?
        .exists([])?;
    if !has_info {
        conn.execute_batch(
            "ALTER TABLE remote_files ADD COLUMN info BLOB;
             DELETE FROM remote_files;
             UPDATE remotes SET max_sequence = 0;",
        )?;
    }
    Ok(())
}

fn has_column(conn: &Connection, table: &str, column: &str) -> Result<bool> {
    Ok(conn
        .prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2")?
        .exists(params![table, column])?)
}

/// Layout 2: the global state is computed by streaming summary columns
/// (never by decoding every entry), and block reuse looks hashes up in the
/// `blocks` table. Older databases get the columns filled from the stored
/// entries, once, in one transaction.
fn migrate_to_layout_2(conn: &mut Connection) -> Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version >= LAYOUT {
        return Ok(());
    }
    let tx = conn.transaction()?;
    if !has_column(&tx, "files", "invalid")? {
        tx.execute_batch("ALTER TABLE files ADD COLUMN invalid INTEGER NOT NULL DEFAULT 0")?;
    }
    for column in ["kind", "modified_s", "modified_ns"] {
        if !has_column(&tx, "remote_files", column)? {
            tx.execute_batch(&format!(
                "ALTER TABLE remote_files ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0"
            ))?;
        }
    }
    {
        let mut read = tx.prepare("SELECT folder, device, name, info FROM remote_files")?;
        let mut write = tx.prepare(
            "UPDATE remote_files SET kind = ?4, modified_s = ?5, modified_ns = ?6
             WHERE folder = ?1 AND device = ?2 AND name = ?3",
        )?;
        let mut rows = read.query([])?;
        while let Some(r) = rows.next()? {
            let Some(blob) = r.get::<_, Option<Vec<u8>>>(3)? else {
                continue;
            };
            let Ok(f) = FileInfo::decode(&blob[..]) else {
                continue;
            };
            let (folder, device, name): (String, Vec<u8>, String) =
                (r.get(0)?, r.get(1)?, r.get(2)?);
            write.execute(params![
                folder,
                device,
                name,
                f.r#type,
                f.modified_s,
                f.modified_ns
            ])?;
        }
        let mut read = tx.prepare("SELECT folder, info FROM files")?;
        let mut rows = read.query([])?;
        let mut mark =
            tx.prepare("UPDATE files SET invalid = 1 WHERE folder = ?1 AND name = ?2")?;
        tx.execute("DELETE FROM blocks", [])?;
        while let Some(r) = rows.next()? {
            let folder: String = r.get(0)?;
            let Ok(f) = FileInfo::decode(&r.get::<_, Vec<u8>>(1)?[..]) else {
                continue;
            };
            if f.invalid {
                mark.execute(params![folder, f.name])?;
            }
            blocks::insert(&tx, &folder, &f)?;
        }
    }
    tx.execute_batch(&format!("PRAGMA user_version = {LAYOUT}"))?;
    tx.commit()?;
    Ok(())
}

/// What the scanner remembers of a local entry to decide whether it changed.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalMeta {
    pub kind: i32,
    pub deleted: bool,
    pub size: i64,
    pub modified_s: i64,
    pub modified_ns: i32,
    pub permissions: u32,
    pub inode: u64,
    pub block_size: i32,
    pub version: Vector,
}

fn row_meta(r: &rusqlite::Row<'_>) -> rusqlite::Result<LocalMeta> {
    let version: Vec<u8> = r.get(8)?;
    Ok(LocalMeta {
        kind: r.get(0)?,
        deleted: r.get(1)?,
        size: r.get(2)?,
        modified_s: r.get(3)?,
        modified_ns: r.get(4)?,
        permissions: r.get(5)?,
        inode: r.get::<_, i64>(6)? as u64,
        block_size: r.get(7)?,
        // A corrupt vector restarts from empty; our counter still grows.
        version: Vector::decode(&version[..]).unwrap_or_default(),
    })
}

/// A changed local entry to record, with the inode the scanner saw.
pub struct Change {
    pub info: FileInfo,
    pub inode: u64,
}

/// The database; one connection, used from blocking threads.
pub struct Db {
    conn: Mutex<Connection>,
    /// Bumped by every change of local or remote entries, so summaries
    /// computed from them can be reused until the next change.
    generation: AtomicU64,
}

impl Db {
    pub fn open(home: &Path) -> Result<Db> {
        let path = home.join(FILE_NAME);
        let mut conn = Connection::open(&path)
            .with_context(|| format!("cannot open the index database {}", path.display()))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
        )?;
        conn.execute_batch(SCHEMA)
            .with_context(|| format!("cannot set up the index database {}", path.display()))?;
        migrate_remote_infos(&conn)
            .and_then(|()| migrate_to_layout_2(&mut conn))
            .with_context(|| format!("cannot upgrade the index database {}", path.display()))?;
        Ok(Db {
            conn: Mutex::new(conn),
            generation: AtomicU64::new(1),
        })
    }

    /// Changes to the entries so far (see the field).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent
        // (transactions roll back), so a poisoned lock is still usable.
        self.conn.locked()
    }

    /// Our index ID and current sequence for `folder`, creating the folder's
    /// record with a fresh random index ID on first use.
    pub fn folder_state(&self, folder: &str) -> Result<(u64, i64)> {
        let conn = self.conn();
        let row: Option<(i64, i64)> = conn
            .query_row(
                "SELECT index_id, sequence FROM folders WHERE folder = ?1",
                [folder],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((id, seq)) = row {
            return Ok((id as u64, seq));
        }
        // Never 0: that means "no index" on the wire.
        let id = rand::random::<u64>().max(1);
        conn.execute(
            "INSERT INTO folders (folder, index_id, sequence) VALUES (?1, ?2, 0)",
            params![folder, id as i64],
        )?;
        Ok((id, 0))
    }

    /// What the index holds for `names` (those it has).
    pub fn local_meta(&self, folder: &str, names: &[&str]) -> Result<HashMap<String, LocalMeta>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT kind, deleted, size, modified_s, modified_ns, permissions, inode,
                    block_size, version FROM files WHERE folder = ?1 AND name = ?2",
        )?;
        let mut out = HashMap::with_capacity(names.len());
        for name in names {
            let meta = stmt.query_row(params![folder, name], row_meta).optional()?;
            if let Some(meta) = meta {
                out.insert(name.to_string(), meta);
            }
        }
        Ok(out)
    }

    /// Which of `names` some device has announced an entry for.
    pub fn announced_by_others(&self, folder: &str, names: &[&str]) -> Result<HashSet<String>> {
        let conn = self.conn();
        let mut out = HashSet::new();
        let any: Option<i64> = conn
            .prepare_cached("SELECT 1 FROM remote_files WHERE folder = ?1 LIMIT 1")?
            .query_row([folder], |r| r.get(0))
            .optional()?;
        if any.is_none() {
            return Ok(out);
        }
        let mut stmt = conn.prepare_cached(
            "SELECT 1 FROM remote_files WHERE folder = ?1 AND name = ?2 AND info IS NOT NULL LIMIT 1",
        )?;
        for name in names {
            let found: Option<i64> = stmt
                .query_row(params![folder, name], |r| r.get(0))
                .optional()?;
            if found.is_some() {
                out.insert(name.to_string());
            }
        }
        Ok(out)
    }

    /// Whether `name` is a file we announce as present and valid: only
    /// those are served (not ignored, deleted or locally flagged ones).
    pub fn announces_file(&self, folder: &str, name: &str) -> Result<bool> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT 1 FROM files WHERE folder = ?1 AND name = ?2
                AND deleted = 0 AND invalid = 0 AND kind = ?3",
        )?;
        Ok(stmt
            .query_row(params![folder, name, FileInfoType::File as i32], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Starts a scan's bookkeeping of the names found on disk (kept in a
    /// temporary table, not in memory).
    pub fn seen_reset(&self, folder: &str) -> Result<()> {
        let conn = self.conn();
        conn.execute_batch(
            "CREATE TEMP TABLE IF NOT EXISTS seen (
                 folder TEXT NOT NULL, name TEXT NOT NULL, PRIMARY KEY (folder, name)
             ) WITHOUT ROWID",
        )?;
        conn.execute("DELETE FROM temp.seen WHERE folder = ?1", [folder])?;
        Ok(())
    }

    pub fn seen_add(&self, folder: &str, names: &[&str]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx
                .prepare_cached("INSERT OR IGNORE INTO temp.seen (folder, name) VALUES (?1, ?2)")?;
            for name in names {
                stmt.execute(params![folder, name])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Marks `name` and everything below it as seen (it could not be read;
    /// its index entries stay as they are).
    pub fn seen_subtree(&self, folder: &str, name: &str) -> Result<()> {
        // Children of "a" sort in ["a/", "a0"): '0' follows '/'.
        let (lo, hi) = (format!("{name}/"), format!("{name}0"));
        self.conn().execute(
            "INSERT OR IGNORE INTO temp.seen (folder, name)
             SELECT folder, name FROM files
             WHERE folder = ?1 AND (name = ?2 OR (name >= ?3 AND name < ?4))",
            params![folder, name, lo, hi],
        )?;
        Ok(())
    }

    /// Live entries of the index that the scan did not see on disk.
    pub fn unseen(&self, folder: &str) -> Result<Vec<(String, LocalMeta)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT kind, deleted, size, modified_s, modified_ns, permissions, inode,
                    block_size, version, name FROM files f
             WHERE folder = ?1 AND deleted = 0 AND NOT EXISTS
                 (SELECT 1 FROM temp.seen s WHERE s.folder = ?1 AND s.name = f.name)",
        )?;
        let rows = stmt.query_map([folder], |r| Ok((r.get::<_, String>(9)?, row_meta(r)?)))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row?);
        }
        conn.execute("DELETE FROM temp.seen WHERE folder = ?1", [folder])?;
        Ok(out)
    }

    /// Records changed entries, giving each the next sequence number, in one
    /// transaction. Returns the folder's new sequence.
    pub fn apply(&self, folder: &str, changes: Vec<Change>) -> Result<i64> {
        self.folder_state(folder)?;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut seq: i64 = tx.query_row(
            "SELECT sequence FROM folders WHERE folder = ?1",
            [folder],
            |r| r.get(0),
        )?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR REPLACE INTO files (folder, name, sequence, kind, deleted, size,
                    modified_s, modified_ns, permissions, inode, block_size, version, info,
                    invalid)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            )?;
            for Change { mut info, inode } in changes {
                seq += 1;
                info.sequence = seq;
                let version = info.version.clone().unwrap_or_default().encode_to_vec();
                stmt.execute(params![
                    folder,
                    info.name,
                    seq,
                    info.r#type,
                    info.deleted,
                    info.size,
                    info.modified_s,
                    info.modified_ns,
                    info.permissions,
                    inode as i64,
                    info.block_size,
                    version,
                    info.encode_to_vec(),
                    info.invalid,
                ])?;
                blocks::replace(&tx, folder, &info)?;
            }
        }
        tx.execute(
            "UPDATE folders SET sequence = ?2 WHERE folder = ?1",
            params![folder, seq],
        )?;
        tx.commit()?;
        self.changed();
        Ok(seq)
    }

    /// Local entries with a sequence above `after`, ascending, at most
    /// `limit` of them.
    pub fn files_since(&self, folder: &str, after: i64, limit: usize) -> Result<Vec<FileInfo>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT info FROM files WHERE folder = ?1 AND sequence > ?2
             ORDER BY sequence LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![folder, after, limit as i64], |r| {
            r.get::<_, Vec<u8>>(0)
        })?;
        let mut out = Vec::new();
        for row in rows {
            let blob = row?;
            out.push(FileInfo::decode(&blob[..]).context("corrupt entry in the index database")?);
        }
        Ok(out)
    }

    /// One local entry.
    pub fn file(&self, folder: &str, name: &str) -> Result<Option<FileInfo>> {
        let conn = self.conn();
        let blob: Option<Vec<u8>> = conn
            .query_row(
                "SELECT info FROM files WHERE folder = ?1 AND name = ?2",
                params![folder, name],
                |r| r.get(0),
            )
            .optional()?;
        blob.map(|b| FileInfo::decode(&b[..]).context("corrupt entry in the index database"))
            .transpose()
    }

    /// Counts of the local entries, and bytes of the non-deleted files.
    pub fn local_totals(&self, folder: &str) -> Result<figures::LocalCounts> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT kind, deleted, COUNT(*), COALESCE(SUM(size), 0) FROM files
             WHERE folder = ?1 GROUP BY kind, deleted",
        )?;
        let mut t = figures::LocalCounts::default();
        let rows = stmt.query_map([folder], |r| {
            Ok((
                r.get::<_, i32>(0)?,
                r.get::<_, bool>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        for row in rows {
            let (kind, deleted, n, bytes) = row?;
            let n = n as u64;
            if deleted {
                t.deleted += n;
            } else {
                match kind {
                    0 => {
                        t.files += n;
                        t.bytes += bytes as u64;
                    }
                    1 => t.dirs += n,
                    _ => t.symlinks += n,
                }
            }
        }
        Ok(t)
    }

    /// What we stored about `device`'s index of `folder`: (index ID, max
    /// sequence); (0, 0) when nothing.
    pub fn remote(&self, folder: &str, device: &DeviceId) -> Result<(u64, i64)> {
        let conn = self.conn();
        let row: Option<(i64, i64)> = conn
            .query_row(
                "SELECT index_id, max_sequence FROM remotes WHERE folder = ?1 AND device = ?2",
                params![folder, &device.as_bytes()[..]],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(row.map_or((0, 0), |(i, s)| (i as u64, s)))
    }

    /// Records entries a device announced: an Index (`replace`) replaces
    /// everything known from it for the folder, an IndexUpdate merges.
    pub fn remote_files(
        &self,
        folder: &str,
        device: &DeviceId,
        files: &[FileInfo],
        replace: bool,
    ) -> Result<()> {
        let dev = &device.as_bytes()[..];
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        if replace {
            tx.execute(
                "DELETE FROM remote_files WHERE folder = ?1 AND device = ?2",
                params![folder, dev],
            )?;
        }
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR REPLACE INTO remote_files (folder, device, name, deleted, invalid,
                    size, version, info, kind, modified_s, modified_ns)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?;
            for f in files {
                stmt.execute(params![
                    folder,
                    dev,
                    f.name,
                    f.deleted,
                    f.invalid,
                    f.size,
                    f.version.clone().unwrap_or_default().encode_to_vec(),
                    f.encode_to_vec(),
                    f.r#type,
                    f.modified_s,
                    f.modified_ns,
                ])?;
            }
        }
        tx.commit()?;
        drop(conn);
        self.changed();
        Ok(())
    }

    /// Every local entry of `folder` (live and deleted).
    pub fn local_infos(&self, folder: &str) -> Result<Vec<FileInfo>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT info FROM files WHERE folder = ?1")?;
        let rows = stmt.query_map([folder], |r| r.get::<_, Vec<u8>>(0))?;
        let mut out = Vec::new();
        for row in rows {
            let blob = row?;
            out.push(FileInfo::decode(&blob[..]).context("corrupt entry in the index database")?);
        }
        Ok(out)
    }

    /// Every entry remote devices announced for `folder`, with its device.
    pub fn remote_infos(&self, folder: &str) -> Result<Vec<(DeviceId, FileInfo)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT device, info FROM remote_files WHERE folder = ?1 AND info IS NOT NULL",
        )?;
        let rows = stmt.query_map([folder], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (dev, blob) = row?;
            let dev = DeviceId::from_slice(&dev).context("corrupt device in the index database")?;
            out.push((
                dev,
                FileInfo::decode(&blob[..]).context("corrupt entry in the index database")?,
            ));
        }
        Ok(out)
    }

    /// Forgets what a device announced for a folder (its index ID changed).
    pub fn clear_remote_files(&self, folder: &str, device: &DeviceId) -> Result<()> {
        self.conn().execute(
            "DELETE FROM remote_files WHERE folder = ?1 AND device = ?2",
            params![folder, &device.as_bytes()[..]],
        )?;
        self.changed();
        Ok(())
    }

    pub fn set_remote(
        &self,
        folder: &str,
        device: &DeviceId,
        index_id: u64,
        max_sequence: i64,
    ) -> Result<()> {
        self.conn().execute(
            "INSERT OR REPLACE INTO remotes (folder, device, index_id, max_sequence)
             VALUES (?1, ?2, ?3, ?4)",
            params![
                folder,
                &device.as_bytes()[..],
                index_id as i64,
                max_sequence
            ],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_and_index_ids_persist() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let (id, seq) = db.folder_state("f").unwrap();
        assert_ne!(id, 0);
        assert_eq!(seq, 0);
        let f = |name: &str| Change {
            info: FileInfo {
                name: name.into(),
                size: 3,
                ..Default::default()
            },
            inode: 7,
        };
        assert_eq!(db.apply("f", vec![f("a"), f("b")]).unwrap(), 2);
        assert_eq!(db.apply("f", vec![f("a")]).unwrap(), 3);
        drop(db);
        let db = Db::open(dir.path()).unwrap();
        assert_eq!(db.folder_state("f").unwrap(), (id, 3));
        let all = db.files_since("f", 0, 100).unwrap();
        let names: Vec<_> = all.iter().map(|f| (f.name.as_str(), f.sequence)).collect();
        assert_eq!(names, [("b", 2), ("a", 3)]);
        assert_eq!(db.files_since("f", 2, 100).unwrap().len(), 1);
        assert_eq!(db.local_meta("f", &["a", "zz"]).unwrap()["a"].inode, 7);
        db.seen_reset("f").unwrap();
        db.seen_add("f", &["a"]).unwrap();
        let unseen = db.unseen("f").unwrap();
        assert_eq!(unseen.len(), 1);
        assert_eq!(unseen[0].0, "b");
        let dev = DeviceId::from_der_cert(b"x");
        assert_eq!(db.remote("f", &dev).unwrap(), (0, 0));
        db.set_remote("f", &dev, 9, 4).unwrap();
        assert_eq!(db.remote("f", &dev).unwrap(), (9, 4));
        assert_eq!(
            db.local_totals("f").unwrap(),
            figures::LocalCounts {
                files: 2,
                bytes: 6,
                ..Default::default()
            }
        );
    }

    #[test]
    fn completion_follows_versions_and_deletes() {
        let completion = |db: &Db, device: &DeviceId| {
            let mut c = figures::Completion::default();
            db.for_each_entry("f", None, Direction::Ascending, |e| {
                crate::pull::need::add_completion(&e, Some(device), &mut c);
                std::ops::ControlFlow::Continue(())
            })
            .unwrap();
            c.finish()
        };
        use proto::bep::wire::Counter;
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let v = |n: u64| {
            Some(Vector {
                counters: vec![Counter { id: 1, value: n }],
            })
        };
        let f = |name: &str, size: i64, version: u64, deleted: bool| FileInfo {
            name: name.into(),
            size,
            deleted,
            version: v(version),
            ..Default::default()
        };
        let change = |fi: FileInfo| Change { info: fi, inode: 0 };
        db.apply(
            "f",
            vec![
                change(f("a", 100, 2, false)),
                change(f("b", 300, 1, false)),
                change(f("gone", 0, 3, true)),
            ],
        )
        .unwrap();
        let peer = DeviceId::from_der_cert(b"peer");
        // Nothing announced: everything needed.
        let c = completion(&db, &peer);
        assert_eq!((c.need_items, c.need_bytes, c.global_bytes), (2, 400, 400));
        assert_eq!(c.completion, 0.0);
        // Peer has "a" in an older version, "b" current, "gone" still live.
        db.remote_files(
            "f",
            &peer,
            &[
                f("a", 100, 1, false),
                f("b", 300, 1, false),
                f("gone", 5, 2, false),
            ],
            true,
        )
        .unwrap();
        let c = completion(&db, &peer);
        assert_eq!((c.need_items, c.need_bytes, c.need_deletes), (1, 100, 1));
        assert_eq!(c.completion, 75.0);
        // An update brings "a" and the deletion: complete.
        db.remote_files(
            "f",
            &peer,
            &[f("a", 100, 2, false), f("gone", 0, 3, true)],
            false,
        )
        .unwrap();
        let c = completion(&db, &peer);
        assert_eq!((c.need_items, c.need_deletes, c.completion), (0, 0, 100.0));
        // A new index ID on their side voids what we knew.
        db.clear_remote_files("f", &peer).unwrap();
        assert_eq!(completion(&db, &peer).need_items, 2);
    }
}
