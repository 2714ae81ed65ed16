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
