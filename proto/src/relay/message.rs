//! The 12-byte frame header and the eight relay message types.

use super::xdr::{
    opaque_size, put_bool, put_i32, put_opaque, put_u16, put_u32, CodecError, Reader,
};

/// First four bytes of every relay message.
pub const MAGIC: u32 = 0x9E79_BC40;
/// Size of the frame header: magic, type, payload length.
pub const HEADER_LEN: usize = 12;
/// Largest payload a reader accepts (the reference reader's limit).
pub const MAX_PAYLOAD: usize = 1024;
/// Largest opaque field (device IDs, session keys, IP addresses).
const MAX_SHORT: usize = 32;

/// Message type numbers on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageType {
    Ping = 0,
    Pong = 1,
    JoinRelayRequest = 2,
    JoinSessionRequest = 3,
    Response = 4,
    ConnectRequest = 5,
    SessionInvitation = 6,
    RelayFull = 7,
}

impl MessageType {
    pub fn from_wire(v: i32) -> Result<Self, CodecError> {
        Ok(match v {
            0 => MessageType::Ping,
            1 => MessageType::Pong,
            2 => MessageType::JoinRelayRequest,
            3 => MessageType::JoinSessionRequest,
            4 => MessageType::Response,
            5 => MessageType::ConnectRequest,
            6 => MessageType::SessionInvitation,
            7 => MessageType::RelayFull,
            other => return Err(CodecError::UnknownType(other)),
        })
    }
}

/// A decoded, validated frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: MessageType,
    /// Payload bytes that follow the header, at most [`MAX_PAYLOAD`].
    pub length: usize,
}

impl Header {
    /// Checks magic, type and length, so the caller knows how many payload
    /// bytes to read and that the amount is bounded.
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Header, CodecError> {
        let mut r = Reader::new(bytes);
        let magic = r.u32("magic")?;
        if magic != MAGIC {
            return Err(CodecError::BadMagic(magic));
        }
        let kind = r.i32("message type")?;
        let length = r.i32("message length")?;
        if length < 0 || length as usize > MAX_PAYLOAD {
            return Err(CodecError::BadLength(i64::from(length)));
        }
        Ok(Header {
            kind: MessageType::from_wire(kind)?,
            length: length as usize,
        })
    }
}

/// Opaque data of at most 32 bytes (device ID, session key, IP address).
/// Constructing one checks the bound, so encoding cannot fail on it.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct ShortBytes(Vec<u8>);

impl ShortBytes {
    pub fn new(bytes: &[u8]) -> Result<Self, CodecError> {
        if bytes.len() > MAX_SHORT {
            return Err(CodecError::TooLong {
                field: "opaque field",
                len: bytes.len(),
                max: MAX_SHORT,
            });
        }
        Ok(ShortBytes(bytes.to_vec()))
    }

    /// From a fixed 32-byte value (device IDs, keys): always within bounds.
    pub fn from_array(bytes: [u8; 32]) -> Self {
        ShortBytes(bytes.to_vec())
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for ShortBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A listening device asks to be reachable through the relay.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JoinRelayRequest {
    /// `None`: the 1.19.2 form with an empty payload. `Some`: the v1.22.1+
    /// form carrying a token string (possibly empty).
    pub token: Option<String>,
}

/// A data connection presents the key of its invitation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinSessionRequest {
    pub key: ShortBytes,
}

/// Result of a join or of an unexpected message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub code: i32,
    pub message: String,
}

impl Response {
    pub const SUCCESS: i32 = 0;
    pub const NOT_FOUND: i32 = 1;
    pub const ALREADY_CONNECTED: i32 = 2;
    pub const WRONG_TOKEN: i32 = 3;
    /// Not in Syncthing's relays: our relay's answer to a ConnectRequest
    /// over the target's invitation rate. Syncthing clients treat any
    /// Response to a ConnectRequest as a failed dial and retry later.
    pub const TOO_MANY_REQUESTS: i32 = 429;
    pub const UNEXPECTED_MESSAGE: i32 = 100;

    /// The response with the reference server's text for `code`.
    pub fn with_code(code: i32) -> Self {
        let message = match code {
            Self::SUCCESS => "success",
            Self::NOT_FOUND => "not found",
            Self::ALREADY_CONNECTED => "already connected",
            Self::WRONG_TOKEN => "wrong token",
            Self::TOO_MANY_REQUESTS => "too many requests",
            Self::UNEXPECTED_MESSAGE => "unexpected message",
            _ => "",
        };
        Response {
            code,
            message: message.to_owned(),
        }
    }
}

/// A dialing device asks for a pairing with a joined device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectRequest {
    pub id: ShortBytes,
}

/// Tells a device where and with which key to open its data connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInvitation {
    /// Device ID of the other side.
    pub from: ShortBytes,
    pub key: ShortBytes,
    /// IP of the relay's data port: empty, 4 or 16 bytes (empty means "the
    /// address you reached the relay on").
    pub address: ShortBytes,
    pub port: u16,
    /// Whether the receiver acts as TLS server on the data connection.
    pub server_socket: bool,
}

