//! Protocol connections: TLS with a client certificate, then
//! JoinRelayRequest (listening devices) or ConnectRequest (dialing devices),
//! pings, and invitations pushed to joined devices.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use proto::relay::{Message, Response, SessionInvitation, ShortBytes, HEADER_LEN, MAX_PAYLOAD};
use proto::DeviceId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::accepted::Accepted;
use crate::limits::UnprovenGuard;
use crate::metrics::Reject;
use crate::state::pending::CreateError;
use crate::state::{JoinedDevice, Relay};

/// Invitations queued for one joined device before new ones wait.
const OUTBOX: usize = 64;
/// How long a ConnectRequest waits to hand the invitation to a busy target.
const HANDOFF: Duration = Duration::from_secs(1);

/// Runs one protocol connection to its end.
pub async fn serve(relay: Arc<Relay>, conn: Accepted, acceptor: TlsAcceptor) {
    let Accepted {
        tcp,
        guard,
        unproven,
        deadline,
    } = conn;
    let peer = tcp.peer_addr().ok();
    // `guard` counts the socket until this function returns.
    let source = guard.source();
    let evicted = unproven.evicted();
    let handshake = tokio::select! {
        h = tokio::time::timeout_at(deadline, acceptor.accept(tcp)) => h,
        _ = evicted.cancelled() => {
            tracing::debug!(?peer, "evicted during the TLS handshake");
            return;
        }
        _ = relay.shutdown.cancelled() => return,
    };
    let tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            relay.metrics.reject(Reject::Tls);
            tracing::debug!(?peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            relay.metrics.reject(Reject::Timeout);
            tracing::debug!(?peer, "TLS handshake timed out");
            return;
        }
    };
    let (_, conn) = tls.get_ref();
    if conn.alpn_protocol() != Some(proto::tls::alpn::RELAY) {
        // Like strelaysrv: noted, not fatal.
        tracing::debug!(?peer, "client did not negotiate ALPN bep-relay");
    }
    let id = match conn.peer_certificates() {
        Some([cert]) => DeviceId::from_der_cert(cert),
        _ => {
            relay.metrics.reject(Reject::Tls);
            tracing::debug!(?peer, "not exactly one client certificate");
            return;
        }
    };
    serve_authenticated(relay, tls, id, peer, source, unproven, deadline).await;
}

/// The part of [`serve`] after the TLS handshake: the device is `id`. Also
/// what the fuzz target drives (see [`crate::fuzzing`]), over any stream.
pub(crate) async fn serve_authenticated<S: AsyncRead + AsyncWrite + Unpin>(
    relay: Arc<Relay>,
    stream: S,
    id: DeviceId,
    peer: Option<std::net::SocketAddr>,
    source: IpAddr,
    unproven: UnprovenGuard,
    deadline: Instant,
) {
    let evicted = unproven.evicted();
    relay.metrics.protocol_connections.inc();
    let mut session = Session {
        relay: relay.clone(),
        id,
        conn_id: relay.next_id(),
        joined: false,
        source,
        unproven: Some(unproven),
        evicted,
        deadline,
    };
    // The session watches the stop itself between messages; this also
    // ends it while it waits on a device (a reply the device does not
    // read), so the leave below still runs.
    let why = relay
        .unless_stopping(session.run(stream))
        .await
        .unwrap_or_else(|| "relay stopping".into());
    if session.joined {
        relay.leave(&id, session.conn_id);
        tracing::info!(device = %id, ?peer, reason = %why, "device left");
    } else {
        tracing::debug!(device = %id.short(), ?peer, reason = %why, "protocol connection closed");
    }
    relay.metrics.protocol_connections.dec();
}

struct Session {
    relay: Arc<Relay>,
    id: DeviceId,
    conn_id: u64,
    joined: bool,
    /// `limits::source_key` of the peer.
    source: IpAddr,
    /// Dropped once joined: from then on the connection is never evicted.
    unproven: Option<UnprovenGuard>,
    evicted: CancellationToken,
    /// Join or connect request by then (--handshake-timeout from accept).
    deadline: Instant,
}

/// Frames arriving on a stream. Reading is cancel-safe: partial frames stay
/// in the buffer, which never holds more than one frame plus one read.
struct FrameReader {
    buf: Box<[u8; 2 * (HEADER_LEN + MAX_PAYLOAD)]>,
    filled: usize,
}

enum Read {
    Message(Message),
    Closed,
    Malformed(proto::relay::CodecError),
}

impl FrameReader {
    fn new() -> Self {
        FrameReader {
            buf: Box::new([0; 2 * (HEADER_LEN + MAX_PAYLOAD)]),
            filled: 0,
        }
    }

    fn next_buffered(&mut self) -> Option<Read> {
        match Message::decode_frame(&self.buf[..self.filled]) {
            Ok(Some((msg, used))) => {
                self.buf.copy_within(used..self.filled, 0);
                self.filled -= used;
                Some(Read::Message(msg))
            }
            Ok(None) => None,
            Err(e) => Some(Read::Malformed(e)),
        }
    }

