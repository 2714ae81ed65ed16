//! File versioning tests (issue 17): a *receiver* that is either our node
//! or a real Syncthing device, driven through the REST API both share, so
//! every expectation of `tests/tests/versioning.rs` can first be checked
//! against Syncthing itself; and the names Syncthing gives versions.
//!
//! Syncthing names a version `stem~YYYYMMDD-HHMMSS.ext` with the *local*
//! time of the archiving, and reads it back the same way. The receivers
//! here run with [`TZ`], a zone without daylight saving time, so the tests
//! can compute and parse those tags with a fixed offset and a clock
//! mix-up between UTC and local time shows as a wrong `versionTime`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::node::{Node, NodeHome};
use crate::peers::PeerVersion;
use crate::syncthing::{Syncthing, SyncthingHome};
use crate::{pick_port, wait};

/// The zone of every receiver: Arizona keeps UTC−7 all year.
const ZONE: &str = "America/Phoenix";
const ZONE_OFFSET_S: i64 = -7 * 3600;

/// `TZ` for the receivers and the offset the tests compute tags with:
/// [`ZONE`] when the zone database has it, else UTC.
pub fn tz() -> (&'static str, i64) {
    if Path::new("/usr/share/zoneinfo").join(ZONE).is_file() {
        (ZONE, ZONE_OFFSET_S)
    } else {
        ("UTC", 0)
    }
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// (year, month, day) → days since 1970-01-01.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The version tag Syncthing gives a file archived at `unix` seconds, in
/// the receivers' zone: `YYYYMMDD-HHMMSS`.
pub fn tag_at(unix: i64) -> String {
    let local = unix + tz().1;
    let (y, mo, d) = civil_from_days(local.div_euclid(86_400));
    let s = local.rem_euclid(86_400);
    format!(
        "{y:04}{mo:02}{d:02}-{:02}{:02}{:02}",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// The instant a tag names, in the receivers' zone.
pub fn tag_time(tag: &str) -> Option<i64> {
    let b = tag.as_bytes();
    if b.len() != 15
        || b[8] != b'-'
        || !tag
            .chars()
            .enumerate()
            .all(|(i, c)| i == 8 || c.is_ascii_digit())
    {
        return None;
    }
    let n = |r: std::ops::Range<usize>| tag[r].parse::<i64>().ok();
    let days = days_from_civil(n(0..4)?, n(4..6)?, n(6..8)?);
    Some(days * 86_400 + n(9..11)? * 3600 + n(11..13)? * 60 + n(13..15)? - tz().1)
}

/// Seconds since the epoch of an RFC 3339 time as Go writes it
/// (`2026-12-06T08:38:08-07:00`, `…T15:38:08.5Z`); fractions dropped.
pub fn rfc3339(s: &str) -> Option<i64> {
    let (date, rest) = s.split_once('T')?;
    let mut d = date.split('-');
    let (y, mo, da) = (
        d.next()?.parse::<i64>().ok()?,
        d.next()?.parse::<i64>().ok()?,
        d.next()?.parse::<i64>().ok()?,
    );
    let zone_at = rest.find(['Z', 'z', '+', '-'])?;
    let (clock, zone) = rest.split_at(zone_at);
    let clock = clock.split('.').next()?;
    let mut c = clock.split(':');
    let (h, mi, se) = (
        c.next()?.parse::<i64>().ok()?,
        c.next()?.parse::<i64>().ok()?,
        c.next()?.parse::<i64>().ok()?,
    );
    let offset = if zone.eq_ignore_ascii_case("z") {
        0
    } else {
        let sign = if zone.starts_with('-') { -1 } else { 1 };
        let (oh, om) = zone[1..].split_once(':')?;
        sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60)
    };
    Some(days_from_civil(y, mo, da) * 86_400 + h * 3600 + mi * 60 + se - offset)
}

/// Go's `filepath.Ext` of the last element: from its last dot on
/// (`.hidden` is all extension, `Makefile` has none).
fn ext_of(base: &str) -> &str {
    base.rfind('.').map_or("", |i| &base[i..])
}

/// The name Syncthing's simple and staggered versioners give `path`
/// (slash-separated, relative) archived with `tag`: `dir/stem~tag.ext`.
pub fn tagged(path: &str, tag: &str) -> String {
    let (dir, base) = match path.rfind('/') {
        Some(i) => (&path[..=i], &path[i + 1..]),
        None => ("", path),
    };
    let ext = ext_of(base);
    format!("{dir}{}~{tag}{ext}", &base[..base.len() - ext.len()])
}

/// The tag of `entry` if it is a tagged version of `path`.
pub fn version_tag(entry: &str, path: &str) -> Option<String> {
    let probe = tagged(path, "TTTTTTTTTTTTTTT");
    let at = probe.find("TTTTTTTTTTTTTTT")?;
    if entry.len() != probe.len()
        || entry[..at] != probe[..at]
        || entry[at + 15..] != probe[at + 15..]
    {
        return None;
    }
    let tag = &entry[at..at + 15];
    tag_time(tag).map(|_| tag.to_string())
}

/// Every regular file below `root` by slash-separated relative path, with
/// its bytes; `.stfolder` and Syncthing's temp files left out.
pub fn files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let base = e.file_name().to_string_lossy().into_owned();
            if rel == ".stfolder"
                || base.starts_with(".syncthing.")
                || base.starts_with("~syncthing~")
            {
                continue;
            }
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                walk(root, &p, out);
            } else if m.is_file() {
                if let Ok(data) = std::fs::read(&p) {
                    out.insert(rel, data);
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// [`files`] without the versions folder: what a folder syncs.
pub fn synced_files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut all = files(root);
    all.retain(|k, _| !(k == ".stversions" || k.starts_with(".stversions/")));
    all
}

/// Writes `data` at `path` (parents created) with modification time
/// `mtime` (Unix seconds): the tests set every mtime, so a change is never
/// missed for falling in the same second as the last scan.
pub fn write_file(path: &Path, data: &[u8], mtime: i64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
    set_mtime(path, mtime);
}

pub fn set_mtime(path: &Path, mtime: i64) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(UNIX_EPOCH + Duration::from_secs(mtime as u64))
        .unwrap();
}

pub fn mtime_of(path: &Path) -> i64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs() as i64)
}

