//! Where each block of our live files is, by hash: the puller builds a
//! file moved or copied on another device from data already on disk. Kept
//! in the database (not in memory) so it costs nothing between pulls.

use anyhow::Result;
use proto::bep::wire::FileInfo;
use rusqlite::{params, Connection, OptionalExtension};

use super::Db;

/// A block of a local file: (name, offset, size).
pub type BlockAt = (String, u64, usize);

/// Records the blocks of a local entry (live, valid regular files only).
pub(super) fn insert(conn: &Connection, folder: &str, f: &FileInfo) -> Result<()> {
    if f.deleted || f.invalid {
        return Ok(());
    }
    let mut stmt = conn.prepare_cached(
        "INSERT INTO blocks (folder, hash, name, offset, size) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for b in f.blocks.iter().filter(|b| b.size > 0 && !b.hash.is_empty()) {
        stmt.execute(params![folder, b.hash, f.name, b.offset, b.size])?;
    }
    Ok(())
}

/// Replaces what is recorded for the entry's name by its current blocks.
pub(super) fn replace(conn: &Connection, folder: &str, f: &FileInfo) -> Result<()> {
    conn.prepare_cached("DELETE FROM blocks WHERE folder = ?1 AND name = ?2")?
        .execute(params![folder, f.name])?;
    insert(conn, folder, f)
}

impl Db {
    /// A local file holding a block with this hash, if any. The data must
    /// still be verified against the hash when read: the file may have
    /// changed since it was scanned.
    pub fn find_block(&self, folder: &str, hash: &[u8]) -> Result<Option<BlockAt>> {
        let conn = self.conn();
        let row = conn
            .prepare_cached(
                "SELECT name, offset, size FROM blocks WHERE folder = ?1 AND hash = ?2 LIMIT 1",
            )?
            .query_row(params![folder, hash], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?.max(0) as u64,
                    r.get::<_, i64>(2)?.max(0) as usize,
                ))
            })
            .optional()?;
        Ok(row)
    }
}
