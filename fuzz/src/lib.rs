//! Shared pieces of the fuzz targets: structure-aware inputs (`arbitrary`)
//! that turn into real wire messages, so the fuzzer spends its time past
//! the framing and length checks instead of at them.

use arbitrary::Arbitrary;
use proto::bep::wire;
use proto::bep::Message;

#[derive(Arbitrary, Debug, Clone)]
pub struct Counter {
    pub id: u8,
    pub value: u64,
}

#[derive(Arbitrary, Debug, Clone)]
pub struct Block {
    pub offset: i64,
    pub size: i32,
    pub hash: Vec<u8>,
}

#[derive(Arbitrary, Debug, Clone)]
pub struct File {
    pub name: String,
    pub kind: u8,
    pub size: i64,
    pub permissions: u32,
    pub modified_s: i64,
    pub deleted: bool,
    pub invalid: bool,
    pub version: Vec<Counter>,
    pub sequence: i64,
    pub block_size: i32,
    pub blocks: Vec<Block>,
    pub symlink_target: Vec<u8>,
}

#[derive(Arbitrary, Debug, Clone)]
pub struct Device {
    /// An index into a few known IDs, or raw bytes.
    pub id: DeviceRef,
    pub name: String,
    pub addresses: Vec<String>,
    pub max_sequence: i64,
    pub introducer: bool,
    pub index_id: u64,
}

#[derive(Arbitrary, Debug, Clone)]
pub enum DeviceRef {
    Known(u8),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug, Clone)]
pub struct Folder {
    pub id: String,
    pub label: String,
    pub kind: i32,
    pub devices: Vec<Device>,
}

/// One file's entry in a DownloadProgress.
#[derive(Arbitrary, Debug, Clone)]
pub struct Progress {
    pub kind: u8,
    pub name: String,
    pub version: Vec<Counter>,
    pub block_indexes: Vec<i32>,
    pub block_size: i32,
}

/// A BEP message as the fuzzer builds it.
#[derive(Arbitrary, Debug, Clone)]
pub enum Msg {
    ClusterConfig {
        folders: Vec<Folder>,
        secondary: bool,
    },
    Index {
        folder: String,
        files: Vec<File>,
        last: i64,
        prev: i64,
    },
    IndexUpdate {
        folder: String,
        files: Vec<File>,
        last: i64,
        prev: i64,
    },
    Request {
        id: i32,
        folder: String,
        name: String,
        offset: i64,
        size: i32,
        hash: Vec<u8>,
        block_no: i32,
    },
    Response {
        id: i32,
        data: Vec<u8>,
        code: i32,
    },
    DownloadProgress {
        folder: String,
        updates: Vec<Progress>,
    },
    Ping,
    Close(String),
    Unknown(i32),
}

/// Device IDs a ClusterConfig may name: `KNOWN[0]` and `KNOWN[1]` are the
/// two ends of the session under test.
pub const KNOWN: [[u8; 32]; 3] = [[1; 32], [2; 32], [3; 32]];

fn device(d: &Device) -> wire::Device {
    wire::Device {
        id: match &d.id {
            DeviceRef::Known(i) => KNOWN[usize::from(*i) % KNOWN.len()].to_vec(),
            DeviceRef::Raw(b) => b.clone(),
        },
        name: d.name.clone(),
        addresses: d.addresses.clone(),
        max_sequence: d.max_sequence,
        introducer: d.introducer,
        index_id: d.index_id,
        ..Default::default()
    }
}

pub fn vector(counters: &[Counter]) -> wire::Vector {
    wire::Vector {
        counters: counters
            .iter()
            .map(|c| wire::Counter {
                id: u64::from(c.id),
                value: c.value,
            })
            .collect(),
    }
}

pub fn file(f: &File) -> wire::FileInfo {
    wire::FileInfo {
        name: f.name.clone(),
        r#type: i32::from(f.kind % 6),
        size: f.size,
        permissions: f.permissions,
        modified_s: f.modified_s,
        deleted: f.deleted,
        invalid: f.invalid,
        version: Some(vector(&f.version)),
        sequence: f.sequence,
        block_size: f.block_size,
        blocks: f
            .blocks
            .iter()
            .map(|b| wire::BlockInfo {
                offset: b.offset,
                size: b.size,
                hash: b.hash.clone(),
            })
            .collect(),
        symlink_target: f.symlink_target.clone(),
        ..Default::default()
    }
}

impl Msg {
    pub fn to_message(&self) -> Message {
        match self {
            Msg::ClusterConfig { folders, secondary } => {
                Message::ClusterConfig(wire::ClusterConfig {
                    folders: folders
                        .iter()
                        .map(|f| wire::Folder {
                            id: f.id.clone(),
                            label: f.label.clone(),
                            r#type: f.kind,
                            devices: f.devices.iter().map(device).collect(),
                            ..Default::default()
                        })
                        .collect(),
                    secondary: *secondary,
                })
            }
            Msg::Index {
                folder,
                files,
                last,
                prev,
            } => Message::Index(index(folder, files, *last, *prev)),
            Msg::IndexUpdate {
                folder,
                files,
                last,
                prev,
            } => Message::IndexUpdate(index(folder, files, *last, *prev)),
            Msg::Request {
                id,
                folder,
                name,
                offset,
                size,
                hash,
                block_no,
            } => Message::Request(wire::Request {
                id: *id,
                folder: folder.clone(),
                name: name.clone(),
                offset: *offset,
                size: *size,
                hash: hash.clone(),
                block_no: *block_no,
                ..Default::default()
            }),
            Msg::Response { id, data, code } => Message::Response(wire::Response {
                id: *id,
                data: data.clone(),
                code: *code,
            }),
            Msg::DownloadProgress { folder, updates } => {
                Message::DownloadProgress(wire::DownloadProgress {
                    folder: folder.clone(),
                    updates: updates
                        .iter()
                        .map(|p| wire::FileDownloadProgressUpdate {
                            update_type: i32::from(p.kind % 3),
                            name: p.name.clone(),
                            version: Some(vector(&p.version)),
                            block_indexes: p.block_indexes.clone(),
                            block_size: p.block_size,
                        })
                        .collect(),
                })
            }
            Msg::Ping => Message::Ping,
            Msg::Close(reason) => Message::Close(wire::Close {
                reason: reason.clone(),
            }),
            Msg::Unknown(t) => Message::Unknown(*t),
        }
    }
}

fn index(folder: &str, files: &[File], last: i64, prev: i64) -> wire::Index {
    wire::Index {
        folder: folder.to_owned(),
        files: files.iter().map(file).collect(),
        last_sequence: last,
        prev_sequence: prev,
    }
}
