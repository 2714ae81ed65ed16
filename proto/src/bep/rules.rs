//! What Syncthing 2.1.2 and later refuse on the wire, as types: a received
//! Index entry or Request breaking one of these rules makes 2.x close the
//! connection with a protocol error, so we never send one, and refuse the
//! same from a peer. Also the sequence bookkeeping of Index/IndexUpdate
//! (`last_sequence`, `prev_sequence`), which 2.x checks but only reports.

use super::limits::MAX_REQUEST_SIZE;
use super::names::{self, NameError};
use super::wire::{FileInfo, FileInfoType, Request};

/// The size 1.x (before 1.14) announced for directories; 2.x still accepts
/// it besides 0.
pub const LEGACY_DIRECTORY_SIZE: i64 = 128;

/// A rule an index entry broke (the texts are 2.x's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileRule {
    DeletedHasBlocks,
    NonFileHasBlocks,
    NonFileHasSize,
    FileHasNoBlocks,
}

impl std::fmt::Display for FileRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FileRule::DeletedHasBlocks => "deleted file with non-empty block list",
            FileRule::NonFileHasBlocks => "non-file type with non-empty block list",
            FileRule::NonFileHasSize => "non-file type with nonzero size",
            FileRule::FileHasNoBlocks => "file with empty block list",
        })
    }
}

/// A rule a Request broke (the texts are 2.x's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestRule {
    NegativeSize,
    TooLarge,
    MissingHash,
}

impl std::fmt::Display for RequestRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestRule::NegativeSize => write!(f, "request size too small"),
            RequestRule::TooLarge => {
                write!(
                    f,
                    "request size exceeds maximum allowed ({MAX_REQUEST_SIZE})"
                )
            }
            RequestRule::MissingHash => write!(f, "request missing block hash"),
        }
    }
}

/// Why an index entry or a Request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("file {name:?}: {rule}")]
    File { name: String, rule: FileRule },
    #[error("request for {name:?} (size {size}): {rule}")]
    Request {
        name: String,
        size: i32,
        rule: RequestRule,
    },
    #[error(transparent)]
    Name(#[from] NameError),
}

fn is_symlink(t: i32) -> bool {
    t == FileInfoType::Symlink as i32
        || t == FileInfoType::SymlinkFile as i32
        || t == FileInfoType::SymlinkDirectory as i32
}

/// 2.1.2's consistency rules for an index entry: canonical name, no blocks
/// on deleted entries or non-files, no size on directories (but the legacy
/// 128) and symlinks, at least one block on a valid file. An empty file
/// has one block (size 0, the SHA-256 of nothing), so it passes.
pub fn check_file_info(f: &FileInfo) -> Result<(), RuleError> {
    names::validate(&f.name)?;
    let broken = |rule| RuleError::File {
        name: f.name.clone(),
        rule,
    };
    let is_file = f.r#type == FileInfoType::File as i32;
    let is_dir = f.r#type == FileInfoType::Directory as i32;
    if f.deleted && !f.blocks.is_empty() {
        return Err(broken(FileRule::DeletedHasBlocks));
    }
    if !is_file && !f.blocks.is_empty() {
        return Err(broken(FileRule::NonFileHasBlocks));
    }
    if is_dir && f.size != 0 && f.size != LEGACY_DIRECTORY_SIZE {
        return Err(broken(FileRule::NonFileHasSize));
    }
    if is_symlink(f.r#type) && f.size != 0 {
        return Err(broken(FileRule::NonFileHasSize));
    }
    if is_file && !f.deleted && !f.invalid && f.blocks.is_empty() {
        return Err(broken(FileRule::FileHasNoBlocks));
    }
    Ok(())
}

