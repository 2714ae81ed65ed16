//! The one listening port: protocol (TLS) and data (plain TCP) connections
//! told apart by their first byte, as strelaysrv does.

use std::sync::Arc;
use std::time::Duration;

use proto::relay::{Header, Message, Response, HEADER_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::accepted::Accepted;
use crate::limits::{source_key, PerIpLimiter, SocketRefused};
use crate::metrics::Reject;
use crate::state::Relay;

/// First byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;
/// How long the first byte may take.
const FIRST_BYTE: Duration = Duration::from_secs(1);

pub async fn accept_loop(
    relay: Arc<Relay>,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    per_ip: Arc<PerIpLimiter>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = relay.shutdown.cancelled() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning;
                // the sockets in use free up as pairings end.
                tracing::warn!(error = %e, "accept failed; pausing 100 ms");
                let pause = tokio::time::sleep(Duration::from_millis(100));
                if relay.unless_stopping(pause).await.is_none() {
                    return;
                }
                continue;
            }
        };
        if !per_ip.allow(peer.ip()) {
            relay.metrics.reject(Reject::IpRate);
            continue;
        }
        let source = source_key(peer.ip());
        if relay.capacity.sockets_exhausted() {
            // Room is made only at the expense of connections that have
            // proved nothing yet; a joined device or a pairing is worth
            // more than any newcomer.
            if relay.unproven.evict_oldest() {
                relay.metrics.reject(Reject::Evicted);
                tracing::debug!(%peer, "out of sockets: closed the oldest unjoined connection");
            } else {
                relay.metrics.reject(Reject::SocketsExhausted);
                tracing::debug!(%peer, "out of sockets and none unjoined: newcomer closed");
                continue;
            }
        }
        let guard = match relay.capacity.socket(source) {
            Ok(g) => g,
            Err(SocketRefused::SourceLimit) => {
                relay.metrics.reject(Reject::SourceConnections);
                tracing::debug!(%peer, %source, "source at --per-ip-max-conns: closed");
                continue;
            }
        };
        let deadline = Instant::now() + relay.settings.handshake_timeout;
        let unproven = relay.unproven.register(relay.next_id());
        let _ = tcp.set_nodelay(true);
        let ka = socket2::TcpKeepalive::new()
            .with_time(relay.settings.network_timeout)
            .with_interval(relay.settings.network_timeout);
        let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&ka);
        let conn = Accepted {
            tcp,
            guard,
            unproven,
            deadline,
        };
        // Owned by the relay's Shutdown: its exit waits for this
        // connection, which watches the same cancellation at every await.
        relay
            .shutdown
            .spawn(demux(relay.clone(), conn, acceptor.clone()));
    }
}

async fn demux(relay: Arc<Relay>, conn: Accepted, acceptor: TlsAcceptor) {
    let mut first = [0u8; 1];
    let evicted = conn.unproven.evicted();
    // peek leaves the byte in the socket for whichever handler follows.
    let peeked = tokio::select! {
        p = tokio::time::timeout(FIRST_BYTE, conn.tcp.peek(&mut first)) => p,
        _ = evicted.cancelled() => return,
        _ = relay.shutdown.cancelled() => return,
    };
    let is_tls = matches!(peeked, Ok(Ok(1)) if first[0] == TLS_HANDSHAKE);
    if is_tls {
        crate::protocol::serve(relay, conn, acceptor).await;
    } else {
        data_connection(relay, conn).await;
    }
}

/// A data connection must start with JoinSessionRequest.
async fn data_connection(relay: Arc<Relay>, conn: Accepted) {
    let Accepted {
        mut tcp,
        guard,
        unproven,
        deadline,
    } = conn;
    let limit = relay.settings.message_timeout;
    let evicted = unproven.evicted();
    // Exactly one frame is read: whatever follows belongs to the peer.
    let read = async {
        let mut head = [0u8; HEADER_LEN];
        tcp.read_exact(&mut head).await?;
        let header = Header::decode(&head).map_err(std::io::Error::other)?;
        let mut payload = [0u8; proto::relay::MAX_PAYLOAD];
        let payload = &mut payload[..header.length];
        tcp.read_exact(payload).await?;
        Message::decode(header.kind, payload).map_err(std::io::Error::other)
    };
    let read = tokio::select! {
        r = tokio::time::timeout_at(deadline, read) => r,
        _ = evicted.cancelled() => return,
        _ = relay.shutdown.cancelled() => return,
    };
    let msg = match read {
        Ok(Ok(msg)) => msg,
        Ok(Err(e)) => {
            relay.metrics.reject(Reject::Malformed);
            tracing::debug!(peer = ?tcp.peer_addr().ok(), error = %e, "bad data connection");
            return;
        }
        Err(_) => {
            relay.metrics.reject(Reject::Timeout);
            return;
        }
    };
    match msg {
        Message::JoinSessionRequest(req) => {
            crate::pairing::join(relay, tcp, guard, unproven, req.key.as_slice()).await;
        }
        _ => {
            relay.metrics.reject(Reject::Unexpected);
            if let Ok(bytes) =
                Message::Response(Response::with_code(Response::UNEXPECTED_MESSAGE)).encode()
            {
                let write = tokio::time::timeout(limit, tcp.write_all(&bytes));
                let _ = relay.unless_stopping(write).await;
            }
        }
    }
}
