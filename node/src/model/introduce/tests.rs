use std::path::Path;

use proto::bep::wire::{self, ClusterConfig};
use proto::DeviceId;

use super::*;
use crate::config::{Config, DeviceConfig, FolderConfig, FolderDevice};

fn id(name: &str) -> DeviceId {
    DeviceId::from_der_cert(name.as_bytes())
}

fn device(d: DeviceId, addresses: &[&str]) -> wire::Device {
    wire::Device {
        id: d.as_bytes().to_vec(),
        name: format!("name of {}", d.short()),
        addresses: addresses.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    }
}

fn offer(folders: &[(&str, &str, Vec<wire::Device>)]) -> ClusterConfig {
    ClusterConfig {
        folders: folders
            .iter()
            .map(|(fid, label, devices)| wire::Folder {
                id: fid.to_string(),
                label: label.to_string(),
                devices: devices.clone(),
                ..Default::default()
            })
            .collect(),
        secondary: false,
    }
}

fn folder(fid: &str, devices: &[DeviceId]) -> FolderConfig {
    let mut f: FolderConfig = serde_json::from_value(serde_json::json!({
        "id": fid, "path": format!("/srv/{fid}"),
    }))
    .unwrap();
    f.devices = devices.iter().map(|d| FolderDevice::new(*d)).collect();
    f
}

fn shares(c: &Config, fid: &str) -> Vec<(DeviceId, Option<DeviceId>)> {
    c.folders
        .iter()
        .find(|f| f.id == fid)
        .map(|f| {
            f.devices
                .iter()
                .map(|d| (d.device_id, d.introduced_by))
                .collect()
        })
        .unwrap_or_default()
}

/// Us, an introducer `a` sharing folders f and g with us, and a device
/// `c` we know ourselves.
fn cluster() -> (Config, DeviceId, DeviceId, DeviceId) {
    let (me, a, c) = (id("me"), id("a"), id("c"));
    let mut config = Config::default();
    config.devices.push(DeviceConfig {
        introducer: true,
        compression: crate::config::Compression::Always,
        ..DeviceConfig::new(a)
    });
    config.devices.push(DeviceConfig::new(c));
    config.folders.push(folder("f", &[a]));
    config.folders.push(folder("g", &[a, c]));
    (config, me, a, c)
}

#[test]
fn an_introducer_adds_its_devices_and_shares() {
    let (mut config, me, a, c) = cluster();
    let b = id("b");
    let mut b_entry = device(b, &["dynamic", "tcp://10.0.0.2:22000", "bad\naddress"]);
    b_entry.introducer = true;
    b_entry.skip_introduction_removals = true;
    let cc = offer(&[
        (
            "f",
            "F",
            vec![device(me, &[]), device(a, &[]), b_entry, device(c, &[])],
        ),
        // A folder we do not have: nothing of it is taken.
        (
            "x",
            "X",
            vec![device(me, &[]), device(a, &[]), device(id("z"), &[])],
        ),
    ]);
    let mut ch = Changes::default();
    introduce(&mut config, me, a, &cc, &mut ch);
    assert_eq!(ch.devices_added, vec![b]);
    assert_eq!(ch.shared, vec![("f".into(), b), ("f".into(), c)]);
    let added = config.device(&b).unwrap();
    assert_eq!(added.introduced_by, Some(a));
    assert_eq!(added.addresses, vec!["dynamic", "tcp://10.0.0.2:22000"]);
    assert_eq!(added.compression, crate::config::Compression::Always);
    assert!(added.introducer && added.skip_introduction_removals);
    assert_eq!(
        shares(&config, "f"),
        vec![(a, None), (b, Some(a)), (c, Some(a))]
    );
    assert!(config.device(&id("z")).is_none());

    // The same ClusterConfig again changes nothing.
    let mut again = Changes::default();
    introduce(&mut config, me, a, &cc, &mut again);
    assert!(again.is_empty(), "{again:?}");

    // A device that is not an introducer changes nothing.
    let mut plain = cluster().0;
    plain.devices[0].introducer = false;
    let mut none = Changes::default();
    introduce(&mut plain, me, a, &cc, &mut none);
    assert!(none.is_empty());
}