/// Makes one of our index entries pass [`check_file_info`] before it is
/// sent: what 2.1.2 refuses and has a single meaning is repaired (blocks
/// or a size on a deletion or a non-file dropped, an empty file given its
/// one empty block); what has none (a bad name, a non-empty file with no
/// blocks) is an error, and the entry must not be sent.
pub fn fit_for_sending(f: &mut FileInfo) -> Result<(), RuleError> {
    let is_file = f.r#type == FileInfoType::File as i32;
    if f.deleted || !is_file {
        f.blocks.clear();
    }
    if f.deleted {
        f.size = 0;
    }
    let is_dir = f.r#type == FileInfoType::Directory as i32;
    if (is_dir && f.size != LEGACY_DIRECTORY_SIZE) || is_symlink(f.r#type) {
        f.size = 0;
    }
    if is_file && !f.deleted && !f.invalid && f.blocks.is_empty() && f.size == 0 {
        f.blocks = super::blocks::empty_file_blocks();
        f.blocks_hash = super::blocks::blocks_hash(&f.blocks);
    }
    check_file_info(f)
}

/// 2.1.2's rules for a Request: canonical name, a size from 0 to
/// [`MAX_REQUEST_SIZE`] (32 MiB; 0 is allowed: an empty file's block), and
/// a block hash (2.x always validates served data against it).
pub fn check_request(r: &Request) -> Result<(), RuleError> {
    names::validate(&r.name)?;
    let broken = |rule| RuleError::Request {
        name: r.name.clone(),
        size: r.size,
        rule,
    };
    if r.size < 0 {
        return Err(broken(RequestRule::NegativeSize));
    }
    if r.size as usize > MAX_REQUEST_SIZE {
        return Err(broken(RequestRule::TooLarge));
    }
    if r.hash.is_empty() {
        return Err(broken(RequestRule::MissingHash));
    }
    Ok(())
}

/// Something off in the sequence numbers of a received Index/IndexUpdate.
/// 2.x reports these (a "Failure" event) and still applies the batch: the
/// numbers are bookkeeping, the entries themselves were checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SequenceAnomaly {
    /// `prev_sequence` is not the highest sequence we hold from the peer.
    UnexpectedPrev { prev: i64, expected: i64 },
    /// An entry's sequence is below `prev_sequence`.
    BeforePrev { at: usize, seq: i64, prev: i64 },
    /// An entry's sequence is above `last_sequence`.
    AfterLast { at: usize, seq: i64, last: i64 },
    /// An entry's sequence is not above the one before it (a repeat or
    /// going backwards).
    NotIncreasing { at: usize, seq: i64, preceding: i64 },
    /// `last_sequence` is not the sequence of the batch's last entry.
    UnexpectedLast { last: i64, seen: i64 },
}

impl std::fmt::Display for SequenceAnomaly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SequenceAnomaly::UnexpectedPrev { prev, expected } => write!(
                f,
                "index update with unexpected sequence: prev_sequence {prev}, we hold {expected}"
            ),
            SequenceAnomaly::BeforePrev { at, seq, prev } => write!(
                f,
                "file with sequence before prev_sequence: entry {at} has {seq} < {prev}"
            ),
            SequenceAnomaly::AfterLast { at, seq, last } => write!(
                f,
                "file with sequence after last_sequence: entry {at} has {seq} > {last}"
            ),
            SequenceAnomaly::NotIncreasing {
                at,
                seq,
                preceding,
            } => write!(
                f,
                "index update with non-increasing sequence: entry {at} has {seq} after {preceding}"
            ),
            SequenceAnomaly::UnexpectedLast { last, seen } => write!(
                f,
                "index update with unexpected last sequence: last_sequence {last}, last entry {seen}"
            ),
        }
    }
}

