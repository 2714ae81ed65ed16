//! A folder's `markerName`: the entry whose presence at the folder root
//! says the folder's storage is there (an unmounted NAS share leaves an
//! empty mount point, and scanning it would announce every file deleted).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The marker's name, relative to the folder root. Syncthing's default
/// `.stfolder` is created by the node (a directory with a small text file
/// in it); any other name is the operator's to create, as in Syncthing —
/// typically a file that exists only on the mounted volume, so the folder
/// stops when the volume is not mounted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct MarkerName(String);

/// Why a marker name is refused.
#[derive(Debug, thiserror::Error)]
#[error("markerName {0:?} must be a relative path inside the folder (no \"..\", no leading \"/\")")]
pub struct BadMarkerName(String);

impl MarkerName {
    /// Syncthing's marker, created by the node.
    pub const DEFAULT: &'static str = ".stfolder";

    /// Checks a name; empty stands for the default (as Syncthing reads it).
    pub fn new(raw: &str) -> Result<MarkerName, BadMarkerName> {
        if raw.is_empty() {
            return Ok(MarkerName::default());
        }
        let inside = !raw.starts_with('/')
            && !raw.contains('\0')
            && raw.split('/').all(|c| c != "..")
            && raw.split('/').any(|c| !c.is_empty() && c != ".");
        if inside {
            Ok(MarkerName(raw.to_string()))
        } else {
            Err(BadMarkerName(raw.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the node creates the marker (only the default one: another
    /// name is the operator's signal that the storage is there).
    pub fn is_default(&self) -> bool {
        self.0 == Self::DEFAULT
    }
}

impl Default for MarkerName {
    fn default() -> Self {
        MarkerName(Self::DEFAULT.to_string())
    }
}

impl fmt::Display for MarkerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for MarkerName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        MarkerName::new(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_inside_the_folder_only() {
        assert_eq!(MarkerName::new("").unwrap().as_str(), ".stfolder");
        assert!(MarkerName::new("").unwrap().is_default());
        for good in [".mounted", "sub/.here", "./x"] {
            let m = MarkerName::new(good).unwrap();
            assert!(!m.is_default(), "{good}");
        }
        for bad in ["/etc/passwd", "../x", "a/../../b", ".", "a\0b", "/"] {
            assert!(MarkerName::new(bad).is_err(), "{bad:?} accepted");
        }
        let json: Result<MarkerName, _> = serde_json::from_str("\"../up\"");
        assert!(json.unwrap_err().to_string().contains("markerName"));
    }
}
