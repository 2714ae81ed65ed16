//! Headers set by a TLS-terminating reverse proxy in front of a discovery
//! server: the client's address and its certificate.
//!
//! These are only meaningful from a proxy the operator trusts; deciding
//! that is the server's job. Everything here only parses.

use std::net::{IpAddr, SocketAddr};

use data_encoding::BASE64;

/// Largest certificate header accepted; device certificates are under 2 KiB.
pub const MAX_CERT_HEADER_BYTES: usize = 16 * 1024;

/// The client certificate headers of the proxies we know, lower-case.
/// Exactly one of them is believed (the operator's `CertHeader`); a
/// request carrying any of the others is refused, because a proxy only
/// overwrites its own header and passes a client's copy of the others
/// through untouched.
pub const CERT_HEADERS: [&str; 3] = [
    CertHeader::Nginx.name(),
    CertHeader::Caddy.name(),
    CertHeader::Traefik.name(),
];

/// Which header carries the client certificate, i.e. which proxy the
/// operator runs in front of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CertHeader {
    /// nginx: `X-SSL-Cert: $ssl_client_escaped_cert` (or `$ssl_client_cert`),
    /// URL-escaped or whitespace-folded PEM.
    #[default]
    Nginx,
    /// Caddy: `X-Tls-Client-Cert-Der-Base64`, base64 of the DER.
    Caddy,
    /// Traefik `passTLSClientCert`: `X-Forwarded-Tls-Client-Cert`,
    /// URL-escaped base64, a chain comma-separated.
    Traefik,
}

impl CertHeader {
    pub const ALL: [CertHeader; 3] = [CertHeader::Nginx, CertHeader::Caddy, CertHeader::Traefik];

    /// The header name, lower-case.
    pub const fn name(self) -> &'static str {
        match self {
            CertHeader::Nginx => "x-ssl-cert",
            CertHeader::Caddy => "x-tls-client-cert-der-base64",
            CertHeader::Traefik => "x-forwarded-tls-client-cert",
        }
    }

    /// The header name as documented (`X-SSL-Cert`, …).
    pub const fn display_name(self) -> &'static str {
        match self {
            CertHeader::Nginx => "X-SSL-Cert",
            CertHeader::Caddy => "X-Tls-Client-Cert-Der-Base64",
            CertHeader::Traefik => "X-Forwarded-Tls-Client-Cert",
        }
    }
}

impl std::fmt::Display for CertHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.display_name())
    }
}

/// A certificate header name neither known nor a proxy's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown certificate header {0:?}: X-SSL-Cert (nginx), X-Tls-Client-Cert-Der-Base64 (caddy) or X-Forwarded-Tls-Client-Cert (traefik)")]
pub struct UnknownCertHeader(pub String);

impl std::str::FromStr for CertHeader {
    type Err = UnknownCertHeader;

    /// The header name (any case) or the proxy's name.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        CertHeader::ALL
            .into_iter()
            .find(|h| {
                t.eq_ignore_ascii_case(h.name())
                    || t.eq_ignore_ascii_case(match h {
                        CertHeader::Nginx => "nginx",
                        CertHeader::Caddy => "caddy",
                        CertHeader::Traefik => "traefik",
                    })
            })
            .ok_or_else(|| UnknownCertHeader(s.to_string()))
    }
}

/// What a request holds under one header name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderValues<'a> {
    Absent,
    One(&'a [u8]),
    /// More than one line: which one a proxy wrote cannot be told.
    Many,
}

