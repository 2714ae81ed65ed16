//! Syncthing's event types, by the names its REST API uses.

macro_rules! kinds {
    ($($name:ident),* $(,)?) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Kind { $($name),* }

        impl Kind {
            #[allow(dead_code)] // tests and `events=` lists
            pub const ALL: &'static [Kind] = &[$(Kind::$name),*];

            pub fn name(self) -> &'static str {
                match self { $(Kind::$name => stringify!($name)),* }
            }

            pub fn from_name(s: &str) -> Option<Kind> {
                match s { $(stringify!($name) => Some(Kind::$name),)* _ => None }
            }
        }
    };
}

kinds!(
    Starting,
    StartupComplete,
    DeviceDiscovered,
    DeviceConnected,
    DeviceDisconnected,
    DeviceRejected,
    PendingDevicesChanged,
    DevicePaused,
    DeviceResumed,
    LocalChangeDetected,
    RemoteChangeDetected,
    LocalIndexUpdated,
    RemoteIndexUpdated,
    ItemStarted,
    ItemFinished,
    StateChanged,
    FolderRejected,
    PendingFoldersChanged,
    ConfigSaved,
    DownloadProgress,
    RemoteDownloadProgress,
    FolderSummary,
    FolderCompletion,
    FolderErrors,
    FolderScanProgress,
    FolderPaused,
    FolderResumed,
    FolderWatchStateChanged,
    ListenAddressesChanged,
    LoginAttempt,
    Failure,
);

impl Kind {
    /// The on-disk change events, kept apart (`/rest/events/disk`) and,
    /// as in Syncthing, left out of `/rest/events` unless asked for.
    pub fn is_disk(self) -> bool {
        matches!(self, Kind::LocalChangeDetected | Kind::RemoteChangeDetected)
    }
}

/// Which kinds a reader wants.
#[derive(Debug, Clone)]
pub enum Mask {
    /// Everything but the disk events (Syncthing's default mask).
    Default,
    Disk,
    Only(Vec<Kind>),
}

impl Mask {
    /// `events=A,B` of `/rest/events`; unknown names select nothing,
    /// as in Syncthing.
    pub fn parse(list: Option<&str>) -> Mask {
        match list.map(str::trim).filter(|s| !s.is_empty()) {
            None => Mask::Default,
            Some(l) => Mask::Only(
                l.split(',')
                    .filter_map(|n| Kind::from_name(n.trim()))
                    .collect(),
            ),
        }
    }

    pub fn wants(&self, k: Kind) -> bool {
        match self {
            Mask::Default => !k.is_disk(),
            Mask::Disk => k.is_disk(),
            Mask::Only(list) => list.contains(&k),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_masks() {
        for k in Kind::ALL {
            assert_eq!(Kind::from_name(k.name()), Some(*k));
        }
        assert!(Mask::Default.wants(Kind::StateChanged));
        assert!(!Mask::Default.wants(Kind::LocalChangeDetected));
        assert!(Mask::Disk.wants(Kind::RemoteChangeDetected));
        let m = Mask::parse(Some("ItemFinished, LocalChangeDetected,Bogus"));
        assert!(m.wants(Kind::LocalChangeDetected) && m.wants(Kind::ItemFinished));
        assert!(!m.wants(Kind::ItemStarted));
    }
}
