//! Forwarding between the two data connections of a pairing.
//!
//! Each direction waits for its source socket to become readable and only
//! then takes a conduit: on Linux a kernel pipe that `splice(2)` fills from
//! one socket and empties into the other without the bytes ever entering
//! user space; elsewhere (or with `--forwarder copy`) a user-space buffer.
//! A direction that runs dry hands its conduit back to a small shared pool,
//! so an idle pairing holds two sockets and a task, nothing else.
//!
//! Back-pressure: a direction reads at most one chunk, then writes all of it
//! before reading again, so at most one chunk per active direction is ever
//! in flight. Either direction ending (EOF, error, timeout) ends the pairing
//! and closes both sockets.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::config::ForwarderKind;
use crate::limits::{pace, ByteBucket};
use crate::state::pending::PendingPairing;
use crate::state::{ActivePairing, Relay};
use daemon::sync::MutexExt;

/// Conduits kept for reuse; more than this many idle ones are freed.
const POOL_MAX: usize = 32;

/// Forwards between `a` and `b` until either side goes away.
pub async fn run_pairing(relay: Arc<Relay>, p: &PendingPairing, a: TcpStream, b: TcpStream) {
    let cancel = relay.shutdown.token().child_token();
    relay.add_active(
        p.id,
        ActivePairing {
            server: p.server,
            client: p.client,
            cancel: cancel.clone(),
        },
    );
    // The listening device may have left between the invitation and now;
    // its leave() could not see this pairing yet.
    if relay.outbox(&p.server).is_none() {
        cancel.cancel();
    }
    let started = Instant::now();
    relay
        .metrics
        .setup_seconds
        .observe(started.duration_since(p.created).as_secs_f64());
    relay.metrics.pairings_total.inc();
    tracing::debug!(pairing = p.id, server = %p.server.short(), client = %p.client.short(), "pairing started");

    let session_bucket = ByteBucket::new(relay.settings.per_session_rate);
    let watch = Watch::new();
    let timeout = relay.settings.network_timeout;
    let how = tokio::select! {
        r = pump(&relay, &a, &b, session_bucket.as_ref(), &watch, 0) => end(r, "server side"),
        r = pump(&relay, &b, &a, session_bucket.as_ref(), &watch, 1) => end(r, "client side"),
        _ = watch.expired(timeout) => "idle for the network timeout".to_owned(),
        _ = cancel.cancelled() => "a device left or the relay is stopping".to_owned(),
    };
    drop((a, b));
    relay.remove_active(p.id);
    relay
        .metrics
        .lifetime_seconds
        .observe(started.elapsed().as_secs_f64());
    tracing::debug!(pairing = p.id, reason = %how, "pairing ended");
}

fn end(r: io::Result<()>, who: &str) -> String {
    match r {
        Ok(()) => format!("{who} closed"),
        Err(e) => format!("{who}: {e}"),
    }
}

/// Progress of both directions, for the inactivity watchdog.
struct Watch {
    base: Instant,
    last_ms: [AtomicU64; 2],
    busy: [AtomicBool; 2],
}

impl Watch {
    fn new() -> Watch {
        Watch {
            base: Instant::now(),
            last_ms: [AtomicU64::new(0), AtomicU64::new(0)],
            busy: [AtomicBool::new(false), AtomicBool::new(false)],
        }
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    fn moved(&self, dir: usize) {
        self.last_ms[dir].store(self.now_ms(), Ordering::Relaxed);
    }

    /// Resolves when no byte moved for `timeout`, or when a direction holding
    /// bytes could not write any of them for `timeout`.
    async fn expired(&self, timeout: Duration) {
        let t = timeout.as_millis() as u64;
        loop {
            let last = [0, 1].map(|i| self.last_ms[i].load(Ordering::Relaxed));
            let mut deadline = last[0].max(last[1]) + t;
            for (busy, last) in self.busy.iter().zip(last) {
                if busy.load(Ordering::Relaxed) {
                    deadline = deadline.min(last + t);
                }
            }
            let now = self.now_ms();
            if now >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(deadline - now)).await;
        }
    }
}

