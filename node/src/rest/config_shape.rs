//! Syncthing's configuration keys that this node does not model, with the
//! value that is true of this node. `GET` answers carry them, so tools
//! see the shape they expect; on `PUT`/`PATCH` a key with that same value
//! is accepted (a tool writing back what it read), and a different value
//! is a 400 naming the key (the setting does not exist here) unless the
//! key only tunes performance, telemetry or the web GUI, where ignoring
//! it changes nothing a user relies on.
//!
//! The keys shown are Syncthing 2.x's (what users run): keys 2.x added
//! are shown with 2.x's defaults; keys 2.x dropped are *retired* — no
//! longer shown, but still accepted on input under the same rule, since
//! a 1.x tool writes back what it once read and 2.x ignores them too.

use serde_json::{json, Map, Value};

pub struct Extra {
    pub key: &'static str,
    pub value: fn() -> Value,
    /// A different value is ignored rather than refused.
    pub lenient: bool,
}

/// The extra keys of one configuration object.
pub struct Shape {
    /// Shown by `GET` (2.x's keys), accepted on input.
    pub shown: &'static [Extra],
    /// 1.x keys 2.x dropped: accepted on input, never shown.
    pub retired: &'static [Extra],
}

macro_rules! extras {
    ($($key:literal => $val:tt, $lenient:expr;)*) => {
        &[$(Extra { key: $key, value: || json!($val), lenient: $lenient }),*]
    };
}

pub const FOLDER: &Shape = &Shape {
    shown: extras! {
        "filesystemType" => "basic", false;
        "autoNormalize" => true, true;
        "minDiskFree" => {"unit": "%", "value": 1}, true;
        "copiers" => 0, true;
        "pullerMaxPendingKiB" => 0, true;
        "hashers" => 0, true;
        "order" => "alphabetic", true;
        "scanProgressIntervalS" => 0, true;
        "pullerPauseS" => 0, true;
        "disableSparseFiles" => false, true;
        "modTimeWindowS" => 0, true;
        "maxConcurrentWrites" => 2, true;
        // Refused, with the reason in WHY_NOT.
        "disableFsync" => false, false;
        "blockPullOrder" => "standard", true;
        "copyRangeMethod" => "standard", true;
        "caseSensitiveFS" => false, true;
        "junctionsAsDirs" => false, true;
        // Added by 2.x (xattrs and ownership since 1.22): not synced here.
        "sendOwnership" => false, false;
        "syncOwnership" => false, false;
        "sendXattrs" => false, false;
        "syncXattrs" => false, false;
        "xattrFilter" => {"entries": [], "maxSingleEntrySize": 1024, "maxTotalSize": 4096}, true;
        "fsWatcherTimeoutS" => 0, true;
        "pullerDelayS" => 1, true;
        "blockIndexing" => true, true;
        // A grouping label of the web GUI.
        "group" => "", true;
    },
    retired: extras! {
        "disableTempIndexes" => false, true;
        "weakHashThresholdPct" => 25, true;
    },
};

pub const FOLDER_DEVICE: &Shape = &Shape {
    shown: extras! {
        "encryptionPassword" => "", false;
    },
    retired: &[],
};

pub const DEVICE: &Shape = &Shape {
    shown: extras! {
        "certName" => "", true;
        "ignoredFolders" => [], true;
        "maxRequestKiB" => 0, true;
        "untrusted" => false, false;
        "remoteGUIPort" => 0, true;
        "group" => "", true;
    },
    retired: &[],
};

pub const OPTIONS: &Shape = &Shape {
    shown: extras! {
        "announceLANAddresses" => false, true;
        "autoUpgradeIntervalH" => 0, true;
        "connectionLimitEnough" => 0, true;
        "connectionLimitMax" => 0, true;
        "crURL" => "", true;
        "crashReportingEnabled" => false, true;
        "featureFlags" => [], true;
        "keepTemporariesH" => 24, true;
        "localAnnounceMCAddr" => "[ff12::8384]:21027", true;
        "maxConcurrentIncomingRequestKiB" => 0, true;
        "maxFolderConcurrency" => 0, true;
        "minHomeDiskFree" => {"unit": "%", "value": 1}, true;
        "natEnabled" => false, true;
        "natLeaseMinutes" => 60, true;
        "natRenewalMinutes" => 30, true;
        "natTimeoutSeconds" => 10, true;
        "overwriteRemoteDeviceNamesOnConnect" => false, true;
        "progressUpdateIntervalS" => 5, true;
        "relayReconnectIntervalM" => 10, true;
        "releasesURL" => "", true;
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
        // The audit log of 2.x: not written here.
        "auditEnabled" => false, false;
        "auditFile" => "", true;
        // Which transport wins when several connect: tuning only.
        "connectionPriorityTcpLan" => 10, true;
        "connectionPriorityQuicLan" => 20, true;
        "connectionPriorityTcpWan" => 30, true;
        "connectionPriorityQuicWan" => 40, true;
        "connectionPriorityRelay" => 50, true;
        "connectionPriorityUpgradeThreshold" => 0, true;
    },
    retired: extras! {
        "cacheIgnoredFiles" => false, true;
        "databaseTuning" => "auto", true;
        "insecureAllowOldTLSVersions" => false, false;
        "restartOnWakeup" => false, true;
    },
};

