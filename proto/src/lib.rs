//! Shared protocol library for the private Syncthing infrastructure.
//!
//! Everything here is *sans-I/O*: functions take bytes, certificates or
//! configuration and return values or errors. No sockets, no timers, no
//! threads. The only file access is in [`identity`], which reads and writes
//! the `cert.pem`/`key.pem` pair of a device, because every binary needs the
//! same careful handling of those two files.
//!
//! * [`bep`] — Block Exchange Protocol v1: messages, framing, LZ4, blocks,
//!   version vectors and the connection state machine.
//! * [`device_id`] — the 32-byte device ID, its text forms and short IDs.
//! * [`identity`] — a device's certificate and private key: generate, load, save.
//! * [`discovery`] — global discovery v3: JSON bodies, address rewriting,
//!   reverse-proxy headers.
//! * [`relay`] — relay protocol v1: frames, the eight messages, relay URIs.
//! * [`tls`] — rustls configurations for mutually authenticated peers that
//!   are identified by device ID instead of a certificate authority.

pub mod allowlist;
pub mod bep;
pub mod crypto;
pub mod device_id;
pub mod discovery;
pub mod identity;
pub mod relay;
pub mod tls;

pub use allowlist::AllowList;
pub use device_id::{DeviceId, DeviceIdError, ShortId};
pub use identity::{Identity, IdentityError, KeyKind, LoadedOrGenerated};
