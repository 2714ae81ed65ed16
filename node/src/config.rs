//! The node's declarative configuration: `config.toml` in the home
//! directory (see [`file`]: a commented TOML file). Field names follow
//! Syncthing's REST/JSON configuration (`deviceID`, `listenAddresses`,
//! `rescanIntervalS`, …) so the same objects work in the file, over the
//! REST API and in a Kubernetes ConfigMap.
//!
//! Defaults never reach public infrastructure: no listen address means no
//! listener, and there are no discovery servers or relay pools at all.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use proto::DeviceId;
use serde::{Deserialize, Serialize};

pub mod file;
pub mod marker;
pub mod networks;
pub mod relay_uri;
pub mod versioning;

pub use marker::MarkerName;
pub use networks::AllowedNetworks;
pub use versioning::{Versioning, VersioningConfig};

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// This device's name, sent to known peers in the Hello.
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub options: Options,
    #[serde(default)]
    pub gui: Gui,
    #[serde(default)]
    pub devices: Vec<DeviceConfig>,
    #[serde(default)]
    pub folders: Vec<FolderConfig>,
    /// What new objects start from (Syncthing's `defaults`); only the
    /// default folder's path is a setting here (see [`Defaults`]).
    #[serde(default)]
    pub defaults: Defaults,
}

/// Syncthing's `defaults`, as far as the node acts on them: where folders
/// accepted automatically (`autoAcceptFolders`) are created.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Defaults {
    #[serde(default)]
    pub folder: DefaultFolder,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DefaultFolder {
    /// The directory auto-accepted folders are created in, as Syncthing's
    /// `defaults.folder.path`: `~` (the default) and `~/…` are the home
    /// directory of the user running the node.
    #[serde(default = "default_folder_path")]
    pub path: String,
}

impl Default for DefaultFolder {
    fn default() -> Self {
        DefaultFolder {
            path: default_folder_path(),
        }
    }
}

fn default_folder_path() -> String {
    "~".into()
}

