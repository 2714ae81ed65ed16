//! `discoload`: a load generator for global discovery servers (ours or
//! stdiscosrv), used by `scripts/bench-discosrv`.
//!
//! Simulated devices each have their own client certificate (ECDSA P-384
//! like Syncthing 1.x by default). Modes:
//!
//! * `lookup` — GET `/?device=` over kept-alive TLS: of announced devices,
//!   and with `--unknown-share` that share of lookups for a pool of
//!   `--unknown-devices` IDs that were never announced (the 404s a real
//!   server answers for offline devices);
//! * `announce` — POST `/` over kept-alive TLS, one device per connection;
//! * `announce-fresh` — POST `/` with a new TCP + TLS handshake each time;
//! * `lookup-unknown` — lookups of random, never-announced IDs;
//! * `fill` — announce `--devices` distinct devices through a reverse-proxy
//!   style plain HTTP listener (`X-Tls-Client-Cert-Der-Base64`), for memory
//!   measurements; certificates are made unique cheaply, not signed anew;
//! * `fill-tls` — announce `--devices` distinct devices, each over its own
//!   TCP + TLS handshake with its own new certificate (`--key-type`), as
//!   real devices arrive: the memory a million handshakes leave behind.
//!
//! Prints one JSON object with requests/s, latency percentiles and, given
//! `--server-pid`, the server's CPU time per request and its memory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use proto::tls::{self, alpn, ServerPin, Versions};
use proto::{DeviceId, Identity, KeyKind};
use tokio::net::TcpStream;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    Lookup,
    Announce,
    AnnounceFresh,
    LookupUnknown,
    Fill,
    FillTls,
}

#[derive(Parser, Debug, Clone)]
#[command(
    name = "discoload",
    about = "Load generator for Syncthing global discovery servers"
)]
struct Args {
    /// Server address (HOST:PORT).
    #[arg(long, env = "DISCOLOAD_TARGET")]
    target: SocketAddr,
    #[arg(long, env = "DISCOLOAD_MODE", value_enum)]
    mode: Mode,
    /// Plain HTTP instead of TLS (servers in reverse-proxy mode).
    #[arg(long, env = "DISCOLOAD_PLAIN")]
    plain: bool,
    /// Simultaneous connections.
    #[arg(long, env = "DISCOLOAD_CONCURRENCY", default_value_t = 32)]
    concurrency: usize,
    /// How long to measure (not used by `fill`).
    #[arg(long, env = "DISCOLOAD_DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Simulated devices (each with its own certificate).
    #[arg(long, env = "DISCOLOAD_DEVICES", default_value_t = 256)]
    devices: usize,
    /// Key type of the simulated devices' certificates.
    #[arg(long, env = "DISCOLOAD_KEY_TYPE", default_value = "ecdsa-p384")]
    key_type: KeyKind,
    /// Total request rate to hold (0: as fast as possible).
    #[arg(long, env = "DISCOLOAD_RATE", default_value_t = 0.0)]
    rate: f64,
    /// Server process to measure CPU time and memory of.
    #[arg(long, env = "DISCOLOAD_SERVER_PID")]
    server_pid: Option<u32>,
    /// `lookup`: the share (0 to 1) of lookups for never-announced IDs.
    #[arg(long, env = "DISCOLOAD_UNKNOWN_SHARE", default_value_t = 0.0)]
    unknown_share: f64,
    /// `lookup`: how many distinct never-announced IDs those lookups use
    /// (0: as many as `--devices`).
    #[arg(long, env = "DISCOLOAD_UNKNOWN_DEVICES", default_value_t = 0)]
    unknown_devices: usize,
    /// `lookup`: a file of the announced devices' IDs (one per line). When
    /// it exists, its IDs are looked up and nothing is announced; when it
    /// does not, the devices are made and announced, and their IDs written
    /// to it, so that later runs look up the same stored devices.
    #[arg(long, env = "DISCOLOAD_IDS_FILE")]
    ids_file: Option<std::path::PathBuf>,
    /// Announce every device once before measuring (lookup modes).
    #[arg(long, env = "DISCOLOAD_PREFILL", default_value_t = true, action = clap::ArgAction::Set)]
    prefill: bool,
}

/// Latencies in 10 µs buckets up to 1 s.
struct Hist {
    buckets: Vec<u64>,
    count: u64,
}

