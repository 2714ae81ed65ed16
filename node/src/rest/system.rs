//! `/rest/system/*` and `/rest/noauth/health`.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use http::{Method, StatusCode};
use serde_json::{json, Value};

use super::http_util::{bad, internal, json, not_found, ok, rfc3339, text, Answer, Call, Reply};
use crate::model::Node;

/// Directory entries `/rest/system/browse` lists at most.
const BROWSE_MAX: usize = 1000;

pub async fn route(c: &Call) -> Answer {
    let node = &c.node;
    match c.path.as_str() {
        "/rest/system/ping" => {
            c.allow(&[Method::GET, Method::POST])?;
            Ok(json(&json!({"ping": "pong"})))
        }
        // The older configuration endpoints tools still use.
        "/rest/system/config" | "/rest/system/config/insync" => super::config::route(c).await,
        "/rest/system/status" => {
            c.allow(&[Method::GET])?;
            Ok(json(&status(c)))
        }
        "/rest/system/shutdown" => {
            c.allow(&[Method::POST])?;
            node.stop_request
                .send_replace(Some(crate::model::StopRequest::Shutdown));
            Ok(json(&json!({"ok": "shutting down"})))
        }
        "/rest/system/restart" => {
            c.allow(&[Method::POST])?;
            restart(c)
        }
        "/rest/system/connections" => {
            c.allow(&[Method::GET])?;
            Ok(json(&connections(c)))
        }
        "/rest/system/version" => {
            c.allow(&[Method::GET])?;
            Ok(json(&version()))
        }
        "/rest/system/error" => {
            c.allow(&[Method::GET, Method::POST])?;
            errors(c)
        }
        "/rest/system/error/clear" => {
            c.allow(&[Method::POST])?;
            node.events.records.clear_errors();
            Ok(ok())
        }
        "/rest/system/log" => {
            c.allow(&[Method::GET])?;
            Ok(json(&log(c)))
        }
        "/rest/system/log.txt" => {
            c.allow(&[Method::GET])?;
            Ok(log_text(node))
        }
        "/rest/system/pause" | "/rest/system/resume" => {
            c.allow(&[Method::POST])?;
            pause(c, c.path.ends_with("pause"))
        }
        "/rest/system/discovery" => {
            c.allow(&[Method::GET])?;
            Ok(json(&discovered(node)))
        }
        "/rest/system/upgrade" => {
            c.allow(&[Method::GET, Method::POST])?;
            // As a Syncthing 2.x built without the upgrader answers (501;
            // 1.19.2 said 503): this node is upgraded by its package
            // manager or image.
            Err(text(
                StatusCode::NOT_IMPLEMENTED,
                "upgrade unsupported (this node is upgraded by its package or image, not by itself)",
            ))
        }
        "/rest/system/browse" => {
            c.allow(&[Method::GET])?;
            Ok(json(&browse(c.q("current").unwrap_or(""))))
        }
        "/rest/system/debug" => {
            c.allow(&[Method::GET, Method::POST])?;
            if c.method == Method::POST {
                return Err(bad(
                    "debug facilities are not switchable here; start the node with --log-level debug",
                ));
            }
            Ok(json(&json!({"enabled": [], "facilities": {}})))
        }
        "/rest/system/reset" => {
            c.allow(&[Method::POST])?;
            Err(bad(
                "resetting the database over the API is not supported; stop the node and remove its index database",
            ))
        }
        _ => Err(not_found()),
    }
}

/// `/rest/noauth/*`: answered without credentials.
pub async fn noauth(c: &Call) -> Answer {
    match c.path.as_str() {
        "/rest/noauth/health" => {
            c.allow(&[Method::GET])?;
            Ok(json(&json!({"status": "OK"})))
        }
        _ => Err(not_found()),
    }
}