impl DefaultFolder {
    /// The path with `~` expanded (`home`: the user's home directory);
    /// None when it is not absolute after expansion, or `~` is used and
    /// there is no home directory.
    pub fn expanded(&self, home: Option<&Path>) -> Option<PathBuf> {
        let p = if self.path == "~" {
            home?.to_path_buf()
        } else if let Some(rest) = self.path.strip_prefix("~/") {
            home?.join(rest)
        } else {
            PathBuf::from(&self.path)
        };
        p.is_absolute().then_some(p)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Options {
    /// `tcp://HOST:PORT` URIs to listen on, `relay://…` relays to stay
    /// joined to (with `relaysEnabled`). Empty: no listener (the node still
    /// dials out). Applied live.
    #[serde(default)]
    pub listen_addresses: Vec<String>,
    /// Seconds between reconnection attempts to a disconnected device
    /// (after a short ramp-up).
    #[serde(default = "default_reconnect", rename = "reconnectionIntervalS")]
    pub reconnection_interval_s: u64,
    /// Global discovery servers (`https://HOST:PORT/?id=…`). None by
    /// default: this node never contacts public infrastructure on its own.
    #[serde(default)]
    pub global_announce_servers: Vec<String>,
    #[serde(default)]
    pub global_announce_enabled: bool,
    #[serde(default)]
    pub local_announce_enabled: bool,
    #[serde(default)]
    pub relays_enabled: bool,
    /// UDP port of local discovery (Syncthing's `localAnnouncePort`);
    /// 0 or absent: 21027.
    #[serde(default = "default_local_port")]
    pub local_announce_port: u16,
    /// DNS servers (`IP` or `IP:PORT`) for host names and `dns-srv://`
    /// addresses; empty: the system's (`/etc/resolv.conf`, `/etc/hosts`).
    #[serde(default)]
    pub dns_servers: Vec<String>,
    /// Send and receive limits over all devices, in KiB/s (Syncthing's
    /// "Kbps" is 1024 bytes a second); 0 or less: unlimited. Applied live
    /// (see [`crate::bandwidth`]).
    #[serde(default)]
    pub max_send_kbps: Kbps,
    #[serde(default)]
    pub max_recv_kbps: Kbps,
    /// Whether the limits also apply to LAN connections (off: LAN is
    /// exempt, as in Syncthing).
    #[serde(default)]
    pub limit_bandwidth_in_lan: bool,
    /// Networks (CIDR) counted as LAN besides loopback, link-local and the
    /// networks of our interfaces: a site-to-site VPN, say.
    #[serde(default)]
    pub always_local_nets: Vec<String>,
}

/// A bandwidth limit as Syncthing writes it: KiB/s, 0 or less meaning
/// unlimited. Kept as written, so a tool reads back what it wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Kbps(pub i64);

impl Kbps {
    /// The limit in bytes a second, `None` when unlimited.
    pub fn bytes_per_second(self) -> Option<u64> {
        u64::try_from(self.0)
            .ok()
            .filter(|&k| k > 0)
            .map(|k| k.saturating_mul(1024))
    }
}

fn default_local_port() -> u16 {
    proto::discovery::local::DEFAULT_PORT
}

fn default_reconnect() -> u64 {
    60
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Gui {
    /// `HOST:PORT` of the REST API; empty disables it.
    #[serde(default)]
    pub address: String,
    /// Value of the `X-API-Key` header every REST call must carry.
    #[serde(default)]
    pub api_key: String,
    /// Optional GUI user for HTTP basic auth (with `password`).
    #[serde(default)]
    pub user: String,
    /// bcrypt hash of the GUI user's password (a plain text is refused).
    #[serde(default)]
    pub password: String,
    /// Plain HTTP requests are redirected to HTTPS (the port always
    /// speaks both, as Syncthing's; see `rest::tls`). Applied live.
    #[serde(default, rename = "useTLS")]
    pub use_tls: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceConfig {
    /// Parsed when the configuration is read (file or REST), so lookups
    /// compare 32 bytes instead of re-parsing base32 and check characters.
    #[serde(rename = "deviceID", with = "device_id_text")]
    pub device_id: DeviceId,
    #[serde(default)]
    pub name: String,
    /// Where to reach the device: `tcp://HOST:PORT` (HOST may be a DNS
    /// name), `relay://HOST:PORT/?id=…` (through a relay), `dns-srv://NAME`
    /// (SRV `_syncthing._tcp.NAME`), `dynamic` (discovery). None: wait for
    /// the device to connect to us.
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub compression: Compression,
    /// Paused (REST `/rest/system/pause`): no connection is kept.
    #[serde(default)]
    pub paused: bool,
    /// Connections we want to this device (Syncthing 2.x's
    /// `numConnections`); the number used is negotiated with the peer's
    /// Hello (see [`NumConnections::negotiate`]).
    #[serde(default)]
    pub num_connections: NumConnections,
    /// Networks (CIDRs, `!` to refuse) the device may connect from and
    /// be dialed at; empty: any. Parsed when read (see [`networks`]).
    /// Applied to the next connection.
    #[serde(default)]
    pub allowed_networks: AllowedNetworks,
    /// Limits for this device alone, in KiB/s (0: none); the global ones
    /// apply too, so the stricter wins.
    #[serde(default)]
    pub max_send_kbps: Kbps,
    #[serde(default)]
    pub max_recv_kbps: Kbps,
    /// The device shares its device list with us: devices it lists for a
    /// folder we share with it are added and the folder is shared with
    /// them (see `model::introduce`).
    #[serde(default)]
    pub introducer: bool,
    /// Devices this introducer introduced stay when it stops listing them.
    #[serde(default)]
    pub skip_introduction_removals: bool,
    /// The introducer that added this device (`""` in JSON: none).
    #[serde(default, with = "opt_device_id_text")]
    pub introduced_by: Option<DeviceId>,
    /// Folders this device offers are created (under
    /// `defaults.folder.path`) or shared with it without asking.
    #[serde(default)]
    pub auto_accept_folders: bool,
}

impl DeviceConfig {
    /// A device with Syncthing's defaults for everything but its ID.
    pub fn new(device_id: DeviceId) -> DeviceConfig {
        DeviceConfig {
            device_id,
            name: String::new(),
            addresses: Vec::new(),
            compression: Compression::default(),
            paused: false,
            num_connections: NumConnections::default(),
            allowed_networks: AllowedNetworks::default(),
            max_send_kbps: Kbps::default(),
            max_recv_kbps: Kbps::default(),
            introducer: false,
            skip_introduction_removals: false,
            introduced_by: None,
            auto_accept_folders: false,
        }
    }
}

/// Syncthing 2.x's `numConnections` of a device: 0 stands for the default
/// (3: one for index traffic, two for data), a negative value for 1. Kept
/// as the user wrote it (bounded), so a tool reads back what it wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(transparent)]
pub struct NumConnections(i32);

impl NumConnections {
    /// What 0 means (Syncthing 2.x's `defaultNumConnections`).
    pub const DEFAULT: usize = 3;
    /// Most connections kept to one device (2.x's `maxNumConnections`).
    pub const MAX: usize = 128;

    pub fn new(raw: i64) -> NumConnections {
        NumConnections(raw.clamp(-1, Self::MAX as i64) as i32)
    }

    /// The number this side wants: what is sent in the Hello.
    pub fn wanted(self) -> usize {
        match self.0 {
            0 => Self::DEFAULT,
            n if n < 0 => 1,
            n => n as usize,
        }
    }

    /// How many connections to keep, as Syncthing 2.x decides from what
    /// we want and what the peer's Hello asked for (`theirs`; 0 from a
    /// peer without multiple connections, such as 1.19.2): one unless
    /// both sides want more, then the larger wish, bounded.
    pub fn negotiate(self, theirs: i32) -> usize {
        let ours = self.wanted();
        if theirs <= 1 || ours == 1 {
            return 1;
        }
        ours.max(theirs as usize).min(Self::MAX)
    }
}

impl<'de> Deserialize<'de> for NumConnections {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(NumConnections::new(i64::deserialize(d)?))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FolderConfig {
    pub id: String,
    #[serde(default)]
    pub label: String,
    /// File versioning (Syncthing's `versioning` object), typed once when
    /// read; see [`versioning`].
    #[serde(default)]
    pub versioning: VersioningConfig,
    pub path: PathBuf,
    #[serde(default, rename = "type")]
    pub kind: FolderType,
    #[serde(default)]
    pub devices: Vec<FolderDevice>,
    #[serde(default = "default_rescan", rename = "rescanIntervalS")]
    pub rescan_interval_s: u64,
    #[serde(default)]
    pub paused: bool,
    /// Scan soon after a change (inotify) instead of waiting for the
    /// periodic rescan.
    #[serde(default = "default_true")]
    pub fs_watcher_enabled: bool,
    /// Seconds to let changes settle before scanning.
    #[serde(default = "default_watch_delay", rename = "fsWatcherDelayS")]
    pub fs_watcher_delay_s: u64,
    /// Remote deletions are not applied (an archival site keeps
    /// everything): the file stays on disk and in our index with the
    /// version we had, as Syncthing's `ignoreDelete` does. Applied live.
    #[serde(default)]
    pub ignore_delete: bool,
    /// How many conflict copies of one file are kept. Applied live.
    #[serde(default)]
    pub max_conflicts: MaxConflicts,
    /// Permission bits mean nothing on this folder's filesystem (an
    /// SMB/NFS mount, FAT, exFAT): local entries are announced with
    /// `noPermissions`, a mode change is not a change, and pulled items
    /// are not chmod-ed (as Syncthing's `ignorePerms`). Applied live.
    #[serde(default)]
    pub ignore_perms: bool,
    /// The folder marker whose absence stops the folder (see
    /// [`MarkerName`]).
    #[serde(default)]
    pub marker_name: MarkerName,
    /// Pulled files, directories and symlinks get the owner and group of
    /// the directory they land in (a share whose tree belongs to a
    /// service account; needs the node to run as root or with
    /// CAP_CHOWN). Applied live.
    #[serde(default)]
    pub copy_ownership_from_parent: bool,
}

impl FolderConfig {
    /// Whether permission bits are compared and applied.
    pub fn perms(&self) -> Perms {
        if self.ignore_perms {
            Perms::Ignore
        } else {
            Perms::Honour
        }
    }
}

/// What a folder does with permission bits (its `ignorePerms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perms {
    /// Scanned, compared and applied.
    Honour,
    /// Announced as meaningless, never a change, never applied.
    Ignore,
}

/// Syncthing's `maxConflicts`: how many conflict copies of one file are
/// kept when a new one is made (the oldest, by name, go first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxConflicts {
    /// Any negative value: every copy is kept.
    Unlimited,
    /// 0: no conflict copy is made; the losing local version is discarded
    /// (as Syncthing does).
    Discard,
    /// At most this many copies per file (at least 1).
    Keep(u32),
}

impl MaxConflicts {
    /// Syncthing's default.
    pub const DEFAULT: MaxConflicts = MaxConflicts::Keep(10);

    pub fn from_raw(raw: i64) -> MaxConflicts {
        match raw {
            r if r < 0 => MaxConflicts::Unlimited,
            0 => MaxConflicts::Discard,
            r => MaxConflicts::Keep(r.min(u32::MAX as i64) as u32),
        }
    }

    /// The number Syncthing shows (-1 for unlimited).
    pub fn raw(self) -> i64 {
        match self {
            MaxConflicts::Unlimited => -1,
            MaxConflicts::Discard => 0,
            MaxConflicts::Keep(n) => n as i64,
        }
    }
}

impl Default for MaxConflicts {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl Serialize for MaxConflicts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(self.raw())
    }
}

impl<'de> Deserialize<'de> for MaxConflicts {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(MaxConflicts::from_raw(i64::deserialize(d)?))
    }
}

fn default_true() -> bool {
    true
}

fn default_watch_delay() -> u64 {
    1
}

fn default_rescan() -> u64 {
    3600
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FolderDevice {
    #[serde(rename = "deviceID", with = "device_id_text")]
    pub device_id: DeviceId,
    /// The introducer that shared the folder with this device (`""` in
    /// JSON: none); such a share ends when the introducer drops it.
    #[serde(default, with = "opt_device_id_text")]
    pub introduced_by: Option<DeviceId>,
}

impl FolderDevice {
    pub fn new(device_id: DeviceId) -> FolderDevice {
        FolderDevice {
            device_id,
            introduced_by: None,
        }
    }
}

/// A folder's type, as Syncthing spells it in its configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FolderType {
    #[default]
    SendReceive,
    /// Remote changes are not applied.
    SendOnly,
    /// Local changes are kept, flagged, and not sent as valid.
    ReceiveOnly,
}

impl FolderType {
    pub fn as_str(self) -> &'static str {
        match self {
            FolderType::SendReceive => "sendreceive",
            FolderType::SendOnly => "sendonly",
            FolderType::ReceiveOnly => "receiveonly",
        }
    }
}

