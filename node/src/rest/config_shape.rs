//! Syncthing's configuration keys that this node does not model, with the
//! value that is true of this node. `GET` answers carry them, so tools
//! see the shape they expect; on `PUT`/`PATCH` a key with that same value
//! is accepted (a tool writing back what it read), and a different value
//! is a 400 naming the key (the setting does not exist here) unless the
//! key only tunes performance, telemetry or the web GUI, where ignoring
//! it changes nothing a user relies on.

use serde_json::{json, Map, Value};

pub struct Extra {
    pub key: &'static str,
    pub value: fn() -> Value,
    /// A different value is ignored rather than refused.
    pub lenient: bool,
}

macro_rules! extras {
    ($($key:literal => $val:tt, $lenient:expr;)*) => {
        &[$(Extra { key: $key, value: || json!($val), lenient: $lenient }),*]
    };
}

pub const FOLDER: &[Extra] = extras! {
    "filesystemType" => "basic", false;
    "ignorePerms" => false, false;
    "autoNormalize" => true, true;
    "minDiskFree" => {"unit": "%", "value": 1}, true;
    "versioning" => {"cleanupIntervalS": 3600, "fsPath": "", "fsType": "basic", "params": {}, "type": ""}, false;
    "copiers" => 0, true;
    "pullerMaxPendingKiB" => 0, true;
    "hashers" => 0, true;
    "order" => "alphabetic", true;
    "ignoreDelete" => false, false;
    "scanProgressIntervalS" => 0, true;
    "pullerPauseS" => 0, true;
    "maxConflicts" => 10, true;
    "disableSparseFiles" => false, true;
    "disableTempIndexes" => false, true;
    "weakHashThresholdPct" => 25, true;
    "markerName" => ".stfolder", false;
    "copyOwnershipFromParent" => false, false;
    "modTimeWindowS" => 0, true;
    "maxConcurrentWrites" => 2, true;
    "disableFsync" => false, false;
    "blockPullOrder" => "standard", true;
    "copyRangeMethod" => "standard", true;
    "caseSensitiveFS" => false, true;
    "junctionsAsDirs" => false, true;
};

pub const FOLDER_DEVICE: &[Extra] = extras! {
    "encryptionPassword" => "", false;
    "introducedBy" => "", true;
};

pub const DEVICE: &[Extra] = extras! {
    "certName" => "", true;
    "introducer" => false, false;
    "skipIntroductionRemovals" => false, true;
    "introducedBy" => "", true;
    "allowedNetworks" => [], false;
    "autoAcceptFolders" => false, false;
    "maxSendKbps" => 0, false;
    "maxRecvKbps" => 0, false;
    "ignoredFolders" => [], true;
    "maxRequestKiB" => 0, true;
    "untrusted" => false, false;
    "remoteGUIPort" => 0, true;
};

pub const OPTIONS: &[Extra] = extras! {
    "alwaysLocalNets" => [], true;
    "announceLANAddresses" => false, true;
    "autoUpgradeIntervalH" => 0, true;
    "cacheIgnoredFiles" => false, true;
    "connectionLimitEnough" => 0, true;
    "connectionLimitMax" => 0, true;
    "crURL" => "", true;
    "crashReportingEnabled" => false, true;
    "databaseTuning" => "auto", true;
    "featureFlags" => [], true;
    "insecureAllowOldTLSVersions" => false, false;
    "keepTemporariesH" => 24, true;
    "limitBandwidthInLan" => false, true;
    "localAnnounceMCAddr" => "[ff12::8384]:21027", true;
    "maxConcurrentIncomingRequestKiB" => 0, true;
    "maxFolderConcurrency" => 0, true;
    "maxRecvKbps" => 0, false;
    "maxSendKbps" => 0, false;
    "minHomeDiskFree" => {"unit": "%", "value": 1}, true;
    "natEnabled" => false, true;
    "natLeaseMinutes" => 60, true;
    "natRenewalMinutes" => 30, true;
    "natTimeoutSeconds" => 10, true;
    "overwriteRemoteDeviceNamesOnConnect" => false, true;
    "progressUpdateIntervalS" => 5, true;
    "relayReconnectIntervalM" => 10, true;
    "releasesURL" => "", true;
    "restartOnWakeup" => false, true;
    "sendFullIndexOnUpgrade" => false, true;
    "setLowPriority" => false, true;
    "startBrowser" => false, true;
    "stunKeepaliveMinS" => 20, true;
    "stunKeepaliveStartS" => 0, true;
    "stunServers" => [], true;
    "tempIndexMinBlocks" => 10, true;
    "trafficClass" => 0, true;
    "unackedNotificationIDs" => [], true;
    "upgradeToPreReleases" => false, true;
    "urAccepted" => (-1), true;
    "urInitialDelayS" => 1800, true;
    "urPostInsecurely" => false, true;
    "urSeen" => 0, true;
    "urURL" => "", true;
    "urUniqueId" => "", true;
};

pub const GUI: &[Extra] = extras! {
    "unixSocketPermissions" => "", true;
    "authMode" => "static", false;
    "useTLS" => false, false;
    "insecureAdminAccess" => false, true;
    "theme" => "default", true;
    "debugging" => false, true;
    "insecureSkipHostcheck" => false, false;
    "insecureAllowFrameLoading" => false, true;
};

pub const LDAP: &[Extra] = extras! {
    "address" => "", false;
    "bindDN" => "", false;
    "insecureSkipVerify" => false, false;
    "searchBaseDN" => "", false;
    "searchFilter" => "", false;
    "transport" => "plain", false;
};

/// Adds the missing keys to an object.
pub fn decorate(obj: &mut Value, extras: &[Extra]) {
    if let Some(o) = obj.as_object_mut() {
        for e in extras {
            o.entry(e.key).or_insert_with(e.value);
        }
    }
}

/// Removes the extra keys from an incoming object; a value this node
/// cannot honour is an error naming `where_.key`.
pub fn strip(obj: &mut Value, extras: &[Extra], where_: &str) -> Result<(), String> {
    let Some(o) = obj.as_object_mut() else {
        return Ok(());
    };
    for e in extras {
        if let Some(v) = o.remove(e.key) {
            if !e.lenient && !same_value(&v, &(e.value)()) {
                return Err(format!(
                    "{where_}{}: {v} is not supported by this node (only {})",
                    e.key,
                    (e.value)()
                ));
            }
        }
    }
    Ok(())
}

/// Equal, counting numbers by value (`1` and `1.0`).
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_value(v, w)))
        }
        _ => a == b,
    }
}

/// An empty object.
pub fn object() -> Value {
    Value::Object(Map::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decorates_and_strips() {
        let mut f = json!({"id": "a", "ignorePerms": false});
        decorate(&mut f, FOLDER);
        assert_eq!(f["markerName"], ".stfolder");
        assert_eq!(f["ignorePerms"], false);
        strip(&mut f, FOLDER, "folders[0].").unwrap();
        assert_eq!(f, json!({"id": "a"}));
        let mut bad = json!({"ignorePerms": true});
        let e = strip(&mut bad, FOLDER, "folder.").unwrap_err();
        assert!(e.contains("folder.ignorePerms"), "{e}");
        let mut lenient = json!({"hashers": 4});
        strip(&mut lenient, FOLDER, "").unwrap();
    }
}