/// One direction: `from` → `to`.
async fn pump(
    relay: &Relay,
    from: &TcpStream,
    to: &TcpStream,
    session_bucket: Option<&ByteBucket>,
    watch: &Watch,
    dir: usize,
) -> io::Result<()> {
    let buckets: Vec<&ByteBucket> = [relay.global_bucket.as_ref(), session_bucket]
        .into_iter()
        .flatten()
        .collect();
    let mut chunk = relay.settings.network_buffer;
    for b in &buckets {
        chunk = chunk.min(b.burst().max(1));
    }
    let kind = relay.settings.forwarder;
    let mut conduit: Option<Conduit> = None;
    loop {
        let c = match conduit.as_mut() {
            Some(c) => c,
            None => {
                from.readable().await?;
                conduit.insert(Conduit::acquire(kind, relay.settings.network_buffer)?)
            }
        };
        let n = match c.fill(from, chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if let Some(c) = conduit.take() {
                    c.release();
                }
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        watch.moved(dir);
        if !buckets.is_empty() {
            pace(&buckets, n).await;
        }
        watch.busy[dir].store(true, Ordering::Relaxed);
        let mut left = n;
        while left > 0 {
            match c.drain(to, n, left) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(m) => {
                    left -= m;
                    watch.moved(dir);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => to.writable().await?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        watch.busy[dir].store(false, Ordering::Relaxed);
        relay.metrics.bytes_proxied.inc_by(n as u64);
    }
}

/// Where bytes wait between the two sockets.
enum Conduit {
    #[cfg(target_os = "linux")]
    Pipe(pipe::Pipe),
    Buffer(Vec<u8>),
}

static BUFFERS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

impl Conduit {
    fn acquire(kind: ForwarderKind, size: usize) -> io::Result<Conduit> {
        match kind {
            #[cfg(target_os = "linux")]
            ForwarderKind::Splice => match pipe::Pipe::acquire(size) {
                Ok(p) => Ok(Conduit::Pipe(p)),
                // Out of descriptors (a pipe needs two): copy this burst
                // through a buffer rather than end the pairing.
                Err(_) => Conduit::acquire(ForwarderKind::Copy, size),
            },
            _ => {
                let buf = BUFFERS
                    .locked()
                    .pop()
                    .filter(|b| b.len() == size)
                    .unwrap_or_else(|| vec![0u8; size]);
                Ok(Conduit::Buffer(buf))
            }
        }
    }

    /// Returns an empty conduit to the pool.
    fn release(self) {
        match self {
            #[cfg(target_os = "linux")]
            Conduit::Pipe(p) => p.release(),
            Conduit::Buffer(b) => {
                let mut pool = BUFFERS.locked();
                if pool.len() < POOL_MAX {
                    pool.push(b);
                }
            }
        }
    }

    /// Reads up to `max` bytes from `from`.
    fn fill(&mut self, from: &TcpStream, max: usize) -> io::Result<usize> {
        match self {
            #[cfg(target_os = "linux")]
            Conduit::Pipe(p) => p.fill(from, max),
            Conduit::Buffer(b) => {
                let max = max.min(b.len());
                from.try_read(&mut b[..max])
            }
        }
    }

    /// Writes some of the `left` bytes still held (of `filled`) to `to`.
    fn drain(&mut self, to: &TcpStream, filled: usize, left: usize) -> io::Result<usize> {
        match self {
            #[cfg(target_os = "linux")]
            Conduit::Pipe(p) => {
                let _ = filled;
                p.drain(to, left)
            }
            Conduit::Buffer(b) => {
                let start = filled - left;
                match b.get(start..filled) {
                    Some(rest) => to.try_write(rest),
                    None => Err(io::ErrorKind::InvalidInput.into()),
                }
            }
        }
    }
}

#[cfg(target_os = "linux")]
mod pipe {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::sync::Mutex;

    use tokio::io::Interest;
    use tokio::net::TcpStream;

    use daemon::sync::MutexExt;

    /// A non-blocking kernel pipe; closed on drop.
    pub struct Pipe {
        read: OwnedFd,
        write: OwnedFd,
        size: usize,
        /// Bytes inside: only an empty pipe goes back to the pool.
        held: usize,
    }

    static PIPES: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());

    impl Pipe {
        pub fn acquire(size: usize) -> io::Result<Pipe> {
            if let Some(p) = PIPES.locked().pop() {
                if p.size == size {
                    return Ok(p);
                }
            }
            let mut fds = [0i32; 2];
            // SAFETY: pipe2 writes two descriptors into the array on success.
            if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: both descriptors were just created and are owned here only.
            let (read, write) =
                unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
            // A bigger pipe means fewer system calls per byte. Refused (over
            // the per-user pipe quota) it stays at the default: still correct.
            // SAFETY: fcntl on a descriptor we own.
            unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) };
            Ok(Pipe {
                read,
                write,
                size,
                held: 0,
            })
        }

        pub fn release(self) {
            if self.held == 0 {
                let mut pool = PIPES.locked();
                if pool.len() < super::POOL_MAX {
                    pool.push(self);
                }
            }
        }

        pub fn fill(&mut self, from: &TcpStream, max: usize) -> io::Result<usize> {
            let (src, dst) = (from.as_raw_fd(), self.write.as_raw_fd());
            let n = from.try_io(Interest::READABLE, || splice(src, dst, max))?;
            self.held += n;
            Ok(n)
        }

        pub fn drain(&mut self, to: &TcpStream, left: usize) -> io::Result<usize> {
            let (src, dst) = (self.read.as_raw_fd(), to.as_raw_fd());
            let n = to.try_io(Interest::WRITABLE, || splice(src, dst, left))?;
            self.held -= n.min(self.held);
            Ok(n)
        }
    }

    fn splice(from: i32, to: i32, len: usize) -> io::Result<usize> {
        // SAFETY: plain descriptors and null offsets (both ends are streams).
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}
