//! Device allow-lists as operators write them: one device ID per line, in
//! any form [`DeviceId`] parses, `#` starting a comment, blank lines
//! ignored. The same text format for the relay and the discovery server,
//! whether it comes from a file or a Redis set (one member per ID).

use std::collections::HashSet;

use crate::device_id::{DeviceId, DeviceIdError};

/// Most devices one list may hold: a studio has hundreds; a list far
/// beyond this is a wrong file, and refusing it keeps the old list.
pub const MAX_DEVICES: usize = 1_000_000;

/// A set of allowed devices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    devices: HashSet<DeviceId>,
}

/// Why a list was refused (the previous one stays in force).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowListError {
    #[error("line {line}: {text:?} is not a device ID: {source}")]
    BadId {
        line: usize,
        text: String,
        source: DeviceIdError,
    },
    #[error("more than {MAX_DEVICES} devices")]
    TooLarge,
}

impl AllowList {
    /// Parses the text form. Every line must be a device ID, a comment or
    /// blank: a typo refuses the whole list rather than silently locking
    /// a device out (or in).
    pub fn parse(text: &str) -> Result<AllowList, AllowListError> {
        let mut devices = HashSet::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let id = line
                .parse::<DeviceId>()
                .map_err(|source| AllowListError::BadId {
                    line: i + 1,
                    text: line.chars().take(80).collect(),
                    source,
                })?;
            devices.insert(id);
            if devices.len() > MAX_DEVICES {
                return Err(AllowListError::TooLarge);
            }
        }
        Ok(AllowList { devices })
    }

    /// The list of exactly these devices.
    pub fn from_ids(ids: impl IntoIterator<Item = DeviceId>) -> AllowList {
        AllowList {
            devices: ids.into_iter().collect(),
        }
    }

    pub fn contains(&self, id: &DeviceId) -> bool {
        self.devices.contains(id)
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &DeviceId> {
        self.devices.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "MFZWI3D-BONSGYC-YLTMRWG-C43ENR5-QXGZDMM-FZWI3DP-BONSGYY-LTMRWAD";

    #[test]
    fn parses_ids_in_any_form_with_comments() {
        let id: DeviceId = A.parse().unwrap();
        let text = format!(
            "# studio devices\n\n{A}   # la-nas\n  {}\n",
            A.replace('-', "").to_lowercase()
        );
        let list = AllowList::parse(&text).unwrap();
        assert_eq!(list.len(), 1);
        assert!(list.contains(&id));
        assert!(AllowList::parse("").unwrap().is_empty());
        assert!(AllowList::parse("# nobody\n").unwrap().is_empty());
    }

    #[test]
    fn a_bad_line_refuses_the_list_naming_the_line() {
        let e = AllowList::parse(&format!("{A}\nnot-an-id\n")).unwrap_err();
        assert!(matches!(e, AllowListError::BadId { line: 2, .. }), "{e}");
        assert!(e.to_string().contains("line 2"), "{e}");
    }
}