impl std::str::FromStr for FolderType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sendreceive" => Ok(FolderType::SendReceive),
            // Syncthing's name for sendonly before 0.14.
            "sendonly" | "readonly" => Ok(FolderType::SendOnly),
            "receiveonly" => Ok(FolderType::ReceiveOnly),
            // Deliberately no receiveencrypted: this node cannot run it, and
            // a refusal beats a folder that silently does something else.
            other => Err(format!(
                "type {other:?} is not supported (sendonly, sendreceive, receiveonly)"
            )),
        }
    }
}

/// What a device's messages are LZ4-compressed for, as Syncthing spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    Metadata,
    Always,
    Never,
}

impl Compression {
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::Metadata => "metadata",
            Compression::Always => "always",
            Compression::Never => "never",
        }
    }

    /// Any other text means the default, as in Syncthing (and as this node
    /// has always read it): a typo must not make a device unreachable.
    fn from_text(s: &str) -> Compression {
        match s {
            "always" => Compression::Always,
            "never" => Compression::Never,
            _ => Compression::Metadata,
        }
    }
}

impl From<Compression> for proto::bep::Compress {
    fn from(c: Compression) -> Self {
        match c {
            Compression::Metadata => proto::bep::Compress::Metadata,
            Compression::Always => proto::bep::Compress::Always,
            Compression::Never => proto::bep::Compress::Never,
        }
    }
}

