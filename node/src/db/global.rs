//! A folder's entries name by name — ours and each remote device's —
//! streamed in name order from the summary columns. This is the input of
//! the global-state computation: it never decodes a stored FileInfo nor
//! loads blocks, and holds one name's entries at a time, so memory does
//! not grow with the folder.

use std::cmp::Ordering as Cmp;
use std::iter::Peekable;
use std::ops::ControlFlow;

use anyhow::{Context, Result};
use prost::Message as _;
use proto::bep::wire::{FileInfo, Vector};
use proto::DeviceId;
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::Db;

/// Order of a stream of entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Ascending,
    /// Children before their parents (deletions).
    Descending,
}

/// Everything known of one name. The FileInfos are summaries: name, type,
/// deleted, invalid, size, modification time and version; no blocks, no
/// permissions, no symlink target (load the full entry to act on it).
#[derive(Debug, Clone, Default)]
pub struct Entry {
    pub name: String,
    pub local: Option<FileInfo>,
    pub remotes: Vec<(DeviceId, FileInfo)>,
}

fn summary(name: String, r: &Row<'_>, first: usize) -> rusqlite::Result<FileInfo> {
    let version: Vec<u8> = r.get(first + 6)?;
    Ok(FileInfo {
        name,
        r#type: r.get(first)?,
        deleted: r.get(first + 1)?,
        invalid: r.get(first + 2)?,
        size: r.get(first + 3)?,
        modified_s: r.get(first + 4)?,
        modified_ns: r.get(first + 5)?,
        // A corrupt vector reads as empty: such an entry is never needed.
        version: Some(Vector::decode(&version[..]).unwrap_or_default()),
        ..Default::default()
    })
}

const LOCAL_COLUMNS: &str = "name, kind, deleted, invalid, size, modified_s, modified_ns, version";
const REMOTE_COLUMNS: &str =
    "name, device, kind, deleted, invalid, size, modified_s, modified_ns, version";

/// `WHERE` range and `ORDER BY` for a stream that starts after `after`.
fn range(dir: Direction, after: Option<&str>) -> (&'static str, &'static str) {
    match (dir, after) {
        (Direction::Ascending, _) => ("name > ?2", "ASC"),
        (Direction::Descending, Some(_)) => ("name < ?2", "DESC"),
        // No upper bound: `?2` is bound but compared to nothing.
        (Direction::Descending, None) => ("?2 = ?2", "DESC"),
    }
}

impl Db {
    /// Calls `f` with the entries of each name of `folder` in `dir` order,
    /// starting after `after` (exclusive; `None`: from the first name),
    /// until `f` breaks. The database is locked meanwhile: keep `f` quick.
    pub fn for_each_entry(
        &self,
        folder: &str,
        after: Option<&str>,
        dir: Direction,
        mut f: impl FnMut(Entry) -> ControlFlow<()>,
    ) -> Result<()> {
        let conn = self.conn();
        let (cond, order) = range(dir, after);
        let mut local_stmt = conn.prepare_cached(&format!(
            "SELECT {LOCAL_COLUMNS} FROM files WHERE folder = ?1 AND {cond} ORDER BY name {order}"
        ))?;
        let mut remote_stmt = conn.prepare_cached(&format!(
            "SELECT {REMOTE_COLUMNS} FROM remote_files
             WHERE folder = ?1 AND {cond} AND info IS NOT NULL
             ORDER BY name {order}, device {order}"
        ))?;
        let bound = after.unwrap_or("");
        let mut local = local_stmt
            .query_map(params![folder, bound], |r| {
                let name: String = r.get(0)?;
                summary(name, r, 1)
            })?
            .peekable();
        let mut remote = remote_stmt
            .query_map(params![folder, bound], |r| {
                let name: String = r.get(0)?;
                let device: Vec<u8> = r.get(1)?;
                Ok((device, summary(name, r, 2)?))
            })?
            .peekable();
        let before = |a: &str, b: &str| match dir {
            Direction::Ascending => a.cmp(b),
            Direction::Descending => b.cmp(a),
        };
        loop {
            let next_local = peek_name(&mut local, |f| &f.name)?;
            let next_remote = peek_name(&mut remote, |(_, f)| &f.name)?;
            let name = match (next_local, next_remote) {
                (None, None) => return Ok(()),
                (Some(l), None) => l,
                (None, Some(r)) => r,
                (Some(l), Some(r)) => match before(&l, &r) {
                    Cmp::Greater => r,
                    _ => l,
                },
            };
            let mut entry = Entry {
                name,
                ..Default::default()
            };
            if local
                .peek()
                .is_some_and(|x| matches!(x, Ok(l) if l.name == entry.name))
            {
                entry.local = local.next().transpose()?;
            }
            while remote
                .peek()
                .is_some_and(|x| matches!(x, Ok((_, r)) if r.name == entry.name))
            {
                if let Some((device, info)) = remote.next().transpose()? {
                    let device = DeviceId::from_slice(&device)
                        .context("corrupt device in the index database")?;
                    entry.remotes.push((device, info));
                }
            }
            if f(entry).is_break() {
                return Ok(());
            }
        }
    }