impl Hist {
    fn new() -> Self {
        Hist {
            buckets: vec![0; 100_001],
            count: 0,
        }
    }
    fn record(&mut self, d: Duration) {
        let b = (d.as_micros() / 10).min(100_000) as usize;
        self.buckets[b] += 1;
        self.count += 1;
    }
    fn quantile_us(&self, q: f64) -> u64 {
        let want = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= want {
                return i as u64 * 10 + 5;
            }
        }
        0
    }
}

#[derive(Default)]
struct Totals {
    statuses: BTreeMap<u16, u64>,
    transport_errors: u64,
}

struct Shared {
    args: Args,
    devices: Vec<Identity>,
    /// Certificates as the fill mode sends them (base64 DER).
    fill_certs: Vec<String>,
    ids: Vec<String>,
    /// `lookup --unknown-share`: IDs no one announced.
    unknown_ids: Vec<String>,
    stop: AtomicBool,
    next: AtomicU64,
    totals: Mutex<Totals>,
    hist: Mutex<Hist>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(run(args))
}

fn make_devices(n: usize, kind: KeyKind) -> anyhow::Result<Vec<Identity>> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let per = n.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    (t * per..((t + 1) * per).min(n))
                        .map(|_| Identity::generate("syncthing", kind))
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        let mut all = Vec::with_capacity(n);
        for h in handles {
            match h.join() {
                Ok(Ok(v)) => all.extend(v),
                Ok(Err(e)) => bail!("generating certificates: {e}"),
                Err(_) => bail!("certificate thread panicked"),
            }
        }
        Ok(all)
    })
}

/// `n` distinct certificates derived from one: the last bytes (inside the
/// signature value) are overwritten with a counter. The result still
/// parses as X.509 and hashes to a distinct device ID; nothing verifies
/// the signature of a certificate forwarded by a trusted proxy.
fn fill_certs(base: &Identity, n: usize) -> Vec<String> {
    let der = base.cert_der().to_vec();
    (0..n as u64)
        .map(|i| {
            let mut d = der.clone();
            let len = d.len();
            d[len - 8..].copy_from_slice(&i.to_be_bytes());
            data_encoding::BASE64.encode(&d)
        })
        .collect()
}

