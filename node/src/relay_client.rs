//! Relay protocol v1, client side: staying joined to a relay named in our
//! listen addresses (`relay://HOST:PORT/?id=…[&token=…]`) and accepting
//! its invitations, and dialing a device through a relay it announced.
//! Message encoding is `proto::relay`; this module moves the bytes.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use proto::relay::{
    ConnectRequest, Header, JoinRelayRequest, JoinSessionRequest, Message, RelayUri, Response,
    SessionInvitation, ShortBytes, HEADER_LEN,
};
use proto::tls::{self, alpn, ServerPin, Versions};
use proto::DeviceId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::relay_uri::{announceable, join_token};
use crate::model::Node;

/// TCP connect, TLS handshake and the join each get this long (as Syncthing).
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// A joined relay that sends nothing (it pings every minute) for this long
/// is considered gone.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Between attempts to (re)join a relay.
const REJOIN_MIN: Duration = Duration::from_secs(2);
const REJOIN_MAX: Duration = Duration::from_secs(60);
/// A relay answering "already connected" to a data join (strelaysrv
/// 1.19.2 has a race that does this) gets this many more tries.
const SESSION_RETRIES: usize = 3;
/// Invitations of one relay handled at the same time: a hostile relay
/// cannot make us open connections without limit.
const MAX_INVITATIONS: usize = 16;

pub type Tls<S> = tokio_rustls::TlsStream<S>;

/// Reads one relay frame; its length is bounded by `proto::relay` before
/// anything is allocated.
pub async fn read_message<R: AsyncRead + Unpin>(r: &mut R) -> Result<Message> {
    let mut head = [0u8; HEADER_LEN];
    r.read_exact(&mut head)
        .await
        .context("relay closed the connection")?;
    let header = Header::decode(&head).map_err(|e| anyhow!("bad relay frame header: {e}"))?;
    let mut payload = vec![0u8; header.length];
    r.read_exact(&mut payload)
        .await
        .context("relay closed the connection")?;
    Message::decode(header.kind, &payload).map_err(|e| anyhow!("bad relay message: {e}"))
}

pub async fn write_message<W: AsyncWrite + Unpin>(w: &mut W, m: &Message) -> Result<()> {
    let bytes = m
        .encode()
        .map_err(|e| anyhow!("cannot encode relay message: {e}"))?;
    w.write_all(&bytes).await?;
    w.flush().await?;
    Ok(())
}

/// TCP + TLS (ALPN `bep-relay`, our certificate, the relay pinned by `id`
/// when the URI has one) to the relay's protocol port.
async fn connect_protocol(
    node: &Arc<Node>,
    uri: &RelayUri,
) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, SocketAddr)> {
    let servers = node.config().options.dns_servers.clone();
    let addrs = node
        .connect
        .resolver
        .resolve(&servers, &uri.host, uri.port)
        .await?;
    let mut last = anyhow!("no address for relay {}", uri.authority());
    for addr in addrs {
        let tcp = match tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                last = anyhow!("relay {addr}: {e}");
                continue;
            }
            Err(_) => {
                last = anyhow!("relay {addr}: connect timed out");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let pin = uri.id.map_or(ServerPin::Any, ServerPin::Device);
        let config = tls::client_config(
            Some(&node.identity),
            &[alpn::RELAY],
            pin,
            Versions::Tls12AndUp,
        )?;
        let tls = tokio::time::timeout(
            STEP_TIMEOUT,
            TlsConnector::from(Arc::new(config)).connect(tls::server_name(), tcp),
        )
        .await
        .map_err(|_| anyhow!("relay {addr}: TLS handshake timed out"))?
        .with_context(|| format!("relay {addr}: TLS handshake"))?;
        if tls.get_ref().1.alpn_protocol() != Some(alpn::RELAY) {
            bail!("relay {addr}: protocol negotiation error (no bep-relay ALPN)");
        }
        return Ok((tls, addr));
    }
    Err(last)
}

