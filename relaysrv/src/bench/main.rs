//! `relay-bench`: load generator for `scripts/bench-relay`. Drives any relay
//! speaking protocol v1 (ours or strelaysrv) over loopback, or measures a
//! plain TCP copy for comparison. Prints `result NAME VALUE` lines.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use proto::relay::{
    ConnectRequest, Header, JoinRelayRequest, JoinSessionRequest, Message, SessionInvitation,
    ShortBytes, HEADER_LEN,
};
use proto::tls::{alpn, ServerPin, Versions};
use proto::{DeviceId, Identity, KeyKind};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Mutex, Semaphore};
use tokio_rustls::TlsConnector;

#[derive(Parser)]
#[command(about = "Load generator for relay servers (used by scripts/bench-relay)")]
struct Args {
    /// Relay address HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:22067")]
    relay: String,
    /// Relay device ID to pin (optional).
    #[arg(long)]
    relay_id: Option<String>,
    /// Keep this client's certificate and key here (created when missing)
    /// instead of a new identity per run: an allow-list written by the
    /// `allow-list` mode then admits it.
    #[arg(long)]
    identity_dir: Option<PathBuf>,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Bytes per second through `pairs` pairings, each moving `bytes`.
    Throughput {
        #[arg(long, default_value_t = 1)]
        pairs: usize,
        #[arg(long)]
        bytes: u64,
    },
    /// The same over direct loopback TCP connections (no relay).
    Direct {
        #[arg(long, default_value_t = 1)]
        pairs: usize,
        #[arg(long)]
        bytes: u64,
    },
    /// Pairings completed per second (each closed once both sides joined).
    Setup {
        #[arg(long)]
        pairs: usize,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// Opens `pairs` pairings, writes their count to `ready_file`, then
    /// holds them idle for `hold_secs`.
    Idle {
        #[arg(long)]
        pairs: usize,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long)]
        ready_file: PathBuf,
        #[arg(long, default_value_t = 30)]
        hold_secs: u64,
    },
    /// Writes an allow-list of `devices` device IDs to `out`: this
    /// client's (see --identity-dir) and random others.
    AllowList {
        #[arg(long)]
        devices: usize,
        #[arg(long)]
        out: PathBuf,
    },
}

struct Client {
    relay: String,
    tls: TlsConnector,
}

async fn read_msg<R: AsyncRead + Unpin>(r: &mut R) -> anyhow::Result<Message> {
    let mut head = [0u8; HEADER_LEN];
    r.read_exact(&mut head).await?;
    let h = Header::decode(&head)?;
    let mut payload = vec![0u8; h.length];
    r.read_exact(&mut payload).await?;
    Ok(Message::decode(h.kind, &payload)?)
}

async fn write_msg<W: AsyncWrite + Unpin>(w: &mut W, m: &Message) -> anyhow::Result<()> {
    w.write_all(&m.encode()?).await?;
    w.flush().await?;
    Ok(())
}

impl Client {
    async fn protocol(&self) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(&self.relay).await?;
        tcp.set_nodelay(true)?;
        Ok(self.tls.connect(proto::tls::server_name(), tcp).await?)
    }

    /// Joins as a listening device; invitations go to the returned channel.
    async fn listen(&self) -> anyhow::Result<mpsc::UnboundedReceiver<SessionInvitation>> {
        let tls = self.protocol().await?;
        let (mut rd, mut wr) = tokio::io::split(tls);
        write_msg(
            &mut wr,
            &Message::JoinRelayRequest(JoinRelayRequest::default()),
        )
        .await?;
        match read_msg(&mut rd).await? {
            Message::Response(r) if r.code == 0 => {}
            other => bail!("join refused: {other:?}"),
        }
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(m) = read_msg(&mut rd).await {
                match m {
                    Message::Ping if write_msg(&mut wr, &Message::Pong).await.is_err() => break,
                    Message::SessionInvitation(i) => {
                        let _ = tx.send(i);
                    }
                    _ => {}
                }
            }
        });
        Ok(rx)
    }

    async fn invite(&self, target: DeviceId) -> anyhow::Result<SessionInvitation> {
        let mut tls = self.protocol().await?;
        let req = ConnectRequest {
            id: ShortBytes::from_array(*target.as_bytes()),
        };
        write_msg(&mut tls, &Message::ConnectRequest(req)).await?;
        match read_msg(&mut tls).await? {
            Message::SessionInvitation(i) => Ok(i),
            other => bail!("no invitation: {other:?}"),
        }
    }

    async fn join(&self, key: &ShortBytes) -> anyhow::Result<TcpStream> {
        let mut tcp = TcpStream::connect(&self.relay).await?;
        tcp.set_nodelay(true)?;
        let req = JoinSessionRequest { key: key.clone() };
        write_msg(&mut tcp, &Message::JoinSessionRequest(req)).await?;
        match read_msg(&mut tcp).await? {
            Message::Response(r) if r.code == 0 => Ok(tcp),
            other => bail!("session join refused: {other:?}"),
        }
    }
}