pub const GUI: &Shape = &Shape {
    shown: extras! {
        "unixSocketPermissions" => "", true;
        "authMode" => "static", false;
        "insecureAdminAccess" => false, true;
        "theme" => "default", true;
        "insecureSkipHostcheck" => false, false;
        "insecureAllowFrameLoading" => false, true;
        // `/metrics` needs credentials here, always.
        "metricsWithoutAuth" => false, false;
        "sendBasicAuthPrompt" => false, true;
        "sessionCookieDurationS" => 604800, true;
        "sessionCookiePath" => "/", true;
    },
    retired: extras! {
        "debugging" => false, true;
    },
};

pub const LDAP: &Shape = &Shape {
    shown: extras! {
        "address" => "", false;
        "bindDN" => "", false;
        "insecureSkipVerify" => false, false;
        "searchBaseDN" => "", false;
        "searchFilter" => "", false;
        "transport" => "plain", false;
    },
    retired: &[],
};

/// Why a key is refused, where "not supported" alone would leave an
/// operator guessing: (key, reason).
const WHY_NOT: &[(&str, &str)] = &[(
    "disableFsync",
    "every pulled file and the directories it lands in are made durable before the index records \
     them, so a power cut on the NAS can never leave the index claiming data the disk lost",
)];

/// Adds the missing keys to an object.
pub fn decorate(obj: &mut Value, shape: &Shape) {
    if let Some(o) = obj.as_object_mut() {
        for e in shape.shown {
            o.entry(e.key).or_insert_with(e.value);
        }
    }
}

/// Removes the extra keys from an incoming object; a value this node
/// cannot honour is an error naming `where_.key`.
pub fn strip(obj: &mut Value, shape: &Shape, where_: &str) -> Result<(), String> {
    let Some(o) = obj.as_object_mut() else {
        return Ok(());
    };
    for e in shape.shown.iter().chain(shape.retired) {
        if let Some(v) = o.remove(e.key) {
            if !e.lenient && !same_value(&v, &(e.value)()) {
                let why = WHY_NOT
                    .iter()
                    .find(|(k, _)| *k == e.key)
                    .map(|(_, why)| format!(": {why}"))
                    .unwrap_or_default();
                return Err(format!(
                    "{where_}{}: {v} is not supported by this node (only {}){why}",
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
        let mut f = json!({"id": "a", "disableFsync": false});
        decorate(&mut f, FOLDER);
        assert_eq!(f["filesystemType"], "basic");
        assert_eq!(f["disableFsync"], false);
        strip(&mut f, FOLDER, "folders[0].").unwrap();
        assert_eq!(f, json!({"id": "a"}));
        let mut bad = json!({"disableFsync": true});
        let e = strip(&mut bad, FOLDER, "folder.").unwrap_err();
        assert!(e.contains("folder.disableFsync"), "{e}");
        assert!(e.contains("durable"), "the reason is given: {e}");
        let mut lenient = json!({"hashers": 4});
        strip(&mut lenient, FOLDER, "").unwrap();
    }

    #[test]
    fn shows_the_keys_of_2x_and_accepts_the_retired_ones() {
        let mut o = json!({});
        decorate(&mut o, OPTIONS);
        assert_eq!(o["connectionPriorityTcpLan"], 10);
        assert_eq!(o["auditEnabled"], false);
        assert!(
            o.get("restartOnWakeup").is_none(),
            "a key 2.x dropped is shown"
        );
        let mut g = json!({});
        decorate(&mut g, GUI);
        assert!(g.get("debugging").is_none());
        assert_eq!(g["sessionCookieDurationS"], 604800);
        let mut f = json!({});
        decorate(&mut f, FOLDER);
        assert!(f.get("ignoreDelete").is_none() && f.get("maxConflicts").is_none());
        let mut d = json!({});
        decorate(&mut d, DEVICE);
        // numConnections is a real device setting (config.rs), not a
        // shown extra; so are ignoreDelete and maxConflicts of a folder.
        assert_eq!(
            (d.get("numConnections"), d["group"].as_str()),
            (None, Some(""))
        );

        // What a 1.x tool writes back: taken without complaint.
        let mut old = json!({"restartOnWakeup": false, "databaseTuning": "large",
                             "insecureAllowOldTLSVersions": false});
        strip(&mut old, OPTIONS, "options.").unwrap();
        assert_eq!(old, json!({}));
        let mut f = json!({"weakHashThresholdPct": 50, "blockIndexing": false, "pullerDelayS": 3});
        strip(&mut f, FOLDER, "").unwrap();
        assert_eq!(f, json!({}));
        let mut d = json!({"numConnections": 4, "group": "render farm"});
        strip(&mut d, DEVICE, "").unwrap();
        assert_eq!(
            d,
            json!({"numConnections": 4}),
            "numConnections is kept for the config"
        );

        // What the node cannot honour: refused, naming the key.
        for (obj, shape, key) in [
            (json!({"syncXattrs": true}), FOLDER, "syncXattrs"),
            (json!({"sendOwnership": true}), FOLDER, "sendOwnership"),
            (json!({"auditEnabled": true}), OPTIONS, "auditEnabled"),
            (
                json!({"metricsWithoutAuth": true}),
                GUI,
                "metricsWithoutAuth",
            ),
            (
                json!({"insecureAllowOldTLSVersions": true}),
                OPTIONS,
                "insecureAllowOldTLSVersions",
            ),
        ] {
            let mut obj = obj;
            let e = strip(&mut obj, shape, "x.").unwrap_err();
            assert!(e.contains(key), "{e}");
        }
    }
}
