//! JSON bodies: `{"addresses":[…]}` announced, `{"seen":…,"addresses":[…]}`
//! returned by a lookup.

use serde::{Deserialize, Serialize};

/// Largest announcement body accepted. Real ones are a few hundred bytes;
/// even a device with dozens of interfaces stays far below this.
pub const MAX_ANNOUNCEMENT_BYTES: usize = 64 * 1024;
/// Most addresses accepted in one announcement.
pub const MAX_ADDRESSES: usize = 100;
/// Longest single address accepted (relay URLs carry a query string).
pub const MAX_ADDRESS_LEN: usize = 1024;

/// What a device announces. The announcing device is identified by its TLS
/// client certificate, never by the body.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// Missing and `null` are accepted as empty, as by the reference server.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub addresses: Vec<String>,
}

/// A successful lookup: when the device last announced, and its addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupReply {
    /// RFC 3339 time of the last announcement.
    pub seen: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub addresses: Vec<String>,
}

/// `s` as a JSON string. Addresses and times need no escaping, so they
/// are copied as they are; anything else goes through serde_json.
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else if serde_json::to_writer(&mut *out, s).is_err() {
        // Writing to a Vec cannot fail; keep the output valid regardless.
        out.extend_from_slice(b"\"\"");
    }
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// Why an announcement body was refused.
#[derive(Debug, thiserror::Error)]
pub enum AnnouncementError {
    #[error("announcement body is {0} bytes; at most {MAX_ANNOUNCEMENT_BYTES} are accepted")]
    TooLarge(usize),
    #[error("announcement is not valid JSON {{\"addresses\": [...]}}: {0}")]
    Json(#[from] serde_json::Error),
    #[error("announcement is not a JSON object {{\"addresses\": [...]}}")]
    NotObject,
    #[error("announcement has {0} addresses; at most {MAX_ADDRESSES} are accepted")]
    TooManyAddresses(usize),
    #[error("an announced address is {0} bytes long; at most {MAX_ADDRESS_LEN} are accepted")]
    AddressTooLong(usize),
}

/// Parses an announcement body, enforcing the size limits before anything
/// is kept.
pub fn parse_announcement(body: &[u8]) -> Result<Announcement, AnnouncementError> {
    if body.len() > MAX_ANNOUNCEMENT_BYTES {
        return Err(AnnouncementError::TooLarge(body.len()));
    }
    // serde would also take a JSON array for the struct; the format is an object.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(AnnouncementError::NotObject);
    }
    let ann: Announcement = serde_json::from_slice(body)?;
    if ann.addresses.len() > MAX_ADDRESSES {
        return Err(AnnouncementError::TooManyAddresses(ann.addresses.len()));
    }
    if let Some(long) = ann.addresses.iter().find(|a| a.len() > MAX_ADDRESS_LEN) {
        return Err(AnnouncementError::AddressTooLong(long.len()));
    }
    Ok(ann)
}

impl Announcement {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

impl LookupReply {
    /// The same bytes as `serde_json::to_vec` (a test holds them equal),
    /// written directly: one of these per lookup answer.
    pub fn to_json(&self) -> Vec<u8> {
        let len: usize = self.addresses.iter().map(|a| a.len() + 3).sum();
        let mut out = Vec::with_capacity(len + self.seen.len() + 32);
        out.extend_from_slice(b"{\"seen\":");
        push_json_str(&mut out, &self.seen);
        out.extend_from_slice(b",\"addresses\":[");
        for (i, a) in self.addresses.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            push_json_str(&mut out, a);
        }
        out.extend_from_slice(b"]}");
        out
    }

    pub fn from_json(body: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_reply_json_as_serde_writes_it() {
        let odd = [
            "",
            "tcp://1.2.3.4:22000",
            "a\"b\\c",
            "\u{1}\n\t",
            "é€😀",
            "\u{7f}",
        ];
        for seen in odd {
            for n in 0..4 {
                let reply = LookupReply {
                    seen: seen.to_string(),
                    addresses: odd
                        .iter()
                        .cycle()
                        .skip(n)
                        .take(n)
                        .map(|s| s.to_string())
                        .collect(),
                };
                assert_eq!(
                    reply.to_json(),
                    serde_json::to_vec(&reply).unwrap(),
                    "{reply:?}"
                );
                assert_eq!(LookupReply::from_json(&reply.to_json()).unwrap(), reply);
            }
        }
    }

    #[test]
    fn announcement_forms_accepted() {
        for (body, n) in [
            (
                &br#"{"addresses":["tcp://0.0.0.0:22000","tcp://:0"]}"#[..],
                2,
            ),
            (br#"{"addresses":null}"#, 0),
            (br#"{"addresses":[]}"#, 0),
            (br#"{}"#, 0),
            (br#"{"addresses":["a"],"extra":1}"#, 1),
        ] {
            assert_eq!(parse_announcement(body).unwrap().addresses.len(), n);
        }
    }

    #[test]
    fn announcement_bad_input_refused() {
        for body in [
            &b""[..],
            b"not json",
            b"[]",
            br#"{"addresses":"tcp://x:1"}"#,
            br#"{"addresses":[1,2]}"#,
            br#"{"addresses":["a"]"#,
        ] {
            assert!(matches!(
                parse_announcement(body),
                Err(AnnouncementError::Json(_) | AnnouncementError::NotObject)
            ));
        }
        let huge = vec![b' '; MAX_ANNOUNCEMENT_BYTES + 1];
        assert!(matches!(
            parse_announcement(&huge),
            Err(AnnouncementError::TooLarge(_))
        ));
        let many = Announcement {
            addresses: (0..1000).map(|i| format!("tcp://h:{i}")).collect(),
        };
        // 1000 short addresses fit in the byte limit but not the count limit.
        assert!(matches!(
            parse_announcement(&many.to_json()),
            Err(AnnouncementError::TooManyAddresses(1000))
        ));
        let long = Announcement {
            addresses: vec![format!("tcp://{}:1", "a".repeat(2000))],
        };
        assert!(matches!(
            parse_announcement(&long.to_json()),
            Err(AnnouncementError::AddressTooLong(_))
        ));
    }

    #[test]
    fn lookup_reply_round_trip() {
        let body = br#"{"seen":"2026-11-22T14:04:14.306772819Z","addresses":["relay://192.0.2.9:22067/?id=ABC","tcp://192.0.2.7:22000"]}"#;
        let reply = LookupReply::from_json(body).unwrap();
        assert_eq!(reply.addresses.len(), 2);
        assert_eq!(reply.to_json(), body.to_vec());
    }
}