/// The data connection of an invitation: plain TCP to the address in it
/// (or the relay's own IP when it names none), the session key, and the
/// relay's answer. Returns the socket, now a pipe to the other device.
async fn join_session(inv: &SessionInvitation, relay: SocketAddr) -> Result<TcpStream> {
    let ip = match inv.address.as_slice() {
        [a, b, c, d] => IpAddr::from([*a, *b, *c, *d]),
        b if b.len() == 16 => {
            let mut x = [0u8; 16];
            x.copy_from_slice(b);
            std::net::Ipv6Addr::from(x).to_canonical()
        }
        [] => relay.ip(),
        other => bail!("invitation address of {} bytes", other.len()),
    };
    let ip = if ip.is_unspecified() { relay.ip() } else { ip };
    let port = if inv.port == 0 {
        relay.port()
    } else {
        inv.port
    };
    let addr = SocketAddr::new(ip, port);
    let mut tcp = tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("relay session {addr}: connect timed out"))?
        .with_context(|| format!("relay session {addr}"))?;
    let _ = tcp.set_nodelay(true);
    write_message(
        &mut tcp,
        &Message::JoinSessionRequest(JoinSessionRequest {
            key: inv.key.clone(),
        }),
    )
    .await?;
    let reply = tokio::time::timeout(STEP_TIMEOUT, read_message(&mut tcp))
        .await
        .map_err(|_| anyhow!("relay session {addr}: no answer to the join"))??;
    match reply {
        Message::Response(r) if r.code == Response::SUCCESS => Ok(tcp),
        Message::Response(r) if r.code == Response::ALREADY_CONNECTED => Err(anyhow!(Retryable(
            format!("relay session: {:?} (code 2)", r.message)
        ))),
        Message::Response(r) => bail!("relay session: {:?} (code {})", r.message, r.code),
        other => bail!("relay session: unexpected {:?}", other.kind()),
    }
}

/// An error worth an immediate retry.
#[derive(Debug)]
struct Retryable(String);

impl std::fmt::Display for Retryable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Retryable {}

/// TLS for BEP over the relayed pipe: the side whose invitation says
/// `ServerSocket` is the TLS server.
async fn bep_tls(
    node: &Arc<Node>,
    tcp: TcpStream,
    server_socket: bool,
    expect: DeviceId,
) -> Result<Tls<TcpStream>> {
    let stream: Tls<TcpStream> = if server_socket {
        let config = tls::server_config(
            &node.identity,
            &[alpn::BEP],
            tls::ClientCert::Required,
            Versions::Tls13Only,
        )?;
        tokio::time::timeout(
            STEP_TIMEOUT,
            TlsAcceptor::from(Arc::new(config)).accept(tcp),
        )
        .await
        .map_err(|_| anyhow!("TLS handshake over the relay timed out"))??
        .into()
    } else {
        let config = tls::client_config(
            Some(&node.identity),
            &[alpn::BEP],
            ServerPin::Device(expect),
            Versions::Tls13Only,
        )?;
        tokio::time::timeout(
            STEP_TIMEOUT,
            TlsConnector::from(Arc::new(config)).connect(tls::server_name(), tcp),
        )
        .await
        .map_err(|_| anyhow!("TLS handshake over the relay timed out"))??
        .into()
    };
    let peer = tls::peer_device_id(stream.get_ref().1).context("peer sent no certificate")?;
    if peer != expect {
        bail!("device {peer} answered over the relay, expected {expect}");
    }
    Ok(stream)
}

/// Dials `device` through the relay at `uri`: ConnectRequest, the
/// invitation, the data join and TLS. The caller runs BEP over the result.
pub async fn dial(
    node: &Arc<Node>,
    uri: &RelayUri,
    device: DeviceId,
) -> Result<(Tls<TcpStream>, SocketAddr)> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match dial_once(node, uri, device).await {
            Err(e) if attempt <= SESSION_RETRIES && e.downcast_ref::<Retryable>().is_some() => {
                tracing::debug!(relay = %uri.authority(), error = %e, "relay session refused; retrying");
                tokio::time::sleep(Duration::from_millis(200 * attempt as u64)).await;
            }
            other => return other,
        }
    }
}

async fn dial_once(
    node: &Arc<Node>,
    uri: &RelayUri,
    device: DeviceId,
) -> Result<(Tls<TcpStream>, SocketAddr)> {
    let (mut proto_conn, relay) = connect_protocol(node, uri).await?;
    write_message(
        &mut proto_conn,
        &Message::ConnectRequest(ConnectRequest {
            id: ShortBytes::from_array(*device.as_bytes()),
        }),
    )
    .await?;
    let reply = tokio::time::timeout(STEP_TIMEOUT, read_message(&mut proto_conn))
        .await
        .map_err(|_| anyhow!("relay {relay}: no answer to the connect request"))??;
    let inv = match reply {
        Message::SessionInvitation(inv) => inv,
        Message::Response(r) => bail!("relay {relay}: {:?} (code {})", r.message, r.code),
        other => bail!("relay {relay}: unexpected {:?}", other.kind()),
    };
    drop(proto_conn);
    if inv.from.as_slice() != device.as_bytes() {
        bail!("relay {relay}: invitation from another device");
    }
    let tcp = join_session(&inv, relay).await?;
    Ok((bep_tls(node, tcp, inv.server_socket, device).await?, relay))
}