/// Why a certificate header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertHeaderError {
    #[error("certificate header {0} is longer than {MAX_CERT_HEADER_BYTES} bytes")]
    TooLong(&'static str),
    #[error("certificate header {0} is not PEM or base64")]
    Encoding(&'static str),
    #[error("certificate header {0} does not hold an X.509 certificate")]
    NotCertificate(&'static str),
    #[error("certificate header {0} appears more than once")]
    Repeated(&'static str),
    /// A known certificate header other than the configured one: sent by
    /// the client itself, since the proxy writes only the configured one.
    #[error("certificate header {0} is not the configured one; the client sent it")]
    Unexpected(&'static str),
}

impl CertHeaderError {
    /// A short, fixed label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            CertHeaderError::TooLong(_) => "cert_header_too_long",
            CertHeaderError::Encoding(_) => "cert_header_encoding",
            CertHeaderError::NotCertificate(_) => "cert_header_not_certificate",
            CertHeaderError::Repeated(_) => "cert_header_repeated",
            CertHeaderError::Unexpected(_) => "cert_header_unexpected",
        }
    }
}

/// The client IP from the `X-Forwarded-For` lines of a request, in the
/// order received. Each proxy appends the address it got the request from,
/// so only the rightmost elements were written by proxies: anything to
/// their left may be the client's invention. Walking from the right, the
/// first address `trusted` does not cover is the client; when every one is
/// trusted (a client inside the proxies' network), the leftmost. `None`
/// when there is no element, or one on the way is not an address (the
/// chain cannot be followed past it). Elements written as `ip:port` or
/// `[v6]:port` are understood too.
pub fn forwarded_for<'a>(
    lines: impl DoubleEndedIterator<Item = &'a str>,
    trusted: impl Fn(IpAddr) -> bool,
) -> Option<IpAddr> {
    let mut leftmost = None;
    for line in lines.rev() {
        for element in line.rsplit(',') {
            let ip = forwarded_element(element.trim())?;
            if !trusted(ip) {
                return Some(ip);
            }
            leftmost = Some(ip);
        }
    }
    leftmost
}

fn forwarded_element(e: &str) -> Option<IpAddr> {
    if let Ok(ip) = e.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = e.parse::<SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    e.strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .and_then(|s| s.parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
}

/// The client's source port from `X-Client-Port`; `None` if absent, zero or
/// not a number.
pub fn client_port(value: &str) -> Option<u16> {
    value.trim().parse::<u16>().ok().filter(|p| *p != 0)
}

/// The DER client certificate a proxy forwarded in `expected`, if any.
/// `header` tells what the request holds under a lower-case name. An empty
/// `expected` header counts as absent (nginx with no client certificate);
/// any other known certificate header, even empty, is refused.
pub fn client_cert_from_headers<'a>(
    expected: CertHeader,
    header: impl Fn(&str) -> HeaderValues<'a>,
) -> Result<Option<Vec<u8>>, CertHeaderError> {
    for other in CertHeader::ALL {
        if other != expected && header(other.name()) != HeaderValues::Absent {
            return Err(CertHeaderError::Unexpected(other.name()));
        }
    }
    let name = expected.name();
    let value = match header(name) {
        HeaderValues::Absent => return Ok(None),
        HeaderValues::Many => return Err(CertHeaderError::Repeated(name)),
        HeaderValues::One(v) => v.trim_ascii(),
    };
    if value.is_empty() {
        return Ok(None);
    }
    if value.len() > MAX_CERT_HEADER_BYTES {
        return Err(CertHeaderError::TooLong(name));
    }
    let der = match expected {
        CertHeader::Nginx => {
            pem_body(&percent_decode(value).ok_or(CertHeaderError::Encoding(name))?)
                .and_then(|b| decode_base64(&b))
                .ok_or(CertHeaderError::Encoding(name))?
        }
        CertHeader::Caddy => decode_base64(value).ok_or(CertHeaderError::Encoding(name))?,
        CertHeader::Traefik => {
            // URL-escaped base64 without armour; a chain is comma-separated,
            // the client's certificate first.
            let text = percent_decode(value).ok_or(CertHeaderError::Encoding(name))?;
            let first = text.split(|b| *b == b',').next().unwrap_or_default();
            let first = pem_body(first).unwrap_or_else(|| first.to_vec());
            decode_base64(&first).ok_or(CertHeaderError::Encoding(name))?
        }
    };
    if x509_parser::parse_x509_certificate(&der).is_err() {
        return Err(CertHeaderError::NotCertificate(name));
    }
    Ok(Some(der))
}

/// The base64 text between PEM armour lines, whatever the whitespace
/// (nginx's `$ssl_client_cert` replaces newlines by spaces or tabs).
fn pem_body(text: &[u8]) -> Option<Vec<u8>> {
    const BEGIN: &[u8] = b"-----BEGIN CERTIFICATE-----";
    const END: &[u8] = b"-----END CERTIFICATE-----";
    let start = find(text, BEGIN)? + BEGIN.len();
    let end = start + find(&text[start..], END)?;
    Some(text[start..end].to_vec())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn decode_base64(text: &[u8]) -> Option<Vec<u8>> {
    let compact: Vec<u8> = text
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    BASE64.decode(&compact).ok().filter(|d| !d.is_empty())
}

/// `%XX` unescaping; `+` is left alone (it is a base64 character).
fn percent_decode(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            let s = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(s, 16).ok()?);
            i += 3;
        } else {
            out.push(text[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Identity, KeyKind};

    #[test]
    fn forwarded_for_forms() {
        let none = |_: IpAddr| false;
        let cases = [
            ("198.51.100.20", Some("198.51.100.20")),
            (" 198.51.100.20 ", Some("198.51.100.20")),
            ("2001:db8::5", Some("2001:db8::5")),
            ("198.51.100.20:4000", Some("198.51.100.20")),
            ("[2001:db8::5]:4000", Some("2001:db8::5")),
            ("[2001:db8::5]", Some("2001:db8::5")),
            ("::ffff:198.51.100.20", Some("198.51.100.20")),
            ("unknown", None),
            ("", None),
            ("198.51.100.20, ", None),
        ];
        for (value, want) in cases {
            assert_eq!(
                forwarded_for([value].into_iter(), none),
                want.map(|w| w.parse().unwrap()),
                "{value:?}"
            );
        }
    }

    /// Issue 14, M8: a proxy that appends leaves the client's own text on
    /// the left; only the rightmost untrusted element is the client.
    #[test]
    fn forwarded_for_takes_the_rightmost_untrusted_address() {
        let proxies: Vec<(IpAddr, u8)> = vec![
            ("10.0.0.0".parse().unwrap(), 8),
            ("2001:db8:ffff::".parse().unwrap(), 48),
        ];
        let trusted = |ip: IpAddr| {
            proxies.iter().any(|(net, bits)| match (net, ip) {
                (IpAddr::V4(n), IpAddr::V4(a)) => {
                    u32::from(*n) >> (32 - bits) == u32::from(a) >> (32 - bits)
                }
                (IpAddr::V6(n), IpAddr::V6(a)) => {
                    u128::from(*n) >> (128 - bits) == u128::from(a) >> (128 - bits)
                }
                _ => false,
            })
        };
        let cases: [(&[&str], Option<&str>); 9] = [
            // Client-written lie on the left, real client appended by the proxy.
            (&["1.2.3.4, 203.0.113.9"], Some("203.0.113.9")),
            // Two proxies of ours appended after the client.
            (
                &["1.2.3.4, 203.0.113.9, 10.0.0.2, 10.9.9.9"],
                Some("203.0.113.9"),
            ),
            // Lines are one list, in order.
            (&["1.2.3.4", "203.0.113.9, 10.0.0.2"], Some("203.0.113.9")),
            (&["203.0.113.9, 10.0.0.2", "10.0.0.3"], Some("203.0.113.9")),
            (&["2001:db8::1, 2001:db8:ffff::7"], Some("2001:db8::1")),
            // Garbage the client wrote is never reached.
            (&["garbage, 203.0.113.9"], Some("203.0.113.9")),
            // Garbage between us and the client: unknown.
            (&["203.0.113.9, garbage, 10.0.0.2"], None),
            // All trusted: the leftmost (a client inside the proxies' network).
            (&["10.1.1.1, 10.0.0.2"], Some("10.1.1.1")),
            (&[], None),
        ];
        for (lines, want) in cases {
            assert_eq!(
                forwarded_for(lines.iter().copied(), trusted),
                want.map(|w| w.parse().unwrap()),
                "{lines:?}"
            );
        }
    }

    #[test]
    fn client_port_forms() {
        assert_eq!(client_port("40000"), Some(40000));
        assert_eq!(client_port(" 1 "), Some(1));
        assert_eq!(client_port("0"), None);
        assert_eq!(client_port("70000"), None);
        assert_eq!(client_port("x"), None);
    }

    fn headers<'a>(pairs: &'a [(&'a str, String)]) -> impl Fn(&str) -> HeaderValues<'a> {
        move |name: &str| {
            let mut found = pairs.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name));
            match (found.next(), found.next()) {
                (None, _) => HeaderValues::Absent,
                (Some((_, v)), None) => HeaderValues::One(v.as_bytes()),
                _ => HeaderValues::Many,
            }
        }
    }

    #[test]
    fn certificate_in_every_proxy_form() {
        let id = Identity::generate("syncthing", KeyKind::EcdsaP384).unwrap();
        let der = id.cert_der().to_vec();
        let pem = id.cert_pem();
        let b64 = BASE64.encode(&der);
        let escaped: String = pem
            .bytes()
            .map(|b| match b {
                b'\n' => "%0A".to_string(),
                b'+' => "%2B".to_string(),
                b'/' => "%2F".to_string(),
                b'=' => "%3D".to_string(),
                b' ' => "%20".to_string(),
                b => char::from(b).to_string(),
            })
            .collect();
        let forms = [
            (CertHeader::Nginx, "X-SSL-Cert", escaped),
            (CertHeader::Nginx, "X-Ssl-Cert", pem.replace('\n', " ")),
            (CertHeader::Nginx, "X-Ssl-Cert", pem.replace('\n', "\n\t")),
            (
                CertHeader::Caddy,
                "X-Tls-Client-Cert-Der-Base64",
                b64.clone(),
            ),
            (
                CertHeader::Traefik,
                "X-Forwarded-Tls-Client-Cert",
                b64.replace('+', "%2B").replace('=', "%3D"),
            ),
            (
                CertHeader::Traefik,
                "X-Forwarded-Tls-Client-Cert",
                format!("{b64},AAAA"),
            ),
        ];
        for (expected, name, value) in forms {
            let pairs = [(name, value.clone())];
            assert_eq!(
                client_cert_from_headers(expected, headers(&pairs)).unwrap(),
                Some(der.clone()),
                "{name}: {value}"
            );
            // The same header while another one is configured: refused.
            for other in CertHeader::ALL.into_iter().filter(|h| *h != expected) {
                assert_eq!(
                    client_cert_from_headers(other, headers(&pairs)),
                    Err(CertHeaderError::Unexpected(expected.name())),
                    "{name} with {other} configured"
                );
            }
        }
    }

    /// The attack of issue 14 (H1): behind nginx, which writes only
    /// X-SSL-Cert (empty without a client certificate), a client adds
    /// Caddy's header holding a victim's public certificate.
    #[test]
    fn another_proxys_header_is_refused_not_skipped() {
        let victim = Identity::generate("syncthing", KeyKind::Ed25519).unwrap();
        let b64 = BASE64.encode(victim.cert_der());
        for nginx_value in [None, Some(String::new())] {
            let mut pairs = vec![("x-tls-client-cert-der-base64", b64.clone())];
            if let Some(v) = nginx_value {
                pairs.push(("x-ssl-cert", v));
            }
            assert_eq!(
                client_cert_from_headers(CertHeader::Nginx, headers(&pairs)),
                Err(CertHeaderError::Unexpected("x-tls-client-cert-der-base64"))
            );
        }
        // Even an empty other header is refused: the documented proxy
        // configurations remove them.
        let pairs = [("x-forwarded-tls-client-cert", String::new())];
        assert_eq!(
            client_cert_from_headers(CertHeader::Nginx, headers(&pairs)),
            Err(CertHeaderError::Unexpected("x-forwarded-tls-client-cert"))
        );
        // Two lines of the configured header: which is the proxy's?
        let pairs = [
            ("x-tls-client-cert-der-base64", b64.clone()),
            ("x-tls-client-cert-der-base64", b64),
        ];
        assert_eq!(
            client_cert_from_headers(CertHeader::Caddy, headers(&pairs)),
            Err(CertHeaderError::Repeated("x-tls-client-cert-der-base64"))
        );
    }

    #[test]
    fn cert_header_names_parse() {
        for h in CertHeader::ALL {
            assert_eq!(h.name().parse::<CertHeader>(), Ok(h));
            assert_eq!(h.display_name().parse::<CertHeader>(), Ok(h));
            assert_eq!(h.to_string(), h.display_name());
        }
        assert_eq!("nginx".parse::<CertHeader>(), Ok(CertHeader::Nginx));
        assert_eq!("Caddy".parse::<CertHeader>(), Ok(CertHeader::Caddy));
        assert_eq!("traefik".parse::<CertHeader>(), Ok(CertHeader::Traefik));
        assert!("x-client-cert".parse::<CertHeader>().is_err());
        assert_eq!(CertHeader::default(), CertHeader::Nginx);
    }

    #[test]
    fn certificate_headers_bad_input() {
        let nginx = CertHeader::Nginx;
        let caddy = CertHeader::Caddy;
        assert_eq!(client_cert_from_headers(nginx, headers(&[])).unwrap(), None);
        let empty = [("x-ssl-cert", String::new())];
        assert_eq!(
            client_cert_from_headers(nginx, headers(&empty)).unwrap(),
            None
        );
        let cases = [
            (
                nginx,
                "x-ssl-cert",
                "garbage".to_string(),
                CertHeaderError::Encoding("x-ssl-cert"),
            ),
            (
                nginx,
                "x-ssl-cert",
                "%zz".to_string(),
                CertHeaderError::Encoding("x-ssl-cert"),
            ),
            (
                nginx,
                "x-ssl-cert",
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----".to_string(),
                CertHeaderError::NotCertificate("x-ssl-cert"),
            ),
            (
                caddy,
                "x-tls-client-cert-der-base64",
                "!!!".to_string(),
                CertHeaderError::Encoding("x-tls-client-cert-der-base64"),
            ),
            (
                caddy,
                "x-tls-client-cert-der-base64",
                "A".repeat(MAX_CERT_HEADER_BYTES + 4),
                CertHeaderError::TooLong("x-tls-client-cert-der-base64"),
            ),
        ];
        for (expected, name, value, want) in cases {
            let pairs = [(name, value)];
            assert_eq!(
                client_cert_from_headers(expected, headers(&pairs)),
                Err(want)
            );
        }
    }
}