    /// The entries of one name.
    pub fn entry(&self, folder: &str, name: &str) -> Result<Entry> {
        let conn = self.conn();
        let local = conn
            .prepare_cached(&format!(
                "SELECT {LOCAL_COLUMNS} FROM files WHERE folder = ?1 AND name = ?2"
            ))?
            .query_row(params![folder, name], |r| summary(r.get(0)?, r, 1))
            .optional()?;
        // Under the same lock: local and remote entries of one moment.
        Ok(Entry {
            name: name.to_string(),
            local,
            remotes: remote_summaries(&conn, folder, name)?,
        })
    }

    /// What each device announced for one name, without the blocks.
    pub fn remote_summaries(&self, folder: &str, name: &str) -> Result<Vec<(DeviceId, FileInfo)>> {
        remote_summaries(&self.conn(), folder, name)
    }

    /// The whole entry a device announced for `name` (with its blocks).
    pub fn remote_file(
        &self,
        folder: &str,
        device: &DeviceId,
        name: &str,
    ) -> Result<Option<FileInfo>> {
        let conn = self.conn();
        let blob: Option<Option<Vec<u8>>> = conn
            .prepare_cached(
                "SELECT info FROM remote_files WHERE folder = ?1 AND device = ?2 AND name = ?3",
            )?
            .query_row(params![folder, &device.as_bytes()[..], name], |r| r.get(0))
            .optional()?;
        blob.flatten()
            .map(|b| FileInfo::decode(&b[..]).context("corrupt entry in the index database"))
            .transpose()
    }
}

/// What each device announced for one name, without the blocks.
fn remote_summaries(
    conn: &Connection,
    folder: &str,
    name: &str,
) -> Result<Vec<(DeviceId, FileInfo)>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {REMOTE_COLUMNS} FROM remote_files
         WHERE folder = ?1 AND name = ?2 AND info IS NOT NULL ORDER BY device"
    ))?;
    let rows = stmt.query_map(params![folder, name], |r| {
        Ok((r.get::<_, Vec<u8>>(1)?, summary(r.get(0)?, r, 2)?))
    })?;
    let mut remotes = Vec::new();
    for row in rows {
        let (device, info) = row?;
        let device =
            DeviceId::from_slice(&device).context("corrupt device in the index database")?;
        remotes.push((device, info));
    }
    Ok(remotes)
}

