//! Device IDs: the SHA-256 of a device's certificate, and its text forms.
//!
//! The canonical text form is base32 (RFC 4648, no padding) split into four
//! groups of 13 characters, each followed by a check character computed with
//! Syncthing's Luhn-mod-32 variant, then regrouped by 7 with dashes:
//! `OMPEJUO-HSCZWTG-C6TUS7V-V2LAZZY-XZ7SOVV-KFML7P2-WAX7CA5-MMJJUAN`.
//!
//! Parsing accepts what Syncthing accepts: any case, with or without dashes
//! and spaces, the common typos `0`/`1`/`8` for `O`/`I`/`B`, surrounding `=`,
//! and the legacy 52-character form without check characters.

use std::fmt;
use std::str::FromStr;

use data_encoding::BASE32_NOPAD;
use sha2::{Digest, Sha256};

/// Base32 alphabet used by device IDs and check characters.
const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// Characters of base32 data per check group.
const GROUP: usize = 13;
/// Length of the base32 form of 32 bytes without padding.
const BASE32_LEN: usize = 52;
/// Length with the four check characters.
const CHECKED_LEN: usize = BASE32_LEN + 4;

/// Why a text device ID was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceIdError {
    #[error(
        "device ID has {0} characters (without dashes); expected 56, or 52 for the legacy form"
    )]
    Length(usize),
    #[error("device ID contains {0:?}, which is not a base32 character (A-Z, 2-7)")]
    Character(char),
    #[error("device ID check character {group} of 4 is wrong: the ID was mistyped or truncated")]
    CheckCharacter { group: usize },
    #[error("a device ID is 32 bytes, got {0}")]
    ByteLength(usize),
}

/// A device's identity: SHA-256 of its DER-encoded certificate.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct DeviceId([u8; 32]);

impl DeviceId {
    /// Number of raw bytes, as carried on every wire format.
    pub const LEN: usize = 32;
    /// The empty ID; renders as the empty string.
    pub const EMPTY: DeviceId = DeviceId([0; 32]);
    /// Syncthing's internal "local device" marker. Never a real peer.
    pub const LOCAL: DeviceId = DeviceId([0xff; 32]);
    /// Syncthing's internal "global" marker. Never a real peer.
    pub const GLOBAL: DeviceId = DeviceId([0xf8; 32]);

    /// The ID of the device owning `cert_der` (the certificate's DER bytes,
    /// exactly as sent in the TLS Certificate message).
    pub fn from_der_cert(cert_der: &[u8]) -> Self {
        DeviceId(Sha256::digest(cert_der).into())
    }

    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        DeviceId(bytes)
    }

    /// From raw bytes of unknown length, e.g. a protobuf `bytes` field.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, DeviceIdError> {
        <[u8; 32]>::try_from(bytes)
            .map(DeviceId)
            .map_err(|_| DeviceIdError::ByteLength(bytes.len()))
    }

    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// True for the empty ID and Syncthing's internal marker IDs, which must
    /// never be accepted as a peer.
    pub fn is_reserved(&self) -> bool {
        *self == Self::EMPTY || *self == Self::LOCAL || *self == Self::GLOBAL
    }

    pub fn short(&self) -> ShortId {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        ShortId(u64::from_be_bytes(first))
    }

    /// The 56 characters of the canonical form, without dashes.
    fn checked_chars(&self) -> [u8; CHECKED_LEN] {
        let b32 = BASE32_NOPAD.encode(&self.0);
        let b32 = b32.as_bytes();
        let mut out = [0u8; CHECKED_LEN];
        for g in 0..4 {
            let group = &b32[g * GROUP..(g + 1) * GROUP];
            out[g * (GROUP + 1)..g * (GROUP + 1) + GROUP].copy_from_slice(group);
            // The group is our own base32 output, so every character is valid.
            out[g * (GROUP + 1) + GROUP] = check_character(group).unwrap_or(b'A');
        }
        out
    }
}

/// Syncthing's check character over one 13-character group. Unlike textbook
/// Luhn mod N, the factor starts at 1 on the leftmost character.
fn check_character(group: &[u8]) -> Result<u8, DeviceIdError> {
    let mut factor = 1u32;
    let mut sum = 0u32;
    for &c in group {
        let code = codepoint(c)?;
        let addend = factor * code;
        factor = if factor == 2 { 1 } else { 2 };
        sum += addend / 32 + addend % 32;
    }
    Ok(ALPHABET[((32 - sum % 32) % 32) as usize])
}

