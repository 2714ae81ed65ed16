//! What decoding a message body would cost in memory, found by walking
//! its protobuf encoding before anything is decoded.
//!
//! Protobuf amplifies: an empty `FileInfo` is two bytes on the wire and a
//! few hundred bytes of struct once decoded, so an Index body inside every
//! length limit could still decode to gigabytes. The walk knows which
//! fields of each BEP message are sub-messages (the schema below mirrors
//! `proto/bep.proto`), adds the in-memory size of every value it meets,
//! and stops as soon as the budget is exceeded. It allocates nothing and
//! recurses only as deep as the schema (four levels).

use std::mem::size_of;

use super::wire;

/// Why a body was refused before decoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    #[error("{kind} message would take more than {budget} bytes of memory once decoded")]
    OverBudget { kind: &'static str, budget: usize },
    #[error("{kind} message is not valid protobuf")]
    Malformed { kind: &'static str },
}

/// The messages with sub-messages, and the leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schema {
    ClusterConfig,
    Folder,
    Device,
    Index,
    FileInfo,
    BlockInfo,
    Vector,
    Counter,
    DownloadProgress,
    FileDownloadProgressUpdate,
    /// A message without sub-messages (Request, Response, Ping, Close).
    Flat(usize),
}

impl Schema {
    /// The schema of field `field` when it holds a sub-message.
    fn child(self, field: u64) -> Option<Schema> {
        Some(match (self, field) {
            (Schema::ClusterConfig, 1) => Schema::Folder,
            (Schema::Folder, 16) => Schema::Device,
            (Schema::Index, 2) => Schema::FileInfo,
            (Schema::FileInfo, 9) => Schema::Vector,
            (Schema::FileInfo, 16) => Schema::BlockInfo,
            (Schema::Vector, 1) => Schema::Counter,
            (Schema::DownloadProgress, 2) => Schema::FileDownloadProgressUpdate,
            (Schema::FileDownloadProgressUpdate, 3) => Schema::Vector,
            _ => return None,
        })
    }

    /// Whether field `field` may hold packed varints (up to eight bytes of
    /// memory per byte on the wire); every other length-delimited leaf is
    /// a string or bytes, one byte per byte.
    fn packed(self, field: u64) -> bool {
        matches!((self, field), (Schema::FileDownloadProgressUpdate, 4))
    }

    fn struct_size(self) -> usize {
        match self {
            Schema::ClusterConfig => size_of::<wire::ClusterConfig>(),
            Schema::Folder => size_of::<wire::Folder>(),
            Schema::Device => size_of::<wire::Device>(),
            Schema::Index => size_of::<wire::Index>(),
            Schema::FileInfo => size_of::<wire::FileInfo>(),
            Schema::BlockInfo => size_of::<wire::BlockInfo>(),
            Schema::Vector => size_of::<wire::Vector>(),
            Schema::Counter => size_of::<wire::Counter>(),
            Schema::DownloadProgress => size_of::<wire::DownloadProgress>(),
            Schema::FileDownloadProgressUpdate => size_of::<wire::FileDownloadProgressUpdate>(),
            Schema::Flat(n) => n,
        }
    }
}

/// Memory for one heap value besides its bytes (a `String`/`Vec` header
/// in a repeated field, allocator rounding).
const PER_VALUE: usize = 32;

/// Checks that `body`, a message of `schema` named `kind`, decodes within
/// `budget` bytes of memory (an estimate on the high side).
pub fn check(
    kind: &'static str,
    schema: Schema,
    body: &[u8],
    budget: usize,
) -> Result<usize, BudgetError> {
    let mut spent = 0usize;
    walk(schema, body, &mut spent, budget).map_err(|e| match e {
        Stop::Over => BudgetError::OverBudget { kind, budget },
        Stop::Malformed => BudgetError::Malformed { kind },
    })?;
    Ok(spent)
}

enum Stop {
    Over,
    Malformed,
}

