//! The configuration file: `config.toml` in the home directory, written
//! with a comment on every setting so an operator can edit it by hand or
//! ship it as a Kubernetes ConfigMap. Keys are Syncthing's JSON names, so
//! what the REST API shows is what the file holds.
//!
//! A `config.json` from earlier versions is read once and replaced by
//! `config.toml` (the JSON file is kept as `config.json.migrated`).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use toml_edit::{DocumentMut, Item, Table};

use super::Config;

/// File name of the configuration in the home directory.
pub const FILE_NAME: &str = "config.toml";
/// The file earlier versions wrote.
const LEGACY_FILE_NAME: &str = "config.json";
/// Largest configuration file read (a guard against pointing at a wrong file).
const MAX_CONFIG_BYTES: u64 = 16 << 20;

const HEADER: &str = "\
# Configuration of this node (a Syncthing-compatible sync device).
#
# Written by `node generate` and rewritten whenever the configuration is
# changed over the REST API (then only these explanatory comments are kept:
# notes of your own belong in a separate file). Keys are the names of
# Syncthing's REST/JSON configuration. Edit it while the node is stopped, or
# change settings live with the REST API (`/rest/config/...`).
#
# Nothing here points at public Syncthing infrastructure: discovery servers
# and relays are only those listed below.
";

/// Comments written above each setting: (table, key, comment).
const COMMENTS: &[(&str, &str, &str)] = &[
    ("", "name", "This device's name, sent to the devices it connects to."),
    ("options", "listenAddresses", "Where to accept BEP connections: tcp://HOST:PORT (0.0.0.0 for every\n# interface), relay://HOST:PORT/?id=...&token=... to be reachable through a\n# relay. Empty: no listener (the node still dials out)."),
    ("options", "reconnectionIntervalS", "Seconds between attempts to reach a disconnected device."),
    ("options", "globalAnnounceServers", "Global discovery servers: https://HOST:PORT/?id=<server device ID>\n# (or ?insecure to skip pinning). None by default: private network."),
    ("options", "globalAnnounceEnabled", "Announce our addresses to the servers above and look devices up there."),
    ("options", "localAnnounceEnabled", "Announce and find devices on the local network (UDP broadcast/multicast)."),
    ("options", "relaysEnabled", "Use relays (relay:// listen addresses, relays other devices announce)."),
    ("options", "localAnnouncePort", "UDP port of local discovery (21027, as Syncthing)."),
    ("options", "maxSendKbps", "Bandwidth limits over all devices, in KiB/s as in Syncthing (0: none).\n# A device's own maxSendKbps/maxRecvKbps apply too; the stricter wins."),
    ("options", "limitBandwidthInLan", "Apply the limits to LAN connections too (loopback, link-local, our\n# interfaces' networks, alwaysLocalNets). Off: LAN is exempt. Relayed\n# connections are never LAN."),
    ("options", "alwaysLocalNets", "More networks (CIDR) to count as LAN, e.g. a site-to-site VPN."),
    ("options", "dnsServers", "DNS servers (IP or IP:PORT) for host names in addresses and for\n# dns-srv://NAME devices (SRV _syncthing._tcp.NAME). Empty: the system's."),
    ("gui", "address", "REST API HOST:PORT (127.0.0.1 keeps it on this machine). Empty: no API."),
    ("gui", "apiKey", "Every REST call must send this in the X-API-Key header."),
    ("gui", "useTLS", "Redirect plain HTTP to HTTPS (the port always speaks both; the\n# certificate is https-cert.pem/https-key.pem here, generated at first start:\n# replace both files to use your own)."),
];

const DEVICES_COMMENT: &str = "\
# Devices this node talks to. Only these may connect; each is pinned by its
# device ID. addresses: tcp://HOST:PORT to dial (HOST may be a DNS name),
# relay://HOST:PORT/?id=... to dial through a relay, dns-srv://NAME for the
# SRV records _syncthing._tcp.NAME, or \"dynamic\" to find it by discovery.
# compression: metadata (default), always or never. numConnections: BEP
# connections wanted to the device (0: default 3, one for index traffic and
# two for data, as Syncthing 2.x; 1 for a single one). A peer that asks for
# none (Syncthing before 1.24) always gets one. allowedNetworks: CIDRs the
# device may connect from and be dialed at (\"!\" before one refuses it; the
# first match decides; empty: anywhere). maxSendKbps, maxRecvKbps:
# bandwidth limits for this device alone, in KiB/s (0: none). introducer: the
# device's list of devices for the folders we share with it is taken over
# (new ones are added with introducedBy set to it, and removed again when
# it drops them unless skipIntroductionRemovals). autoAcceptFolders: folders
# the device offers are created under defaults.folder.path and shared back.";

