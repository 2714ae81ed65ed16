//! One BEP connection: the Hello exchange, device pinning, ClusterConfig,
//! index sending, request serving, keep-alive and Close. Protocol rules
//! live in `proto::bep::session`; this module moves bytes and applies the
//! node's policy.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use prost::Message as _;
use proto::bep::rules::{check_file_info, check_request, fit_for_sending, sequence_anomalies};
use proto::bep::session::{check_cluster_config, Event, Session};
use proto::bep::wire::{self, ClusterConfig, Device, FileInfo, Folder, Hello, Index};
use proto::bep::{Compress, Message};
use proto::DeviceId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::config::{Compression, DeviceConfig};
use crate::fileserve::{self, Served};
use crate::guard::admission::Ticket;
use crate::model::requester::Requester;
use crate::model::{ConnInfo, ConnectionId, ConnectionKind, Node, PendingDevice, Role};

/// Our client name and version in the Hello. Syncthing only displays
/// them (a name other than "syncthing" is shown with the version).
const CLIENT_NAME: &str = "node";
const CLIENT_VERSION: &str = concat!("v", env!("CARGO_PKG_VERSION"));
/// Bytes for the socket, with the budget shares of the Responses in them.
type Chunk = (Vec<u8>, Vec<OwnedSemaphorePermit>);

/// Index batches: at most this many files or about this many bytes.
const BATCH_FILES: usize = 1000;
const BATCH_BYTES: usize = 250 * 1024;
/// Outstanding request data per connection (Syncthing's default 32 MiB).
const MAX_REQUEST_KIB: usize = 32 * 1024;
/// Least time between two rounds of index updates to a peer.
const INDEX_UPDATE_GAP: Duration = Duration::from_millis(250);
/// Requests received but not yet answered, per connection.
const MAX_WAITING_REQUESTS: u64 = 100_000;
/// Time to get our Close out before dropping the socket.
const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// The same when the node stops: under its stop deadline.
const CLOSE_GRACE_AT_STOP: Duration = Duration::from_secs(1);

/// Runs a connection whose TLS handshake is done. `peer` is the device ID
/// of the certificate the peer presented.
pub async fn run<S>(
    node: Arc<Node>,
    stream: S,
    peer: DeviceId,
    address: SocketAddr,
    kind: ConnectionKind,
    handshake: Option<Ticket>,
) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if peer == node.my_id {
        bail!("connected to myself");
    }
    if node.shutdown.is_cancelled() {
        bail!("shutting down");
    }
    let config = node.config();
    let device = config.device(&peer).cloned();
    // Relayed connections are never LAN, whatever the relay's address.
    let lan = !kind.relayed()
        && crate::bandwidth::lan::is_lan(address.ip(), &config.options.always_local_nets);
    drop(config);
    // Before any Hello, as Syncthing: a configured device's connection
    // from outside its networks is closed now (an incoming relayed one is
    // judged by the relay's address, which is what we see).
    if let Some(d) = &device {
        if !d.allowed_networks.allows(address.ip()) {
            node.refusals
                .count(crate::guard::Refusal::NetworkNotAllowed);
            bail!(
                "refused: address {} is outside the device's allowedNetworks",
                address.ip()
            );
        }
    }
    // Every BEP byte pays the limits, whichever transport carries it.
    let limits =
        crate::bandwidth::ConnLimits::new(node.bandwidth.clone(), &peer, lan, &node.metrics);
    let stream = crate::bandwidth::Limited::new(stream, Arc::new(limits));
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut buf = vec![0u8; 64 * 1024];
    let (session, their_hello, id) = hello(
        &node,
        &mut rd,
        &mut wr,
        &mut buf,
        device.as_ref(),
        handshake,
    )
    .await?;
    let Some(device) = device else {
        hold_pending(&node, peer, address, &their_hello);
        return Ok(());
    };
    let link = Link { address, kind, lan };
    let Some(registered) = register(&node, peer, &link, &their_hello, &device.name, id) else {
        return Ok(());
    };
    let (wtx, writer) = spawn_writer(&node, wr, registered.out_bytes);
    let mut driver = Driver {
        node: node.clone(),
        peer,
        serial: registered.serial,
        id: registered.id,
        primary: registered.role == Role::Primary,
        counters: registered.counters,
        session,
        rd,
        buf,
        in_bytes: registered.in_bytes,
        inbox: registered.inbox,
        conn: registered.conn,
        wtx,
        held: Vec::new(),
        writer,
    };
    let Err(reason) = driver.serve().await;
    driver.teardown(&reason).await;
    Ok(())
}

