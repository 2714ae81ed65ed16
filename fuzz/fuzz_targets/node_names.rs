//! Names from peers: `names::validate` (the wire check) against the
//! puller's `check_name` (what may touch the disk). The puller must accept
//! exactly what the wire check accepts, minus the names Syncthing keeps for
//! itself and components too long for a filesystem.
#![no_main]

use libfuzzer_sys::fuzz_target;
use node::pull::disk::check_name;
use proto::bep::names;

fuzz_target!(|name: &str| {
    let wire = names::validate(name).is_ok();
    let disk = check_name(name).is_ok();
    if disk {
        assert!(
            wire,
            "{name:?}: the puller accepts what the wire check refuses"
        );
        assert!(!names::is_reserved(name));
        assert!(!name
            .split('/')
            .any(|c| c == ".." || c == "." || c.is_empty()));
    }
    let expected = wire && !names::is_reserved(name) && name.split('/').all(|c| c.len() <= 255);
    assert_eq!(disk, expected, "{name:?}");
    if names::is_temporary(name) {
        assert!(names::is_temporary_any_case(name));
    }
});
