//! Introductions and auto-accepted folders: what a device's ClusterConfig
//! changes in our configuration, as Syncthing does it.
//!
//! - A device marked `introducer` vouches for the devices it lists in the
//!   folders it shares with us: unknown ones are added (`introducedBy` it),
//!   and every folder we have is shared with the devices it lists there.
//!   When it stops listing a device for a folder, a share it introduced
//!   ends; a device it introduced and lists nowhere any more is removed
//!   (unless it also shares a folder we set up ourselves). With
//!   `skipIntroductionRemovals` nothing is ever removed.
//! - A device marked `autoAcceptFolders` gets the folders it offers: a
//!   folder we have is shared with it, a new one is created under
//!   `defaults.folder.path` (named after its label, else its ID, if that
//!   path is free) and shared with it.
//!
//! [`introduce`] and [`auto_accept`] are pure edits of a [`Config`];
//! [`Node::follow_cluster_config`] saves them through
//! [`Node::update_config`] and wakes the node's configuration follower
//! (`Node::config_edited`), which announces and applies the change as a
//! REST change would be.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::Result;
use proto::bep::wire::{ClusterConfig, Device};
use proto::DeviceId;

use super::Node;
use crate::config::{Config, DeviceConfig, FolderConfig, FolderDevice};

/// Most addresses of one introduced device taken from its introducer.
pub const MAX_INTRODUCED_ADDRESSES: usize = 32;
/// Longest address taken from an introducer (longer ones are dropped).
pub const MAX_INTRODUCED_ADDRESS_LEN: usize = 512;

/// What a ClusterConfig changed in the configuration.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub devices_added: Vec<DeviceId>,
    pub devices_removed: Vec<DeviceId>,
    /// (folder, device) shares added.
    pub shared: Vec<(String, DeviceId)>,
    /// (folder, device) shares ended.
    pub unshared: Vec<(String, DeviceId)>,
    /// Folders created by auto-accept.
    pub folders_created: Vec<String>,
}

impl Changes {
    /// One line per change, as Syncthing logs them.
    fn log(&self, from: DeviceId) {
        for id in &self.devices_added {
            tracing::info!(device = %id, introducer = %from.short(),
                "adding device to config (vouched for by introducer)");
        }
        for (folder, id) in &self.shared {
            tracing::info!(folder = %folder, device = %id, by = %from.short(),
                "sharing folder (vouched for by introducer, or auto-accepted)");
        }
        for (folder, id) in &self.unshared {
            tracing::info!(folder = %folder, device = %id, introducer = %from.short(),
                "unsharing folder as introducer no longer shares the folder with that device");
        }
        for id in &self.devices_removed {
            tracing::info!(device = %id, introducer = %from.short(),
                "removing device as introducer no longer shares any folders with that device");
        }
        for folder in &self.folders_created {
            tracing::info!(folder = %folder, device = %from, "auto-accepted folder");
        }
    }

    pub fn is_empty(&self) -> bool {
        self.devices_added.is_empty()
            && self.devices_removed.is_empty()
            && self.shared.is_empty()
            && self.unshared.is_empty()
            && self.folders_created.is_empty()
    }
}

fn id_of(d: &Device) -> Option<DeviceId> {
    DeviceId::from_slice(&d.id).ok()
}

