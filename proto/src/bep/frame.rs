//! Post-Hello framing:
//! `header length (i16 BE) | Header | message length (i32 BE) | message`,
//! the message raw or LZ4-compressed as the Header says.

use prost::Message as _;

use super::budget::{self, BudgetError, Schema};
use super::limits::{
    MAX_CLUSTER_CONFIG_BODY, MAX_CLUSTER_CONFIG_DECODED, MAX_DECODED, MAX_DOWNLOAD_PROGRESS_BODY,
    MAX_INDEX_BODY, MAX_MESSAGE, MAX_RESPONSE_BODY, MAX_SMALL_BODY,
};
use super::lz4::{self, Lz4Error};
use super::wire::{self, Header, MessageCompression, MessageType};

/// Header lengths are read as a signed 16-bit value.
const MAX_HEADER: usize = i16::MAX as usize;
/// Syncthing only tries compression from this message size on.
const COMPRESSION_THRESHOLD: usize = 128;

/// One BEP message after the Hello.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    ClusterConfig(wire::ClusterConfig),
    Index(wire::Index),
    IndexUpdate(wire::Index),
    Request(wire::Request),
    Response(wire::Response),
    DownloadProgress(wire::DownloadProgress),
    Ping,
    Close(wire::Close),
    /// A message type this implementation does not know: read completely
    /// and ignored, for forward compatibility.
    Unknown(i32),
}

impl Message {
    fn message_type(&self) -> i32 {
        let t = match self {
            Message::ClusterConfig(_) => MessageType::ClusterConfig,
            Message::Index(_) => MessageType::Index,
            Message::IndexUpdate(_) => MessageType::IndexUpdate,
            Message::Request(_) => MessageType::Request,
            Message::Response(_) => MessageType::Response,
            Message::DownloadProgress(_) => MessageType::DownloadProgress,
            Message::Ping => MessageType::Ping,
            Message::Close(_) => MessageType::Close,
            Message::Unknown(t) => return *t,
        };
        t as i32
    }

    fn encode_body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body_len());
        self.encode_body_into(&mut out);
        out
    }

    fn body_len(&self) -> usize {
        match self {
            Message::ClusterConfig(m) => m.encoded_len(),
            Message::Index(m) | Message::IndexUpdate(m) => m.encoded_len(),
            Message::Request(m) => m.encoded_len(),
            Message::Response(m) => m.encoded_len(),
            Message::DownloadProgress(m) => m.encoded_len(),
            Message::Ping | Message::Unknown(_) => 0,
            Message::Close(m) => m.encoded_len(),
        }
    }

    /// Appends the protobuf body to `out` (a Vec grows as needed, so
    /// prost's "insufficient buffer" cannot happen).
    fn encode_body_into(&self, out: &mut Vec<u8>) {
        let _ = match self {
            Message::ClusterConfig(m) => m.encode(out),
            Message::Index(m) | Message::IndexUpdate(m) => m.encode(out),
            Message::Request(m) => m.encode(out),
            Message::Response(m) => m.encode(out),
            Message::DownloadProgress(m) => m.encode(out),
            Message::Ping | Message::Unknown(_) => Ok(()),
            Message::Close(m) => m.encode(out),
        };
    }

    /// Short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::ClusterConfig(_) => "ClusterConfig",
            Message::Index(_) => "Index",
            Message::IndexUpdate(_) => "IndexUpdate",
            Message::Request(_) => "Request",
            Message::Response(_) => "Response",
            Message::DownloadProgress(_) => "DownloadProgress",
            Message::Ping => "Ping",
            Message::Close(_) => "Close",
            Message::Unknown(_) => "unknown",
        }
    }
}

/// Per-device compression setting (Syncthing's `compression` attribute).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compress {
    /// Everything except Responses (Syncthing's default).
    #[default]
    Metadata,
    Never,
    Always,
}

impl Compress {
    fn applies_to(self, message: &Message) -> bool {
        match self {
            Compress::Never => false,
            Compress::Always => true,
            Compress::Metadata => !matches!(message, Message::Response(_)),
        }
    }
}