/// `2024-01-02T03:04:05[.nnn]Z` (UTC only, what we hand out) to a time.
fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss) = (n(11..13)?, n(14..16)?, n(17..19)?);
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86400 + hh * 3600 + mm * 60 + ss;
    let frac = s[19..]
        .strip_prefix('.')
        .map(|f| f.trim_end_matches(|c: char| !c.is_ascii_digit()))
        .map_or(0, |f| {
            format!("{f:0<9}")
                .get(..9)
                .and_then(|x| x.parse::<u64>().ok())
                .unwrap_or(0)
        });
    let secs = u64::try_from(secs).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_nanos(frac))
}

fn proc_status(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                let v = l.strip_prefix(key)?.trim_start_matches(':').trim();
                v.split_whitespace().next()?.parse::<u64>().ok()
            })
        })
        .unwrap_or(0)
}

fn status(c: &Call) -> Value {
    let node = &c.node;
    let config = node.config();
    let uptime = node.started.elapsed().map_or(0, |d| d.as_secs());
    let mut services = serde_json::Map::new();
    for a in config
        .options
        .listen_addresses
        .iter()
        .filter(|a| !a.is_empty())
    {
        services.insert(
            a.clone(),
            json!({"error": null, "lanAddresses": [a], "wanAddresses": [a]}),
        );
    }
    let rss = proc_status("VmRSS") * 1024;
    let mut v = json!({
        "myID": node.my_id.to_string(),
        "uptime": uptime,
        "startTime": rfc3339(node.started),
        "alloc": rss,
        "sys": proc_status("VmSize") * 1024,
        // Threads of the process (the closest thing to goroutines).
        "goroutines": proc_status("Threads"),
        "cpuPercent": 0,
        "connectionServiceStatus": services,
        "lastDialStatus": {},
        "guiAddressOverridden": node.gui.address != config.gui.address,
        "guiAddressUsed": node.gui.address,
        "pathSeparator": "/",
        "tilde": std::env::var("HOME").unwrap_or_default(),
        // No usage reporting in this node.
        "urVersionMax": 0,
        "hashedFiles": node.metrics.hashed_files.get(),
        "hashedBytes": node.metrics.hashed_bytes.get(),
        "servedBytes": node.metrics.served_bytes.get(),
        "servedRequests": node.metrics.served_requests.get(),
        "pulledBytes": node.metrics.pulled_bytes.get(),
        "reusedBytes": node.metrics.reused_bytes.get(),
    });
    // Listeners, dial results and discovery, as Syncthing reports them.
    if let Value::Object(m) = &mut v {
        m.extend(crate::connect::status_fields(node));
    }
    v
}