/// Sends our Hello and reads the peer's, within the handshake deadline,
/// and returns the session with the peer's Hello, its strings cut and
/// cleaned, and the connection's ID (made of both Hellos' timestamps).
/// `device` is the peer's configuration if it is known;
/// `handshake` the stranger's slot of an incoming connection, given back
/// when the Hello is in.
async fn hello<R, W>(
    node: &Node,
    rd: &mut R,
    wr: &mut W,
    buf: &mut [u8],
    device: Option<&DeviceConfig>,
    handshake: Option<Ticket>,
) -> Result<(Session, Hello, ConnectionId)>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Incoming connections have one deadline for TLS and Hello together.
    let hello_deadline = handshake.as_ref().map_or_else(
        || tokio::time::Instant::now() + proto::bep::session::HELLO_TIMEOUT,
        |t| t.deadline,
    );
    // A configured device has proven who it is: its slot goes back at
    // once, so strangers holding slots never delay it.
    let handshake = handshake.filter(|_| device.is_none());
    let compress = device.map_or(Compress::Metadata, |d| d.compression.into());
    let ours = our_hello(node, device);
    let mut session = Session::new(&ours, compress, Instant::now())?;
    wr.write_all(&session.take_outgoing()).await?;
    wr.flush().await?;

    // The peer's Hello, within the time limit.
    let read_hello = tokio::time::timeout_at(hello_deadline, async {
        loop {
            let n = rd.read(buf).await?;
            if n == 0 {
                bail!("connection closed during the Hello exchange");
            }
            session.receive(&buf[..n], Instant::now());
            if let Some(Event::Hello(h)) = session.next_event()? {
                return Ok(h);
            }
        }
    });
    let mut their_hello = tokio::select! {
        r = read_hello => r.map_err(|_| {
            if handshake.is_some() {
                node.refusals.count(crate::guard::Refusal::HandshakeTimeout);
            }
            anyhow!("no Hello in time")
        })??,
        _ = crate::guard::admission::evicted(handshake.as_ref()) => {
            bail!("Hello not received before the handshake slot was needed by a newer connection")
        }
        _ = node.shutdown.cancelled() => bail!("shutting down"),
    };
    // The unauthenticated part is over.
    drop(handshake);
    // Peer-chosen strings are cut and cleaned before anything keeps or
    // logs them.
    their_hello.device_name = crate::guard::peer_name(&their_hello.device_name);
    their_hello.client_name = crate::guard::peer_name(&their_hello.client_name);
    their_hello.client_version = crate::guard::peer_name(&their_hello.client_version);
    let id = ConnectionId::new(ours.timestamp, their_hello.timestamp);
    Ok((session, their_hello, id))
}

/// Our Hello to a device with configuration `device` (`None`: unknown).
fn our_hello(node: &Node, device: Option<&DeviceConfig>) -> Hello {
    // Like Syncthing 2.x, tell only known devices our name and how many
    // connections we want (0, "none", to strangers).
    let (our_name, num_connections) = match device {
        Some(d) => (node.config().name.clone(), d.num_connections.wanted()),
        None => (String::new(), 0),
    };
    // The timestamp goes into the connection ID on both sides.
    let timestamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    Hello {
        device_name: our_name,
        client_name: CLIENT_NAME.into(),
        client_version: CLIENT_VERSION.into(),
        num_connections: num_connections as i32,
        timestamp,
    }
}

/// The policy for a device not in our configuration: it is listed as
/// pending (for the user to accept) and the connection ends.
fn hold_pending(node: &Node, peer: DeviceId, address: SocketAddr, their_hello: &Hello) {
    let listed = node.add_pending(
        peer,
        PendingDevice {
            name: their_hello.device_name.clone(),
            address,
            time: SystemTime::now(),
        },
    );
    // Certificates cost nothing: a flood of strangers must not flood
    // the log either.
    if let Some(suppressed) = node.unknown_device_log.allow() {
        tracing::info!(device = %peer, name = %their_hello.device_name, %address, listed,
            suppressed, "connection from unknown device rejected");
    }
}

/// A connection the node has registered, and the ends of the channels
/// through which the node reaches it.
struct Registered {
    counters: Arc<crate::model::ConnCounters>,
    serial: u64,
    id: ConnectionId,
    role: Role,
    in_bytes: Arc<AtomicU64>,
    out_bytes: Arc<AtomicU64>,
    inbox: Inbox,
    conn: Conn,
}

/// What reaches a running connection from outside the socket.
struct Inbox {
    /// Our messages for the peer: Requests, index batches.
    messages: mpsc::Receiver<Message>,
    /// Responses with their share of the data budget (see [`Chunk`]).
    responses: mpsc::Receiver<(Message, OwnedSemaphorePermit)>,
    /// The node closes the connection, with a reason.
    close: mpsc::Receiver<String>,
    /// Our configuration changed.
    config_changed: mpsc::Receiver<()>,
}

/// Where a connection goes and how.
struct Link {
    address: SocketAddr,
    kind: ConnectionKind,
    /// On the LAN (see `bandwidth::lan`).
    lan: bool,
}

