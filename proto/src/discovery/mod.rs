//! Global discovery protocol v3: the messages, the server's address
//! rewriting and the reverse-proxy headers, without any I/O.
//!
//! * [`messages`] — the JSON bodies of announcements and lookup replies.
//! * [`address`] — parsing announced address URLs and rewriting them against
//!   the request's source address, as the reference server does.
//! * [`forwarded`] — the headers a TLS-terminating proxy sends
//!   (`X-Forwarded-For`, `X-Client-Port`, client certificate headers).
//! * [`local`] — local discovery v4 datagrams and their address rewriting.

pub mod address;
pub mod forwarded;
pub mod local;
pub mod messages;

pub use address::{rewrite_addresses, AddressError, AnnouncedAddress, Source};
pub use forwarded::{
    client_cert_from_headers, client_port, forwarded_for, CertHeader, CertHeaderError,
    HeaderValues, UnknownCertHeader,
};
pub use messages::{parse_announcement, Announcement, AnnouncementError, LookupReply};

/// Seconds an announced address stays valid without a new announcement.
pub const ADDRESS_LIFETIME_SECS: u64 = 2 * 60 * 60;
/// `Reannounce-After` is this plus a random 0..[`REANNOUNCE_JITTER_SECS`].
pub const REANNOUNCE_AFTER_SECS: u64 = 3300;
pub const REANNOUNCE_JITTER_SECS: u64 = 300;
/// `Retry-After` on errors is this plus a random 0..[`ERROR_RETRY_JITTER_SECS`].
pub const ERROR_RETRY_AFTER_SECS: u64 = 1500;
pub const ERROR_RETRY_JITTER_SECS: u64 = 300;
/// Bounds of the `Retry-After` of a not-found lookup.
pub const NOT_FOUND_RETRY_MIN_SECS: u64 = 60;
pub const NOT_FOUND_RETRY_MAX_SECS: u64 = 3600;
