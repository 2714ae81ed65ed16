//! Hard limits on every length read from a peer, checked before anything is
//! allocated.

/// Largest protobuf Hello (the length is a u16 that must fit an i16).
pub const MAX_HELLO: usize = 32767;
/// Largest message body (raw or compressed) and largest decompressed
/// message. Syncthing uses the same bound.
pub const MAX_MESSAGE: usize = 500_000_000;
/// LZ4 cannot expand data by more than 255:1; a length prefix claiming more
/// than that is a decompression bomb, refused before allocating.
pub const MAX_LZ4_RATIO: usize = 255;
/// Largest block size in the protocol (16 MiB); Requests may ask for at most
/// twice that, as newer Syncthing enforces.
pub const MAX_BLOCK_SIZE: usize = 16 << 20;
/// Largest Request size we serve.
pub const MAX_REQUEST_SIZE: usize = 2 * MAX_BLOCK_SIZE;

/// Largest body of one message type, raw or decompressed, checked as soon
/// as the frame's header is readable, so a peer cannot make us buffer
/// `MAX_MESSAGE` bytes of a kind that is never that large. Syncthing cuts
/// index batches at 250 KiB or 1000 files; only one file with a huge block
/// list exceeds that (a 1 TiB file at 16 MiB blocks is about 3 MB).
pub const MAX_INDEX_BODY: usize = 32 << 20;
/// A ClusterConfig lists folders × devices: a big studio's is well under
/// a megabyte.
pub const MAX_CLUSTER_CONFIG_BODY: usize = 16 << 20;
/// A DownloadProgress names files and block indexes being pulled.
pub const MAX_DOWNLOAD_PROGRESS_BODY: usize = 16 << 20;
/// A Response carries at most one Request's data.
pub const MAX_RESPONSE_BODY: usize = MAX_REQUEST_SIZE + (1 << 20);
/// Request, Ping, Close and types we do not know (read and ignored).
pub const MAX_SMALL_BODY: usize = 1 << 20;
/// Most memory one decoded message may take (estimated from its encoding
/// before decoding, see `budget`): protobuf turns two bytes of an empty
/// entry into a few hundred bytes of struct.
pub const MAX_DECODED: usize = 256 << 20;
/// The same for a ClusterConfig, which nothing legitimate makes large.
pub const MAX_CLUSTER_CONFIG_DECODED: usize = 32 << 20;
/// Folders in one ClusterConfig, devices in one of its folders.
pub const MAX_CLUSTER_FOLDERS: usize = 10_000;
pub const MAX_FOLDER_DEVICES: usize = 10_000;
/// Longest folder ID and label accepted from a peer.
pub const MAX_FOLDER_ID: usize = 256;
pub const MAX_FOLDER_LABEL: usize = 1024;