type Invitations = Arc<Mutex<mpsc::UnboundedReceiver<SessionInvitation>>>;

/// One complete pairing: (listening side, dialing side).
async fn one_pairing(
    c: &Client,
    invites: &Invitations,
    target: DeviceId,
) -> anyhow::Result<(TcpStream, TcpStream)> {
    let mine = c.invite(target).await?;
    let theirs = tokio::time::timeout(Duration::from_secs(10), async {
        invites.lock().await.recv().await
    })
    .await
    .context("no server invitation within 10 s")?
    .context("listener gone")?;
    let (a, b) = tokio::try_join!(c.join(&theirs.key), c.join(&mine.key))?;
    Ok((a, b))
}

/// Many pairings, `concurrency` at a time; failures are counted, not fatal.
async fn many_pairings(
    c: Arc<Client>,
    invites: Invitations,
    target: DeviceId,
    n: usize,
    concurrency: usize,
    keep: bool,
) -> (Vec<(TcpStream, TcpStream)>, usize) {
    let sem = Arc::new(Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        let (c, invites) = (c.clone(), invites.clone());
        tasks.spawn(async move {
            let r = one_pairing(&c, &invites, target).await;
            drop(permit);
            r
        });
    }
    let (mut kept, mut failed) = (Vec::new(), 0);
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(pair)) if keep => kept.push(pair),
            Ok(Ok(_)) => {}
            _ => failed += 1,
        }
    }
    (kept, failed)
}

fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain get/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Moves `bytes` from a to b over blocking sockets; returns when b has all.
/// Both ends avoid copying through user space (sendfile from a memfd,
/// receive with MSG_TRUNC), so the client spends as little CPU as possible
/// and the relay in between is what is measured.
fn pump(a: std::net::TcpStream, b: std::net::TcpStream, bytes: u64) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let w = std::thread::spawn(move || {
            if let Err(e) = send_zero_copy(&a, bytes) {
                eprintln!("send: {e}");
            }
            std::thread::sleep(Duration::from_millis(50));
        });
        let got = recv_discard(&b, bytes);
        let _ = w.join();
        if got < bytes {
            eprintln!("short transfer: {got} of {bytes}");
        }
    })
}

const SOURCE_LEN: usize = 16 << 20;

