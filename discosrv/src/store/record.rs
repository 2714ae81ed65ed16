//! The embedded store's compact record: one heap block per device.
//!
//! A million devices must fit in ~150 bytes each, so a record is a single
//! byte string rather than a struct of strings:
//!
//! ```text
//! [device ID: 32][seen: i64 LE Unix ns][count: u8] then per address:
//! [expiry: u16 LE, seconds before seen + 2 h][tag: u8][payload]
//!   tag 0:          [len: u16 LE][URL bytes]            any address
//!   tag 1..=7:      [IPv4: 4][port: u16 LE]             scheme from SCHEMES
//!   tag 0x81..0x87: [IPv6: 16][port: u16 LE]            scheme from SCHEMES
//! ```
//!
//! A compact form is only used when it turns back into exactly the same
//! text, so decoding always returns what was stored. Expiries are stored
//! relative to the last announcement: every address expires at most 2 h
//! after it, and is dropped once expired, so 16 bits are plenty. Three
//! IPv4 addresses make a 68-byte record, the largest that fits an 80-byte
//! malloc chunk.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Schemes with a compact form (index + 1 is the tag).
const SCHEMES: [&str; 7] = ["tcp", "tcp4", "tcp6", "quic", "quic4", "quic6", "relay"];
const HEADER: usize = 32 + 8 + 1;
const V6: u8 = 0x80;

/// Most addresses kept per device; older ones go first.
pub const MAX_ADDRESSES: usize = proto::discovery::messages::MAX_ADDRESSES;
/// Most bytes of address text kept per device (an announcement with more
/// is refused; a merge keeps the latest-expiring within it). Forty relay
/// URLs with all their parameters fit; a 64 KiB body of long addresses
/// from a fresh certificate does not.
pub const MAX_RECORD_ADDRESS_BYTES: usize = 8 * 1024;

/// A stored address and when it expires (Unix seconds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addr {
    pub url: String,
    pub expires: u32,
}

/// Why stored bytes are not a record (only from a damaged snapshot).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("damaged record")]
pub struct Damaged;

pub fn encode(id: &[u8; 32], seen_ns: i64, addrs: &[Addr]) -> Box<[u8]> {
    let n = addrs.len().min(MAX_ADDRESSES);
    let mut out = Vec::with_capacity(HEADER + n * 9);
    out.extend_from_slice(id);
    out.extend_from_slice(&seen_ns.to_le_bytes());
    out.push(n as u8);
    let base = expiry_base(seen_ns);
    for a in &addrs[..n] {
        let delta = base.saturating_sub(a.expires).min(u32::from(u16::MAX)) as u16;
        out.extend_from_slice(&delta.to_le_bytes());
        encode_url(&a.url, &mut out);
    }
    out.into_boxed_slice()
}

fn encode_url(url: &str, out: &mut Vec<u8>) {
    if let Some((scheme, hostport)) = url.split_once("://") {
        if let Some(idx) = SCHEMES.iter().position(|s| *s == scheme) {
            let tag = idx as u8 + 1;
            if let Some((host, port)) = hostport.rsplit_once(':') {
                if let Ok(port) = port.parse::<u16>() {
                    if let Ok(v4) = host.parse::<Ipv4Addr>() {
                        if format!("{scheme}://{v4}:{port}") == url {
                            out.push(tag);
                            out.extend_from_slice(&v4.octets());
                            out.extend_from_slice(&port.to_le_bytes());
                            return;
                        }
                    }
                    let v6 = host
                        .strip_prefix('[')
                        .and_then(|h| h.strip_suffix(']'))
                        .and_then(|h| h.parse::<Ipv6Addr>().ok());
                    if let Some(v6) = v6 {
                        if format!("{scheme}://[{v6}]:{port}") == url {
                            out.push(tag | V6);
                            out.extend_from_slice(&v6.octets());
                            out.extend_from_slice(&port.to_le_bytes());
                            return;
                        }
                    }
                }
            }
        }
    }
    // Addresses are bounded far below u16::MAX before they get here.
    let bytes = &url.as_bytes()[..url.len().min(u16::MAX as usize)];
    out.push(0);
    out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// The latest expiry a record can hold: its last announcement + 2 h.
fn expiry_base(seen_ns: i64) -> u32 {
    let secs = seen_ns.div_euclid(1_000_000_000) + proto::discovery::ADDRESS_LIFETIME_SECS as i64;
    u32::try_from(secs.max(0)).unwrap_or(u32::MAX)
}

/// Read access to an encoded record.
pub struct View<'a> {
    bytes: &'a [u8],
}

