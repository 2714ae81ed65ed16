//! [`Limited`]: a stream whose reads and writes pay the bandwidth limits.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{ConnLimits, Direction};

type Wait = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A connection's stream with the limits applied: a write waits for its
/// chunk's bytes before they go out, a read pays for what it got before
/// the next read (as Syncthing: what the peer sent is already here; not
/// reading on leaves the rest in the socket, and TCP slows the sender).
/// Both move at most one chunk ([`ConnLimits::chunk`]) at a time, so a
/// 128 KiB block never passes in one burst at a low rate.
pub struct Limited<S> {
    inner: S,
    limits: Arc<ConnLimits>,
    /// The payment owed for the last read, awaited before the next one.
    owed: Option<Wait>,
    /// The payment for the next write's chunk, and its size.
    paying: Option<(Wait, usize)>,
    /// Bytes paid for and not yet written.
    paid: usize,
}

impl<S> Limited<S> {
    pub fn new(inner: S, limits: Arc<ConnLimits>) -> Limited<S> {
        Limited {
            inner,
            limits,
            owed: None,
            paying: None,
            paid: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Limited<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(w) = this.owed.as_mut() {
            ready!(w.as_mut().poll(cx));
            this.owed = None;
        }
        let Some(rate) = this.limits.rate(Direction::Recv) else {
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            this.limits
                .moved(Direction::Recv, buf.filled().len() - before);
            return Poll::Ready(Ok(()));
        };
        let room = buf.remaining().min(ConnLimits::chunk(rate));
        let mut part = ReadBuf::new(buf.initialize_unfilled_to(room));
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut part))?;
        let n = part.filled().len();
        buf.advance(n);
        if n > 0 {
            this.limits.moved(Direction::Recv, n);
            this.owed = Some(Box::pin(this.limits.clone().take(Direction::Recv, n)));
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Limited<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.paid == 0 && !buf.is_empty() {
            if this.paying.is_none() {
                match this.limits.rate(Direction::Send) {
                    None => {
                        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
                        this.limits.moved(Direction::Send, n);
                        return Poll::Ready(Ok(n));
                    }
                    Some(rate) => {
                        let n = buf.len().min(ConnLimits::chunk(rate));
                        let wait = Box::pin(this.limits.clone().take(Direction::Send, n));
                        this.paying = Some((wait, n));
                    }
                }
            }
            if let Some((w, n)) = this.paying.as_mut() {
                ready!(w.as_mut().poll(cx));
                this.paid = *n;
                this.paying = None;
            }
        }
        let len = buf.len().min(this.paid);
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &buf[..len]))?;
        this.paid = this.paid.saturating_sub(n);
        this.limits.moved(Direction::Send, n);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
