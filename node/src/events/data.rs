//! One function per event the node emits, building the `data` object
//! with Syncthing's field names, so call sites stay one line.

use std::net::SocketAddr;

use proto::bep::wire::FileInfo;
use proto::DeviceId;
use serde_json::{json, Value};

use super::{Events, Kind};

fn kind_name(f: &FileInfo) -> &'static str {
    match f.r#type {
        1 => "dir",
        4 => "symlink",
        _ => "file",
    }
}

fn action(f: &FileInfo) -> &'static str {
    if f.deleted {
        "delete"
    } else {
        "update"
    }
}

impl Events {
    fn change(&self, kind: Kind, folder: &str, f: &FileInfo) {
        self.records.folder_file(folder, &f.name, f.deleted);
        self.emit(
            kind,
            json!({
                "folder": folder,
                "folderID": folder,
                "label": self.bus.label(folder),
                "action": if f.deleted { "deleted" } else { "modified" },
                "type": kind_name(f),
                "path": f.name,
                "modifiedBy": proto::ShortId(f.modified_by).to_string(),
            }),
        );
    }

    /// `LocalChangeDetected` for each valid item a scan recorded; returns the
    /// names for `LocalIndexUpdated`.
    pub fn local_changes<'a>(
        &self,
        folder: &str,
        items: impl Iterator<Item = &'a FileInfo>,
    ) -> Vec<String> {
        // An invalid item is a receive-only folder's own change: announced,
        // never detected as a change of the folder's content.
        self.changes(Kind::LocalChangeDetected, folder, items, |f| !f.invalid)
    }

    /// One `kind` event per item `announce` keeps; every item's name is
    /// returned for `LocalIndexUpdated`.
    fn changes<'a>(
        &self,
        kind: Kind,
        folder: &str,
        items: impl Iterator<Item = &'a FileInfo>,
        announce: impl Fn(&FileInfo) -> bool,
    ) -> Vec<String> {
        let mut names = Vec::new();
        for f in items {
            names.push(f.name.clone());
            if announce(f) {
                self.change(kind, folder, f);
            }
        }
        names
    }

    pub fn local_index_updated(&self, folder: &str, filenames: Vec<String>, sequence: i64) {
        self.emit(
            Kind::LocalIndexUpdated,
            json!({"folder": folder, "items": filenames.len(), "filenames": filenames,
                   "sequence": sequence, "version": sequence}),
        );
    }

    /// `RemoteChangeDetected` for each item the puller applied to disk;
    /// returns the names for `LocalIndexUpdated`.
    pub fn remote_changes<'a>(
        &self,
        folder: &str,
        items: impl Iterator<Item = &'a FileInfo>,
    ) -> Vec<String> {
        self.changes(Kind::RemoteChangeDetected, folder, items, |_| true)
    }

    pub fn remote_index_updated(
        &self,
        device: &DeviceId,
        folder: &str,
        items: usize,
        sequence: i64,
    ) {
        self.emit(
            Kind::RemoteIndexUpdated,
            json!({"device": device.to_string(), "folder": folder, "items": items,
                   "sequence": sequence, "version": sequence}),
        );
    }

    /// A device's DownloadProgress: blocks it holds per file in progress
    /// (Syncthing's `state`).
    pub fn remote_download_progress(
        &self,
        device: &DeviceId,
        folder: &str,
        state: &std::collections::HashMap<String, usize>,
    ) {
        self.emit(
            Kind::RemoteDownloadProgress,
            json!({"device": device.to_string(), "folder": folder, "state": state}),
        );
    }

    pub fn item_started(&self, folder: &str, f: &FileInfo) {
        self.progress.start(folder, f);
        self.emit(
            Kind::ItemStarted,
            json!({"folder": folder, "item": f.name, "type": kind_name(f), "action": action(f)}),
        );
    }

    /// `error` is null on success, as in Syncthing.
    pub fn item_finished(&self, folder: &str, f: &FileInfo, error: Option<String>) {
        self.progress.finish(folder, &f.name);
        self.emit(
            Kind::ItemFinished,
            json!({"folder": folder, "item": f.name, "type": kind_name(f), "action": action(f),
                   "error": error}),
        );
    }

    /// `StateChanged`, in Syncthing's spelling of the states.
    pub fn state_changed(&self, folder: &str, from: &str, to: &str) {
        self.emit(
            Kind::StateChanged,
            json!({"folder": folder, "from": from, "to": to}),
        );
    }

    pub fn scan_progress(&self, folder: &str, current: u64, total: u64, rate: f64) {
        self.emit(
            Kind::FolderScanProgress,
            json!({"folder": folder, "current": current, "total": total, "rate": rate}),
        );
    }

    /// `FolderErrors` after a pull round with errors: (path, error) pairs.
    pub fn folder_errors(&self, folder: &str, errors: &[(String, String)]) {
        if errors.is_empty() {
            return;
        }
        self.records.log(
            3,
            format!(
                "Folder {folder:?}: {} items could not be synced",
                errors.len()
            ),
        );
        let list: Vec<Value> = errors
            .iter()
            .map(|(p, e)| json!({"path": p, "error": e}))
            .collect();
        self.emit(
            Kind::FolderErrors,
            json!({"folder": folder, "errors": list}),
        );
    }

    pub fn device_connected(
        &self,
        id: &DeviceId,
        name: &str,
        client_name: &str,
        client_version: &str,
        kind: &str,
        addr: SocketAddr,
    ) {
        self.records.device_up(&id.to_string());
        self.records.log(
            2,
            format!("Established connection to {id} ({name:?}, {kind}) at {addr}, {client_name} {client_version}"),
        );
        self.emit(
            Kind::DeviceConnected,
            json!({"id": id.to_string(), "deviceName": name, "clientName": client_name,
                   "clientVersion": client_version, "type": kind, "addr": addr.to_string()}),
        );
    }

    pub fn device_disconnected(&self, id: &DeviceId, error: &str) {
        self.records.device_down(&id.to_string());
        self.records
            .log(2, format!("Connection to {id} closed: {error}"));
        self.emit(
            Kind::DeviceDisconnected,
            json!({"id": id.to_string(), "error": error}),
        );
    }

    pub fn pending_device_added(&self, id: &DeviceId, name: &str, address: SocketAddr) {
        self.records.log(
            3,
            format!("Connection from unknown device {id} ({name:?}) at {address} refused; it is listed as pending"),
        );
        self.emit(
            Kind::PendingDevicesChanged,
            json!({"added": [{"deviceID": id.to_string(), "name": name, "address": address.to_string()}]}),
        );
    }

    pub fn pending_folder_added(&self, folder: &str, label: &str, device: &DeviceId) {
        self.emit(
            Kind::PendingFoldersChanged,
            json!({"added": [{"deviceID": device.to_string(), "folderID": folder, "folderLabel": label,
                              "receiveEncrypted": false, "remoteEncrypted": false}]}),
        );
    }

    /// `ConfigSaved` with the whole configuration as `/rest/config` shows it.
    pub fn config_saved(&self, config: &crate::config::Config, shown: Value) {
        self.records.log(2, "Configuration saved".into());
        self.bus.set_labels(config);
        self.emit(Kind::ConfigSaved, shown);
    }

    pub fn starting(&self, home: &std::path::Path, my_id: &DeviceId) {
        self.records.log(2, format!("My ID: {my_id}"));
        self.emit(
            Kind::Starting,
            json!({"home": home.display().to_string(), "myID": my_id.to_string()}),
        );
    }

    pub fn startup_complete(&self, my_id: &DeviceId) {
        self.records.log(2, "Startup complete".into());
        self.emit(Kind::StartupComplete, json!({"myID": my_id.to_string()}));
    }

    pub fn device_paused(&self, id: &DeviceId, paused: bool) {
        let kind = if paused {
            Kind::DevicePaused
        } else {
            Kind::DeviceResumed
        };
        self.emit(kind, json!({"device": id.to_string()}));
    }

    pub fn folder_paused(&self, id: &str, label: &str, paused: bool) {
        let kind = if paused {
            Kind::FolderPaused
        } else {
            Kind::FolderResumed
        };
        self.emit(kind, json!({"id": id, "label": label}));
    }
}
