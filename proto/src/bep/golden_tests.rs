//! Golden tests: bytes a real Syncthing 1.19.2 sent (see testdata/README.md)
//! decode to what it meant, and what we encode from the same values is
//! byte-identical.

use prost::Message as _;

use super::blocks::{blocks_hash, empty_file_blocks, hash_block};
use super::frame::{decode_frame, encode_frame, Compress, Decoded, Message};
use super::hello::{decode_hello, encode_hello};
use super::session::check_cluster_config;
use super::wire::{self, FileInfoType};
use crate::device_id::DeviceId;

const SESSION: &[u8] = include_bytes!("testdata/st1192-hello-clusterconfig-index.bin");
const RESPONSES: &[u8] = include_bytes!("testdata/st1192-responses.bin");

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn frames(mut buf: &[u8]) -> Vec<(Message, Vec<u8>)> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        match decode_frame(buf).unwrap() {
            Decoded::Frame { message, consumed } => {
                out.push((message, buf[..consumed].to_vec()));
                buf = &buf[consumed..];
            }
            Decoded::Incomplete { .. } => panic!("truncated capture"),
        }
    }
    out
}

#[test]
fn hello_from_syncthing_1_19_2() {
    let (hello, used) = decode_hello(SESSION).unwrap().unwrap();
    assert_eq!(used, 38);
    assert_eq!(hello.device_name, "node-a");
    assert_eq!(hello.client_name, "syncthing");
    assert_eq!(hello.client_version, "v1.19.2-ds1");
    assert_eq!(encode_hello(&hello).unwrap(), &SESSION[..used]);
}

#[test]
fn cluster_config_and_index_from_syncthing_1_19_2() {
    let (_, used) = decode_hello(SESSION).unwrap().unwrap();
    let frames = frames(&SESSION[used..]);
    assert_eq!(frames.len(), 2);

    let (Message::ClusterConfig(cc), raw) = &frames[0] else {
        panic!("first frame is not ClusterConfig")
    };
    // Uncompressed ClusterConfig has an empty header, as the spec observed.
    assert_eq!(&raw[..2], &[0, 0]);
    assert_eq!(
        encode_frame(&frames[0].0, Compress::Never).unwrap(),
        *raw,
        "re-encoding gives the same bytes"
    );
    let folder = &cc.folders[0];
    assert_eq!(folder.id, "f1");
    // 1.19.2's read_only/paused bools are 2.x's type and stop_reason.
    assert_eq!(folder.r#type(), super::wire::FolderType::SendReceive);
    assert_eq!(folder.stop_reason(), super::wire::FolderStopReason::Running);
    let node = DeviceId::from_slice(&folder.devices[1].id).unwrap();
    let client = DeviceId::from_slice(&folder.devices[0].id).unwrap();
    assert_eq!(&hex(node.as_bytes())[..8], "d631ce2b");
    assert_eq!(&hex(client.as_bytes())[..8], "3ba2729c");
    check_cluster_config(cc, client, node).unwrap();
    // The sender's own entry: its max sequence and a random index ID; ours
    // has none yet.
    assert_eq!(folder.devices[1].max_sequence, 7);
    assert_ne!(folder.devices[1].index_id, 0);
    assert_eq!(folder.devices[0].index_id, 0);
    assert_eq!(folder.devices[0].addresses, ["dynamic"]);

    let (Message::Index(index), raw) = &frames[1] else {
        panic!("second frame is not Index")
    };
    // LZ4 header: type 1, compression 1.
    assert_eq!(&raw[..6], &[0, 4, 0x08, 0x01, 0x10, 0x01]);
    // The decompressed protobuf re-encodes to the same bytes but for
    // 1.19.2's weak hashes (BlockInfo field 4, reserved since 2.x), which
    // are read past and never sent.
    let decompressed = super::lz4::decompress(&raw[10..]).unwrap();
    let again = index.encode_to_vec();
    assert!(again.len() < decompressed.len());
    assert_eq!(&super::wire::Index::decode(&again[..]).unwrap(), index);
    assert_eq!(index.folder, "f1");
    let names: Vec<&str> = index.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names.len(), 7, "{names:?}");
    let seqs: Vec<i64> = index.files.iter().map(|f| f.sequence).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "ascending: {seqs:?}");

    let by_name = |n: &str| index.files.iter().find(|f| f.name == n).unwrap();
    for f in &index.files {
        super::rules::check_file_info(f).unwrap();
    }
    let hello = by_name("hello.txt");
    assert_eq!(hello.size, 12);
    assert_eq!(hello.permissions, 0o644);
    assert_eq!(hello.block_size, 131072);
    assert_eq!(hello.blocks, vec![hash_block(0, b"hello world\n")]);
    // 1.19.2 hashed the weak hashes into blocks_hash too; ours is 2.x's.
    assert_eq!(hello.blocks_hash.len(), 32);
    assert_ne!(hello.blocks_hash, blocks_hash(&hello.blocks));
    let empty = by_name("empty.txt");
    assert_eq!(empty.size, 0);
    assert_eq!(empty.blocks, empty_file_blocks());
    assert_eq!(empty.blocks_hash.len(), 32);
    let f2 = by_name("sub dir/f2.txt");
    assert_eq!(f2.blocks, vec![hash_block(0, b"file 2\n")]);
    let dir = by_name("sub dir");
    assert_eq!(dir.r#type, FileInfoType::Directory as i32);
    assert_eq!((dir.size, dir.blocks.len()), (0, 0));
    let link = by_name("link");
    assert_eq!(link.r#type, FileInfoType::Symlink as i32);
    assert_eq!(link.symlink_target, b"hello.txt");
    assert!(link.no_permissions);
    assert_eq!((link.permissions, link.modified_s), (0, 0));
    // Every version vector has one counter, by the node's short ID.
    let short = node.short().0;
    for f in &index.files {
        let v = f.version.as_ref().unwrap();
        assert_eq!(v.counters.len(), 1);
        assert_eq!(v.counters[0].id, short);
        assert_eq!(f.modified_by, short);
    }
}

#[test]
fn responses_from_syncthing_1_19_2() {
    let frames = frames(RESPONSES);
    assert_eq!(
        frames[0].0,
        Message::Response(wire::Response {
            id: 7,
            data: b"hello world\n".to_vec(),
            code: 0
        })
    );
    assert_eq!(
        frames[1].0,
        Message::Response(wire::Response {
            id: 8,
            data: vec![],
            code: wire::ErrorCode::NoSuchFile as i32
        })
    );
    // Responses are never compressed in the default mode: same bytes.
    for (msg, raw) in &frames {
        assert_eq!(&encode_frame(msg, Compress::Metadata).unwrap(), raw);
    }
}

#[test]
fn ping_layout_of_the_spec() {
    assert_eq!(
        encode_frame(&Message::Ping, Compress::Always).unwrap(),
        [0x00, 0x02, 0x08, 0x06, 0, 0, 0, 0]
    );
}