const FOLDERS_COMMENT: &str = "\
# Shared folders. type: sendreceive, sendonly (remote changes are not
# applied) or receiveonly (local changes are kept but not sent). devices: who
# shares it. rescanIntervalS: full rescan period; fsWatcherEnabled: rescan
# within fsWatcherDelayS seconds of a change. ignoreDelete: deletions made on
# other devices are not applied here (an archive keeps everything).
# maxConflicts: conflict copies kept per file, the oldest removed first (10;
# -1: all; 0: none, the losing local version is discarded, or kept in the
# versions folder when versioning is on). A folder whose path does not exist
# when it is added is created; one that was synced and whose path or
# .stfolder marker vanished (an unmounted disk) is not scanned. versioning:
# what a remote change replaces or deletes is kept (type trashcan, simple,
# staggered or external; params as Syncthing's: cleanoutDays, keep, maxAge,
# command, and timeoutS for external; fsPath: where, default .stversions in
# the folder). markerName: another marker (never created by the node: the
# folder stops while it is absent). ignorePerms: for storage without Unix
# permissions (SMB, NFS, FAT). copyOwnershipFromParent: pulled items get
# their directory's owner.";

const EXAMPLES: &str = "
# No devices or folders yet. For example:
#
# [[devices]]
# deviceID = \"ABCDEFG-HIJKLMN-OPQRSTU-VWXYZ23-4567ABC-DEFGHIJ-KLMNOPQ-RSTUVWX\"
# name = \"la-nas\"
# addresses = [\"tcp://la-nas.example:22000\"]
#
# [[folders]]
# id = \"projects\"
# path = \"/srv/projects\"
# type = \"sendreceive\"
# devices = [{ deviceID = \"ABCDEFG-HIJKLMN-OPQRSTU-VWXYZ23-4567ABC-DEFGHIJ-KLMNOPQ-RSTUVWX\" }]
";

pub fn path(home: &Path) -> PathBuf {
    home.join(FILE_NAME)
}

fn read_bounded(path: &Path) -> Result<Option<String>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let mut text = String::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read {} (is it UTF-8 text?)", path.display()))?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        bail!(
            "{} is larger than {} MiB: is it the right file?",
            path.display(),
            MAX_CONFIG_BYTES >> 20
        );
    }
    Ok(Some(text))
}

/// Reads `home/config.toml` (or migrates `home/config.json`).
pub fn load(home: &Path) -> Result<Config> {
    let toml_path = path(home);
    if let Some(text) = read_bounded(&toml_path)? {
        return parse(&text)
            .with_context(|| format!("{} is not a valid configuration", toml_path.display()));
    }
    let json_path = home.join(LEGACY_FILE_NAME);
    let Some(text) = read_bounded(&json_path)? else {
        bail!(
            "no configuration at {}; create one with `node generate --home {}`",
            toml_path.display(),
            home.display()
        );
    };
    let config: Config = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a valid configuration", json_path.display()))?;
    save(&config, home).context("cannot write the migrated configuration")?;
    let kept = home.join(format!("{LEGACY_FILE_NAME}.migrated"));
    std::fs::rename(&json_path, &kept)
        .with_context(|| format!("cannot rename {}", json_path.display()))?;
    tracing::info!(from = %json_path.display(), to = %toml_path.display(), "configuration migrated to TOML");
    Ok(config)
}

pub fn parse(text: &str) -> Result<Config> {
    Ok(toml::from_str(text)?)
}

/// The file's text: the configuration with its comments.
pub fn render(config: &Config) -> Result<String> {
    let plain = toml::to_string(config).context("cannot express the configuration as TOML")?;
    let mut doc: DocumentMut = plain
        .parse()
        .context("cannot re-read the configuration as TOML")?;
    let root = doc.as_table_mut();
    for (table, key, comment) in COMMENTS {
        let t: Option<&mut Table> = if table.is_empty() {
            Some(&mut *root)
        } else {
            root.get_mut(table).and_then(Item::as_table_mut)
        };
        if let Some(mut k) = t.and_then(|t| t.key_mut(key)) {
            k.leaf_decor_mut().set_prefix(format!("\n# {comment}\n"));
        }
    }
    for (name, comment) in [("devices", DEVICES_COMMENT), ("folders", FOLDERS_COMMENT)] {
        let first = root
            .get_mut(name)
            .and_then(Item::as_array_of_tables_mut)
            .and_then(|a| a.get_mut(0));
        if let Some(first) = first {
            first.decor_mut().set_prefix(format!("\n{comment}\n"));
        }
    }
    let mut text = format!("{HEADER}{doc}");
    if config.devices.is_empty() && config.folders.is_empty() {
        text.push_str(EXAMPLES);
    }
    Ok(text)
}