fn spend(spent: &mut usize, n: usize, budget: usize) -> Result<(), Stop> {
    *spent = spent.saturating_add(n);
    if *spent > budget {
        return Err(Stop::Over);
    }
    Ok(())
}

fn walk(schema: Schema, mut b: &[u8], spent: &mut usize, budget: usize) -> Result<(), Stop> {
    spend(spent, schema.struct_size(), budget)?;
    while !b.is_empty() {
        let key = varint(&mut b)?;
        let field = key >> 3;
        match key & 7 {
            // Varint, 64-bit, 32-bit: at most a slot in a repeated field.
            0 => {
                varint(&mut b)?;
                spend(spent, 8, budget)?;
            }
            1 => {
                b = b.get(8..).ok_or(Stop::Malformed)?;
                spend(spent, 8, budget)?;
            }
            5 => {
                b = b.get(4..).ok_or(Stop::Malformed)?;
                spend(spent, 8, budget)?;
            }
            2 => {
                let len = usize::try_from(varint(&mut b)?).map_err(|_| Stop::Malformed)?;
                if len > b.len() {
                    return Err(Stop::Malformed);
                }
                let (value, rest) = b.split_at(len);
                b = rest;
                match schema.child(field) {
                    Some(sub) => walk(sub, value, spent, budget)?,
                    None if schema.packed(field) => {
                        spend(spent, len.saturating_mul(8) + PER_VALUE, budget)?
                    }
                    None => spend(spent, len + PER_VALUE, budget)?,
                }
            }
            _ => return Err(Stop::Malformed),
        }
    }
    Ok(())
}

fn varint(b: &mut &[u8]) -> Result<u64, Stop> {
    let mut v = 0u64;
    for i in 0..10 {
        let (&byte, rest) = b.split_first().ok_or(Stop::Malformed)?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(Stop::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    fn index(files: usize, blocks: usize) -> Vec<u8> {
        wire::Index {
            folder: "f".into(),
            files: (0..files)
                .map(|i| wire::FileInfo {
                    name: format!("file-{i}"),
                    blocks: vec![wire::BlockInfo::default(); blocks],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn ordinary_messages_fit_and_the_estimate_covers_the_decoded_size() {
        let body = index(1000, 4);
        let est = check("Index", Schema::Index, &body, usize::MAX).unwrap();
        let decoded = wire::Index::decode(&body[..]).unwrap();
        let real = size_of::<wire::Index>()
            + decoded
                .files
                .iter()
                .map(|f| {
                    size_of::<wire::FileInfo>()
                        + f.name.len()
                        + f.blocks.len() * size_of::<wire::BlockInfo>()
                })
                .sum::<usize>();
        assert!(est >= real, "estimate {est} below {real}");
        assert!(
            est < 40 * body.len() + 4096,
            "estimate {est} for {} bytes",
            body.len()
        );
    }

    #[test]
    fn many_empty_entries_are_refused_early() {
        // 500,000 empty FileInfos: 1 MB on the wire, over 100 MB decoded.
        let mut body = Vec::new();
        for _ in 0..500_000 {
            body.extend_from_slice(&[0x12, 0x00]);
        }
        assert_eq!(
            check("Index", Schema::Index, &body, 64 << 20),
            Err(BudgetError::OverBudget {
                kind: "Index",
                budget: 64 << 20
            })
        );
        // The same for folders of a ClusterConfig.
        let mut cc = Vec::new();
        for _ in 0..1_000_000 {
            cc.extend_from_slice(&[0x0a, 0x00]);
        }
        assert!(check("ClusterConfig", Schema::ClusterConfig, &cc, 64 << 20).is_err());
    }

    #[test]
    fn malformed_bodies_are_refused_without_panicking() {
        for bad in [
            &[0x12, 0x05, 0x00][..],
            &[0xff; 11][..],
            &[0x0b][..],
            &[0x12][..],
            &[0x09, 1, 2][..],
        ] {
            assert!(
                matches!(
                    check("Index", Schema::Index, bad, 1 << 20),
                    Err(BudgetError::Malformed { .. })
                ),
                "{bad:?}"
            );
        }
    }
}
