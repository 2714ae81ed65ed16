//! Relay protocol v1: the framing and messages exchanged with a relay
//! server, and relay URIs.
//!
//! Sans-I/O like the rest of `proto`: [`Header::decode`] and
//! [`Message::decode`] turn bytes into values, [`Message::encode`] turns a
//! value into one frame. Every length is checked against the protocol's
//! limits before anything is allocated, so a peer can make us hold at most
//! [`MAX_PAYLOAD`] bytes per message.
//!
//! * `xdr.rs` — the XDR subset the messages use.
//! * `message.rs` — the 12-byte header and the eight message types.
//! * `uri.rs` — `relay://host:port/?id=…` addresses.

mod message;
mod uri;
mod xdr;

pub use message::{
    ConnectRequest, Header, JoinRelayRequest, JoinSessionRequest, Message, MessageType, Response,
    SessionInvitation, ShortBytes, HEADER_LEN, MAGIC, MAX_PAYLOAD,
};
pub use uri::{format_go_duration, RelayUri, RelayUriError, DEFAULT_PORT};
pub use xdr::CodecError;

#[cfg(test)]
mod tests;
