//! The hand-off from the listener to the handler of a connection's kind
//! (protocol or data): the socket and what counts it.

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::limits::{SocketGuard, UnprovenGuard};

/// A connection just accepted and counted.
pub struct Accepted {
    pub tcp: TcpStream,
    pub guard: SocketGuard,
    /// Held until the connection joins or shows a session key; cancelled
    /// if it is evicted before.
    pub unproven: UnprovenGuard,
    /// When the handshake and first request must be done.
    pub deadline: Instant,
}