    async fn next<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> Read {
        loop {
            if let Some(m) = self.next_buffered() {
                return m;
            }
            // decode_frame bounds a frame to HEADER_LEN + MAX_PAYLOAD, so an
            // incomplete one always leaves room here.
            match r.read(&mut self.buf[self.filled..]).await {
                Ok(0) | Err(_) => return Read::Closed,
                Ok(n) => self.filled += n,
            }
        }
    }
}

async fn send<W: AsyncWrite + Unpin>(w: &mut W, msg: &Message, limit: Duration) -> bool {
    let Ok(bytes) = msg.encode() else {
        return false;
    };
    let write = async {
        w.write_all(&bytes).await?;
        w.flush().await
    };
    matches!(tokio::time::timeout(limit, write).await, Ok(Ok(())))
}

impl Session {
    async fn run<S: AsyncRead + AsyncWrite + Unpin>(&mut self, stream: S) -> String {
        let relay = self.relay.clone();
        let s = &relay.settings;
        let (mut rd, mut wr) = tokio::io::split(stream);
        let mut frames = FrameReader::new();
        let (tx, mut outbox) = mpsc::channel::<SessionInvitation>(OUTBOX);
        let mut tx = Some(tx);
        let mut ping = tokio::time::interval_at(Instant::now() + s.ping_interval, s.ping_interval);
        let mut idle_deadline = Instant::now() + s.network_timeout;
        let (evicted, handshake_deadline) = (self.evicted.clone(), self.deadline);
        loop {
            tokio::select! {
                read = frames.next(&mut rd) => {
                    let msg = match read {
                        Read::Message(m) => m,
                        Read::Closed => return "closed by the device".into(),
                        Read::Malformed(e) => {
                            relay.metrics.reject(Reject::Malformed);
                            return format!("malformed message: {e}");
                        }
                    };
                    idle_deadline = Instant::now() + s.network_timeout;
                    match msg {
                        Message::JoinRelayRequest(req) => {
                            if let Err(why) = self.join(req.token.as_deref(), &mut tx, &mut wr).await {
                                return why;
                            }
                        }
                        Message::ConnectRequest(req) => {
                            self.connect(&req.id, &mut wr).await;
                            return "connect request answered".into();
                        }
                        Message::Ping => {
                            if !send(&mut wr, &Message::Pong, s.network_timeout).await {
                                return "write failed".into();
                            }
                        }
                        Message::Pong => {}
                        _ => {
                            relay.metrics.reject(Reject::Unexpected);
                            let reply = Message::Response(Response::with_code(Response::UNEXPECTED_MESSAGE));
                            send(&mut wr, &reply, s.message_timeout).await;
                            return "unexpected message".into();
                        }
                    }
                }
                Some(inv) = outbox.recv(), if self.joined => {
                    if !send(&mut wr, &Message::SessionInvitation(inv), s.network_timeout).await {
                        return "write failed".into();
                    }
                }
                _ = ping.tick() => {
                    if !self.joined {
                        relay.metrics.reject(Reject::Timeout);
                        return "did not join within the ping interval".into();
                    }
                    // Taken off the join list: the operator revoked it, so
                    // it goes (with its pairings) rather than staying
                    // reachable until it happens to reconnect.
                    if !relay.access.may_join(&self.id) {
                        relay.access.refused(&relay.metrics, &self.id, self.source, Reject::JoinRevoked);
                        return "no longer on the join list".into();
                    }
                    // Unlike strelaysrv, a joined device is never dropped
                    // when sockets run out: unjoined ones are evicted
                    // instead (see listener::accept_loop).
                    if !send(&mut wr, &Message::Ping, s.network_timeout).await {
                        return "write failed".into();
                    }
                }
                _ = sleep_until(handshake_deadline), if !self.joined => {
                    relay.metrics.reject(Reject::Timeout);
                    return "no join or connect request within the handshake timeout".into();
                }
                _ = evicted.cancelled(), if !self.joined => {
                    return "evicted: out of sockets and not joined".into();
                }
                _ = sleep_until(idle_deadline) => {
                    relay.metrics.reject(Reject::Timeout);
                    return "nothing received within the network timeout".into();
                }
                _ = relay.shutdown.cancelled() => return "relay stopping".into(),
            }
        }
    }