impl Serialize for FolderType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for FolderType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Compression {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Compression {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Compression::from_text(&String::deserialize(d)?))
    }
}

/// Device IDs in their text form (`XXXXXXX-…`, the empty string for none),
/// parsed once when the configuration is read. Written in the canonical
/// form, as Syncthing writes them.
mod device_id_text {
    use proto::DeviceId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &DeviceId, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(id)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DeviceId, D::Error> {
        let text = String::deserialize(d)?;
        text.parse()
            .map_err(|e| serde::de::Error::custom(format!("invalid device ID {text:?}: {e}")))
    }
}

/// An optional device ID as Syncthing writes it: the empty string for
/// none (Syncthing's empty device ID).
mod opt_device_id_text {
    use proto::DeviceId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &Option<DeviceId>, s: S) -> Result<S::Ok, S::Error> {
        match id {
            Some(id) => s.collect_str(id),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DeviceId>, D::Error> {
        let text = String::deserialize(d)?;
        if text.is_empty() {
            return Ok(None);
        }
        text.parse()
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("invalid device ID {text:?}: {e}")))
    }
}

impl FolderConfig {
    pub fn read_only(&self) -> bool {
        self.kind == FolderType::SendOnly
    }

    pub fn shared_with(&self, id: &DeviceId) -> bool {
        self.devices.iter().any(|d| d.device_id == *id)
    }