/// Writes the configuration atomically and durably (temp file, fsync,
/// rename, fsync of the directory): a crash leaves the old file or the new.
pub fn save(config: &Config, home: &Path) -> Result<()> {
    let text = render(config)?;
    // What we write must read back as the same configuration.
    parse(&text).context("the rendered configuration does not parse back")?;
    let target = path(home);
    let tmp = home.join(format!(".{FILE_NAME}.tmp"));
    let write = || -> std::io::Result<()> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        // The file holds the API key and the GUI password hash: owner
        // only, whatever the umask. A temp file left by a crash may have
        // other permissions, so it is replaced, not reused.
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &target)?;
        File::open(home)?.sync_all()
    };
    write().with_context(|| {
        format!(
            "cannot write {} (a read-only ConfigMap? then change the ConfigMap, not the live configuration)",
            target.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{
        Compression, DeviceConfig, FolderConfig, FolderDevice, FolderType, Options,
    };

    fn sample(dir: &Path) -> Config {
        let id = proto::DeviceId::from_der_cert(b"peer");
        Config {
            name: "nas-1".into(),
            options: Options {
                listen_addresses: vec!["tcp://0.0.0.0:22000".into()],
                global_announce_servers: vec!["https://disco.example:8443/?id=X".into()],
                ..Default::default()
            },
            devices: vec![DeviceConfig {
                name: "la".into(),
                addresses: vec!["dynamic".into()],
                compression: Compression::Metadata,
                ..DeviceConfig::new(id)
            }],
            folders: vec![FolderConfig {
                id: "projects".into(),
                label: "Projects \"2026\"".into(),
                versioning: crate::config::VersioningConfig::new(
                    "simple",
                    [("keep".to_string(), "3".to_string())].into(),
                )
                .unwrap()
                .with_fs_path("/mnt/versions"),
                path: dir.join("p"),
                kind: FolderType::SendReceive,
                devices: vec![FolderDevice::new(id)],
                rescan_interval_s: 3600,
                paused: false,
                fs_watcher_enabled: true,
                fs_watcher_delay_s: 1,
                ignore_delete: false,
                max_conflicts: crate::config::MaxConflicts::DEFAULT,
                ignore_perms: false,
                marker_name: Default::default(),
                copy_ownership_from_parent: false,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn commented_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let c = sample(dir.path());
        save(&c, dir.path()).unwrap();
        let text = std::fs::read_to_string(path(dir.path())).unwrap();
        assert!(text.starts_with("# Configuration of this node"));
        assert!(text.contains("# Shared folders."));
        assert!(text.contains("# Where to accept BEP connections"));
        assert!(text.contains("[folders.versioning]"), "{text}");
        let back = load(dir.path()).unwrap();
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(&c).unwrap()
        );
    }

    #[test]
    fn the_file_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        // An earlier version's world-readable file is replaced too.
        std::fs::write(path(dir.path()), "name = \"old\"\n").unwrap();
        std::fs::set_permissions(path(dir.path()), std::fs::Permissions::from_mode(0o644)).unwrap();
        save(&sample(dir.path()), dir.path()).unwrap();
        let mode = std::fs::metadata(path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    }

    #[test]
    fn empty_configuration_shows_examples_and_parses() {
        let text = render(&Config::default()).unwrap();
        assert!(text.contains("# [[folders]]"));
        parse(&text).unwrap();
    }

    #[test]
    fn json_configuration_is_migrated_once() {
        let dir = tempfile::tempdir().unwrap();
        let c = sample(dir.path());
        std::fs::write(
            dir.path().join("config.json"),
            serde_json::to_string(&c).unwrap(),
        )
        .unwrap();
        let back = load(dir.path()).unwrap();
        assert_eq!(back.folders[0].label, c.folders[0].label);
        assert!(path(dir.path()).exists());
        assert!(dir.path().join("config.json.migrated").exists());
        assert!(!dir.path().join("config.json").exists());
        assert_eq!(load(dir.path()).unwrap().name, "nas-1");
    }

    #[test]
    fn bad_files_are_refused_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("node generate"), "{err}");
        std::fs::write(path(dir.path()), "name = [").unwrap();
        let err = format!("{:#}", load(dir.path()).unwrap_err());
        assert!(err.contains("config.toml"), "{err}");
    }
}