    async fn join<W: AsyncWrite + Unpin>(
        &mut self,
        token: Option<&str>,
        tx: &mut Option<mpsc::Sender<SessionInvitation>>,
        wr: &mut W,
    ) -> Result<(), String> {
        let relay = self.relay.clone();
        let limit = relay.settings.message_timeout;
        let refuse = |reason: Reject| relay.metrics.reject(reason);
        // A device off the join list hears what a device without the
        // token hears: an outsider learns nothing about the list.
        let denied = if !relay.access.may_join(&self.id) {
            Some(Reject::JoinNotAllowed)
        } else if !relay.access.token_accepted(token) {
            Some(Reject::WrongToken)
        } else {
            None
        };
        if let Some(reason) = denied {
            relay
                .access
                .refused(&relay.metrics, &self.id, self.source, reason);
            let reply = Message::Response(Response::with_code(Response::WRONG_TOKEN));
            send(wr, &reply, limit).await;
            return Err(match reason {
                Reject::JoinNotAllowed => "not on the join list".into(),
                _ => "wrong token".into(),
            });
        }
        if self.joined {
            refuse(Reject::AlreadyJoined);
            let reply = Message::Response(Response::with_code(Response::ALREADY_CONNECTED));
            send(wr, &reply, limit).await;
            return Err("joined twice on one connection".into());
        }
        let cap = &relay.capacity;
        if cap.sockets_exhausted()
            || (cap.limits.max_clients > 0 && relay.joined_count() >= cap.limits.max_clients)
        {
            refuse(Reject::Full);
            send(wr, &Message::RelayFull, limit).await;
            return Err("relay full".into());
        }
        let Some(outbox) = tx.take() else {
            return Err("internal: outbox gone".into());
        };
        let device = JoinedDevice {
            conn_id: self.conn_id,
            outbox,
        };
        if !relay.join(self.id, device) {
            refuse(Reject::AlreadyJoined);
            let reply = Message::Response(Response::with_code(Response::ALREADY_CONNECTED));
            send(wr, &reply, limit).await;
            return Err("device already joined on another connection".into());
        }
        self.joined = true;
        self.unproven = None;
        tracing::info!(device = %self.id, "device joined");
        if !send(
            wr,
            &Message::Response(Response::with_code(Response::SUCCESS)),
            limit,
        )
        .await
        {
            return Err("write failed".into());
        }
        Ok(())
    }

    async fn connect<W: AsyncWrite + Unpin>(&mut self, target: &ShortBytes, wr: &mut W) {
        let relay = self.relay.clone();
        let s = &relay.settings;
        let limit = s.message_timeout;
        let not_found = Message::Response(Response::with_code(Response::NOT_FOUND));
        // Checked before the target is even looked up, and answered as for
        // a target that is not there: no invitation, no oracle.
        if !relay.access.may_connect(&self.id) {
            relay.access.refused(
                &relay.metrics,
                &self.id,
                self.source,
                Reject::ConnectNotAllowed,
            );
            send(wr, &not_found, limit).await;
            return;
        }
        // Syncthing's ConnectRequest carries no token: the proof is that
        // the dialing device is joined, which took the token.
        if s.connect_requires_token && !self.joined && !relay.is_joined(&self.id) {
            relay.metrics.reject(Reject::ConnectToken);
            tracing::debug!(device = %self.id.short(), "connect request from a device not joined with the token");
            let reply = Message::Response(Response::with_code(Response::WRONG_TOKEN));
            send(wr, &reply, limit).await;
            return;
        }
        let Ok(target) = DeviceId::from_slice(target.as_slice()) else {
            relay.metrics.reject(Reject::TargetNotFound);
            send(wr, &not_found, limit).await;
            return;
        };
        let Some(outbox) = relay.outbox(&target) else {
            relay.metrics.reject(Reject::TargetNotFound);
            send(wr, &not_found, limit).await;
            return;
        };
        if let Some(rate) = &relay.invitations {
            if !rate.allow(target, self.source) {
                relay.metrics.reject(Reject::InvitationRate);
                tracing::debug!(target = %target.short(), source = %self.source, "invitation rate exceeded");
                let reply = Message::Response(Response::with_code(Response::TOO_MANY_REQUESTS));
                send(wr, &reply, limit).await;
                return;
            }
        }
        let created = relay.pending.create(&relay, target, self.id, self.source);
        let (server_key, client_key) = match created {
            Ok(keys) => keys,
            Err(e) => {
                let reason = match e {
                    CreateError::Full => Reject::Full,
                    CreateError::SourceFull => Reject::SourcePending,
                };
                relay.metrics.reject(reason);
                tracing::debug!(source = %self.source, ?reason, "connect request refused: RelayFull");
                send(wr, &Message::RelayFull, limit).await;
                return;
            }
        };
        let invitation = |from: DeviceId, key, server_socket| SessionInvitation {
            from: ShortBytes::from_array(*from.as_bytes()),
            key: ShortBytes::from_array(key),
            address: ShortBytes::new(&relay.settings.invitation_address).unwrap_or_default(),
            port: relay.settings.invitation_port,
            server_socket,
        };
        let mine = invitation(target, client_key, false);
        if !send(wr, &Message::SessionInvitation(mine), limit).await {
            return;
        }
        let theirs = invitation(self.id, server_key, true);
        if outbox.send_timeout(theirs, HANDOFF).await.is_err() {
            tracing::debug!(target = %target.short(), "invitation not delivered: device busy or gone");
        }
    }
}