    pub fn device_ids(&self) -> impl Iterator<Item = DeviceId> + '_ {
        self.devices.iter().map(|d| d.device_id)
    }
}

impl Config {
    pub fn path(home: &Path) -> PathBuf {
        file::path(home)
    }

    /// Reads and checks the configuration file of `home`.
    pub fn load(home: &Path) -> Result<Config> {
        let config = file::load(home)?;
        config
            .validate()
            .and_then(|()| config.validate_folder_paths(home))
            .with_context(|| format!("in {}", Self::path(home).display()))?;
        Ok(config)
    }

    /// Writes the configuration file atomically.
    pub fn save(&self, home: &Path) -> Result<()> {
        file::save(self, home)
    }

    /// Checks what the types do not carry. Device IDs and folder types were
    /// parsed when the configuration was read.
    pub fn validate(&self) -> Result<()> {
        let mut ids = std::collections::HashSet::new();
        for f in &self.folders {
            if f.id.is_empty() {
                bail!("a folder has an empty id");
            }
            if !ids.insert(&f.id) {
                bail!("folder id {:?} appears twice", f.id);
            }
            if !f.path.is_absolute() {
                bail!(
                    "folder {:?}: path {} must be absolute",
                    f.id,
                    f.path.display()
                );
            }
            if f.rescan_interval_s > MAX_INTERVAL_S || f.fs_watcher_delay_s > MAX_INTERVAL_S {
                bail!(
                    "folder {:?}: rescanIntervalS and fsWatcherDelayS must be at most {MAX_INTERVAL_S} (ten years)",
                    f.id
                );
            }
        }
        if self.options.reconnection_interval_s > MAX_INTERVAL_S {
            bail!("options.reconnectionIntervalS must be at most {MAX_INTERVAL_S} (ten years)");
        }
        for n in &self.options.always_local_nets {
            n.parse::<ipnet::IpNet>().with_context(|| {
                format!("options.alwaysLocalNets: {n:?} is not a network (CIDR, e.g. 10.8.0.0/16)")
            })?;
        }
        for d in &self.options.dns_servers {
            crate::resolve::parse_dns_server(d)
                .with_context(|| "options.dnsServers: use IP or IP:PORT".to_string())?;
        }
        // An empty entry means "none", as in Syncthing.
        for a in self
            .options
            .listen_addresses
            .iter()
            .filter(|a| !a.is_empty())
        {
            if a.starts_with("relay://") {
                let uri = a
                    .parse::<proto::relay::RelayUri>()
                    .map_err(|e| anyhow::anyhow!("listen address {:?}: {e}", shown_uri(a)))?;
                relay_uri::join_token(&uri)
                    .map_err(|e| anyhow::anyhow!("listen address {}: {e}", uri.without_token()))?;
                continue;
            }
            parse_tcp_address(a)?;
        }
        Ok(())
    }