/// Which program receives: our node, or a real Syncthing of a version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Ours,
    Syncthing(PeerVersion),
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kind::Ours => f.write_str("our node"),
            Kind::Syncthing(v) => write!(f, "Syncthing {v}"),
        }
    }
}

/// A running receiver: our node or a real Syncthing device, both driven
/// through the same REST calls (Syncthing's API).
pub enum Receiver {
    Ours(Node),
    Syncthing(Syncthing),
}

impl Receiver {
    /// Generates a home in `dir` and starts `kind` listening on a free
    /// loopback port, with [`tz`] and the extra environment `env`.
    pub fn start(kind: Kind, dir: &Path, env: &[(&str, &str)]) -> Receiver {
        let mut env: Vec<(&str, &str)> = env.to_vec();
        env.push(("TZ", tz().0));
        match kind {
            Kind::Ours => {
                let home = NodeHome::generate(dir, "rust");
                Receiver::Ours(start_ours(&home, &env))
            }
            Kind::Syncthing(v) => {
                let port = pick_port();
                let home =
                    SyncthingHome::init_version(dir, &[format!("tcp://127.0.0.1:{port}")], v);
                Receiver::Syncthing(home.start_with_env(&env))
            }
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Receiver::Ours(_) => Kind::Ours,
            Receiver::Syncthing(s) => Kind::Syncthing(s.version()),
        }
    }

    pub fn id(&self) -> String {
        match self {
            Receiver::Ours(n) => n.home.id.clone(),
            Receiver::Syncthing(s) => s.id().to_string(),
        }
    }