/// Applies `introducer`'s ClusterConfig to `config` if that device is
/// marked `introducer` (otherwise nothing changes). `me`: our device ID.
pub fn introduce(
    config: &mut Config,
    me: DeviceId,
    introducer: DeviceId,
    cc: &ClusterConfig,
    changes: &mut Changes,
) {
    let Some(icfg) = config.device(&introducer).cloned() else {
        return;
    };
    if !icfg.introducer {
        return;
    }
    // Every (folder, device) the introducer lists for a folder we have.
    let mut listed: HashSet<(&str, DeviceId)> = HashSet::new();
    let mut listed_devices: HashSet<DeviceId> = HashSet::new();
    for folder in &cc.folders {
        // As Syncthing: a folder we have, whoever we share it with (the
        // introducer lists only folders it shares with us).
        let Some(fi) = config.folders.iter().position(|f| f.id == folder.id) else {
            continue;
        };
        for d in &folder.devices {
            let Some(id) = id_of(d) else { continue };
            if id == me {
                continue;
            }
            listed.insert((folder.id.as_str(), id));
            listed_devices.insert(id);
            if config.device(&id).is_none() {
                config.devices.push(introduced_device(d, id, &icfg));
                changes.devices_added.push(id);
            } else if config.folders[fi].shared_with(&id) {
                continue;
            }
            if !d.encryption_password_token.is_empty() {
                // Only a receive-encrypted folder may be shared with a
                // device that wants encrypted data, and this node has none.
                tracing::warn!(folder = %folder.id, device = %id, introducer = %introducer.short(),
                    "cannot share folder in untrusted mode with introduced device");
                continue;
            }
            config.folders[fi].devices.push(FolderDevice {
                device_id: id,
                introduced_by: Some(introducer),
            });
            changes.shared.push((folder.id.clone(), id));
        }
    }
    if icfg.skip_introduction_removals {
        return;
    }
    // Devices that share a folder we did not get from this introducer
    // stay, whatever it says.
    let mut kept_for_other_reasons: HashSet<DeviceId> = HashSet::new();
    for f in &mut config.folders {
        let id = f.id.clone();
        f.devices.retain(|fd| {
            if fd.introduced_by != Some(introducer) {
                kept_for_other_reasons.insert(fd.device_id);
                return true;
            }
            let keep = listed.contains(&(id.as_str(), fd.device_id));
            if !keep {
                changes.unshared.push((id.clone(), fd.device_id));
            }
            keep
        });
    }
    config.devices.retain(|d| {
        let remove = d.introduced_by == Some(introducer)
            && !listed_devices.contains(&d.device_id)
            && !kept_for_other_reasons.contains(&d.device_id);
        if remove {
            changes.devices_removed.push(d.device_id);
        }
        !remove
    });
}

/// A device as its introducer describes it: its name and addresses (with
/// `dynamic` first), the introducer's compression, and the introducer's
/// introducer flags if it is one itself (the introducer's introducers are
/// ours too, as in Syncthing).
fn introduced_device(d: &Device, id: DeviceId, introducer: &DeviceConfig) -> DeviceConfig {
    let mut addresses = vec!["dynamic".to_string()];
    addresses.extend(
        d.addresses
            .iter()
            .filter(|a| {
                a.as_str() != "dynamic"
                    && !a.is_empty()
                    && a.len() <= MAX_INTRODUCED_ADDRESS_LEN
                    && !a.chars().any(char::is_control)
            })
            .take(MAX_INTRODUCED_ADDRESSES)
            .cloned(),
    );
    DeviceConfig {
        name: crate::guard::peer_name(&d.name),
        addresses,
        compression: introducer.compression,
        introducer: d.introducer,
        skip_introduction_removals: d.introducer && d.skip_introduction_removals,
        introduced_by: Some(introducer.device_id),
        ..DeviceConfig::new(id)
    }
}

/// Applies `peer`'s offers to `config` if that device is marked
/// `autoAcceptFolders`. `base`: `defaults.folder.path` expanded (None:
/// no usable default path, so no folder is created); `exists`: whether a
/// path is already on disk.
pub fn auto_accept(
    config: &mut Config,
    peer: DeviceId,
    cc: &ClusterConfig,
    base: Option<&Path>,
    exists: impl Fn(&Path) -> bool,
    changes: &mut Changes,
) {
    if !config.device(&peer).is_some_and(|d| d.auto_accept_folders) {
        return;
    }
    for folder in &cc.folders {
        if folder.id.is_empty() {
            continue;
        }
        if folder
            .devices
            .iter()
            .any(|d| !d.encryption_password_token.is_empty())
        {
            // Syncthing would make it receive-encrypted, which this node
            // does not run: it stays an offer for the operator.
            tracing::info!(folder = %crate::guard::peer_text(&folder.id), device = %peer,
                "not auto-accepting an encrypted folder (receive-encrypted is not supported)");
            continue;
        }
        if let Some(f) = config.folders.iter_mut().find(|f| f.id == folder.id) {
            if !f.shared_with(&peer) {
                f.devices.push(FolderDevice::new(peer));
                changes.shared.push((f.id.clone(), peer));
            }
            continue;
        }
        let Some(base) = base else {
            tracing::warn!(folder = %crate::guard::peer_text(&folder.id), device = %peer,
                "cannot auto-accept folder: defaults.folder.path is not an absolute path");
            continue;
        };
        let taken = |p: &Path| exists(p) || config.folders.iter().any(|f| f.path == p);
        let path = [&folder.label, &folder.id]
            .into_iter()
            .map(|name| sanitize_path(name))
            .filter(|name| !name.is_empty() && name != "." && name != "..")
            .map(|name| base.join(name))
            .find(|p| !taken(p));
        let Some(path) = path else {
            tracing::warn!(folder = %crate::guard::peer_text(&folder.id), device = %peer,
                "cannot auto-accept folder: its label and ID are taken as paths (or unusable)");
            continue;
        };
        match new_folder(
            &folder.id,
            &crate::guard::peer_text(&folder.label),
            path,
            peer,
        ) {
            Ok(f) => {
                changes.folders_created.push(f.id.clone());
                config.folders.push(f);
            }
            Err(e) => tracing::warn!(folder = %crate::guard::peer_text(&folder.id),
                error = %e, "cannot auto-accept folder"),
        }
    }
}