impl<'a> View<'a> {
    /// Checks the whole structure once, so the accessors cannot fail.
    pub fn new(bytes: &'a [u8]) -> Result<Self, Damaged> {
        let v = View { bytes };
        let mut it = v.raw_iter()?;
        let mut count = 0;
        while !it.rest.is_empty() {
            // The same checks as decoding, without building the URLs.
            it.skip_one()?;
            count += 1;
        }
        if count != usize::from(bytes[HEADER - 1]) {
            return Err(Damaged);
        }
        Ok(v)
    }

    /// How many addresses the record holds.
    pub fn count(&self) -> usize {
        self.bytes.get(HEADER - 1).map_or(0, |&n| usize::from(n))
    }

    /// When each stored address expires (Unix seconds), without decoding
    /// the addresses.
    pub fn expiries(&self) -> impl Iterator<Item = u32> + 'a {
        let mut it = self.raw_iter().ok();
        std::iter::from_fn(move || {
            let i = it.as_mut()?;
            if i.rest.is_empty() {
                return None;
            }
            i.skip_one().ok()
        })
    }

    /// For bytes this program encoded itself: no upfront check (a damaged
    /// record would only read as fewer addresses, never panic).
    pub fn trusted(bytes: &'a [u8]) -> Self {
        View { bytes }
    }

    pub fn id(&self) -> [u8; 32] {
        self.bytes.first_chunk::<32>().copied().unwrap_or([0; 32])
    }

    pub fn seen_ns(&self) -> i64 {
        self.bytes
            .get(32..40)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(i64::from_le_bytes)
            .unwrap_or(0)
    }

    /// Every stored address, expired or not.
    pub fn addrs(&self) -> impl Iterator<Item = Addr> + 'a {
        self.raw_iter().into_iter().flatten().filter_map(Result::ok)
    }

    fn raw_iter(&self) -> Result<AddrIter<'a>, Damaged> {
        if self.bytes.len() < HEADER {
            return Err(Damaged);
        }
        Ok(AddrIter {
            rest: &self.bytes[HEADER..],
            base: expiry_base(self.seen_ns()),
        })
    }
}

struct AddrIter<'a> {
    rest: &'a [u8],
    base: u32,
}

impl Iterator for AddrIter<'_> {
    type Item = Result<Addr, Damaged>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let r = self.decode_one();
        if r.is_err() {
            self.rest = &[];
        }
        Some(r)
    }
}