/// Why a frame was refused. Every variant ends the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("negative header length {0}")]
    NegativeHeaderLength(i16),
    #[error("negative message length {0}")]
    NegativeMessageLength(i32),
    #[error("message length {0} exceeds the limit of 500000000 bytes")]
    MessageTooLarge(usize),
    #[error("header is not valid protobuf: {0}")]
    Header(String),
    #[error("unknown compression {0} in header")]
    UnknownCompression(i32),
    #[error(transparent)]
    Lz4(#[from] Lz4Error),
    #[error("{kind} message is not valid protobuf: {error}")]
    Body { kind: &'static str, error: String },
    #[error("{kind} message of {len} bytes is over its limit of {limit} bytes")]
    BodyTooLarge {
        kind: &'static str,
        len: usize,
        limit: usize,
    },
    #[error(transparent)]
    Budget(#[from] BudgetError),
}

/// The name, body limit and decoding schema of a message type; `None`
/// for a type we do not know.
fn kind_rules(t: i32) -> (&'static str, usize, Option<Schema>) {
    let Ok(kind) = MessageType::try_from(t) else {
        return ("unknown", MAX_SMALL_BODY, None);
    };
    let flat = |n| Some(Schema::Flat(n));
    match kind {
        MessageType::ClusterConfig => (
            "ClusterConfig",
            MAX_CLUSTER_CONFIG_BODY,
            Some(Schema::ClusterConfig),
        ),
        MessageType::Index => ("Index", MAX_INDEX_BODY, Some(Schema::Index)),
        MessageType::IndexUpdate => ("IndexUpdate", MAX_INDEX_BODY, Some(Schema::Index)),
        MessageType::Request => (
            "Request",
            MAX_SMALL_BODY,
            flat(std::mem::size_of::<wire::Request>()),
        ),
        MessageType::Response => (
            "Response",
            MAX_RESPONSE_BODY,
            flat(std::mem::size_of::<wire::Response>()),
        ),
        MessageType::DownloadProgress => (
            "DownloadProgress",
            MAX_DOWNLOAD_PROGRESS_BODY,
            Some(Schema::DownloadProgress),
        ),
        MessageType::Ping => ("Ping", MAX_SMALL_BODY, flat(0)),
        MessageType::Close => (
            "Close",
            MAX_SMALL_BODY,
            flat(std::mem::size_of::<wire::Close>()),
        ),
    }
}

/// Result of looking at the start of a receive buffer.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// Not a whole frame yet. `needed` is the total frame size when known
    /// (so a reader can size its next read), else 0.
    Incomplete { needed: usize },
    /// One message and the number of bytes of the buffer it used.
    Frame { message: Message, consumed: usize },
}

/// Frames `message`, compressing it when `compress` allows and it pays.
pub fn encode_frame(message: &Message, compress: Compress) -> Result<Vec<u8>, FrameError> {
    let body_len = message.body_len();
    if body_len >= COMPRESSION_THRESHOLD && compress.applies_to(message) {
        let body = message.encode_body();
        return Ok(match lz4::compress_if_worth_it(&body) {
            Some(c) => frame(message, MessageCompression::Lz4, c.len(), |out| {
                out.extend_from_slice(&c)
            })?,
            None => frame(message, MessageCompression::None, body.len(), |out| {
                out.extend_from_slice(&body)
            })?,
        });
    }
    // Uncompressed (e.g. every Response by default): the body is encoded
    // straight into the frame, without an intermediate copy.
    frame(message, MessageCompression::None, body_len, |out| {
        message.encode_body_into(out)
    })
}

fn frame(
    message: &Message,
    compression: MessageCompression,
    payload_len: usize,
    payload: impl FnOnce(&mut Vec<u8>),
) -> Result<Vec<u8>, FrameError> {
    if payload_len > MAX_MESSAGE {
        return Err(FrameError::MessageTooLarge(payload_len));
    }
    let header = Header {
        r#type: message.message_type(),
        compression: compression as i32,
    }
    .encode_to_vec();
    let mut out = Vec::with_capacity(2 + header.len() + 4 + payload_len);
    // A header is at most a few bytes: two small varints.
    out.extend_from_slice(&(header.len() as u16).to_be_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&(payload_len as u32).to_be_bytes());
    payload(&mut out);
    debug_assert_eq!(out.len(), 2 + header.len() + 4 + payload_len);
    Ok(out)
}

/// Decodes the frame at the start of `buf`. Lengths are checked as soon as
/// they are readable, before the body has arrived.
pub fn decode_frame(buf: &[u8]) -> Result<Decoded, FrameError> {
    let Some(hl) = buf.first_chunk::<2>() else {
        return Ok(Decoded::Incomplete { needed: 0 });
    };
    let hl = i16::from_be_bytes(*hl);
    if hl < 0 {
        return Err(FrameError::NegativeHeaderLength(hl));
    }
    let hl = hl as usize;
    debug_assert!(hl <= MAX_HEADER);
    let Some(ml) = buf.get(2 + hl..2 + hl + 4) else {
        return Ok(Decoded::Incomplete { needed: 0 });
    };
    let ml = i32::from_be_bytes([ml[0], ml[1], ml[2], ml[3]]);
    if ml < 0 {
        return Err(FrameError::NegativeMessageLength(ml));
    }
    let ml = ml as usize;
    if ml > MAX_MESSAGE {
        return Err(FrameError::MessageTooLarge(ml));
    }
    // The header is readable now: the type's own limit applies before the
    // body is waited for (and buffered).
    let header = Header::decode(&buf[2..2 + hl]).map_err(|e| FrameError::Header(e.to_string()))?;
    let compression = MessageCompression::try_from(header.compression)
        .map_err(|_| FrameError::UnknownCompression(header.compression))?;
    let (name, limit, schema) = kind_rules(header.r#type);
    if ml > limit {
        return Err(FrameError::BodyTooLarge {
            kind: name,
            len: ml,
            limit,
        });
    }
    let total = 2 + hl + 4 + ml;
    let Some(body) = buf.get(2 + hl + 4..total) else {
        return Ok(Decoded::Incomplete { needed: total });
    };
    let (Ok(kind), Some(schema)) = (MessageType::try_from(header.r#type), schema) else {
        return Ok(Decoded::Frame {
            message: Message::Unknown(header.r#type),
            consumed: total,
        });
    };
    let decompressed;
    let body = match compression {
        MessageCompression::None => body,
        MessageCompression::Lz4 => {
            decompressed = lz4::decompress_within(body, limit)?;
            &decompressed[..]
        }
    };
    let decoded_budget = match kind {
        MessageType::ClusterConfig => MAX_CLUSTER_CONFIG_DECODED,
        _ => MAX_DECODED,
    };
    budget::check(name, schema, body, decoded_budget)?;
    let message = decode_body(kind, body)?;
    Ok(Decoded::Frame {
        message,
        consumed: total,
    })
}

fn decode_body(kind: MessageType, body: &[u8]) -> Result<Message, FrameError> {
    fn parse<M: prost::Message + Default>(
        kind: &'static str,
        body: &[u8],
    ) -> Result<M, FrameError> {
        M::decode(body).map_err(|e| FrameError::Body {
            kind,
            error: e.to_string(),
        })
    }
    Ok(match kind {
        MessageType::ClusterConfig => Message::ClusterConfig(parse("ClusterConfig", body)?),
        MessageType::Index => Message::Index(parse("Index", body)?),
        MessageType::IndexUpdate => Message::IndexUpdate(parse("IndexUpdate", body)?),
        MessageType::Request => Message::Request(parse("Request", body)?),
        MessageType::Response => Message::Response(parse("Response", body)?),
        MessageType::DownloadProgress => {
            Message::DownloadProgress(parse("DownloadProgress", body)?)
        }
        MessageType::Ping => {
            parse::<wire::Ping>("Ping", body)?;
            Message::Ping
        }
        MessageType::Close => Message::Close(parse("Close", body)?),
    })
}

#[cfg(test)]
mod tests;