/// A folder with the configuration's defaults (as a folder written with
/// only these keys reads), shared with `peer`.
fn new_folder(
    id: &str,
    label: &str,
    path: PathBuf,
    peer: DeviceId,
) -> serde_json::Result<FolderConfig> {
    let mut f: FolderConfig = serde_json::from_value(serde_json::json!({
        "id": id, "label": label, "path": path, "type": "sendreceive",
    }))?;
    f.devices.push(FolderDevice::new(peer));
    Ok(f)
}

/// A folder label or ID made a directory name, by Syncthing's rules:
/// characters that are not printable or not portable in a name become
/// spaces, runs of spaces collapse to one, the ends are trimmed, and a
/// name Windows reserves (`CON`, `nul.txt`, …) gets a `-` in front.
pub fn sanitize_path(name: &str) -> String {
    const DISALLOWED: &str = "'/\\[]{};:!@$%&^#<>\"|?*";
    let mut out = String::with_capacity(name.len());
    let mut prev = ' ';
    for c in name.chars() {
        let printable = c == ' ' || !(c.is_control() || c.is_whitespace());
        let c = if !printable || c == char::REPLACEMENT_CHARACTER || DISALLOWED.contains(c) {
            ' '
        } else {
            c
        };
        if !(c == ' ' && prev == ' ') {
            out.push(c);
        }
        prev = c;
    }
    let out = out.trim().to_string();
    if windows_reserved(&out) {
        format!("-{out}")
    } else {
        out
    }
}

fn windows_reserved(name: &str) -> bool {
    let stem = name.split('.').next().unwrap_or(name).to_ascii_uppercase();
    matches!(stem.as_str(), "CON" | "PRN" | "AUX" | "NUL")
        || (stem.len() == 4
            && (stem.starts_with("COM") || stem.starts_with("LPT"))
            && stem.as_bytes()[3].is_ascii_digit())
}

impl Node {
    /// What `peer`'s ClusterConfig asks of our configuration (it is an
    /// introducer, or auto-accepts folders): saved as one change, then
    /// `config_edited` wakes the follower that announces and applies it.
    /// Nothing is saved when nothing changes, so the ClusterConfig that
    /// every applied change makes connections re-read settles at once.
    pub fn follow_cluster_config(&self, peer: DeviceId, cc: &ClusterConfig) -> Result<Changes> {
        let config = self.config();
        let acts = config
            .device(&peer)
            .is_some_and(|d| d.introducer || d.auto_accept_folders);
        if !acts {
            return Ok(Changes::default());
        }
        let mutual = config.device(&peer).is_some_and(|d| d.introducer)
            && cc.folders.iter().any(|f| {
                f.devices
                    .iter()
                    .any(|d| d.introducer && id_of(d) == Some(self.my_id))
            });
        if mutual {
            // Each would re-add what the other removes; Syncthing warns too.
            tracing::warn!(device = %peer,
                "the device is an introducer to us, and we are to it: only one should be introducer to the other");
        }
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let base = config.defaults.folder.expanded(home.as_deref());
        let edit = |c: &mut Config, changes: &mut Changes| {
            auto_accept(
                c,
                peer,
                cc,
                base.as_deref(),
                |p| p.symlink_metadata().is_ok(),
                changes,
            );
            introduce(c, self.my_id, peer, cc, changes);
        };
        // A dry run on a copy first: most ClusterConfigs change nothing,
        // and those must not take the writers' turn or write the file.
        let mut probe = Config::clone(&config);
        let mut changes = Changes::default();
        edit(&mut probe, &mut changes);
        if changes.is_empty() {
            return Ok(changes);
        }
        let mut changes = Changes::default();
        self.update_config(|c| {
            edit(c, &mut changes);
            Ok(())
        })?;
        changes.log(peer);
        if !changes.is_empty() {
            self.config_edited.notify_one();
        }
        Ok(changes)
    }
}

#[cfg(test)]
mod tests;