/// One relay protocol message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Ping,
    Pong,
    JoinRelayRequest(JoinRelayRequest),
    JoinSessionRequest(JoinSessionRequest),
    Response(Response),
    ConnectRequest(ConnectRequest),
    SessionInvitation(SessionInvitation),
    RelayFull,
}

impl Message {
    pub fn kind(&self) -> MessageType {
        match self {
            Message::Ping => MessageType::Ping,
            Message::Pong => MessageType::Pong,
            Message::JoinRelayRequest(_) => MessageType::JoinRelayRequest,
            Message::JoinSessionRequest(_) => MessageType::JoinSessionRequest,
            Message::Response(_) => MessageType::Response,
            Message::ConnectRequest(_) => MessageType::ConnectRequest,
            Message::SessionInvitation(_) => MessageType::SessionInvitation,
            Message::RelayFull => MessageType::RelayFull,
        }
    }

    /// The payload of a frame whose header was accepted by
    /// [`Header::decode`]. Bytes after the last field are ignored, as the
    /// reference reader does (a 1.19.2 relay ignores a v1.22 join token the
    /// same way).
    pub fn decode(kind: MessageType, payload: &[u8]) -> Result<Message, CodecError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(CodecError::BadLength(payload.len() as i64));
        }
        let mut r = Reader::new(payload);
        Ok(match kind {
            MessageType::Ping => Message::Ping,
            MessageType::Pong => Message::Pong,
            MessageType::RelayFull => Message::RelayFull,
            MessageType::JoinRelayRequest => Message::JoinRelayRequest(JoinRelayRequest {
                token: if r.is_empty() {
                    None
                } else {
                    Some(r.string(MAX_PAYLOAD, "token")?)
                },
            }),
            MessageType::JoinSessionRequest => Message::JoinSessionRequest(JoinSessionRequest {
                key: short(&mut r, "key")?,
            }),
            MessageType::Response => Message::Response(Response {
                code: r.i32("response code")?,
                message: r.string(MAX_PAYLOAD, "response message")?,
            }),
            MessageType::ConnectRequest => Message::ConnectRequest(ConnectRequest {
                id: short(&mut r, "device ID")?,
            }),
            MessageType::SessionInvitation => Message::SessionInvitation(SessionInvitation {
                from: short(&mut r, "from")?,
                key: short(&mut r, "key")?,
                address: short(&mut r, "address")?,
                port: r.u16("port")?,
                server_socket: r.bool("server socket")?,
            }),
        })
    }

    /// One complete frame at the start of `buf`: `Ok(None)` while more bytes
    /// are needed, else the message and how many bytes it took.
    pub fn decode_frame(buf: &[u8]) -> Result<Option<(Message, usize)>, CodecError> {
        let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let header = Header::decode(head)?;
        let end = HEADER_LEN + header.length;
        match buf.get(HEADER_LEN..end) {
            Some(payload) => Ok(Some((Message::decode(header.kind, payload)?, end))),
            None => Ok(None),
        }
    }

    fn payload_len(&self) -> usize {
        match self {
            Message::Ping | Message::Pong | Message::RelayFull => 0,
            Message::JoinRelayRequest(j) => j.token.as_ref().map_or(0, |t| opaque_size(t.len())),
            Message::JoinSessionRequest(j) => opaque_size(j.key.len()),
            Message::Response(r) => 4 + opaque_size(r.message.len()),
            Message::ConnectRequest(c) => opaque_size(c.id.len()),
            Message::SessionInvitation(s) => {
                opaque_size(s.from.len())
                    + opaque_size(s.key.len())
                    + opaque_size(s.address.len())
                    + 8
            }
        }
    }

    /// Appends one frame (header and payload) to `out`. Fails only when a
    /// string makes the payload exceed [`MAX_PAYLOAD`], which a reader
    /// would reject.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        let len = self.payload_len();
        if len > MAX_PAYLOAD {
            return Err(CodecError::TooLong {
                field: "message payload",
                len,
                max: MAX_PAYLOAD,
            });
        }
        out.reserve(HEADER_LEN + len);
        put_u32(out, MAGIC);
        put_i32(out, self.kind() as i32);
        put_u32(out, len as u32);
        match self {
            Message::Ping | Message::Pong | Message::RelayFull => {}
            Message::JoinRelayRequest(j) => {
                if let Some(token) = &j.token {
                    put_opaque(out, token.as_bytes());
                }
            }
            Message::JoinSessionRequest(j) => put_opaque(out, j.key.as_slice()),
            Message::Response(r) => {
                put_i32(out, r.code);
                put_opaque(out, r.message.as_bytes());
            }
            Message::ConnectRequest(c) => put_opaque(out, c.id.as_slice()),
            Message::SessionInvitation(s) => {
                put_opaque(out, s.from.as_slice());
                put_opaque(out, s.key.as_slice());
                put_opaque(out, s.address.as_slice());
                put_u16(out, s.port);
                put_bool(out, s.server_socket);
            }
        }
        Ok(())
    }

    /// One frame as a new buffer.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::new();
        self.encode_into(&mut out)?;
        Ok(out)
    }
}

fn short(r: &mut Reader<'_>, what: &'static str) -> Result<ShortBytes, CodecError> {
    Ok(ShortBytes(r.opaque(MAX_SHORT, what)?.to_vec()))
}