#[test]
fn what_the_introducer_drops_goes_unless_removals_are_skipped() {
    let (mut config, me, a, c) = cluster();
    let b = id("b");
    let both = offer(&[
        (
            "f",
            "F",
            vec![device(me, &[]), device(a, &[]), device(b, &[])],
        ),
        (
            "g",
            "G",
            vec![device(me, &[]), device(a, &[]), device(b, &[])],
        ),
    ]);
    introduce(&mut config, me, a, &both, &mut Changes::default());
    assert_eq!(
        shares(&config, "g"),
        vec![(a, None), (c, None), (b, Some(a))]
    );

    // b dropped from g only: that share ends, b stays for f; c (ours,
    // not listed) stays.
    let only_f = offer(&[
        (
            "f",
            "F",
            vec![device(me, &[]), device(a, &[]), device(b, &[])],
        ),
        ("g", "G", vec![device(me, &[]), device(a, &[])]),
    ]);
    let mut skipping = config.clone();
    skipping.devices[0].skip_introduction_removals = true;
    let mut ch = Changes::default();
    introduce(&mut skipping, me, a, &only_f, &mut ch);
    assert!(ch.is_empty(), "skipIntroductionRemovals keeps all: {ch:?}");

    let mut ch = Changes::default();
    introduce(&mut config, me, a, &only_f, &mut ch);
    assert_eq!(ch.unshared, vec![("g".into(), b)]);
    assert!(ch.devices_removed.is_empty());
    assert_eq!(shares(&config, "g"), vec![(a, None), (c, None)]);

    // b listed nowhere: removed with its shares.
    let none = offer(&[("f", "F", vec![device(me, &[]), device(a, &[])])]);
    let mut ch = Changes::default();
    introduce(&mut config, me, a, &none, &mut ch);
    assert_eq!(ch.unshared, vec![("f".into(), b)]);
    assert_eq!(ch.devices_removed, vec![b]);
    assert!(config.device(&b).is_none());
    assert!(config.device(&c).is_some());

    // A device we also share a folder of our own with is kept.
    introduce(&mut config, me, a, &both, &mut Changes::default());
    config.folders.push(folder("ours", &[b]));
    let mut ch = Changes::default();
    introduce(&mut config, me, a, &none, &mut ch);
    assert_eq!(ch.unshared.len(), 2);
    assert!(ch.devices_removed.is_empty());
    assert!(config.device(&b).is_some());
}

#[test]
fn auto_accept_creates_under_the_default_path_or_shares() {
    let (me, p) = (id("me"), id("p"));
    let mut config = Config::default();
    config.devices.push(DeviceConfig {
        auto_accept_folders: true,
        ..DeviceConfig::new(p)
    });
    config.folders.push(folder("have", &[]));
    let base = Path::new("/data/sync");
    let entries = || vec![device(me, &[]), device(p, &[])];
    let cc = offer(&[
        ("have", "Have", entries()),
        ("abcd-1234", "Film: \"Ep/01\"", entries()),
        ("taken-id", "Taken", entries()),
        ("both", "Both", entries()),
        ("same-label", "Film: \"Ep/01\"", entries()),
    ]);
    let on_disk = |p: &Path| {
        [base.join("Taken"), base.join("Both"), base.join("both")].contains(&p.to_path_buf())
    };
    let mut ch = Changes::default();
    auto_accept(&mut config, p, &cc, Some(base), on_disk, &mut ch);
    assert_eq!(ch.shared, vec![("have".into(), p)]);
    assert_eq!(
        ch.folders_created,
        vec!["abcd-1234", "taken-id", "same-label"]
    );
    let path_of = |fid: &str| {
        config
            .folders
            .iter()
            .find(|f| f.id == fid)
            .map(|f| f.path.clone())
    };
    assert_eq!(path_of("abcd-1234"), Some(base.join("Film Ep 01")));
    assert_eq!(path_of("taken-id"), Some(base.join("taken-id")));
    assert_eq!(
        path_of("both"),
        None,
        "both names are taken: left as an offer"
    );
    // The label's path is used by the folder accepted just before.
    assert_eq!(path_of("same-label"), Some(base.join("same-label")));
    let created = config.folders.iter().find(|f| f.id == "abcd-1234").unwrap();
    assert_eq!(created.label, "Film: \"Ep/01\"");
    assert_eq!(created.kind, crate::config::FolderType::SendReceive);
    assert_eq!(created.device_ids().collect::<Vec<_>>(), vec![p]);
    config.validate().unwrap();

    let mut again = Changes::default();
    auto_accept(&mut config, p, &cc, Some(base), on_disk, &mut again);
    assert!(again.is_empty(), "{again:?}");

    // Not marked: nothing.
    config.devices[0].auto_accept_folders = false;
    let cc = offer(&[("new", "New", entries())]);
    let mut none = Changes::default();
    auto_accept(&mut config, p, &cc, Some(base), |_| false, &mut none);
    assert!(none.is_empty());
}

#[test]
fn folder_names_become_paths_as_syncthing_makes_them() {
    for (name, path) in [
        ("Projects", "Projects"),
        ("  a//b\\c  ", "a b c"),
        ("x: y?*", "x y"),
        ("tab\there", "tab here"),
        ("CON", "-CON"),
        ("nul.txt", "-nul.txt"),
        ("com1", "-com1"),
        ("console", "console"),
        ("/:*", ""),
        ("Été 2026", "Été 2026"),
    ] {
        assert_eq!(sanitize_path(name), path, "{name:?}");
    }
}

#[test]
fn the_default_path_expands_the_home_directory() {
    let d = |p: &str| crate::config::DefaultFolder { path: p.into() };
    let home = Some(Path::new("/home/st"));
    assert_eq!(d("~").expanded(home), Some("/home/st".into()));
    assert_eq!(d("~/Sync").expanded(home), Some("/home/st/Sync".into()));
    assert_eq!(d("/srv/in").expanded(None), Some("/srv/in".into()));
    assert_eq!(d("~").expanded(None), None);
    assert_eq!(d("relative").expanded(home), None);
}