    /// Folder paths that would expose or corrupt something: the same
    /// directory twice, one folder inside another (two indexes of the same
    /// files, each pulling over the other), or a folder holding the node's
    /// home (it would serve `key.pem` and the index database to peers).
    /// Paths are compared as written and, when they exist, with symlinks
    /// resolved.
    pub fn validate_folder_paths(&self, home: &Path) -> Result<()> {
        let resolved =
            |p: &Path| -> PathBuf { std::fs::canonicalize(p).unwrap_or_else(|_| lexical(p)) };
        let home_abs = if home.is_absolute() {
            home.to_path_buf()
        } else {
            std::env::current_dir()
                .map(|d| d.join(home))
                .unwrap_or_else(|_| home.to_path_buf())
        };
        let homes = [lexical(&home_abs), resolved(&home_abs)];
        let paths: Vec<(&str, [PathBuf; 2])> = self
            .folders
            .iter()
            .map(|f| (f.id.as_str(), [lexical(&f.path), resolved(&f.path)]))
            .collect();
        for (id, forms) in &paths {
            for p in forms {
                if homes.iter().any(|h| h.starts_with(p)) {
                    bail!(
                        "folder {id:?}: path {} contains the node's home directory {} (its key and database would be shared)",
                        p.display(),
                        home.display()
                    );
                }
            }
        }
        for (i, (a, fa)) in paths.iter().enumerate() {
            for (b, fb) in &paths[i + 1..] {
                for (pa, pb) in fa.iter().zip(fb) {
                    if pa == pb {
                        bail!(
                            "folders {a:?} and {b:?} have the same path {}",
                            pa.display()
                        );
                    }
                    if pa.starts_with(pb) || pb.starts_with(pa) {
                        bail!(
                            "folders {a:?} and {b:?}: one path is inside the other ({} and {})",
                            pa.display(),
                            pb.display()
                        );
                    }
                }
            }
        }
        Ok(())
    }

    pub fn device(&self, id: &DeviceId) -> Option<&DeviceConfig> {
        self.devices.iter().find(|d| d.device_id == *id)
    }
}

/// Largest interval setting in seconds (ten years): larger values are
/// refused, as they overflow time arithmetic and mean "never" anyway.
pub const MAX_INTERVAL_S: u64 = 10 * 365 * 24 * 3600;

