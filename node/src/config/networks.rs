//! A device's `allowedNetworks`: the networks it may connect from (and
//! that we dial it at). Syncthing's rules: entries are CIDRs, a leading
//! `!` makes an entry a refusal, the first entry containing the address
//! decides, and an address no entry contains is refused; an empty list
//! allows every address.
//!
//! Syncthing skips an entry it cannot parse, which silently narrows the
//! list; here such an entry is refused when the configuration is read
//! (a 400 over REST), so the operator sees the typo.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// One entry: a network, allowed or (with `!`) refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    allow: bool,
    net: IpNet,
}

/// The parsed list, kept with the text it was read from so tools read
/// back exactly what they wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedNetworks {
    texts: Vec<String>,
    entries: Vec<Entry>,
}

impl AllowedNetworks {
    pub fn parse<S: AsRef<str>>(texts: &[S]) -> Result<AllowedNetworks, String> {
        let mut entries = Vec::with_capacity(texts.len());
        for t in texts {
            let t = t.as_ref();
            let (allow, cidr) = match t.trim().strip_prefix('!') {
                Some(rest) => (false, rest),
                None => (true, t.trim()),
            };
            let net = cidr.parse::<IpNet>().map_err(|_| {
                format!("allowedNetworks: {t:?} is not a network in CIDR form (such as 192.168.1.0/24 or !10.0.0.0/8)")
            })?;
            entries.push(Entry { allow, net });
        }
        Ok(AllowedNetworks {
            texts: texts.iter().map(|t| t.as_ref().to_string()).collect(),
            entries,
        })
    }

    /// No restriction.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether a connection from (or to) `ip` is allowed.
    pub fn allows(&self, ip: IpAddr) -> bool {
        if self.entries.is_empty() {
            return true;
        }
        // An IPv4 peer on a dual-stack socket shows as ::ffff:a.b.c.d.
        let ip = ip.to_canonical();
        self.entries
            .iter()
            .find(|e| e.net.contains(&ip))
            .is_some_and(|e| e.allow)
    }
}

impl Serialize for AllowedNetworks {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.texts.serialize(s)
    }
}

impl<'de> Deserialize<'de> for AllowedNetworks {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let texts = Vec::<String>::deserialize(d)?;
        AllowedNetworks::parse(&texts).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn first_match_decides_and_no_match_refuses() {
        let any = AllowedNetworks::default();
        assert!(any.allows(ip("203.0.113.9")), "empty allows everything");
        let n =
            AllowedNetworks::parse(&["!192.168.1.13/32", "192.168.1.0/24", "fd00::/8"]).unwrap();
        assert!(n.allows(ip("192.168.1.12")));
        assert!(!n.allows(ip("192.168.1.13")), "refused by the first entry");
        assert!(!n.allows(ip("192.168.2.1")), "in no entry");
        assert!(n.allows(ip("fd12::1")));
        assert!(n.allows(ip("::ffff:192.168.1.7")), "IPv4-mapped");
        // Host bits set, as Go's ParseCIDR accepts: the network counts.
        let h = AllowedNetworks::parse(&["127.0.0.3/24"]).unwrap();
        assert!(h.allows(ip("127.0.0.200")));
        assert!(!h.allows(ip("127.0.1.1")));
    }

    #[test]
    fn bad_entries_are_refused_and_text_round_trips() {
        for bad in ["192.168.1.0", "10.0.0.0/33", "lan", "!", ""] {
            let e = AllowedNetworks::parse(&[bad]).unwrap_err();
            assert!(e.contains("CIDR"), "{e}");
        }
        let v = serde_json::json!(["!10.1.0.0/16", "10.0.0.0/8"]);
        let n: AllowedNetworks = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(serde_json::to_value(&n).unwrap(), v);
        assert!(serde_json::from_value::<AllowedNetworks>(serde_json::json!(["x"])).is_err());
    }
}