impl AddrIter<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Damaged> {
        if self.rest.len() < n {
            return Err(Damaged);
        }
        let (a, b) = self.rest.split_at(n);
        self.rest = b;
        Ok(a)
    }

    /// Steps over one address, checking it as [`Self::decode_one`] does;
    /// returns its expiry.
    fn skip_one(&mut self) -> Result<u32, Damaged> {
        let r = self.skip_one_inner();
        if r.is_err() {
            self.rest = &[];
        }
        r
    }

    fn skip_one_inner(&mut self) -> Result<u32, Damaged> {
        let base = self.base;
        let delta = self.take(2)?;
        let expires = base.saturating_sub(u32::from(u16::from_le_bytes([delta[0], delta[1]])));
        let tag = self.take(1)?[0];
        if tag == 0 {
            let len = self.take(2)?;
            let len = usize::from(u16::from_le_bytes([len[0], len[1]]));
            std::str::from_utf8(self.take(len)?).map_err(|_| Damaged)?;
        } else {
            SCHEMES
                .get(usize::from(tag & !V6).wrapping_sub(1))
                .ok_or(Damaged)?;
            self.take(if tag & V6 == 0 { 6 } else { 18 })?;
        }
        Ok(expires)
    }

    fn decode_one(&mut self) -> Result<Addr, Damaged> {
        let base = self.base;
        let delta = self.take(2)?;
        let expires = base.saturating_sub(u32::from(u16::from_le_bytes([delta[0], delta[1]])));
        let tag = self.take(1)?[0];
        let url = if tag == 0 {
            let len = self.take(2)?;
            let len = usize::from(u16::from_le_bytes([len[0], len[1]]));
            let text = self.take(len)?;
            String::from_utf8(text.to_vec()).map_err(|_| Damaged)?
        } else {
            let scheme = SCHEMES
                .get(usize::from(tag & !V6).wrapping_sub(1))
                .ok_or(Damaged)?;
            if tag & V6 == 0 {
                let b = self.take(6)?;
                // The lookup hot path: built by hand, without `fmt`.
                let mut url = String::with_capacity(scheme.len() + 3 + 15 + 6);
                url.push_str(scheme);
                url.push_str("://");
                for (i, octet) in b[..4].iter().enumerate() {
                    if i > 0 {
                        url.push('.');
                    }
                    push_decimal(&mut url, u32::from(*octet));
                }
                url.push(':');
                push_decimal(&mut url, u32::from(u16::from_le_bytes([b[4], b[5]])));
                url
            } else {
                let b = self.take(18)?;
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&b[..16]);
                let ip = Ipv6Addr::from(octets);
                format!("{scheme}://[{ip}]:{}", u16::from_le_bytes([b[16], b[17]]))
            }
        };
        Ok(Addr { url, expires })
    }
}

fn push_decimal(out: &mut String, mut n: u32) {
    let mut digits = [0u8; 10];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for d in &digits[i..] {
        out.push(char::from(*d));
    }
}

