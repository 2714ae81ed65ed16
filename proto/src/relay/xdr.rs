//! The XDR subset of the relay messages (RFC 4506 as `calmh/xdr` writes
//! it): 4-byte big-endian integers, `uint16` and `bool` widened to 4 bytes,
//! and length-prefixed opaque data padded to a multiple of 4.

/// Why bytes are not a valid relay message (or a message cannot be sent).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("bad magic {0:#010x} (not a relay protocol message)")]
    BadMagic(u32),
    #[error("message length {0} outside 0..=1024")]
    BadLength(i64),
    #[error("unknown message type {0}")]
    UnknownType(i32),
    #[error("message truncated while reading {0}")]
    Truncated(&'static str),
    #[error("{field} is {len} bytes, more than the {max} allowed")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{0} is not valid UTF-8")]
    NotUtf8(&'static str),
}

/// Reads XDR items from a payload; never reads past its end.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], CodecError> {
        if self.buf.len() < n {
            return Err(CodecError::Truncated(what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, CodecError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn i32(&mut self, what: &'static str) -> Result<i32, CodecError> {
        self.u32(what).map(|v| v as i32)
    }

    /// The reference reader keeps the low 16 bits of the 4-byte word.
    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, CodecError> {
        self.u32(what).map(|v| (v & 0xffff) as u16)
    }

    /// The reference reader looks only at the last byte.
    pub(crate) fn bool(&mut self, what: &'static str) -> Result<bool, CodecError> {
        self.u32(what).map(|v| v & 0xff != 0)
    }

    /// Opaque data of at most `max` bytes; the length is checked before the
    /// data is touched. Padding bytes are skipped without inspection, as the
    /// reference reader does.
    pub(crate) fn opaque(
        &mut self,
        max: usize,
        what: &'static str,
    ) -> Result<&'a [u8], CodecError> {
        let len = self.u32(what)? as usize;
        if len > max {
            return Err(CodecError::TooLong {
                field: what,
                len,
                max,
            });
        }
        let data = self.take(len, what)?;
        self.take(padding(len), what)?;
        Ok(data)
    }

    pub(crate) fn string(&mut self, max: usize, what: &'static str) -> Result<String, CodecError> {
        let bytes = self.opaque(max, what)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| CodecError::NotUtf8(what))
    }
}

fn padding(len: usize) -> usize {
    (4 - len % 4) % 4
}

pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub(crate) fn put_i32(out: &mut Vec<u8>, v: i32) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub(crate) fn put_u16(out: &mut Vec<u8>, v: u16) {
    put_u32(out, u32::from(v));
}

pub(crate) fn put_bool(out: &mut Vec<u8>, v: bool) {
    put_u32(out, u32::from(v));
}

/// Callers bound `data` (≤ the frame limit), so the length fits in 32 bits.
pub(crate) fn put_opaque(out: &mut Vec<u8>, data: &[u8]) {
    put_u32(out, data.len() as u32);
    out.extend_from_slice(data);
    out.extend_from_slice(&[0u8; 3][..padding(data.len())]);
}

/// Encoded size of opaque data of `len` bytes.
pub(crate) fn opaque_size(len: usize) -> usize {
    4 + len + padding(len)
}