/// Registers the connection with the node, which may keep the existing
/// ones instead (then `None`), and announces it.
fn register(
    node: &Arc<Node>,
    peer: DeviceId,
    link: &Link,
    their_hello: &Hello,
    device_name: &str,
    id: ConnectionId,
) -> Option<Registered> {
    let (msg_tx, messages) = mpsc::channel::<Message>(256);
    // Responses travel with their share of the data budget, and the share
    // is given back only once the bytes are written to the socket: a peer
    // that asks for data and never reads holds at most the budget, not
    // every response queued behind its closed window.
    let (resp_tx, responses) = mpsc::channel::<(Message, OwnedSemaphorePermit)>(64);
    let requester = Arc::new(Requester::new(msg_tx.clone()));
    let (close_tx, close) = mpsc::channel::<String>(1);
    let (changed_tx, config_changed) = mpsc::channel::<()>(1);
    let serial = node.serial();
    let in_bytes = Arc::new(AtomicU64::new(0));
    let out_bytes = Arc::new(AtomicU64::new(0));
    let counters = Arc::<crate::model::ConnCounters>::default();
    let Link { address, kind, lan } = *link;
    let info = ConnInfo {
        counters: counters.clone(),
        serial,
        id: id.clone(),
        address,
        kind,
        lan,
        client_version: their_hello.client_version.clone(),
        started: SystemTime::now(),
        in_bytes: in_bytes.clone(),
        out_bytes: out_bytes.clone(),
        close: close_tx,
        config_changed: changed_tx,
        requester: requester.clone(),
    };
    let role = match node.register(peer, info, their_hello.num_connections) {
        Ok(role) => role,
        Err(e) => {
            tracing::info!(device = %peer, %address, connection = %id, reason = %e,
                "dropping the new connection");
            return None;
        }
    };
    match role {
        Role::Primary => tracing::info!(device = %peer, name = %device_name, %address, %kind,
            connection = %id,
            client = %format!("{} {}", their_hello.client_name, their_hello.client_version),
            wants = their_hello.num_connections, "connected"),
        Role::Secondary => tracing::info!(device = %peer, %address, %kind, connection = %id,
            count = node.connection_count(&peer).0, "additional connection"),
    }
    node.events.device_connected(
        &peer,
        &their_hello.device_name,
        &their_hello.client_name,
        &their_hello.client_version,
        kind.as_str(),
        address,
    );
    let conn = Conn {
        node: node.clone(),
        peer,
        msg_tx,
        resp_tx,
        requester,
        index_senders: HashMap::new(),
        last_cluster_config: None,
        requests: Arc::new(Semaphore::new(MAX_REQUEST_KIB)),
        waiting: Arc::new(AtomicU64::new(0)),
        serial,
    };
    let inbox = Inbox {
        messages,
        responses,
        close,
        config_changed,
    };
    Some(Registered {
        counters,
        serial,
        id,
        role,
        in_bytes,
        out_bytes,
        inbox,
        conn,
    })
}

/// Starts the socket's writer: a separate task, so a slow peer never
/// stops us reading. It ends when the returned sender is dropped, after
/// writing everything sent to it.
fn spawn_writer<W>(
    node: &Node,
    mut wr: W,
    out_bytes: Arc<AtomicU64>,
) -> (mpsc::Sender<Chunk>, JoinHandle<()>)
where
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (wtx, mut wrx) = mpsc::channel::<Chunk>(64);
    // Owned by the node but never cut short: it ends when the connection
    // drops its sender, after the Close is written.
    let writer = node.shutdown.spawn(async move {
        while let Some((bytes, permits)) = wrx.recv().await {
            if wr.write_all(&bytes).await.is_err() {
                break;
            }
            drop(permits);
            out_bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            // TLS may hold records back until flushed; without this the
            // last Response of a burst could wait for the next Ping.
            if wrx.is_empty() && wr.flush().await.is_err() {
                break;
            }
        }
        let _ = wr.flush().await;
        let _ = wr.shutdown().await;
    });
    (wtx, writer)
}

/// A registered connection at work: moves bytes between the socket, the
/// session and the node, and wakes for the session's timers.
struct Driver<R> {
    node: Arc<Node>,
    peer: DeviceId,
    serial: u64,
    id: ConnectionId,
    /// Whether we sent our full ClusterConfig here (we are the primary, or
    /// were promoted to it): secondaries send `secondary: true` only.
    primary: bool,
    counters: Arc<crate::model::ConnCounters>,
    session: Session,
    rd: R,
    buf: Vec<u8>,
    in_bytes: Arc<AtomicU64>,
    inbox: Inbox,
    /// What the peer's messages act on.
    conn: Conn,
    /// To the writer task.
    wtx: mpsc::Sender<Chunk>,
    /// Budget shares of the Responses the session holds, handed to the
    /// writer with the bytes.
    held: Vec<OwnedSemaphorePermit>,
    writer: JoinHandle<()>,
}

impl<R: AsyncRead + Unpin> Driver<R> {
    /// Runs until the connection ends; the error says why.
    async fn serve(&mut self) -> Result<Infallible> {
        // Inside the loop's result, so a failure here still unregisters.
        let first = if self.primary {
            cluster_config(&self.node, &self.peer)?
        } else {
            // As Syncthing 2.x: a secondary only says it is ready; the
            // peer keeps index traffic on the primary.
            ClusterConfig {
                secondary: true,
                ..Default::default()
            }
        };
        self.session
            .send(&Message::ClusterConfig(first), Instant::now())?;
        // Re-armed each round to the session's next deadline; disabled
        // while it has none.
        let timer = tokio::time::sleep_until(tokio::time::Instant::now());
        tokio::pin!(timer);
        loop {
            self.handle_events().await?;
            self.flush().await?;
            let deadline = self
                .session
                .poll_timeout()
                .map(tokio::time::Instant::from_std);
            // An elapsed timer is re-armed even to the same instant, so a
            // wake-up that found nothing due waits for the next tick of
            // the clock instead of firing again at once.
            if let Some(at) = deadline.filter(|at| *at != timer.deadline() || timer.is_elapsed()) {
                timer.as_mut().reset(at);
            }
            tokio::select! {
                n = self.rd.read(&mut self.buf) => self.received(n.context("read")?)?,
                Some(m) = self.inbox.messages.recv() => {
                    if is_index(&m) {
                        self.counters.index_sent.fetch_add(1, Ordering::Relaxed);
                    }
                    self.session.send(&m, Instant::now())?;
                }
                Some((m, permit)) = self.inbox.responses.recv() => {
                    self.session.send(&m, Instant::now())?;
                    self.held.push(permit);
                }
                _ = &mut timer, if deadline.is_some() => self.poll_timers().await?,
                Some(()) = self.inbox.config_changed.recv() => self.config_changed().await?,
                reason = self.inbox.close.recv() => {
                    let reason = reason.unwrap_or_else(|| "shutting down".into());
                    return Err(self.close(&reason).await);
                }
                // The node stops (its owner closes connections first; this
                // covers one registered since).
                _ = self.node.shutdown.cancelled() => {
                    let reason = match *self.node.stop_request.borrow() {
                        Some(crate::model::StopRequest::Restart) => "device is restarting",
                        _ => "device is shutting down",
                    };
                    return Err(self.close(reason).await);
                }
            }
        }
    }