/// The merge of a stored address list with newly announced addresses:
/// expired ones dropped, duplicates keep the later expiry, sorted by URL,
/// at most [`MAX_ADDRESSES`] and [`MAX_RECORD_ADDRESS_BYTES`] (the
/// soonest-expiring dropped first).
pub fn merge(
    old: impl Iterator<Item = Addr>,
    new: &[String],
    new_expires: u32,
    now_secs: u32,
) -> Vec<Addr> {
    let mut all: Vec<Addr> = old.filter(|a| a.expires > now_secs).collect();
    all.extend(new.iter().map(|url| Addr {
        url: url.clone(),
        expires: new_expires,
    }));
    // Sort by URL, latest expiry first, then keep the first of each URL.
    all.sort_unstable_by(|a, b| a.url.cmp(&b.url).then(b.expires.cmp(&a.expires)));
    all.dedup_by(|later, first| later.url == first.url);
    let bytes: usize = all.iter().map(|a| a.url.len()).sum();
    if all.len() > MAX_ADDRESSES || bytes > MAX_RECORD_ADDRESS_BYTES {
        all.sort_unstable_by_key(|a| std::cmp::Reverse(a.expires));
        all.truncate(MAX_ADDRESSES);
        let mut total = 0usize;
        let keep = all
            .iter()
            .take_while(|a| {
                total += a.url.len();
                total <= MAX_RECORD_ADDRESS_BYTES
            })
            .count();
        all.truncate(keep);
        all.sort_unstable_by(|a, b| a.url.cmp(&b.url));
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(url: &str, expires: u32) -> Addr {
        Addr {
            url: url.into(),
            expires,
        }
    }

    #[test]
    fn round_trip_and_compactness() {
        let addrs = vec![
            a("quic://192.0.2.7:22000", 10),
            a("relay://192.0.2.9:22067/?id=ABC", 11),
            a("tcp://192.0.2.7:22000", 12),
            a("tcp6://[2001:db8::1]:22000", 13),
            a("tcp://[::ffff:1.2.3.4]:1", 14),
            a("tcp://localhost:22000", 15),
            a("tcp://010.1.1.1:22000", 16),
        ];
        let id = [7u8; 32];
        let blob = encode(&id, 1234, &addrs);
        let v = View::new(&blob).unwrap();
        assert_eq!(v.id(), id);
        assert_eq!(v.seen_ns(), 1234);
        assert_eq!(v.addrs().collect::<Vec<_>>(), addrs);
        // Three typical IPv4 addresses: header + 3 × 9 bytes.
        let three = [
            a("tcp://192.0.2.7:22000", 1),
            a("quic://192.0.2.7:22000", 1),
            a("tcp://198.51.100.1:22000", 1),
        ];
        assert_eq!(encode(&id, 0, &three).len(), HEADER + 27);
    }

    /// What `View::new` checked before it skipped instead of decoding:
    /// every address decodes and the count matches.
    fn decodes_fully(bytes: &[u8]) -> bool {
        let v = View { bytes };
        let Ok(it) = v.raw_iter() else {
            return false;
        };
        let mut n = 0;
        for item in it {
            if item.is_err() {
                return false;
            }
            n += 1;
        }
        n == usize::from(bytes[HEADER - 1])
    }

    #[test]
    fn skipping_checks_what_decoding_checks() {
        use rand::Rng;
        let mut rng = rand::rng();
        let urls = [
            "tcp://192.0.2.7:22000",
            "quic6://[2001:db8::1]:22000",
            "relay://192.0.2.9:22067/?id=ABC",
            "tcp://h:1",
            "é://x",
        ];
        for _ in 0..5000 {
            let n = rng.random_range(0..5);
            let addrs: Vec<Addr> = (0..n)
                .map(|_| {
                    a(
                        urls[rng.random_range(0..urls.len())],
                        rng.random_range(0..10_000),
                    )
                })
                .collect();
            let blob = encode(&[3; 32], rng.random_range(0..5_000) * 1_000_000_000, &addrs);
            let v = View::new(&blob).unwrap();
            assert_eq!(v.count(), n);
            assert_eq!(
                v.expiries().collect::<Vec<_>>(),
                v.addrs().map(|a| a.expires).collect::<Vec<_>>()
            );
            // Damage a byte or two, or cut: the two checks agree.
            let mut bad = blob.to_vec();
            for _ in 0..rng.random_range(1..=2) {
                let at = rng.random_range(HEADER - 1..bad.len());
                bad[at] = rng.random();
            }
            if rng.random_bool(0.2) {
                bad.truncate(rng.random_range(HEADER..=bad.len()));
            }
            assert_eq!(View::new(&bad).is_ok(), decodes_fully(&bad), "{bad:?}");
        }
    }

    #[test]
    fn damaged_bytes_refused() {
        let blob = encode(&[1; 32], 5, &[a("tcp://h:1", 3), a("tcp://1.2.3.4:5", 4)]);
        for cut in 0..blob.len() {
            assert!(View::new(&blob[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = blob.to_vec();
        bad[HEADER - 1] = 5;
        assert!(View::new(&bad).is_err());
        let mut bad = blob.to_vec();
        bad[HEADER + 2] = 0x7f;
        assert!(View::new(&bad).is_err());
    }

    #[test]
    fn merge_rules() {
        let old = vec![a("tcp://a:1", 50), a("tcp://b:1", 5), a("tcp://c:1", 200)];
        let got = merge(
            old.into_iter(),
            &["tcp://a:1".into(), "tcp://d:1".into()],
            100,
            10,
        );
        assert_eq!(
            got,
            [
                a("tcp://a:1", 100),
                a("tcp://c:1", 200),
                a("tcp://d:1", 100)
            ]
        );
        let many: Vec<String> = (0..150).map(|i| format!("tcp://h:{i}")).collect();
        let got = merge(std::iter::once(a("tcp://z:1", 999)), &many, 100, 10);
        assert_eq!(got.len(), MAX_ADDRESSES);
        assert!(got.contains(&a("tcp://z:1", 999)));
    }

    #[test]
    fn merged_record_bytes_are_bounded() {
        let long = |i: usize, n: usize| format!("tcp://{}{i}.example:1", "h".repeat(n));
        let old: Vec<Addr> = (0..40).map(|i| a(&long(i, 200), 5000)).collect();
        let new: Vec<String> = (100..135).map(|i| long(i, 200)).collect();
        let got = merge(old.into_iter(), &new, 9000, 1000);
        let bytes: usize = got.iter().map(|a| a.url.len()).sum();
        assert!(bytes <= MAX_RECORD_ADDRESS_BYTES, "{bytes}");
        // The newest announcement is kept whole.
        assert!(new.iter().all(|u| got.iter().any(|g| &g.url == u)));
    }
}