/// `path` with `.` and `..` components resolved without touching the
/// disk (`..` at the root stays at the root).
pub fn lexical(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// A listen address as it may appear in an error (no token).
fn shown_uri(a: &str) -> &str {
    a.split_once("token=").map_or(a, |(before, _)| before)
}

/// `tcp://HOST:PORT` (also `tcp4://`, `tcp6://`) → `HOST:PORT`; None for
/// `dynamic` and other schemes this version does not dial.
pub fn tcp_host_port(uri: &str) -> Option<&str> {
    ["tcp://", "tcp4://", "tcp6://"]
        .iter()
        .find_map(|p| uri.strip_prefix(p))
        .map(|rest| rest.trim_end_matches('/'))
}

pub fn parse_tcp_address(uri: &str) -> Result<&str> {
    match tcp_host_port(uri) {
        Some(hp) if !hp.is_empty() => Ok(hp),
        _ => bail!("listen address {uri:?}: only tcp://HOST:PORT is supported"),
    }
}

#[cfg(test)]
mod tests {
    use super::NumConnections;

    /// Syncthing 2.x's rules: 0 is the default 3, negative is 1; one
    /// connection unless both sides want more, then the larger wish up to
    /// 128.
    #[test]
    fn num_connections_as_syncthing_2_negotiates_them() {
        let n = |raw: i64| NumConnections::new(raw);
        assert_eq!(n(0).wanted(), 3);
        assert_eq!(n(-5).wanted(), 1);
        assert_eq!(n(7).wanted(), 7);
        assert_eq!(n(1000).wanted(), NumConnections::MAX);
        assert_eq!(n(0).negotiate(0), 1, "a 1.19.2 peer sends none");
        assert_eq!(n(0).negotiate(1), 1);
        assert_eq!(n(1).negotiate(3), 1);
        assert_eq!(n(0).negotiate(3), 3);
        assert_eq!(n(2).negotiate(5), 5);
        assert_eq!(n(8).negotiate(2), 8);
        assert_eq!(n(0).negotiate(i32::MAX), NumConnections::MAX);
        let d: super::DeviceConfig = serde_json::from_value(serde_json::json!({
            "deviceID": proto::DeviceId::from_der_cert(b"x").to_string()
        }))
        .unwrap();
        assert_eq!(d.num_connections, n(0));
        assert_eq!(serde_json::to_value(d).unwrap()["numConnections"], 0);
    }

    use super::*;

    #[test]
    fn round_trips_and_rejects_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config {
            name: "n".into(),
            options: Options {
                listen_addresses: vec!["tcp://127.0.0.1:1234".into()],
                reconnection_interval_s: 5,
                ..Default::default()
            },
            folders: vec![FolderConfig {
                id: "f".into(),
                label: String::new(),
                versioning: Default::default(),
                path: dir.path().join("f"),
                kind: FolderType::SendOnly,
                devices: vec![],
                rescan_interval_s: 10,
                paused: false,
                fs_watcher_enabled: true,
                fs_watcher_delay_s: 1,
                ignore_delete: false,
                max_conflicts: MaxConflicts::DEFAULT,
                ignore_perms: false,
                marker_name: Default::default(),
                copy_ownership_from_parent: false,
            }],
            ..Default::default()
        };
        c.save(dir.path()).unwrap();
        let back = Config::load(dir.path()).unwrap();
        assert_eq!(back.folders[0].id, "f");
        assert!(back.folders[0].read_only());
        std::fs::write(
            Config::path(dir.path()),
            "[[folders]]\nid = \"x\"\npath = \"rel\"\n",
        )
        .unwrap();
        assert!(Config::load(dir.path()).is_err());
        assert_eq!(tcp_host_port("tcp://a:1"), Some("a:1"));
        assert_eq!(tcp_host_port("dynamic"), None);
    }

    fn folder(id: &str, path: &Path) -> FolderConfig {
        FolderConfig {
            id: id.into(),
            label: String::new(),
            versioning: Default::default(),
            path: path.to_path_buf(),
            kind: FolderType::SendReceive,
            devices: vec![],
            rescan_interval_s: 3600,
            paused: false,
            fs_watcher_enabled: true,
            fs_watcher_delay_s: 1,
            ignore_delete: false,
            max_conflicts: MaxConflicts::DEFAULT,
            ignore_perms: false,
            marker_name: Default::default(),
            copy_ownership_from_parent: false,
        }
    }

    #[test]
    fn duplicate_nested_and_home_holding_folders_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        let with = |folders: Vec<FolderConfig>| Config {
            folders,
            ..Default::default()
        };
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        assert!(with(vec![folder("a", &a), folder("b", &b)])
            .validate_folder_paths(&home)
            .is_ok());
        let cases = [
            (vec![folder("a", &a), folder("b", &a)], "same path"),
            (
                vec![folder("a", &a), folder("b", &a.join("x/../."))],
                "same path",
            ),
            (
                vec![folder("a", &a), folder("b", &a.join("sub"))],
                "inside the other",
            ),
            (vec![folder("h", dir.path())], "home directory"),
            (vec![folder("h", &home)], "home directory"),
            (vec![folder("h", Path::new("/"))], "home directory"),
        ];
        for (folders, why) in cases {
            let err = format!(
                "{:#}",
                with(folders).validate_folder_paths(&home).unwrap_err()
            );
            assert!(err.contains(why), "{err}");
        }
        // Through a symlink too.
        std::os::unix::fs::symlink(&a, dir.path().join("link")).unwrap();
        std::fs::create_dir_all(&a).unwrap();
        let err = with(vec![folder("a", &a), folder("l", &dir.path().join("link"))])
            .validate_folder_paths(&home)
            .unwrap_err();
        assert!(err.to_string().contains("same path"), "{err}");
    }

    #[test]
    fn intervals_that_would_overflow_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config::default();
        c.options.reconnection_interval_s = u64::MAX;
        assert!(c.validate().is_err());
        c.options.reconnection_interval_s = MAX_INTERVAL_S;
        c.validate().unwrap();
        let mut f = folder("f", dir.path());
        f.rescan_interval_s = u64::MAX - 1;
        c.folders.push(f);
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("rescanIntervalS"), "{err}");
    }

    #[test]
    fn a_relay_token_needs_a_pinned_relay() {
        let mut c = Config::default();
        c.options.listen_addresses = vec!["relay://relay.example:22067/?token=s3cret".into()];
        let err = format!("{:#}", c.validate().unwrap_err());
        assert!(err.contains("id="), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
        c.options.listen_addresses = vec![format!(
            "relay://relay.example:22067/?id={}&token=s3cret",
            DeviceId::from_der_cert(b"relay")
        )];
        c.validate().unwrap();
        c.options.listen_addresses = vec!["relay://relay.example:22067/".into()];
        c.validate().unwrap();
    }

    #[test]
    fn folder_types_and_compression_keep_syncthings_spelling() {
        for (t, text) in [
            (FolderType::SendReceive, "sendreceive"),
            (FolderType::SendOnly, "sendonly"),
            (FolderType::ReceiveOnly, "receiveonly"),
        ] {
            assert_eq!(serde_json::to_value(t).unwrap(), text);
            assert_eq!(
                serde_json::from_value::<FolderType>(text.into()).unwrap(),
                t
            );
        }
        // Syncthing's old name for sendonly is read, and written as sendonly.
        let old: FolderType = serde_json::from_value("readonly".into()).unwrap();
        assert_eq!(old, FolderType::SendOnly);
        assert_eq!(serde_json::to_value(old).unwrap(), "sendonly");
        for refused in ["receiveencrypted", "mirror", "SendOnly", ""] {
            let err = serde_json::from_value::<FolderType>(refused.into()).unwrap_err();
            assert!(
                err.to_string()
                    .contains(&format!("type {refused:?} is not supported")),
                "{err}"
            );
        }
        for (c, text) in [
            (Compression::Metadata, "metadata"),
            (Compression::Always, "always"),
            (Compression::Never, "never"),
        ] {
            assert_eq!(serde_json::to_value(c).unwrap(), text);
            assert_eq!(
                serde_json::from_value::<Compression>(text.into()).unwrap(),
                c
            );
        }
        // As in Syncthing, an unknown value is the default.
        let typo: Compression = serde_json::from_value("alway".into()).unwrap();
        assert_eq!(typo, Compression::Metadata);
    }

    /// A file as earlier versions wrote it (strings everywhere) still
    /// loads; device IDs are parsed once, in any of their accepted forms.
    #[test]
    fn device_ids_and_types_are_parsed_when_the_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let peer = DeviceId::from_der_cert(b"peer");
        let sloppy = peer.to_string().replace('-', "").to_lowercase();
        let text = format!(
            "[[devices]]\ndeviceID = \"{sloppy}\"\ncompression = \"always\"\n\n\
             [[folders]]\nid = \"f\"\npath = \"{}\"\ntype = \"readonly\"\n\
             devices = [{{ deviceID = \"{peer}\" }}]\n",
            dir.path().join("f").display()
        );
        std::fs::write(Config::path(dir.path()), text).unwrap();
        let c = Config::load(dir.path()).unwrap();
        assert_eq!(c.devices[0].device_id, peer);
        assert_eq!(c.devices[0].compression, Compression::Always);
        assert!(c.device(&peer).is_some());
        assert_eq!(c.folders[0].kind, FolderType::SendOnly);
        assert!(c.folders[0].read_only());
        assert!(c.folders[0].shared_with(&peer));
        assert_eq!(c.folders[0].device_ids().collect::<Vec<_>>(), vec![peer]);
        // Written back in the canonical forms.
        c.save(dir.path()).unwrap();
        let written = std::fs::read_to_string(Config::path(dir.path())).unwrap();
        assert!(
            written.contains(&format!("deviceID = \"{peer}\"")),
            "{written}"
        );
        assert!(written.contains("type = \"sendonly\""), "{written}");
        assert!(!written.contains(&sloppy), "{written}");

        // A bad ID, for a device or in a folder's list, refuses the file
        // and says which ID and why.
        let good = peer.to_string();
        // (device's ID, folder device's ID, the bad one)
        for (device, folder_device, bad) in [
            ("ABCD-EFG", good.as_str(), "ABCD-EFG"),
            (good.as_str(), "ABCD", "ABCD"),
        ] {
            std::fs::write(
                Config::path(dir.path()),
                format!(
                    "[[devices]]\ndeviceID = \"{device}\"\n\n[[folders]]\nid = \"f\"\n\
                     path = \"/srv/f\"\ndevices = [{{ deviceID = \"{folder_device}\" }}]\n"
                ),
            )
            .unwrap();
            let err = format!("{:#}", Config::load(dir.path()).unwrap_err());
            assert!(err.contains("config.toml"), "{err}");
            assert!(err.contains(&format!("invalid device ID {bad:?}")), "{err}");
            assert!(err.contains("characters"), "{err}");
        }
        std::fs::write(
            Config::path(dir.path()),
            "[[folders]]\nid = \"f\"\npath = \"/srv/f\"\ntype = \"mirror\"\n",
        )
        .unwrap();
        let err = format!("{:#}", Config::load(dir.path()).unwrap_err());
        assert!(err.contains("type \"mirror\" is not supported"), "{err}");
    }
}
