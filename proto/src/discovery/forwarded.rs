//! Headers set by a TLS-terminating reverse proxy in front of a discovery
//! server: the client's address and its certificate.
//!
//! These are only meaningful from a proxy the operator trusts; deciding
//! that is the server's job. Everything here only parses.

use std::net::{IpAddr, SocketAddr};

use data_encoding::BASE64;

/// Largest certificate header accepted; device certificates are under 2 KiB.
pub const MAX_CERT_HEADER_BYTES: usize = 16 * 1024;

/// Client certificate headers, in the order they are consulted: nginx
/// (`$ssl_client_escaped_cert` or `$ssl_client_cert`), Caddy, Traefik.
pub const CERT_HEADERS: [&str; 3] = [
    "x-ssl-cert",
    "x-tls-client-cert-der-base64",
    "x-forwarded-tls-client-cert",
];

/// Why a certificate header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertHeaderError {
    #[error("certificate header {0} is longer than {MAX_CERT_HEADER_BYTES} bytes")]
    TooLong(&'static str),
    #[error("certificate header {0} is not PEM or base64")]
    Encoding(&'static str),
    #[error("certificate header {0} does not hold an X.509 certificate")]
    NotCertificate(&'static str),
}

/// The client IP from `X-Forwarded-For`: its first (leftmost, i.e. the
/// original client's) element, trimmed. Elements written as `ip:port` or
/// `[v6]:port` are understood too.
pub fn forwarded_for(value: &str) -> Option<IpAddr> {
    let first = value.split(',').next()?.trim();
    if let Ok(ip) = first.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = first.parse::<SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    first
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .and_then(|s| s.parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
}

/// The client's source port from `X-Client-Port`; `None` if absent, zero or
/// not a number.
pub fn client_port(value: &str) -> Option<u16> {
    value.trim().parse::<u16>().ok().filter(|p| *p != 0)
}

/// The DER client certificate a proxy forwarded, if any. `header` returns
/// a header's value by lower-case name. An empty header counts as absent.
pub fn client_cert_from_headers<'a>(
    header: impl Fn(&str) -> Option<&'a [u8]>,
) -> Result<Option<Vec<u8>>, CertHeaderError> {
    for name in CERT_HEADERS {
        let Some(value) = header(name) else { continue };
        let value = value.trim_ascii();
        if value.is_empty() {
            continue;
        }
        if value.len() > MAX_CERT_HEADER_BYTES {
            return Err(CertHeaderError::TooLong(name));
        }
        let der = match name {
            "x-ssl-cert" => {
                pem_body(&percent_decode(value).ok_or(CertHeaderError::Encoding(name))?)
                    .and_then(|b| decode_base64(&b))
                    .ok_or(CertHeaderError::Encoding(name))?
            }
            "x-tls-client-cert-der-base64" => {
                decode_base64(value).ok_or(CertHeaderError::Encoding(name))?
            }
            _ => {
                // Traefik: URL-escaped base64 without armour; a chain is
                // comma-separated, the client's certificate first.
                let text = percent_decode(value).ok_or(CertHeaderError::Encoding(name))?;
                let first = text.split(|b| *b == b',').next().unwrap_or_default();
                let first = pem_body(first).unwrap_or_else(|| first.to_vec());
                decode_base64(&first).ok_or(CertHeaderError::Encoding(name))?
            }
        };
        if x509_parser::parse_x509_certificate(&der).is_err() {
            return Err(CertHeaderError::NotCertificate(name));
        }
        return Ok(Some(der));
    }
    Ok(None)
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
        let cases = [
            ("198.51.100.20", Some("198.51.100.20")),
            (" 198.51.100.20 , 10.0.0.1", Some("198.51.100.20")),
            ("2001:db8::5, 10.0.0.1", Some("2001:db8::5")),
            ("198.51.100.20:4000", Some("198.51.100.20")),
            ("[2001:db8::5]:4000", Some("2001:db8::5")),
            ("[2001:db8::5]", Some("2001:db8::5")),
            ("::ffff:198.51.100.20", Some("198.51.100.20")),
            ("unknown", None),
            ("", None),
            (", 198.51.100.20", None),
        ];
        for (value, want) in cases {
            assert_eq!(
                forwarded_for(value),
                want.map(|w| w.parse().unwrap()),
                "{value:?}"
            );
        }
        assert_eq!(client_port("40000"), Some(40000));
        assert_eq!(client_port(" 1 "), Some(1));
        assert_eq!(client_port("0"), None);
        assert_eq!(client_port("70000"), None);
        assert_eq!(client_port("x"), None);
    }

    fn headers<'a>(pairs: &'a [(&'a str, String)]) -> impl Fn(&str) -> Option<&'a [u8]> {
        move |name: &str| {
            pairs
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_bytes())
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
            ("X-SSL-Cert", escaped),
            ("X-Ssl-Cert", pem.replace('\n', " ")),
            ("X-Ssl-Cert", pem.replace('\n', "\n\t")),
            ("X-Tls-Client-Cert-Der-Base64", b64.clone()),
            (
                "X-Forwarded-Tls-Client-Cert",
                b64.replace('+', "%2B").replace('=', "%3D"),
            ),
            ("X-Forwarded-Tls-Client-Cert", format!("{b64},AAAA")),
        ];
        for (name, value) in forms {
            let pairs = [(name, value.clone())];
            assert_eq!(
                client_cert_from_headers(headers(&pairs)).unwrap(),
                Some(der.clone()),
                "{name}: {value}"
            );
        }
        // Precedence: X-Ssl-Cert first.
        let other = Identity::generate("syncthing", KeyKind::Ed25519).unwrap();
        let pairs = [
            (
                "x-tls-client-cert-der-base64",
                BASE64.encode(other.cert_der()),
            ),
            ("x-ssl-cert", pem.clone()),
        ];
        assert_eq!(
            client_cert_from_headers(headers(&pairs)).unwrap(),
            Some(der.clone())
        );
    }

    #[test]
    fn certificate_headers_bad_input() {
        assert_eq!(client_cert_from_headers(headers(&[])).unwrap(), None);
        let empty = [("x-ssl-cert", String::new())];
        assert_eq!(client_cert_from_headers(headers(&empty)).unwrap(), None);
        let cases = [
            (
                "x-ssl-cert",
                "garbage".to_string(),
                CertHeaderError::Encoding("x-ssl-cert"),
            ),
            (
                "x-ssl-cert",
                "%zz".to_string(),
                CertHeaderError::Encoding("x-ssl-cert"),
            ),
            (
                "x-ssl-cert",
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----".to_string(),
                CertHeaderError::NotCertificate("x-ssl-cert"),
            ),
            (
                "x-tls-client-cert-der-base64",
                "!!!".to_string(),
                CertHeaderError::Encoding("x-tls-client-cert-der-base64"),
            ),
            (
                "x-tls-client-cert-der-base64",
                "A".repeat(MAX_CERT_HEADER_BYTES + 4),
                CertHeaderError::TooLong("x-tls-client-cert-der-base64"),
            ),
        ];
        for (name, value, want) in cases {
            let pairs = [(name, value)];
            assert_eq!(client_cert_from_headers(headers(&pairs)), Err(want));
        }
    }
}