fn announce_body(i: usize) -> Bytes {
    // Three typical addresses: not loopback, so any server keeps them.
    let (a, b) = ((i >> 8) & 0xff, i & 0xff);
    Bytes::from(format!(
        r#"{{"addresses":["tcp://10.{a}.{b}.1:22000","quic://10.{a}.{b}.1:22000","tcp://192.0.2.{b}:22000"]}}"#
    ))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let t = Instant::now();
    if !(0.0..=1.0).contains(&args.unknown_share) {
        bail!("--unknown-share must be between 0 and 1");
    }
    let known_ids: Option<Vec<String>> = match &args.ids_file {
        Some(path) if args.mode == Mode::Lookup && path.exists() => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let ids: Vec<String> = text.lines().map(str::to_owned).collect();
            if ids.is_empty() {
                bail!("{}: no device IDs", path.display());
            }
            Some(ids)
        }
        _ => None,
    };
    let n_certs = match args.mode {
        Mode::Fill | Mode::LookupUnknown | Mode::FillTls => 1,
        Mode::Lookup if known_ids.is_some() => 1,
        _ => args.devices.max(1),
    };
    let devices = make_devices(n_certs, args.key_type)?;
    let fill = if args.mode == Mode::Fill {
        fill_certs(&devices[0], args.devices)
    } else {
        Vec::new()
    };
    let prefill = args.prefill && known_ids.is_none();
    let ids: Vec<String> = match known_ids {
        Some(ids) => ids,
        None => devices.iter().map(|d| d.device_id().to_string()).collect(),
    };
    let unknown_ids = if args.mode == Mode::Lookup && args.unknown_share > 0.0 {
        let n = if args.unknown_devices == 0 {
            args.devices
        } else {
            args.unknown_devices
        };
        (0..n.max(1))
            .map(|_| DeviceId::from_bytes(rand::random()).to_string())
            .collect()
    } else {
        Vec::new()
    };
    eprintln!("discoload: {} certificates in {:?}", n_certs, t.elapsed());
    let shared = Arc::new(Shared {
        args: args.clone(),
        devices,
        fill_certs: fill,
        ids,
        unknown_ids,
        stop: AtomicBool::new(false),
        next: AtomicU64::new(0),
        totals: Mutex::new(Totals::default()),
        hist: Mutex::new(Hist::new()),
    });

    if prefill && matches!(args.mode, Mode::Lookup) {
        let mut tasks = Vec::new();
        for w in 0..args.concurrency.min(shared.devices.len()) {
            let s = shared.clone();
            tasks.push(tokio::spawn(async move {
                let mut i = w;
                while i < s.devices.len() {
                    let _ = one_fresh_announce(&s, i).await;
                    i += s.args.concurrency;
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        if let Some(path) = &args.ids_file {
            std::fs::write(path, shared.ids.join("\n"))
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }

    let cpu0 = args.server_pid.and_then(cpu_ticks);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..args.concurrency {
        let s = shared.clone();
        tasks.push(tokio::spawn(async move { worker(s, w).await }));
    }
    // Not one of `tasks`: it only reports, and ends with the workers.
    let reporter = (args.mode == Mode::FillTls).then(|| tokio::spawn(progress(shared.clone())));
    if !matches!(args.mode, Mode::Fill | Mode::FillTls) {
        tokio::time::sleep(args.duration).await;
        shared.stop.store(true, Ordering::Relaxed);
    }
    for t in tasks {
        let _ = t.await;
    }
    if let Some(r) = reporter {
        r.abort();
    }
    let elapsed = started.elapsed();
    let cpu1 = args.server_pid.and_then(cpu_ticks);

    let hist = shared
        .hist
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    let totals = shared
        .totals
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    let requests = hist.count;
    let rps = requests as f64 / elapsed.as_secs_f64();
    let clk = clock_ticks_per_sec();
    let cpu_us = match (cpu0, cpu1) {
        (Some(a), Some(b)) if requests > 0 => Some((b - a) as f64 * 1e6 / clk / requests as f64),
        _ => None,
    };
    let mem = args.server_pid.map(memory_kib).unwrap_or_default();
    let statuses: serde_json::Map<String, serde_json::Value> = totals
        .statuses
        .iter()
        .map(|(k, v)| (k.to_string(), (*v).into()))
        .collect();
    let out = serde_json::json!({
        "mode": format!("{:?}", args.mode),
        "target": args.target.to_string(),
        "concurrency": args.concurrency,
        "requests": requests,
        "seconds": elapsed.as_secs_f64(),
        "rps": rps,
        "p50_us": hist.quantile_us(0.5),
        "p99_us": hist.quantile_us(0.99),
        "statuses": statuses,
        "transport_errors": totals.transport_errors,
        "server_cpu_us_per_req": cpu_us,
        "server_rss_kib": mem.0,
        "server_peak_rss_kib": mem.1,
    });
    println!("{out}");
    Ok(())
}

type Sender = http1::SendRequest<Full<Bytes>>;

async fn connect(s: &Shared, who: Option<&Identity>) -> anyhow::Result<Sender> {
    let tcp = TcpStream::connect(s.args.target).await?;
    tcp.set_nodelay(true)?;
    if s.args.plain {
        let (sender, conn) = http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        return Ok(sender);
    }
    let config = tls::client_config(who, &[alpn::HTTP_1_1], ServerPin::Any, Versions::Tls12AndUp)?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(tls::server_name(), tcp)
        .await?;
    let (sender, conn) = http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

fn request(s: &Shared, i: usize) -> http::Request<Full<Bytes>> {
    let b = http::Request::builder().header("host", "discovery");
    let r = match s.args.mode {
        Mode::Lookup => {
            // Request i is for an unknown ID when floor((i+1)·share) steps
            // past floor(i·share): the unknown ones spread evenly (every
            // other one at 0.5), the same in every run. Each pool is walked
            // in order by its own count.
            let share = s.args.unknown_share;
            let before = (i as f64 * share).floor() as usize;
            let unknown = ((i + 1) as f64 * share).floor() as usize > before;
            let id = if unknown && !s.unknown_ids.is_empty() {
                &s.unknown_ids[before % s.unknown_ids.len()]
            } else {
                &s.ids[(i - before) % s.ids.len()]
            };
            b.uri(format!("/?device={id}"))
                .body(Full::new(Bytes::new()))
        }
        Mode::LookupUnknown => {
            let id = DeviceId::from_bytes(rand::random());
            b.uri(format!("/?device={id}"))
                .body(Full::new(Bytes::new()))
        }
        Mode::Announce | Mode::AnnounceFresh | Mode::FillTls => b
            .method("POST")
            .uri("/")
            .header("content-type", "application/json")
            .body(Full::new(announce_body(i))),
        Mode::Fill => b
            .method("POST")
            .uri("/")
            .header("content-type", "application/json")
            .header("x-tls-client-cert-der-base64", s.fill_certs[i].as_str())
            .header("x-forwarded-for", "192.0.2.1")
            .body(Full::new(announce_body(i))),
    };
    r.unwrap_or_default()
}

async fn send(s: &Shared, sender: &mut Sender, i: usize) -> anyhow::Result<u16> {
    sender.ready().await?;
    let t = Instant::now();
    let resp = sender.send_request(request(s, i)).await?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await?;
    let d = t.elapsed();
    if let Ok(mut h) = s.hist.lock() {
        h.record(d);
    }
    Ok(status)
}

fn tally(s: &Shared, r: &anyhow::Result<u16>) {
    if let Ok(mut t) = s.totals.lock() {
        match r {
            Ok(code) => *t.statuses.entry(*code).or_default() += 1,
            Err(_) => t.transport_errors += 1,
        }
    }
}

async fn one_fresh_announce(s: &Shared, i: usize) -> anyhow::Result<u16> {
    fresh_announce_as(s, &s.devices[i % s.devices.len()], i).await
}

async fn fresh_announce_as(s: &Shared, who: &Identity, i: usize) -> anyhow::Result<u16> {
    let mut sender = connect(s, Some(who)).await?;
    let b = http::Request::builder()
        .method("POST")
        .uri("/")
        .header("host", "discovery")
        .header("connection", "close")
        .body(Full::new(announce_body(i)))?;
    let resp = sender.send_request(b).await?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await?;
    Ok(status)
}

async fn worker(s: Arc<Shared>, w: usize) {
    let pace = (s.args.rate > 0.0)
        .then(|| Duration::from_secs_f64(s.args.concurrency as f64 / s.args.rate));
    let mut ticker = pace.map(|p| {
        let mut i = tokio::time::interval(p);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    let mut sender: Option<Sender> = None;
    loop {
        if s.stop.load(Ordering::Relaxed) {
            return;
        }
        if let Some(t) = ticker.as_mut() {
            t.tick().await;
        }
        let n = s.next.fetch_add(1, Ordering::Relaxed) as usize;
        let r = match s.args.mode {
            Mode::AnnounceFresh => {
                let t = Instant::now();
                let r = one_fresh_announce(&s, n).await;
                if r.is_ok() {
                    if let Ok(mut h) = s.hist.lock() {
                        h.record(t.elapsed());
                    }
                }
                r
            }
            Mode::Fill => {
                if n >= s.fill_certs.len() {
                    return;
                }
                keepalive(&s, &mut sender, None, n).await
            }
            Mode::FillTls => {
                if n >= s.args.devices {
                    return;
                }
                let t = Instant::now();
                let r = match Identity::generate("syncthing", s.args.key_type) {
                    Ok(who) => fresh_announce_as(&s, &who, n).await,
                    Err(e) => Err(e.into()),
                };
                if r.is_ok() {
                    if let Ok(mut h) = s.hist.lock() {
                        h.record(t.elapsed());
                    }
                }
                r
            }
            Mode::Announce => {
                let who = &s.devices[w % s.devices.len()];
                keepalive(&s, &mut sender, Some(who), w).await
            }
            _ => keepalive(&s, &mut sender, None, n).await,
        };
        tally(&s, &r);
    }
}

async fn keepalive(
    s: &Shared,
    sender: &mut Option<Sender>,
    who: Option<&Identity>,
    i: usize,
) -> anyhow::Result<u16> {
    if sender.as_ref().is_none_or(|x| x.is_closed()) {
        *sender = Some(connect(s, who).await?);
    }
    let Some(snd) = sender.as_mut() else {
        bail!("no connection")
    };
    let r = send(s, snd, i).await;
    if r.is_err() {
        *sender = None;
    }
    r
}

/// `fill-tls` takes minutes at a million devices: a line every 10 s.
async fn progress(s: Arc<Shared>) {
    let started = Instant::now();
    let total = s.args.devices as u64;
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let done = s.next.load(Ordering::Relaxed).min(total);
        eprintln!(
            "discoload: {done}/{total} devices announced ({:.0}/s)",
            done as f64 / started.elapsed().as_secs_f64()
        );
        if done >= total {
            return;
        }
    }
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are
    // fields 14 and 15 (1-based) of the whole line.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// (VmRSS, VmHWM) in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