/// `/rest/system/connections` as Syncthing 2.x shapes it: per device the
/// primary's address, type and crypto at the top level (as 1.19.2 had
/// them), byte totals over all its connections, the earliest start, and
/// `primary` and `secondary` (the latter only when there are some).
fn connections(c: &Call) -> Value {
    let node = &c.node;
    let mut conns = serde_json::Map::new();
    let live = node.all_connections();
    let never = "0001-01-01T00:00:00Z";
    let now = rfc3339(SystemTime::now());
    let one = |c: &crate::model::ConnInfo| {
        json!({
            "address": c.address.to_string(),
            "type": c.kind,
            "isLocal": c.lan,
            "crypto": CRYPTO,
            "inBytesTotal": c.in_bytes.load(Ordering::Relaxed),
            "outBytesTotal": c.out_bytes.load(Ordering::Relaxed),
            "startedAt": rfc3339(c.started),
            "at": now,
        })
    };
    for d in node.config().devices.iter() {
        let id = d.device_id;
        if id == node.my_id {
            continue;
        }
        let v = match live
            .get(&id)
            .and_then(|l| Some((l.primary()?, l.secondaries())))
        {
            Some((p, secondaries)) => {
                let mut v = one(p);
                let started = std::iter::once(p)
                    .chain(secondaries)
                    .map(|c| c.started)
                    .min()
                    .unwrap_or(p.started);
                let total = |f: fn(&crate::model::ConnInfo) -> &std::sync::atomic::AtomicU64| {
                    std::iter::once(p)
                        .chain(secondaries)
                        .map(|c| f(c).load(Ordering::Relaxed))
                        .sum::<u64>()
                };
                v["inBytesTotal"] = json!(total(|c| &c.in_bytes));
                v["outBytesTotal"] = json!(total(|c| &c.out_bytes));
                v["startedAt"] = json!(rfc3339(started));
                v["connected"] = json!(true);
                v["paused"] = json!(d.paused);
                v["clientVersion"] = json!(p.client_version);
                v["primary"] = one(p);
                if !secondaries.is_empty() {
                    v["secondary"] = secondaries.iter().map(one).collect();
                }
                v
            }
            None => json!({"connected": false, "type": "", "address": "", "clientVersion": "",
                           "crypto": "", "isLocal": false, "paused": d.paused,
                           "inBytesTotal": 0, "outBytesTotal": 0,
                           "startedAt": never, "at": never,
                           "primary": {"address": "", "type": "", "isLocal": false, "crypto": "",
                                       "inBytesTotal": 0, "outBytesTotal": 0,
                                       "startedAt": never, "at": never}}),
        };
        conns.insert(id.to_string(), v);
    }
    let (mut tin, mut tout) = (0u64, 0u64);
    for c in live.values().flat_map(|d| &d.conns) {
        tin += c.in_bytes.load(Ordering::Relaxed);
        tout += c.out_bytes.load(Ordering::Relaxed);
    }
    json!({"connections": conns,
           "total": {"inBytesTotal": tin, "outBytesTotal": tout, "at": now}})
}

/// What every connection here negotiates (TLS 1.3 only).
const CRYPTO: &str = "TLS1.3-TLS_AES_128_GCM_SHA256";

/// Pauses or resumes one device (`device=`) or all: saved in the
/// configuration, and a paused device's connection is closed.
fn pause(c: &Call, paused: bool) -> Answer {
    let node = &c.node;
    let one = c.device()?;
    let config = node.config();
    if let Some(id) = one {
        if config.device(&id).is_none() {
            return Err(text(
                StatusCode::NOT_FOUND,
                &format!("no device with id {id}"),
            ));
        }
    }
    let mut changed = Vec::new();
    super::config::update_config(node, |cf| {
        for d in cf.devices.iter_mut() {
            let id = d.device_id;
            if one.is_none_or(|o| o == id) && d.paused != paused {
                d.paused = paused;
                changed.push(id);
            }
        }
        Ok(())
    })
    .map_err(|e| internal(format!("{e:#}")))?;
    for id in &changed {
        node.events.device_paused(id, paused);
        if paused {
            for conn in node
                .all_connections()
                .remove(id)
                .map(|d| d.conns)
                .unwrap_or_default()
            {
                let _ = conn.close.try_send("device paused".into());
            }
        }
    }
    crate::apply::apply_config(node).map_err(|e| internal(format!("{e:#}")))?;
    Ok(ok())
}

/// `/rest/system/version`, in Syncthing's shape.
fn version() -> Value {
    json!({
        "version": concat!("v", env!("CARGO_PKG_VERSION")),
        "longVersion": concat!("node v", env!("CARGO_PKG_VERSION"), " (Syncthing-compatible, BEP v1)"),
        "os": std::env::consts::OS,
        "arch": match std::env::consts::ARCH { "x86_64" => "amd64", "aarch64" => "arm64", a => a },
        "codename": "", "date": "", "stamp": "", "user": "", "tags": [],
        "isBeta": false, "isCandidate": false, "isRelease": true,
        // 2.x's additions: a free-form build suffix (none here) and
        // whether it runs in a container.
        "extra": "", "container": in_container(),
    })
}

/// Whether this process runs in a container, by the marker files Docker
/// and Podman create, or by being the first process (a container's init).
fn in_container() -> bool {
    std::process::id() == 1
        || ["/.dockerenv", "/run/.containerenv"]
            .iter()
            .any(|p| std::path::Path::new(p).exists())
}