/// The name of the next row of a stream, or its error.
fn peek_name<T, I>(it: &mut Peekable<I>, name: impl Fn(&T) -> &String) -> Result<Option<String>>
where
    I: Iterator<Item = rusqlite::Result<T>>,
{
    match it.peek() {
        None => Ok(None),
        Some(Ok(x)) => Ok(Some(name(x).clone())),
        Some(Err(_)) => match it.next() {
            Some(Err(e)) => Err(e.into()),
            _ => Ok(None),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Change;
    use proto::bep::wire::{BlockInfo, Counter};

    fn fi(name: &str, v: u64, blocks: &[&[u8]]) -> FileInfo {
        FileInfo {
            name: name.into(),
            size: 10,
            modified_s: 7,
            version: Some(Vector {
                counters: vec![Counter { id: 1, value: v }],
            }),
            blocks: blocks
                .iter()
                .enumerate()
                .map(|(i, h)| BlockInfo {
                    offset: i as i64 * 5,
                    size: 5,
                    hash: h.to_vec(),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn names(
        db: &Db,
        after: Option<&str>,
        dir: Direction,
        max: usize,
    ) -> Vec<(String, bool, usize)> {
        let mut out = Vec::new();
        db.for_each_entry("f", after, dir, |e| {
            out.push((e.name, e.local.is_some(), e.remotes.len()));
            if out.len() >= max {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
        out
    }

    #[test]
    fn entries_stream_merged_by_name_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let change = |f| Change { info: f, inode: 0 };
        db.apply(
            "f",
            vec![change(fi("a", 1, &[b"h1"])), change(fi("a/b", 1, &[]))],
        )
        .unwrap();
        db.apply("other", vec![change(fi("zz", 1, &[]))]).unwrap();
        let (p, q) = (DeviceId::from_der_cert(b"p"), DeviceId::from_der_cert(b"q"));
        db.remote_files("f", &p, &[fi("a", 2, &[]), fi("c", 1, &[])], true)
            .unwrap();
        db.remote_files("f", &q, &[fi("a", 1, &[]), fi("a b", 1, &[])], true)
            .unwrap();
        let s = |n: &str, l, r| (n.to_string(), l, r);
        assert_eq!(
            names(&db, None, Direction::Ascending, 100),
            [
                s("a", true, 2),
                s("a b", false, 1),
                s("a/b", true, 0),
                s("c", false, 1)
            ]
        );
        assert_eq!(
            names(&db, None, Direction::Descending, 100),
            [
                s("c", false, 1),
                s("a/b", true, 0),
                s("a b", false, 1),
                s("a", true, 2)
            ]
        );
        assert_eq!(
            names(&db, Some("a b"), Direction::Ascending, 1),
            [s("a/b", true, 0)]
        );
        assert_eq!(
            names(&db, Some("a/b"), Direction::Descending, 100),
            [s("a b", false, 1), s("a", true, 2)]
        );
        // Summaries carry versions but no blocks; full entries have them.
        let e = db.entry("f", "a").unwrap();
        let l = e.local.unwrap();
        assert!(l.blocks.is_empty());
        assert_eq!(l.modified_s, 7);
        assert_eq!(
            e.remotes[0].1.version.as_ref().unwrap().counters[0].value,
            2
        );
        assert_eq!(db.remote_file("f", &p, "c").unwrap().unwrap().name, "c");
        // Block reuse by hash follows the local entries.
        assert_eq!(
            db.find_block("f", b"h1").unwrap(),
            Some(("a".to_string(), 0, 5))
        );
        db.apply("f", vec![change(fi("a", 3, &[b"h2"]))]).unwrap();
        assert_eq!(db.find_block("f", b"h1").unwrap(), None);
        assert!(db.find_block("f", b"h2").unwrap().is_some());
    }

    #[test]
    fn layout_1_database_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = rusqlite::Connection::open(dir.path().join(crate::db::FILE_NAME)).unwrap();
            conn.execute_batch(
                "CREATE TABLE folders (folder TEXT PRIMARY KEY, index_id INTEGER NOT NULL,
                     sequence INTEGER NOT NULL);
                 CREATE TABLE files (folder TEXT NOT NULL, name TEXT NOT NULL,
                     sequence INTEGER NOT NULL, kind INTEGER NOT NULL, deleted INTEGER NOT NULL,
                     size INTEGER NOT NULL, modified_s INTEGER NOT NULL,
                     modified_ns INTEGER NOT NULL, permissions INTEGER NOT NULL,
                     inode INTEGER NOT NULL, block_size INTEGER NOT NULL, version BLOB NOT NULL,
                     info BLOB NOT NULL, PRIMARY KEY (folder, name)) WITHOUT ROWID;
                 CREATE TABLE remote_files (folder TEXT NOT NULL, device BLOB NOT NULL,
                     name TEXT NOT NULL, deleted INTEGER NOT NULL, invalid INTEGER NOT NULL,
                     size INTEGER NOT NULL, version BLOB NOT NULL, info BLOB,
                     PRIMARY KEY (folder, device, name)) WITHOUT ROWID;
                 CREATE TABLE remotes (folder TEXT NOT NULL, device BLOB NOT NULL,
                     index_id INTEGER NOT NULL, max_sequence INTEGER NOT NULL,
                     PRIMARY KEY (folder, device));",
            )
            .unwrap();
            let mut local = fi("x", 1, &[b"hx"]);
            local.invalid = true;
            let remote = FileInfo {
                r#type: 2,
                modified_s: 99,
                ..fi("y", 1, &[])
            };
            conn.execute(
                "INSERT INTO files VALUES ('f', 'x', 1, 0, 0, 10, 7, 0, 420, 1, 0, ?1, ?2)",
                params![
                    local.version.clone().unwrap().encode_to_vec(),
                    local.encode_to_vec()
                ],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO remote_files VALUES ('f', ?1, 'y', 0, 0, 10, ?2, ?3)",
                params![
                    &DeviceId::from_der_cert(b"p").as_bytes()[..],
                    remote.version.clone().unwrap().encode_to_vec(),
                    remote.encode_to_vec()
                ],
            )
            .unwrap();
        }
        let db = Db::open(dir.path()).unwrap();
        let x = db.entry("f", "x").unwrap().local.unwrap();
        assert!(x.invalid);
        let y = &db.entry("f", "y").unwrap().remotes[0].1;
        assert_eq!((y.r#type, y.modified_s), (2, 99));
        // Invalid (receive-only) local data is not offered for reuse.
        assert_eq!(db.find_block("f", b"hx").unwrap(), None);
        drop(db);
        // Opening again does not migrate again.
        Db::open(dir.path()).unwrap();
    }
}