    /// Acts on every complete message the session holds.
    async fn handle_events(&mut self) -> Result<()> {
        while let Some(event) = self.session.next_event()? {
            match event {
                Event::Hello(_) => {}
                Event::Closed(reason) => {
                    bail!("closed by remote: {}", crate::guard::peer_text(&reason))
                }
                Event::Message(m) => {
                    if is_index(&m) {
                        self.counters.index_received.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Err(e) = self.conn.handle(m).await {
                        self.session.close(&format!("{e:#}"), Instant::now());
                        self.send_last().await;
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }

    /// Hands the bytes the session queued to the writer, with the budget
    /// shares of the Responses in them.
    async fn flush(&mut self) -> Result<()> {
        if self.session.has_outgoing()
            && self
                .wtx
                .send((self.session.take_outgoing(), std::mem::take(&mut self.held)))
                .await
                .is_err()
        {
            bail!("write failed");
        }
        Ok(())
    }

    /// Hands the writer what the session queued last (a Close, usually)
    /// as the connection ends; a failure changes nothing then.
    async fn send_last(&mut self) {
        let _ = self
            .wtx
            .send((self.session.take_outgoing(), Vec::new()))
            .await;
    }

    /// `n` bytes were read into the buffer.
    fn received(&mut self, n: usize) -> Result<()> {
        if n == 0 {
            bail!("connection closed by peer");
        }
        self.in_bytes.fetch_add(n as u64, Ordering::Relaxed);
        self.session.receive(&self.buf[..n], Instant::now());
        Ok(())
    }

    /// The session's deadline came: a Ping, or the end of a silent peer.
    async fn poll_timers(&mut self) -> Result<()> {
        if let Err(e) = self.session.poll_timers(Instant::now()) {
            self.send_last().await;
            return Err(e.into());
        }
        Ok(())
    }

    /// Our side changed, or this connection became the primary: the
    /// primary tells the peer (a promoted one sends its first full
    /// ClusterConfig, which moves the peer's index traffic here), and
    /// index exchange starts or stops for folders the peer offered here.
    async fn config_changed(&mut self) -> Result<()> {
        if self.node.role(&self.peer, self.serial) == Some(Role::Primary) {
            if !self.primary {
                tracing::info!(device = %self.peer, connection = %self.id,
                    "connection promoted to primary");
                self.primary = true;
            }
            self.session.send(
                &Message::ClusterConfig(cluster_config(&self.node, &self.peer)?),
                Instant::now(),
            )?;
        }
        if let Some(cc) = self.conn.last_cluster_config.clone() {
            self.conn.cluster_config(cc).await?;
        }
        Ok(())
    }

    /// Closes with `reason`, sent to the peer.
    async fn close(&mut self, reason: &str) -> anyhow::Error {
        self.session.close(reason, Instant::now());
        self.send_last().await;
        anyhow!("closed: {reason}")
    }

    /// After the connection ended for `reason`: stops its tasks, leaves
    /// the node, and gives our last bytes time to reach the peer.
    async fn teardown(mut self, reason: &anyhow::Error) {
        for (_, h) in self.conn.index_senders.drain() {
            h.abort();
        }
        self.conn.requester.close();
        let left = self.node.unregister(&self.peer, self.serial);
        self.node.remote_downloads.forget(&self.peer, self.serial);
        // The writer ends once it has written what it holds.
        drop(self.wtx);
        // A stopping node has a deadline for all its connections together.
        let grace = if self.node.shutdown.is_cancelled() {
            CLOSE_GRACE_AT_STOP
        } else {
            CLOSE_GRACE
        };
        let deadline = tokio::time::Instant::now() + grace;
        let _ = tokio::time::timeout_at(deadline, self.writer).await;
        // Closing a socket with unread data in it resets the connection, and
        // the peer may then lose our Close (it is still sending us Responses,
        // say): read and drop until it closes its side too, or the deadline.
        let (rd, buf) = (&mut self.rd, &mut self.buf);
        let _ = tokio::time::timeout_at(deadline, async {
            while matches!(rd.read(buf).await, Ok(n) if n > 0) {}
        })
        .await;
        let (role, remaining) = left.map_or(("", 0), |(r, n)| (r.as_str(), n));
        tracing::info!(device = %self.peer, connection = %self.id, role, remaining,
            reason = %format!("{reason:#}"), "disconnected");
    }
}

fn is_index(m: &Message) -> bool {
    matches!(m, Message::Index(_) | Message::IndexUpdate(_))
}

/// A connection's state as the peer's messages act on it.
struct Conn {
    node: Arc<Node>,
    peer: DeviceId,
    msg_tx: mpsc::Sender<Message>,
    /// Responses with the budget share they hold until written.
    resp_tx: mpsc::Sender<(Message, OwnedSemaphorePermit)>,
    requester: Arc<Requester>,
    index_senders: HashMap<String, JoinHandle<()>>,
    /// The peer's latest ClusterConfig, re-applied when our config changes.
    last_cluster_config: Option<ClusterConfig>,
    requests: Arc<Semaphore>,
    waiting: Arc<AtomicU64>,
    /// This connection among the device's (its DownloadProgress is kept
    /// under it and dropped when it ends).
    serial: u64,
}

impl Conn {
    async fn handle(&mut self, message: Message) -> Result<()> {
        match message {
            Message::ClusterConfig(cc) => self.cluster_config(cc).await,
            Message::Index(idx) => self.index(idx, true).await,
            Message::IndexUpdate(idx) => self.index(idx, false).await,
            Message::Request(req) => {
                // 2.1.2's Request rules: a peer breaking one is broken or
                // hostile, and 2.x closes the connection; so do we.
                if let Err(e) = check_request(&req) {
                    tracing::warn!(device = %self.peer, folder = %crate::guard::peer_text(&req.folder),
                        rule = %e, "protocol error: refused Request; closing the connection");
                    bail!("protocol error: {e}");
                }
                self.request(req).await
            }
            Message::Response(r) => {
                self.requester.deliver(r);
                Ok(())
            }
            Message::DownloadProgress(p) => {
                self.download_progress(p);
                Ok(())
            }
            Message::Ping | Message::Unknown(_) | Message::Close(_) => Ok(()),
        }
    }

    async fn cluster_config(&mut self, cc: ClusterConfig) -> Result<()> {
        if cc.secondary {
            // As Syncthing 2.x: a secondary's ClusterConfig only says the
            // connection is ready; folders and indexes follow the primary.
            return Ok(());
        }
        check_cluster_config(&cc, self.node.my_id, self.peer)?;
        self.last_cluster_config = Some(cc.clone());
        // An introducer's devices, auto-accepted folders: saved now, put in
        // effect by the node's follower, which then has this connection
        // re-read this ClusterConfig with the new folders running.
        // (The save moves its wait off the runtime, as a REST change's.)
        if let Err(e) = self.node.follow_cluster_config(self.peer, &cc) {
            tracing::warn!(device = %self.peer, error = %format!("{e:#}"),
                "cannot apply the device's introductions or auto-accepted folders");
        }
        let mut offered = Vec::new();
        for folder in &cc.folders {
            let Some(local) = self.node.shared_folder(&folder.id, &self.peer) else {
                tracing::info!(device = %self.peer, folder = %crate::guard::peer_text(&folder.id),
                    "peer offers a folder we do not share with it; recorded as pending");
                self.node.add_pending_folder(
                    &folder.id,
                    self.peer,
                    &crate::guard::peer_name(&folder.label),
                );
                continue;
            };
            if self.node.folder_runtime(&folder.id).is_none() {
                // Just added (auto-accepted) and not started yet: taken up
                // when the change is applied and this is read again.
                continue;
            }
            offered.push(folder.id.clone());
            let entry = |id: &DeviceId| {
                folder
                    .devices
                    .iter()
                    .find(|d| d.id[..] == id.as_bytes()[..])
                    .cloned()
                    .unwrap_or_default()
            };
            let (theirs, ours) = (entry(&self.peer), entry(&self.node.my_id));
            // What the peer says about itself: remember its index ID. The
            // SQLite work (clearing a whole remote index may take long)
            // runs on the blocking pool, as for received indexes.
            let (node, peer, fid) = (self.node.clone(), self.peer, folder.id.clone());
            let their_index = theirs.index_id;
            let (our_index_id, our_seq) = tokio::task::spawn_blocking(move || {
                let (stored_id, stored_seq) = node.db.remote(&fid, &peer)?;
                if their_index != stored_id {
                    // A new (or no) index on their side: what we knew is void.
                    node.db.clear_remote_files(&fid, &peer)?;
                    node.db.set_remote(&fid, &peer, their_index, 0)?;
                } else {
                    node.db.set_remote(&fid, &peer, stored_id, stored_seq)?;
                }
                anyhow::Ok(node.db.folder_state(&fid)?)
            })
            .await
            .context("cluster config storage task")??;
            // 2.x's stop_reason is 1.x's `paused` bool on the wire.
            let their_paused = folder.stop_reason == wire::FolderStopReason::Paused as i32;
            if their_paused || local.paused {
                if let Some(h) = self.index_senders.remove(&folder.id) {
                    h.abort();
                }
                continue;
            }
            if self.index_senders.contains_key(&folder.id) {
                continue;
            }
            // What the peer says about us decides full or delta sending.
            let start = if ours.index_id == our_index_id && ours.max_sequence <= our_seq {
                ours.max_sequence.max(0)
            } else {
                0
            };
            tracing::info!(device = %self.peer, folder = %folder.id, from_sequence = start,
                our_sequence = our_seq, "sending index");
            let handle = self.node.shutdown.spawn_until_cancelled(send_index(
                self.node.clone(),
                folder.id.clone(),
                start,
                self.msg_tx.clone(),
            ));
            self.index_senders.insert(folder.id.clone(), handle);
        }
        // A device that (re)connects may serve what we still need.
        for id in &offered {
            if let Some(rt) = self.node.folder_runtime(id) {
                let _ = rt.scan_now.try_send(());
            }
        }
        // Folders no longer offered stop exchanging indexes.
        self.index_senders.retain(|id, h| {
            let keep = offered.contains(id);
            if !keep {
                h.abort();
            }
            keep
        });
        Ok(())
    }

    async fn index(&mut self, idx: Index, replace: bool) -> Result<()> {
        if self.node.shared_folder(&idx.folder, &self.peer).is_none() {
            bail!(
                "index for folder {:?}, which is not shared with this device",
                idx.folder
            );
        }
        let mut max = 0;
        for f in &idx.files {
            // 2.1.2's entry rules: 2.x closes the connection on a broken
            // entry (the whole batch is refused); so do we.
            if let Err(e) = check_file_info(f) {
                tracing::warn!(device = %self.peer, folder = %crate::guard::peer_text(&idx.folder),
                    rule = %e, "protocol error: refused index entry; closing the connection");
                bail!("protocol error: {e}");
            }
            max = max.max(f.sequence);
            // Off unless asked for (`--log-level info,node::conn=trace`):
            // which content (by block hash) each peer announced, so a test
            // can tell an edit a peer never announced from one lost later.
            tracing::trace!(device = %self.peer, file = ?f.name, deleted = f.deleted,
                version = ?f.version.as_ref().map(|v| v.counters.iter()
                    .map(|c| (proto::ShortId(c.id).to_string(), c.value)).collect::<Vec<_>>()),
                blocks = ?f.blocks.iter().take(4)
                    .map(|b| data_encoding::HEXLOWER.encode(&b.hash)).collect::<Vec<_>>(),
                "index entry received");
        }
        // SQLite work (a transaction of up to a batch of files, under the
        // database's lock) belongs on the blocking pool, not on the
        // runtime that carries every other connection.
        let (node, peer) = (self.node.clone(), self.peer);
        let files = idx.files.len();
        let folder = idx.folder.clone();
        let seq = tokio::task::spawn_blocking(move || -> Result<i64> {
            let (_, held) = node.db.remote(&idx.folder, &peer)?;
            // A full Index replaces everything: nothing held before it.
            let held = if replace { 0 } else { held };
            let anomalies = sequence_anomalies(&idx.files, idx.prev_sequence, idx.last_sequence, held);
            // 2.x reports these and applies the batch all the same: the
            // entries were checked, the numbers are bookkeeping.
            if let Some(first) = anomalies.first() {
                if let Some(suppressed) = node.index_anomaly_log.allow() {
                    tracing::warn!(device = %peer, folder = %crate::guard::peer_text(&idx.folder),
                        anomaly = %first, count = anomalies.len(), prev_sequence = idx.prev_sequence,
                        last_sequence = idx.last_sequence, suppressed,
                        "index sequence numbers out of order; the batch is applied (as Syncthing 2.x does)");
                }
            }
            node.remote_downloads.finished(
                &peer,
                &idx.folder,
                idx.files
                    .iter()
                    .filter_map(|f| f.version.as_ref().map(|v| (f.name.as_str(), v))),
            );
            node.db
                .remote_files(&idx.folder, &peer, &idx.files, replace)?;
            let (id, seq) = node.db.remote(&idx.folder, &peer)?;
            let seq = if replace { max } else { seq.max(max) };
            node.db.set_remote(&idx.folder, &peer, id, seq)?;
            Ok(seq)
        })
        .await
        .context("index storage task")??;
        self.node
            .events
            .remote_index_updated(&self.peer, &folder, files, seq);
        // New remote entries may be needed: scan, then pull.
        if let Some(rt) = self.node.folder_runtime(&folder) {
            let _ = rt.scan_now.try_send(());
        }
        Ok(())
    }

    /// A DownloadProgress: kept (bounded) for a folder we share with the
    /// peer, and announced as `RemoteDownloadProgress`, as Syncthing does;
    /// other folders are ignored, as 2.x ignores them.
    fn download_progress(&mut self, p: wire::DownloadProgress) {
        if self.node.shared_folder(&p.folder, &self.peer).is_none() {
            return;
        }
        let applied = self.node.remote_downloads.apply(self.peer, self.serial, &p);
        if applied.first_drop {
            tracing::warn!(device = %self.peer, folder = %crate::guard::peer_text(&p.folder),
                max_files = crate::remote_progress::MAX_FILES,
                max_blocks = crate::remote_progress::MAX_BLOCKS,
                "peer announces more downloads in progress than we keep; the excess is ignored");
        }
        let state = self
            .node
            .remote_downloads
            .block_counts(&self.peer, &p.folder);
        self.node
            .events
            .remote_download_progress(&self.peer, &p.folder, &state);
    }

    async fn request(&mut self, req: wire::Request) -> Result<()> {
        let folder = self
            .node
            .shared_folder(&req.folder, &self.peer)
            .filter(|f| !f.paused);
        // Requests wait for their share of the data budget in their own
        // task, so the connection keeps reading (and writing responses).
        // The number waiting is bounded too: a peer flooding requests is
        // cut off.
        let kib = (req.size.max(0) as usize)
            .div_ceil(1024)
            .clamp(1, MAX_REQUEST_KIB) as u32;
        let waiting = self.waiting.clone();
        if waiting.fetch_add(1, Ordering::Relaxed) >= MAX_WAITING_REQUESTS {
            bail!("more than {MAX_WAITING_REQUESTS} requests outstanding");
        }
        let limiter = self.requests.clone();
        let node = self.node.clone();
        let tx = self.resp_tx.clone();
        let peer = self.peer;
        self.node.shutdown.spawn_until_cancelled(async move {
            let Ok(permit) = limiter.acquire_many_owned(kib).await else {
                waiting.fetch_sub(1, Ordering::Relaxed);
                return;
            };
            let id = req.id;
            let served = match folder {
                None => Served::Error(wire::ErrorCode::Generic),
                Some(f) => {
                    let name = req.name.clone();
                    let folder_id = f.id.clone();
                    // Small requests fit the byte budget by the thousand: the
                    // disk reads themselves are bounded (threads and memory).
                    let read = node.disk_reads.acquire().await;
                    let node2 = node.clone();
                    let served = tokio::task::spawn_blocking(move || {
                        let served = fileserve::serve(&f.path, &req);
                        // Only what we announce is served: a name we ignore
                        // (or hold as deleted or invalid) may still be on
                        // disk, and a peer may ask for it by name (1.19.2
                        // answers "no such file" too).
                        let announced = node2.db.announces_file(&f.id, &req.name);
                        match served {
                            Served::Data(_) if !matches!(announced, Ok(true)) => {
                                Served::Error(wire::ErrorCode::NoSuchFile)
                            }
                            s => s,
                        }
                    })
                    .await
                    .unwrap_or(Served::Error(wire::ErrorCode::Generic));
                    drop(read);
                    if served == Served::Stale {
                        tracing::info!(device = %peer, folder = %folder_id, file = ?name,
                            "requested data does not match; rescanning");
                        if let Some(rt) = node.folder_runtime(&folder_id) {
                            let _ = rt.scan_now.try_send(());
                        }
                    }
                    served
                }
            };
            let response = match served {
                Served::Data(data) => {
                    node.metrics.served_bytes.inc_by(data.len() as u64);
                    node.metrics.served_requests.inc();
                    wire::Response { id, data, code: 0 }
                }
                Served::Error(code) => wire::Response {
                    id,
                    data: Vec::new(),
                    code: code as i32,
                },
                Served::Stale => wire::Response {
                    id,
                    data: Vec::new(),
                    code: wire::ErrorCode::NoSuchFile as i32,
                },
            };
            let _ = tx.send((Message::Response(response), permit)).await;
            waiting.fetch_sub(1, Ordering::Relaxed);
        });
        Ok(())
    }
}

/// Our ClusterConfig for `peer`: every folder shared with it, listing all
/// the folder's devices with index IDs and max sequences for delta index
/// exchange.
pub fn cluster_config(node: &Node, peer: &DeviceId) -> Result<ClusterConfig> {
    let config = node.config();
    let mut folders = Vec::new();
    for f in config.folders.iter().filter(|f| f.shared_with(peer)) {
        let mut ids: Vec<DeviceId> = f.device_ids().collect();
        if !ids.contains(&node.my_id) {
            ids.push(node.my_id);
        }
        let mut devices = Vec::new();
        for id in ids {
            let (index_id, max_sequence) = if id == node.my_id {
                node.db.folder_state(&f.id)?
            } else {
                node.db.remote(&f.id, &id)?
            };
            let dc = config.device(&id);
            devices.push(Device {
                id: id.as_bytes().to_vec(),
                name: if id == node.my_id {
                    config.name.clone()
                } else {
                    dc.map(|d| d.name.clone()).unwrap_or_default()
                },
                addresses: dc.map(|d| d.addresses.clone()).unwrap_or_default(),
                compression: match dc.map(|d| d.compression).unwrap_or_default() {
                    Compression::Never => wire::Compression::Never as i32,
                    Compression::Always => wire::Compression::Always as i32,
                    Compression::Metadata => wire::Compression::Metadata as i32,
                },
                max_sequence,
                index_id,
                // What a Syncthing device that marks us as its introducer
                // takes over (ours is never sent as an introducer).
                introducer: id != node.my_id && dc.is_some_and(|d| d.introducer),
                skip_introduction_removals: id != node.my_id
                    && dc.is_some_and(|d| d.skip_introduction_removals),
                ..Default::default()
            });
        }
        folders.push(Folder {
            id: f.id.clone(),
            label: if f.label.is_empty() {
                f.id.clone()
            } else {
                f.label.clone()
            },
            // As 1.x's read_only bool (true == SEND_ONLY) so a 1.x peer
            // reads what it always did; 2.x never sets it and only looks
            // for RECEIVE_ENCRYPTED, so RECEIVE_ONLY (which 1.x would read
            // as read-only) is not announced.
            r#type: if f.read_only() {
                wire::FolderType::SendOnly as i32
            } else {
                wire::FolderType::SendReceive as i32
            },
            stop_reason: if f.paused {
                wire::FolderStopReason::Paused as i32
            } else {
                wire::FolderStopReason::Running as i32
            },
            devices,
        });
    }
    Ok(ClusterConfig {
        folders,
        secondary: false,
    })
}

/// Sends our index of `folder` from sequence `start` on, then every change
/// as it happens.
async fn send_index(node: Arc<Node>, folder: String, start: i64, tx: mpsc::Sender<Message>) {
    let Some(rt) = node.folder_runtime(&folder) else {
        return;
    };
    let mut changes = rt.sequence.subscribe();
    let mut sent = start;
    let mut first = start == 0;
    let mut last_round = Instant::now();
    loop {
        loop {
            let n2 = node.clone();
            let f2 = folder.clone();
            let batch = tokio::task::spawn_blocking(move || next_batch(&n2, &f2, sent)).await;
            let batch = match batch {
                Ok(Ok(b)) => b,
                Ok(Err(e)) => {
                    tracing::error!(folder = %folder, error = %format!("{e:#}"), "cannot read the index");
                    return;
                }
                Err(_) => return,
            };
            let Some(last) = batch.last().map(|f| f.sequence) else {
                break;
            };
            let index = Index {
                folder: folder.clone(),
                files: batch,
                last_sequence: last,
                prev_sequence: sent,
            };
            let msg = if first {
                Message::Index(index)
            } else {
                Message::IndexUpdate(index)
            };
            first = false;
            if tx.send(msg).await.is_err() {
                return;
            }
            sent = last;
        }
        if changes.changed().await.is_err() {
            return;
        }
        // At most one round of updates per 250 ms (as Syncthing), so a
        // burst of changes travels in few, full batches.
        let since = last_round.elapsed();
        if since < INDEX_UPDATE_GAP {
            tokio::time::sleep(INDEX_UPDATE_GAP - since).await;
        }
        last_round = Instant::now();
    }
}

fn next_batch(node: &Node, folder: &str, after: i64) -> Result<Vec<FileInfo>> {
    // One more than a batch holds, for the rename rule below.
    let mut files = node.db.files_since(folder, after, BATCH_FILES + 1)?;
    for f in files.iter_mut().filter(|f| f.invalid) {
        // A receive-only local change is announced invalid with an empty
        // version, as 1.19.2 does.
        f.version = Some(Default::default());
    }
    let mut batch = batch_of(files);
    // Never send what 2.1.2 disconnects on: repairable entries are
    // repaired, others (which our scanner and puller never record) are
    // left out with an error, rather than losing the connection.
    batch.retain_mut(|f| match fit_for_sending(f) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(folder, error = %e, "index entry breaks Syncthing 2.1.2's rules; not sent");
            false
        }
    });
    Ok(batch)
}

/// Cuts a batch: at most 1000 files or about 250 KiB, except that a
/// deletion right after a non-deleted entry still joins a full batch, as
/// in Syncthing, so both halves of a rename travel together.
fn batch_of(files: Vec<FileInfo>) -> Vec<FileInfo> {
    let mut out: Vec<FileInfo> = Vec::with_capacity(files.len().min(BATCH_FILES + 1));
    let mut bytes = 0;
    for f in files {
        // Sequences come ascending and unique from the database; one that
        // is not above the previous would make 2.x report the batch (and
        // is a bug of ours), so it never goes out.
        if out.last().is_some_and(|l| f.sequence <= l.sequence) {
            tracing::error!(name = ?f.name, sequence = f.sequence, "repeated sequence number in an index batch; entry left out");
            continue;
        }
        let len = f.encoded_len();
        let full = out.len() >= BATCH_FILES || (!out.is_empty() && bytes + len > BATCH_BYTES);
        if full {
            let rename_half = f.deleted && out.last().is_some_and(|l| !l.deleted);
            if rename_half {
                out.push(f);
            }
            break;
        }
        bytes += len;
        out.push(f);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, deleted: bool) -> FileInfo {
        FileInfo {
            name: name.into(),
            deleted,
            ..Default::default()
        }
    }

    #[test]
    fn batches_keep_rename_halves_together() {
        let mut files: Vec<FileInfo> = (0..BATCH_FILES)
            .map(|i| FileInfo {
                sequence: i as i64 + 1,
                ..file(&format!("f{i}"), false)
            })
            .collect();
        let n = BATCH_FILES as i64;
        files.push(FileInfo {
            sequence: n + 1,
            ..file("old-name", true)
        });
        files.push(FileInfo {
            sequence: n + 2,
            ..file("next", false)
        });
        let b = batch_of(files.clone());
        assert_eq!(b.len(), BATCH_FILES + 1);
        assert!(b[BATCH_FILES].deleted);
        // Without the deletion right after, the batch stops at 1000.
        files.remove(BATCH_FILES);
        assert_eq!(batch_of(files).len(), BATCH_FILES);
    }

    #[test]
    fn batches_never_repeat_a_sequence() {
        let mut files: Vec<FileInfo> = (1..=5)
            .map(|i| FileInfo {
                sequence: i,
                ..file(&format!("f{i}"), false)
            })
            .collect();
        files.insert(3, files[2].clone());
        let b = batch_of(files);
        let seqs: Vec<i64> = b.iter().map(|f| f.sequence).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    }
}