    /// The address the source dials.
    pub fn address(&self) -> String {
        match self {
            Receiver::Ours(n) => n.home.address(),
            Receiver::Syncthing(s) => {
                // The one listen address init_version wrote.
                let xml = std::fs::read_to_string(s.home.dir.join("config.xml")).unwrap();
                let start = xml.find("<listenAddress>").unwrap() + "<listenAddress>".len();
                let end = start + xml[start..].find('<').unwrap();
                xml[start..end].to_string()
            }
        }
    }

    pub fn get(&self, path: &str) -> Result<Value, String> {
        match self {
            Receiver::Ours(n) => n.get(path),
            Receiver::Syncthing(s) => s.get(path),
        }
    }

    /// A REST call with a JSON body; the reply's body.
    pub fn send(&self, method: &str, path: &str, body: &Value) -> Result<Value, String> {
        match self {
            Receiver::Ours(n) => crate::rest::Rest {
                port: n.home.gui_port,
                api_key: &n.home.api_key,
                timeout: Duration::from_secs(30),
                https: None,
            }
            .send(method, path, body),
            Receiver::Syncthing(s) => s.send(method, path, body),
        }
    }

    pub fn post(&self, path: &str) -> Result<Value, String> {
        match self {
            Receiver::Ours(n) => crate::rest::Rest {
                port: n.home.gui_port,
                api_key: &n.home.api_key,
                timeout: Duration::from_secs(60),
                https: None,
            }
            .post(path),
            Receiver::Syncthing(s) => s.post(path),
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        match self {
            Receiver::Ours(n) => n.proc.log_tail(lines),
            Receiver::Syncthing(s) => s.proc.log_tail(lines),
        }
    }

    pub fn add_device(&self, id: &str, address: &str) {
        let device = json!({
            "deviceID": id, "name": id, "addresses": [address], "compression": "metadata",
            "introducer": false, "paused": false, "autoAcceptFolders": false,
        });
        self.send("POST", "/rest/config/devices", &device)
            .unwrap_or_else(|e| panic!("{}: add device: {e}", self.kind()));
    }

    /// Adds folder `id` at `path` (created) shared with `peers`, with the
    /// `versioning` object as Syncthing's configuration has it; watcher off
    /// and hourly rescans, so only explicit scans and pulls change it.
    pub fn add_folder(&self, id: &str, path: &Path, peers: &[&str], versioning: &Value) {
        std::fs::create_dir_all(path).unwrap();
        let mut devices: Vec<Value> = peers.iter().map(|p| json!({ "deviceID": p })).collect();
        if let Receiver::Syncthing(s) = self {
            devices.push(json!({ "deviceID": s.id() }));
        }
        let folder = json!({
            "id": id, "label": id, "path": path, "type": "sendreceive", "devices": devices,
            "rescanIntervalS": 3600, "fsWatcherEnabled": false, "fsWatcherDelayS": 1,
            "paused": false, "versioning": versioning,
        });
        self.send("POST", "/rest/config/folders", &folder)
            .unwrap_or_else(|e| panic!("{}: add folder: {e}", self.kind()));
    }

    /// `GET /rest/folder/versions?folder=`.
    pub fn versions(&self, folder: &str) -> Value {
        self.get(&format!("/rest/folder/versions?folder={folder}"))
            .unwrap_or_else(|e| panic!("{}: versions of {folder}: {e}", self.kind()))
    }

    pub fn status(&self, folder: &str) -> Value {
        self.get(&format!("/rest/db/status?folder={folder}"))
            .unwrap_or(Value::Null)
    }

    /// Waits until the folder is idle after a scan (sequence above what
    /// it was when called, or simply idle when nothing changed).
    pub fn scan(&self, folder: &str) {
        self.post(&format!("/rest/db/scan?folder={folder}"))
            .unwrap_or_else(|e| panic!("{}: scan {folder}: {e}", self.kind()));
    }

    /// Stops the receiver (REST shutdown, then by PID).
    pub fn stop(self) {
        match self {
            Receiver::Ours(n) => {
                n.stop();
            }
            Receiver::Syncthing(s) => s.shutdown(),
        }
    }

    /// The receiver's folder is in sync with `files` files, no pull errors.
    pub fn wait_synced(&self, folder: &str, files: u64, limit: Duration) {
        let mut last = Value::Null;
        let ok = wait::until(limit, Duration::from_millis(200), || {
            let s = self.status(folder);
            let n = |k: &str| s.get(k).and_then(Value::as_u64);
            let synced = s["state"].as_str() == Some("idle")
                && n("needTotalItems") == Some(0)
                && n("globalFiles") == Some(files)
                && n("localFiles") == Some(files)
                && n("localBytes") == n("globalBytes")
                && n("pullErrors").unwrap_or(0) == 0;
            last = s;
            synced.then_some(())
        });
        assert!(
            ok.is_some(),
            "{}: not synced with {files} files: {last}\n{}",
            self.kind(),
            self.log_tail(30)
        );
    }
}

/// Starts our node from `home` with `env` (strings) and waits for REST.
pub fn start_ours(home: &NodeHome, env: &[(&str, &str)]) -> Node {
    let env: Vec<(&str, PathBuf)> = env.iter().map(|(k, v)| (*k, PathBuf::from(v))).collect();
    let env: Vec<(&str, &Path)> = env.iter().map(|(k, v)| (*k, v.as_path())).collect();
    home.start_with_env(&env)
}

/// A versions listing (`GET /rest/folder/versions`) reduced to what it
/// means: per path, the sorted (versionTime, modTime, size) in Unix
/// seconds; a time that is not RFC 3339 fails the test.
pub fn listing(v: &Value) -> BTreeMap<String, Vec<(i64, i64, u64)>> {
    let map = v
        .as_object()
        .unwrap_or_else(|| panic!("versions listing is not an object: {v}"));
    map.iter()
        .map(|(path, list)| {
            let mut entries: Vec<(i64, i64, u64)> = list
                .as_array()
                .unwrap_or_else(|| panic!("{path}: not a list: {list}"))
                .iter()
                .map(|e| {
                    let t = |k: &str| {
                        e[k].as_str()
                            .and_then(rfc3339)
                            .unwrap_or_else(|| panic!("{path}: {k} is not RFC 3339: {e}"))
                    };
                    let size = e["size"]
                        .as_u64()
                        .unwrap_or_else(|| panic!("{path}: size: {e}"));
                    (t("versionTime"), t("modTime"), size)
                })
                .collect();
            entries.sort_unstable();
            (path.clone(), entries)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip_and_names_follow_go_ext() {
        let t = 1_796_000_000;
        assert_eq!(tag_time(&tag_at(t)), Some(t));
        assert_eq!(tagged("a.txt", "X"), "a~X.txt");
        assert_eq!(tagged("d/archive.tar.gz", "X"), "d/archive.tar~X.gz");
        assert_eq!(tagged("Makefile", "X"), "Makefile~X");
        assert_eq!(tagged("d/s/.hidden", "X"), "d/s/~X.hidden");
        let tag = tag_at(t);
        assert_eq!(
            version_tag(&format!("d/archive.tar~{tag}.gz"), "d/archive.tar.gz"),
            Some(tag.clone())
        );
        assert_eq!(
            version_tag(&format!("d/other~{tag}.gz"), "d/archive.tar.gz"),
            None
        );
        assert_eq!(rfc3339("1970-01-02T00:00:01Z"), Some(86_401));
        assert_eq!(rfc3339("1970-01-01T17:00:01.250-07:00"), Some(86_401));
        assert_eq!(rfc3339("1970-01-02T05:30:01+05:30"), Some(86_401));
    }
}