/// A log level as 2.x names it in `/rest/system/log` and
/// `/rest/system/error` (1.19.2 gave the number: 1 debug … 4 error).
fn level_name(level: u8) -> &'static str {
    match level {
        0 | 1 => "DBG",
        2 => "INF",
        3 => "WRN",
        _ => "ERR",
    }
}

/// `/rest/system/error`: GET lists the recorded errors, POST adds one.
fn errors(c: &Call) -> Answer {
    let node = &c.node;
    if c.method == Method::POST {
        let msg = String::from_utf8_lossy(&c.body).trim().to_string();
        if msg.is_empty() {
            return Err(bad("empty error message"));
        }
        node.events.records.error(msg);
        return Ok(ok());
    }
    let errors: Vec<Value> = node
        .events
        .records
        .errors()
        .into_iter()
        .map(|(when, level, message)| json!({"when": rfc3339(when), "level": level_name(level), "message": message}))
        .collect();
    Ok(json(&json!({"errors": errors})))
}

/// `/rest/system/log`: recent log lines, since a time if asked.
fn log(c: &Call) -> Value {
    let node = &c.node;
    let since = c.q("since").and_then(parse_rfc3339);
    let messages: Vec<Value> = node
        .events
        .records
        .log_lines(since)
        .into_iter()
        .map(|(when, level, message)| json!({"when": rfc3339(when), "level": level_name(level), "message": message}))
        .collect();
    json!({"messages": messages})
}

/// `/rest/system/log.txt`: the same lines as text.
fn log_text(node: &Node) -> Reply {
    let lines: String = node
        .events
        .records
        .log_lines(None)
        .into_iter()
        .map(|(when, _, m)| format!("{}: {m}\n", rfc3339(when)))
        .collect();
    text(StatusCode::OK, lines.trim_end())
}

/// `/rest/system/discovery`: addresses learned by discovery (global and
/// local caches).
fn discovered(node: &Node) -> Value {
    let mut out = serde_json::Map::new();
    for (id, addresses) in node.discovery.snapshot() {
        out.insert(id.to_string(), json!({"addresses": addresses}));
    }
    Value::Object(out)
}

/// Asks the node's owner to stop it and start it again (`node serve`
/// re-executes itself: same PID, so supervisors and tests keep tracking it).
/// The answer leaves before the connections close.
fn restart(c: &Call) -> Answer {
    c.node
        .stop_request
        .send_replace(Some(crate::model::StopRequest::Restart));
    Ok(json(&json!({"ok": "restarting"})))
}

/// Directories matching `current` (a path prefix), each with a trailing
/// slash, sorted, as the folder dialog completes them.
fn browse(current: &str) -> Value {
    let current = if current.is_empty() { "/" } else { current };
    let (dir, partial) = match current.rfind('/') {
        Some(i) => (&current[..=i], &current[i + 1..]),
        None => ("./", current),
    };
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten().take(100 * BROWSE_MAX) {
            let name = e.file_name().to_string_lossy().into_owned();
            let is_dir = std::fs::metadata(e.path()).is_ok_and(|m| m.is_dir());
            if is_dir && name.starts_with(partial) {
                out.push(format!("{dir}{name}/"));
            }
        }
    }
    out.sort();
    out.truncate(BROWSE_MAX);
    json!(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_we_format() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 120_000_000);
        assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
        assert_eq!(
            parse_rfc3339("1970-01-01T00:00:10Z"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(10))
        );
        assert_eq!(parse_rfc3339("nonsense"), None);
    }

    #[test]
    fn browses_directories() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("alpha")).unwrap();
        std::fs::create_dir(d.path().join("beta")).unwrap();
        std::fs::write(d.path().join("afile"), b"").unwrap();
        let base = format!("{}/", d.path().display());
        assert_eq!(
            browse(&format!("{base}a")),
            json!([format!("{base}alpha/")])
        );
        assert_eq!(browse(&base).as_array().unwrap().len(), 2);
    }
}