/// The anomalies of one received batch, as 2.1.3 looks for them: `held`
/// is the highest sequence we recorded from the peer before the batch (0
/// for a full Index, which replaces everything). A zero `prev`/`last` is
/// "not sent" (1.x peers, or a 2.x Index without `prev_sequence`).
pub fn sequence_anomalies(
    files: &[FileInfo],
    prev: i64,
    last: i64,
    held: i64,
) -> Vec<SequenceAnomaly> {
    let mut out = Vec::new();
    if prev > 0 && prev != held {
        out.push(SequenceAnomaly::UnexpectedPrev {
            prev,
            expected: held,
        });
    }
    for (at, f) in files.iter().enumerate() {
        if f.sequence < prev {
            out.push(SequenceAnomaly::BeforePrev {
                at,
                seq: f.sequence,
                prev,
            });
        }
        if last > 0 && f.sequence > last {
            out.push(SequenceAnomaly::AfterLast {
                at,
                seq: f.sequence,
                last,
            });
        }
        if at > 0 && f.sequence <= files[at - 1].sequence {
            out.push(SequenceAnomaly::NotIncreasing {
                at,
                seq: f.sequence,
                preceding: files[at - 1].sequence,
            });
        }
    }
    if let Some(l) = files.last() {
        if last > 0 && l.sequence != last {
            out.push(SequenceAnomaly::UnexpectedLast {
                last,
                seen: l.sequence,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bep::blocks::{empty_file_blocks, hash_block};

    fn file(name: &str) -> FileInfo {
        FileInfo {
            name: name.into(),
            size: 3,
            blocks: vec![hash_block(0, b"abc")],
            ..Default::default()
        }
    }

    fn rule(f: &FileInfo) -> Option<FileRule> {
        match check_file_info(f) {
            Err(RuleError::File { rule, .. }) => Some(rule),
            _ => None,
        }
    }

    #[test]
    fn file_rules_follow_2_1_2() {
        assert_eq!(check_file_info(&file("a/b")), Ok(()));
        // An empty file carries one empty block and is valid.
        let empty = FileInfo {
            size: 0,
            blocks: empty_file_blocks(),
            ..file("e")
        };
        assert_eq!(check_file_info(&empty), Ok(()));
        // Non-canonical names.
        for bad in ["", ".", "..", "/abs", "../x", "a//b", "a/./b", "a/", "a/.."] {
            assert!(
                matches!(check_file_info(&file(bad)), Err(RuleError::Name(_))),
                "{bad:?}"
            );
        }
        let mut f = file("d");
        f.deleted = true;
        assert_eq!(rule(&f), Some(FileRule::DeletedHasBlocks));
        f.blocks.clear();
        f.size = 0;
        assert_eq!(check_file_info(&f), Ok(()));
        let mut dir = FileInfo {
            name: "dir".into(),
            r#type: FileInfoType::Directory as i32,
            ..Default::default()
        };
        assert_eq!(check_file_info(&dir), Ok(()));
        dir.size = LEGACY_DIRECTORY_SIZE;
        assert_eq!(check_file_info(&dir), Ok(()));
        dir.size = 4096;
        assert_eq!(rule(&dir), Some(FileRule::NonFileHasSize));
        dir.size = 0;
        dir.blocks = empty_file_blocks();
        assert_eq!(rule(&dir), Some(FileRule::NonFileHasBlocks));
        let mut link = FileInfo {
            name: "l".into(),
            r#type: FileInfoType::Symlink as i32,
            symlink_target: b"t".to_vec(),
            ..Default::default()
        };
        assert_eq!(check_file_info(&link), Ok(()));
        link.size = 1;
        assert_eq!(rule(&link), Some(FileRule::NonFileHasSize));
        let mut nob = file("n");
        nob.blocks.clear();
        assert_eq!(rule(&nob), Some(FileRule::FileHasNoBlocks));
        // Invalid (ignored) entries carry no blocks.
        nob.invalid = true;
        assert_eq!(check_file_info(&nob), Ok(()));
    }

    #[test]
    fn what_we_send_passes_2_1_2() {
        let mut del = FileInfo {
            deleted: true,
            size: 3,
            ..file("d")
        };
        assert_eq!(fit_for_sending(&mut del), Ok(()));
        assert!(del.blocks.is_empty() && del.size == 0);
        let mut dir = FileInfo {
            r#type: FileInfoType::Directory as i32,
            size: 4096,
            ..file("dir")
        };
        assert_eq!(fit_for_sending(&mut dir), Ok(()));
        assert!(dir.blocks.is_empty() && dir.size == 0);
        let mut link = FileInfo {
            r#type: FileInfoType::Symlink as i32,
            ..file("l")
        };
        assert_eq!(fit_for_sending(&mut link), Ok(()));
        assert!(link.blocks.is_empty() && link.size == 0);
        let mut empty = FileInfo {
            size: 0,
            blocks: vec![],
            ..file("e")
        };
        assert_eq!(fit_for_sending(&mut empty), Ok(()));
        assert_eq!(empty.blocks, empty_file_blocks());
        let mut lost = FileInfo {
            blocks: vec![],
            ..file("x")
        };
        assert_eq!(
            fit_for_sending(&mut lost),
            Err(RuleError::File {
                name: "x".into(),
                rule: FileRule::FileHasNoBlocks
            })
        );
        assert!(fit_for_sending(&mut file("a//b")).is_err());
        let mut ok = file("fine");
        let before = ok.clone();
        assert_eq!(fit_for_sending(&mut ok), Ok(()));
        assert_eq!(ok, before);
    }

    #[test]
    fn request_rules_follow_2_1_2() {
        let ok = Request {
            name: "a".into(),
            size: 128 << 10,
            hash: vec![1; 32],
            ..Default::default()
        };
        assert_eq!(check_request(&ok), Ok(()));
        let rule = |r: Request| match check_request(&r) {
            Err(RuleError::Request { rule, .. }) => Some(rule),
            _ => None,
        };
        assert_eq!(
            rule(Request {
                size: 0,
                ..ok.clone()
            }),
            None
        );
        assert_eq!(
            rule(Request {
                size: MAX_REQUEST_SIZE as i32,
                ..ok.clone()
            }),
            None
        );
        assert_eq!(
            rule(Request {
                size: MAX_REQUEST_SIZE as i32 + 1,
                ..ok.clone()
            }),
            Some(RequestRule::TooLarge)
        );
        assert_eq!(
            rule(Request {
                size: -1,
                ..ok.clone()
            }),
            Some(RequestRule::NegativeSize)
        );
        assert_eq!(
            rule(Request {
                hash: vec![],
                ..ok.clone()
            }),
            Some(RequestRule::MissingHash)
        );
        assert!(matches!(
            check_request(&Request {
                name: "../etc/passwd".into(),
                ..ok
            }),
            Err(RuleError::Name(_))
        ));
    }

    fn seqs(s: &[i64]) -> Vec<FileInfo> {
        s.iter()
            .map(|&sequence| FileInfo {
                sequence,
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn sequence_anomalies_as_2_1_3_sees_them() {
        // A well-formed IndexUpdate after what we hold, and a 1.x batch
        // without the fields.
        assert!(sequence_anomalies(&seqs(&[11, 12, 15]), 10, 15, 10).is_empty());
        assert!(sequence_anomalies(&seqs(&[3, 4]), 0, 0, 9).is_empty());
        assert_eq!(
            sequence_anomalies(&seqs(&[11]), 10, 11, 7),
            vec![SequenceAnomaly::UnexpectedPrev {
                prev: 10,
                expected: 7
            }]
        );
        let a = sequence_anomalies(&seqs(&[11, 11, 9]), 10, 12, 10);
        assert!(a.contains(&SequenceAnomaly::NotIncreasing {
            at: 1,
            seq: 11,
            preceding: 11
        }));
        assert!(a.contains(&SequenceAnomaly::BeforePrev {
            at: 2,
            seq: 9,
            prev: 10
        }));
        assert!(a.contains(&SequenceAnomaly::UnexpectedLast { last: 12, seen: 9 }));
        assert_eq!(
            sequence_anomalies(&seqs(&[11, 20]), 10, 15, 10)[0],
            SequenceAnomaly::AfterLast {
                at: 1,
                seq: 20,
                last: 15
            }
        );
    }
}