/// Stays joined to the relay of listen address `uri_text`: joins (with the
/// URI's token), answers pings, accepts invitations, rejoins with backoff.
/// `joined` is told the announceable URI while joined, `None` otherwise.
pub async fn listen_loop(
    node: Arc<Node>,
    uri_text: String,
    joined: tokio::sync::watch::Sender<Option<String>>,
) {
    let uri: RelayUri = match uri_text.parse() {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(error = %e, "relay listen address is not a relay URI; not joining");
            return;
        }
    };
    let shown = announceable(&uri);
    let mut backoff = REJOIN_MIN;
    loop {
        let started = std::time::Instant::now();
        let result = listen_once(&node, &uri, &shown, &joined).await;
        joined.send_replace(None);
        match result {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(relay = %shown, error = %format!("{e:#}"), "relay connection ended");
            }
        }
        if started.elapsed() > REJOIN_MAX {
            backoff = REJOIN_MIN;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(REJOIN_MAX);
    }
}

async fn listen_once(
    node: &Arc<Node>,
    uri: &RelayUri,
    shown: &str,
    joined: &tokio::sync::watch::Sender<Option<String>>,
) -> Result<()> {
    let token = join_token(uri)?;
    let (mut conn, relay) = connect_protocol(node, uri).await?;
    let invitations = Arc::new(tokio::sync::Semaphore::new(MAX_INVITATIONS));
    write_message(
        &mut conn,
        &Message::JoinRelayRequest(JoinRelayRequest { token }),
    )
    .await?;
    let reply = tokio::time::timeout(STEP_TIMEOUT, read_message(&mut conn))
        .await
        .map_err(|_| anyhow!("no answer to the join request"))??;
    match reply {
        Message::Response(r) if r.code == Response::SUCCESS => {}
        Message::RelayFull => bail!("relay is full"),
        Message::Response(r) => bail!("join refused: {:?} (code {})", r.message, r.code),
        other => bail!(
            "unexpected {:?} in answer to the join request",
            other.kind()
        ),
    }
    tracing::info!(relay = %shown, "joined relay");
    eprintln!("Joined relay {shown}");
    joined.send_replace(Some(shown.to_string()));
    loop {
        let msg = tokio::time::timeout(IDLE_TIMEOUT, read_message(&mut conn))
            .await
            .map_err(|_| anyhow!("nothing from the relay for {} s", IDLE_TIMEOUT.as_secs()))??;
        match msg {
            Message::Ping => write_message(&mut conn, &Message::Pong).await?,
            Message::Pong => {}
            Message::SessionInvitation(inv) => {
                let Ok(from) = DeviceId::from_slice(inv.from.as_slice()) else {
                    tracing::warn!(relay = %shown, "invitation with a malformed device ID ignored");
                    continue;
                };
                // Each invitation on its own task: one slow handshake must
                // not hold up the next device.
                let Ok(permit) = invitations.clone().try_acquire_owned() else {
                    tracing::warn!(relay = %shown, device = %from, "too many invitations in progress; this one is ignored");
                    continue;
                };
                let node = node.clone();
                node.clone().shutdown.spawn(async move {
                    let _permit = permit;
                    if let Err(e) = accept_invitation(node, inv, relay, from).await {
                        tracing::info!(device = %from, error = %format!("{e:#}"), "relayed connection failed");
                    }
                });
            }
            Message::RelayFull => bail!("relay is full"),
            other => bail!("unexpected {:?} from the relay", other.kind()),
        }
    }
}

async fn accept_invitation(
    node: Arc<Node>,
    inv: SessionInvitation,
    relay: SocketAddr,
    from: DeviceId,
) -> Result<()> {
    if node.config().device(&from).is_none() {
        // Still let the BEP layer see it (pending devices), as Syncthing.
        tracing::info!(device = %from, "relay invitation from an unknown device");
    }
    // Until the connection runs (it watches the stop itself and says
    // Close), a stopping node just drops the attempt.
    let stop = node.shutdown.clone();
    let tls = tokio::select! {
        r = async {
            let tcp = join_session(&inv, relay).await?;
            bep_tls(&node, tcp, inv.server_socket, from).await
        } => r?,
        _ = stop.cancelled() => bail!("shutting down"),
    };
    crate::conn::run(
        node,
        tls,
        from,
        relay,
        crate::model::ConnectionKind::RelayServer,
        None,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_are_bounded_and_checked() {
        // A header announcing 2 GiB is refused before anything is read.
        let mut huge: &[u8] = &[0x9e, 0x79, 0xbc, 0x40, 0, 0, 0, 4, 0x7f, 0xff, 0xff, 0xff];
        assert!(read_message(&mut huge).await.is_err());
        let mut magic: &[u8] = &[1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(read_message(&mut magic).await.is_err());
        let mut short: &[u8] = &[0x9e, 0x79];
        assert!(read_message(&mut short).await.is_err());
        let ping = Message::Ping.encode().unwrap();
        assert_eq!(read_message(&mut &ping[..]).await.unwrap(), Message::Ping);
    }
}
