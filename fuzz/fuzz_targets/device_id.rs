//! Device IDs in every text form Syncthing accepts: whatever parses prints
//! in the canonical form, which parses back to the same ID; bytes of the
//! right length always make an ID.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::{AllowList, DeviceId};

fuzz_target!(|data: &[u8]| {
    if let Ok(id) = DeviceId::from_slice(data) {
        let text = id.to_string();
        assert_eq!(text.parse::<DeviceId>(), Ok(id));
        let _ = id.short().to_string();
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = text.parse::<DeviceId>() {
        let canonical = id.to_string();
        assert_eq!(canonical.parse::<DeviceId>(), Ok(id), "{canonical:?}");
        assert_eq!(canonical.to_lowercase().parse::<DeviceId>(), Ok(id));
    }
    if let Ok(list) = AllowList::parse(text) {
        for id in list.iter() {
            assert!(list.contains(id));
        }
    }
});