fn codepoint(c: u8) -> Result<u32, DeviceIdError> {
    match c {
        b'A'..=b'Z' => Ok(u32::from(c - b'A')),
        b'2'..=b'7' => Ok(u32::from(c - b'2') + 26),
        _ => Err(DeviceIdError::Character(char::from(c))),
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Self::EMPTY {
            return Ok(());
        }
        let chars = self.checked_chars();
        for (i, chunk) in chars.chunks(7).enumerate() {
            if i > 0 {
                f.write_str("-")?;
            }
            // Base32 output is ASCII.
            f.write_str(std::str::from_utf8(chunk).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({self})")
    }
}

/// Base32 value of each byte, or 0xff for bytes outside the alphabet.
const DECODE: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 32 {
        t[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    t
};

/// The canonical form only (`XXXXXXX-` × 7 + `XXXXXXX`, upper case, check
/// characters right), without allocating: what clients send in nearly
/// every lookup, so the discovery server's hot path. None for anything
/// else, which [`parse_any_form`] then handles (and explains).
fn parse_canonical(text: &[u8]) -> Option<DeviceId> {
    let text: &[u8; CHECKED_LEN + CHECKED_LEN / 7 - 1] = text.try_into().ok()?;
    // The 56 values (5 bits each) without the dashes; `bad` collects the
    // high bits, set only by bytes outside the alphabet.
    let mut v = [0u8; CHECKED_LEN];
    let mut bad = 0u8;
    for g in 0..8 {
        for k in 0..7 {
            let d = DECODE[usize::from(text[g * 8 + k])];
            bad |= d;
            v[g * 7 + k] = d;
        }
        if g < 7 && text[g * 8 + 7] != b'-' {
            return None;
        }
    }
    if bad >= 32 {
        return None;
    }
    // Four groups of 13 data values and their check value.
    let mut data = [0u8; BASE32_LEN];
    for g in 0..4 {
        let group = &v[g * (GROUP + 1)..(g + 1) * (GROUP + 1)];
        let mut sum = 0u32;
        for (j, &d) in group[..GROUP].iter().enumerate() {
            let addend = (1 + (j as u32 & 1)) * u32::from(d);
            sum += addend / 32 + addend % 32;
        }
        if u32::from(group[GROUP]) != (32 - sum % 32) % 32 {
            return None;
        }
        data[g * GROUP..(g + 1) * GROUP].copy_from_slice(&group[..GROUP]);
    }
    // Eight values are five bytes; 52 values are 32 bytes and 4 bits that
    // must be zero.
    let mut bytes = [0u8; 32];
    for (i, eight) in data.chunks(8).enumerate() {
        let mut acc = 0u64;
        for &d in eight {
            acc = (acc << 5) | u64::from(d);
        }
        if eight.len() == 8 {
            bytes[i * 5..i * 5 + 5].copy_from_slice(&acc.to_be_bytes()[3..]);
        } else {
            // The last four values: 20 bits, of which 16 are data.
            if acc & 0xf != 0 {
                return None;
            }
            bytes[30..].copy_from_slice(&((acc >> 4) as u16).to_be_bytes());
        }
    }
    Some(DeviceId(bytes))
}

impl FromStr for DeviceId {
    type Err = DeviceIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match parse_canonical(text.as_bytes()) {
            Some(id) => Ok(id),
            None => parse_any_form(text),
        }
    }
}

/// Every form Syncthing accepts (see the module comment), with an error
/// that says what is wrong.
fn parse_any_form(text: &str) -> Result<DeviceId, DeviceIdError> {
    let mut chars = Vec::with_capacity(CHECKED_LEN);
    for c in text.trim_matches('=').chars() {
        let c = match c.to_ascii_uppercase() {
            '-' | ' ' => continue,
            '0' => 'O',
            '1' => 'I',
            '8' => 'B',
            c => c,
        };
        if !c.is_ascii() {
            return Err(DeviceIdError::Character(c));
        }
        if chars.len() == CHECKED_LEN {
            // Longer than any valid form; count the rest only for the message.
            let rest = text.chars().filter(|c| !matches!(c, '-' | ' ')).count();
            return Err(DeviceIdError::Length(rest));
        }
        chars.push(c as u8);
    }

    let data = match chars.len() {
        0 => return Ok(DeviceId::EMPTY),
        CHECKED_LEN => {
            let mut data = Vec::with_capacity(BASE32_LEN);
            for (g, block) in chars.chunks(GROUP + 1).enumerate() {
                let (group, check) = block.split_at(GROUP);
                if check_character(group)? != check[0] {
                    codepoint(check[0])?;
                    return Err(DeviceIdError::CheckCharacter { group: g + 1 });
                }
                data.extend_from_slice(group);
            }
            data
        }
        BASE32_LEN => chars,
        n => return Err(DeviceIdError::Length(n)),
    };

    if let Some(&bad) = data.iter().find(|&&c| codepoint(c).is_err()) {
        return Err(DeviceIdError::Character(char::from(bad)));
    }
    let bytes = BASE32_NOPAD
        .decode(&data)
        .map_err(|_| DeviceIdError::Length(data.len()))?;
    DeviceId::from_slice(&bytes)
}

/// The first 8 bytes of a device ID as a big-endian integer: the key of BEP
/// version-vector counters and `modified_by`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Debug)]
pub struct ShortId(pub u64);

impl fmt::Display for ShortId {
    /// The first 7 base32 characters: what conflict file names and log
    /// prefixes use. Zero renders as the empty string, as in Syncthing.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return Ok(());
        }
        let b32 = BASE32_NOPAD.encode(&self.0.to_be_bytes());
        f.write_str(&b32[..7])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTOR1_PEM_BODY: &str =
        "MIICHjCCAaOgAwIBAgIJAOVjTf3MWrVZMAoGCCqGSM49BAMCMEoxEjAQBgNVBAoT\
CVN5bmN0aGluZzEgMB4GA1UECxMXQXV0b21hdGljYWxseSBHZW5lcmF0ZWQxEjAQ\
BgNVBAMTCXN5bmN0aGluZzAeFw0yNjExMjIwMDAwMDBaFw00NjExMTcwMDAwMDBa\
MEoxEjAQBgNVBAoTCVN5bmN0aGluZzEgMB4GA1UECxMXQXV0b21hdGljYWxseSBH\
ZW5lcmF0ZWQxEjAQBgNVBAMTCXN5bmN0aGluZzB2MBAGByqGSM49AgEGBSuBBAAi\
A2IABOx8Y1A7kilZYyxuDbzgEpY5pgUetE1fnjqZHq3uJ+IoVufouCmQIZVMZAg8\
TbtvNoe4eqL/Gp8VgJctSo/ctJUi28j7fonO+2v4F1JckXCIiWbldCoVa/EsU7Xd\
H6PWBaNVMFMwDgYDVR0PAQH/BAQDAgWgMB0GA1UdJQQWMBQGCCsGAQUFBwMBBggr\
BgEFBQcDAjAMBgNVHRMBAf8EAjAAMBQGA1UdEQQNMAuCCXN5bmN0aGluZzAKBggq\
hkjOPQQDAgNpADBmAjEA8I3BIonDCkUOFOwqy1qrMQUjB3WZUjXCHjoSRjQVCqXW\
8iNcqIzXr0DsYNkLJxQZAjEA2AgfT8G7Ck2c2vTrT558X13r+UCLesnDvHUdTdr1\
ZN84XkTiQ0/3IwS1ZLnIdYMM";

    const VECTOR1_ID: &str = "OMPEJUO-HSCZWTG-C6TUS7V-V2LAZZY-XZ7SOVV-KFML7P2-WAX7CA5-MMJJUAN";

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn id_from_hex(s: &str) -> DeviceId {
        DeviceId::from_slice(&hex(s)).unwrap()
    }

    #[test]
    fn canonical_fast_path_agrees_with_every_form_parser() {
        use rand::Rng;
        let mut rng = rand::rng();
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567-018a ";
        for _ in 0..3000 {
            let id = DeviceId::from_bytes(rng.random());
            let text = id.to_string();
            assert_eq!(parse_canonical(text.as_bytes()), Some(id));
            assert_eq!(parse_any_form(&text), Ok(id));
            // One or two characters changed: where the fast path still
            // accepts, it must give what the full parser gives; a wrong
            // check character or trailing bit must fall through to it.
            let mut b = text.into_bytes();
            for _ in 0..rng.random_range(1..=2) {
                let at = rng.random_range(0..b.len());
                b[at] = alphabet[rng.random_range(0..alphabet.len())];
            }
            let s = String::from_utf8(b).unwrap();
            if let Some(fast) = parse_canonical(s.as_bytes()) {
                assert_eq!(Ok(fast), parse_any_form(&s), "{s}");
            }
            assert_eq!(s.parse::<DeviceId>(), parse_any_form(&s), "{s}");
        }
        // Non-zero trailing bits: the last data character of group 4 ends
        // in 4 padding bits, which must be zero.
        let id = DeviceId::from_bytes([7; 32]);
        let mut chars = id.checked_chars();
        chars[54] = b'7';
        let g = &chars[42..55];
        chars[55] = check_character(g).unwrap();
        let text: String = chars
            .chunks(7)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join("-");
        assert_eq!(parse_canonical(text.as_bytes()), None);
        assert!(parse_any_form(&text).is_err());
    }

    #[test]
    fn vector1_certificate() {
        let der = data_encoding::BASE64
            .decode(VECTOR1_PEM_BODY.as_bytes())
            .unwrap();
        assert_eq!(der.len(), 546);
        let id = DeviceId::from_der_cert(&der);
        assert_eq!(
            id,
            id_from_hex("731e44d1c790b3698bd3a4bf5ae960ce6f9fc9d5aa8ac5fdf605fe20758c4a68")
        );
        assert_eq!(id.to_string(), VECTOR1_ID);
        assert_eq!(id.short().0, 8295143231450035049);
        assert_eq!(id.short().0, 0x731e44d1c790b369);
        assert_eq!(id.short().to_string(), "OMPEJUO");
    }

    #[test]
    fn vector1_second_certificate() {
        let id = id_from_hex("c23746d1b3c9f5579a98d3fbf5a950b87b6affb86601155a73d34ca1b3e22b3a");
        assert_eq!(
            id.to_string(),
            "YI3UNUN-TZH2VPP-GUY2P57-LKKQXBH-5WV75YM-YARKWTK-T2NGKDM-7CFM5AR"
        );
        assert_eq!(id.short().0, 13994732233555572055);
    }

    #[test]
    fn vector2_ed25519() {
        let id = id_from_hex("e7c13617732e3b5c430709c36060838ed2d89c8fdc233e4483e2ba2ea36dc856");
        assert_eq!(
            id.to_string(),
            "47ATMF3-TFY5VYQ-QYHBHBW-AYEDR3W-JNRHEP3-QRT4REF-D4K5C5I-3NZBLAM"
        );
        assert_eq!(id.short().to_string(), "47ATMF3");
        assert_eq!(id.short().0, 16699688367611067228);
    }

    #[test]
    fn vector3_synthetic() {
        let mut ascending = [0u8; 32];
        for (i, b) in ascending.iter_mut().enumerate() {
            *b = i as u8;
        }
        let id = DeviceId::from_bytes(ascending);
        assert_eq!(
            id.to_string(),
            "AAAQEAY-EAUDAOB-CAJBIFQ-YDIOB4B-IBCEQTC-QKRMFYX-YDENBWH-A5DYPQG"
        );
        assert_eq!(id.short().to_string(), "AAAQEAY");
        assert_eq!(id.short().0, 283686952306183);

        let mut last_one = [0u8; 32];
        last_one[31] = 1;
        let id = DeviceId::from_bytes(last_one);
        assert_eq!(
            id.to_string(),
            "AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA-AAAAAQQ"
        );
        assert_eq!(id.short().to_string(), "");
    }

    #[test]
    fn worked_check_character() {
        assert_eq!(check_character(b"AAAQEAYEAUDAO"), Ok(b'B'));
    }

    #[test]
    fn parse_accepted_forms() {
        let want: DeviceId = VECTOR1_ID.parse().unwrap();
        assert_eq!(want.to_string(), VECTOR1_ID);
        for form in [
            "omPEJUO-hSCZWTG-C6TUS7V-V2LAZZY-XZ7SOVV-KFML7P2-WAX7CA5-MMJJUAN",
            "OMPEJUOHSCZWTGC6TUS7VV2LAZZYXZ7SOVVKFML7P2WAX7CA5MMJJUAN",
            "OMPEJUO HSCZWTG C6TUS7V V2LAZZY XZ7SOVV KFML7P2 WAX7CA5 MMJJUAN",
            "OMPEJUOHSCZWTC6TUS7VV2LAZZXZ7SOVVKFML7PWAX7CA5MMJJUA",
            "==OMPEJUOHSCZWTC6TUS7VV2LAZZXZ7SOVVKFML7PWAX7CA5MMJJUA====",
            // Typos Syncthing forgives: 0 for O.
            "0MPEJU0-HSCZWTG-C6TUS7V-V2LAZZY-XZ7S0VV-KFML7P2-WAX7CA5-MMJJUAN",
        ] {
            assert_eq!(form.parse::<DeviceId>(), Ok(want), "{form}");
        }
        assert_eq!("".parse::<DeviceId>(), Ok(DeviceId::EMPTY));
        assert_eq!(DeviceId::EMPTY.to_string(), "");
    }

    #[test]
    fn parse_rejects_bad_check_character() {
        let bad = "OMPEJUO-HSCZWTG-C6TUS7V-V2LAZZY-XZ7SOVV-KFML7P2-WAX7CA5-MMJJUAM";
        assert_eq!(
            bad.parse::<DeviceId>(),
            Err(DeviceIdError::CheckCharacter { group: 4 })
        );
        let bad = "OMPEJUO-HSCZWTA-C6TUS7V-V2LAZZY-XZ7SOVV-KFML7P2-WAX7CA5-MMJJUAN";
        assert_eq!(
            bad.parse::<DeviceId>(),
            Err(DeviceIdError::CheckCharacter { group: 1 })
        );
    }

    #[test]
    fn parse_rejects_truncated_and_garbage() {
        assert_eq!(
            "OMPEJUO-HSCZWTG-C6TUS7V-V2LAZZY-XZ7SOVV-KFML7P2-WAX7CA5-MMJJUA".parse::<DeviceId>(),
            Err(DeviceIdError::Length(55))
        );
        assert_eq!("OMPEJUO".parse::<DeviceId>(), Err(DeviceIdError::Length(7)));
        assert!(matches!(
            "OMPEJUO-HSCZWTG-C6TUS7V-V2LAZZY-XZ7SOVV-KFML7P2-WAX7CA5-MMJJUANX".parse::<DeviceId>(),
            Err(DeviceIdError::Length(57))
        ));
        assert!(matches!(
            "OMPEJU!-HSCZWTG-C6TUS7V-V2LAZZY-XZ7SOVV-KFML7P2-WAX7CA5-MMJJUAN".parse::<DeviceId>(),
            Err(DeviceIdError::Character('!'))
        ));
        assert!(matches!(
            "ÖMPEJUO-HSCZWTG-C6TUS7V-V2LAZZY-XZ7SOVV-KFML7P2-WAX7CA5-MMJJUAN".parse::<DeviceId>(),
            Err(DeviceIdError::Character(_))
        ));
        // '9' is not base32 and no forgiven typo.
        assert!(matches!(
            "9MPEJUOHSCZWTC6TUS7VV2LAZZXZ7SOVVKFML7PWAX7CA5MMJJUA".parse::<DeviceId>(),
            Err(DeviceIdError::Character('9'))
        ));
        // A very long input is refused without growing a buffer.
        let long = "A".repeat(1 << 20);
        assert!(matches!(
            long.parse::<DeviceId>(),
            Err(DeviceIdError::Length(_))
        ));
        assert_eq!(
            DeviceId::from_slice(&[1, 2, 3]),
            Err(DeviceIdError::ByteLength(3))
        );
    }

    #[test]
    fn reserved_ids() {
        assert!(DeviceId::EMPTY.is_reserved());
        assert!(DeviceId::LOCAL.is_reserved());
        assert!(DeviceId::GLOBAL.is_reserved());
        assert!(!DeviceId::from_der_cert(b"x").is_reserved());
    }

    proptest::proptest! {
        #[test]
        fn text_round_trip(bytes in proptest::array::uniform32(proptest::num::u8::ANY)) {
            let id = DeviceId::from_bytes(bytes);
            proptest::prop_assume!(id != DeviceId::EMPTY);
            let text = id.to_string();
            proptest::prop_assert_eq!(text.len(), 63);
            proptest::prop_assert_eq!(text.parse::<DeviceId>(), Ok(id));
            proptest::prop_assert_eq!(text.to_lowercase().replace('-', "").parse::<DeviceId>(), Ok(id));
            proptest::prop_assert_eq!(id.short().to_string(), &text[..7]);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,80}") {
            let _ = s.parse::<DeviceId>();
        }

        #[test]
        fn single_substitution_detected(bytes in proptest::array::uniform32(proptest::num::u8::ANY),
                                        pos in 0usize..56, replacement in 0usize..32) {
            let id = DeviceId::from_bytes(bytes);
            let mut chars = id.checked_chars();
            let new = ALPHABET[replacement];
            proptest::prop_assume!(chars[pos] != new);
            chars[pos] = new;
            let text = std::str::from_utf8(&chars).unwrap().to_string();
            proptest::prop_assert!(text.parse::<DeviceId>().is_err());
        }
    }
}
