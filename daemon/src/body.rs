//! Reading a bounded HTTP request body without losing the answer.

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;

/// Why a body was not read.
#[derive(Debug)]
pub enum BodyError {
    /// Longer than the limit.
    TooLarge,
    /// The connection failed while the body was read.
    Failed(hyper::Error),
}

/// Reads a body of at most `max` bytes. A longer one is still read and
/// dropped, up to `drain` bytes past the limit, before `TooLarge` is
/// returned: closing a connection on unread data makes the kernel reset
/// it, and the client would lose the error answer. Beyond that the rest is
/// left unread.
pub async fn read_limited(
    mut body: Incoming,
    max: usize,
    drain: usize,
) -> Result<Bytes, BodyError> {
    read_limited_mut(&mut body, max, drain).await
}

/// [`read_limited`] leaving the body with the caller, who should keep it
/// until the answer is sent: over HTTP/2, a request body dropped before the
/// response resets the stream (CANCEL) and the client loses the answer;
/// dropped after it, the reset says NO_ERROR and the answer stands.
pub async fn read_limited_mut(
    body: &mut Incoming,
    max: usize,
    drain: usize,
) -> Result<Bytes, BodyError> {
    let mut buf = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BodyError::Failed)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total = total.saturating_add(data.len());
        if total <= max {
            buf.extend_from_slice(&data);
        } else if total > max.saturating_add(drain) {
            break;
        }
    }
    if total > max {
        return Err(BodyError::TooLarge);
    }
    Ok(Bytes::from(buf))
}