fn send_zero_copy(sock: &std::net::TcpStream, bytes: u64) -> std::io::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: memfd_create with a static C string; the fd is owned below.
    let fd = unsafe { libc::memfd_create(c"relay-bench".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is owned only here.
    let src = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut file = std::fs::File::from(src);
    let pattern: Vec<u8> = (0..SOURCE_LEN).map(|i| (i % 251) as u8).collect();
    file.write_all(&pattern)?;
    let mut left = bytes;
    while left > 0 {
        let mut off: libc::off_t = 0;
        let mut chunk_left = (left as usize).min(SOURCE_LEN);
        while chunk_left > 0 {
            // SAFETY: valid descriptors and offset pointer.
            let n =
                unsafe { libc::sendfile(sock.as_raw_fd(), file.as_raw_fd(), &mut off, chunk_left) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            chunk_left -= n as usize;
            left -= n as u64;
        }
    }
    Ok(())
}

fn recv_discard(sock: &std::net::TcpStream, bytes: u64) -> u64 {
    use std::os::fd::AsRawFd;
    let mut scratch = [0u8; 64];
    let mut got = 0u64;
    while got < bytes {
        let want = ((bytes - got) as usize).min(8 << 20);
        // SAFETY: MSG_TRUNC makes TCP discard up to `want` bytes without
        // copying them into the (small) buffer.
        let n = unsafe {
            libc::recv(
                sock.as_raw_fd(),
                scratch.as_mut_ptr().cast(),
                want,
                libc::MSG_TRUNC,
            )
        };
        if n <= 0 {
            let e = std::io::Error::last_os_error();
            if n < 0 && e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        got += n as u64;
    }
    got
}

fn to_std(t: TcpStream) -> anyhow::Result<std::net::TcpStream> {
    let s = t.into_std()?;
    s.set_nonblocking(false)?;
    Ok(s)
}

fn transfer(pairs: Vec<(std::net::TcpStream, std::net::TcpStream)>, bytes: u64) -> f64 {
    let n = pairs.len() as u64;
    let started = Instant::now();
    let threads: Vec<_> = pairs.into_iter().map(|(a, b)| pump(a, b, bytes)).collect();
    for t in threads {
        let _ = t.join();
    }
    (n * bytes) as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    raise_nofile();
    let args = Args::parse();
    let identity = match &args.identity_dir {
        None => Identity::generate("syncthing", KeyKind::Ed25519)?,
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            Identity::load_or_generate(
                &dir.join("cert.pem"),
                &dir.join("key.pem"),
                "syncthing",
                KeyKind::Ed25519,
            )
            .context("bench identity")?
            .into_identity()
        }
    };
    let pin = match &args.relay_id {
        Some(id) => ServerPin::Device(id.parse()?),
        None => ServerPin::Any,
    };
    let tls =
        proto::tls::client_config(Some(&identity), &[alpn::RELAY], pin, Versions::Tls12AndUp)?;
    let client = Arc::new(Client {
        relay: args.relay.clone(),
        tls: TlsConnector::from(Arc::new(tls)),
    });
    let target = identity.device_id();

    match args.mode {
        Mode::AllowList { devices, out } => {
            let mut text = format!("# relay-bench\n{target}\n");
            for _ in 1..devices {
                let id = DeviceId::from_der_cert(&rand::random::<[u8; 32]>());
                text.push_str(&format!("{id}\n"));
            }
            std::fs::write(&out, text).with_context(|| format!("write {}", out.display()))?;
        }
        Mode::Direct { pairs, bytes } => {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            let addr = l.local_addr()?;
            let mut conns = Vec::new();
            for _ in 0..pairs {
                let a = std::net::TcpStream::connect(addr)?;
                let (b, _) = l.accept()?;
                a.set_nodelay(true)?;
                conns.push((a, b));
            }
            let rate = tokio::task::spawn_blocking(move || transfer(conns, bytes)).await?;
            println!("result throughput_bytes_per_s {rate:.0}");
        }
        Mode::Throughput { pairs, bytes } => {
            let invites = Arc::new(Mutex::new(client.listen().await?));
            let mut conns = Vec::new();
            for _ in 0..pairs {
                // strelaysrv (1.19.2 and 2.1.3 alike) sometimes answers a
                // join with "already connected": its session goroutine may
                // not be receiving yet when the second data connection
                // arrives. On a loaded machine that happens several times
                // in a row, so retry patiently, pausing a little longer
                // each time.
                let mut attempt = 0u64;
                let (a, b) = loop {
                    match one_pairing(&client, &invites, target).await {
                        Ok(p) => break p,
                        Err(e) if attempt < 20 => {
                            eprintln!("pairing failed, retrying: {e}");
                            attempt += 1;
                            tokio::time::sleep(Duration::from_millis(10 * attempt)).await;
                        }
                        Err(e) => return Err(e),
                    }
                };
                conns.push((to_std(a)?, to_std(b)?));
            }
            let rate = tokio::task::spawn_blocking(move || transfer(conns, bytes)).await?;
            println!("result throughput_bytes_per_s {rate:.0}");
        }
        Mode::Setup { pairs, concurrency } => {
            let invites = Arc::new(Mutex::new(client.listen().await?));
            let started = Instant::now();
            let (_, failed) =
                many_pairings(client, invites, target, pairs, concurrency, false).await;
            let secs = started.elapsed().as_secs_f64();
            println!(
                "result setup_pairings_per_s {:.0}",
                (pairs - failed) as f64 / secs
            );
            println!("result setup_failed {failed}");
        }
        Mode::Idle {
            pairs,
            concurrency,
            ready_file,
            hold_secs,
        } => {
            let invites = Arc::new(Mutex::new(client.listen().await?));
            let (kept, failed) =
                many_pairings(client, invites, target, pairs, concurrency, true).await;
            std::fs::write(&ready_file, format!("{} {failed}\n", kept.len()))?;
            println!("result idle_pairings {}", kept.len());
            println!("result idle_failed {failed}");
            tokio::time::sleep(Duration::from_secs(hold_secs)).await;
            drop(kept);
        }
    }
    Ok(())
}
