//! Global discovery v3 client: announcing our addresses to each configured
//! server and looking devices up, with Syncthing's timing and caching.
//!
//! Server URLs: `https://HOST[:PORT]/PATH?id=DEVICE-ID` (certificate pinned
//! by device ID), `?insecure` (no verification at all), neither (system CA
//! roots and host name), plus `noannounce` / `nolookup`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use proto::discovery::{Announcement, LookupReply};
use proto::tls::{self, alpn, ServerPin, Versions};
use proto::{DeviceId, Identity};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// One request (connect, TLS, answer) gives up after this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest reply body read.
const MAX_REPLY_BYTES: usize = 64 * 1024;
/// Most addresses taken from one lookup reply.
const MAX_ADDRESSES: usize = 100;
const MAX_ADDRESS_LEN: usize = 1024;
/// Syncthing's client timing.
pub const ANNOUNCE_OK_DEFAULT: Duration = Duration::from_secs(30 * 60);
pub const ANNOUNCE_ERROR_DEFAULT: Duration = Duration::from_secs(5 * 60);
const LOOKUP_CACHE: Duration = Duration::from_secs(5 * 60);
const NEGATIVE_CACHE_DEFAULT: Duration = Duration::from_secs(60);
/// A server's Retry-After/Reannounce-After is believed up to this.
const MAX_SERVER_DELAY: Duration = Duration::from_secs(24 * 3600);

/// A parsed `globalAnnounceServers` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerUrl {
    /// As configured (the cache and status key).
    pub text: String,
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// Path without the query, at least `/`.
    pub path: String,
    pub pin: Option<DeviceId>,
    pub insecure: bool,
    pub no_announce: bool,
    pub no_lookup: bool,
}

/// A boolean query option counts as set when present and not `false`.
fn flag(url: &url::Url, key: &str) -> bool {
    url.query_pairs().any(|(k, v)| k == key && v != "false")
}

impl ServerUrl {
    pub fn parse(text: &str) -> Result<ServerUrl> {
        let url = url::Url::parse(text.trim())
            .with_context(|| format!("discovery server {text:?} is not a URL"))?;
        let https = match url.scheme() {
            "https" => true,
            "http" => false,
            other => bail!(
                "discovery server {text:?}: scheme {other:?} (only https, or http with insecure&noannounce)"
            ),
        };
        let host = match url.host() {
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(h) => h.to_string(),
            None => bail!("discovery server {text:?} has no host"),
        };
        let pin = match url.query_pairs().find(|(k, _)| k == "id") {
            Some((_, v)) => Some(
                v.parse::<DeviceId>()
                    .map_err(|e| anyhow!("discovery server {text:?}: id: {e}"))?,
            ),
            None => None,
        };
        let s = ServerUrl {
            text: text.to_string(),
            https,
            port: url.port().unwrap_or(if https { 443 } else { 80 }),
            host,
            path: if url.path().is_empty() {
                "/".into()
            } else {
                url.path().to_string()
            },
            insecure: pin.is_some() || flag(&url, "insecure"),
            pin,
            no_announce: flag(&url, "noannounce"),
            no_lookup: flag(&url, "nolookup"),
        };
        if !(s.https || (s.insecure && s.no_announce)) {
            bail!("discovery server {text:?}: http:// needs both insecure and noannounce");
        }
        Ok(s)
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// An HTTP reply, body bounded.
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// A positive integer header (`Retry-After`, `Reannounce-After`) in seconds.
    pub fn secs(&self, name: &str) -> Option<Duration> {
        let v: u64 = self.headers.get(name)?.to_str().ok()?.trim().parse().ok()?;
        (v > 0).then(|| Duration::from_secs(v).min(MAX_SERVER_DELAY))
    }
}

fn ca_roots() -> Result<rustls::RootCertStore> {
    let bundle = std::env::var_os("SSL_CERT_FILE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/etc/ssl/certs/ca-certificates.crt".into());
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&bundle).with_context(|| format!("CA bundle {}", bundle.display()))?;
    for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem).flatten() {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        bail!("no CA certificates in {}", bundle.display());
    }
    Ok(roots)
}

fn tls_config(server: &ServerUrl, identity: Option<&Identity>) -> Result<rustls::ClientConfig> {
    if server.insecure {
        let pin = server.pin.map_or(ServerPin::Any, ServerPin::Device);
        return Ok(tls::client_config(
            identity,
            &[alpn::HTTP_1_1],
            pin,
            Versions::Tls12AndUp,
        )?);
    }
    let builder = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(ca_roots()?);
    let mut config = match identity {
        Some(id) => builder.with_client_auth_cert(vec![id.cert_der().clone()], id.key_der())?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn::HTTP_1_1.to_vec()];
    Ok(config)
}

/// One HTTP/1.1 request over a fresh connection (announcements are rare,
/// lookups are cached: keep-alive buys nothing).
pub async fn request(
    server: &ServerUrl,
    addrs: &[SocketAddr],
    identity: Option<&Identity>,
    method: http::Method,
    path_and_query: &str,
    body: Vec<u8>,
) -> Result<Reply> {
    tokio::time::timeout(
        REQUEST_TIMEOUT,
        request_inner(server, addrs, identity, method, path_and_query, body),
    )
    .await
    .map_err(|_| anyhow!("no answer within {} s", REQUEST_TIMEOUT.as_secs()))?
}

async fn request_inner(
    server: &ServerUrl,
    addrs: &[SocketAddr],
    identity: Option<&Identity>,
    method: http::Method,
    path_and_query: &str,
    body: Vec<u8>,
) -> Result<Reply> {
    let mut last = anyhow!("no address for {}", server.authority());
    let mut tcp = None;
    for a in addrs {
        match TcpStream::connect(a).await {
            Ok(t) => {
                tcp = Some(t);
                break;
            }
            Err(e) => last = anyhow!("{a}: {e}"),
        }
    }
    let tcp = tcp.ok_or(last)?;
    let req = http::Request::builder()
        .method(method)
        .uri(path_and_query)
        .header(http::header::HOST, server.authority())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("node/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(Bytes::from(body)))?;
    let resp = if server.https {
        let name = match server.host.parse::<std::net::IpAddr>() {
            Ok(ip) => rustls_pki_types::ServerName::IpAddress(ip.into()),
            Err(_) => rustls_pki_types::ServerName::try_from(server.host.clone())
                .map_err(|e| anyhow!("host name {}: {e}", server.host))?,
        };
        let config = tls_config(server, identity)?;
        let stream = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| {
                // Syncthing's wording, so operators recognise it.
                if server.pin.is_some() && format!("{e:?}").contains("WrongDevice") {
                    anyhow!("security: incorrect device id (the server's certificate is not the one ?id= pins)")
                } else {
                    anyhow!("TLS handshake: {e}")
                }
            })?;
        send(TokioIo::new(stream), req).await?
    } else {
        send(TokioIo::new(tcp), req).await?
    };
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = Limited::new(resp.into_body(), MAX_REPLY_BYTES)
        .collect()
        .await
        .map_err(|e| anyhow!("reading the reply: {e}"))?
        .to_bytes();
    Ok(Reply {
        status,
        headers,
        body,
    })
}

async fn send<T>(
    io: T,
    req: http::Request<Full<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .context("HTTP handshake")?;
    // The connection is driven by its own task, which ends with it (after
    // the caller has read the body).
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(req).await.context("HTTP request")
}

/// Outcome of one announcement: when to announce next, and the error.
pub fn announce_outcome(result: &Result<Reply>) -> (Duration, Option<String>) {
    match result {
        Ok(r) if (200..300).contains(&r.status) => (
            r.secs("Reannounce-After").unwrap_or(ANNOUNCE_OK_DEFAULT),
            None,
        ),
        Ok(r) => (
            r.secs("Retry-After").unwrap_or(ANNOUNCE_ERROR_DEFAULT),
            Some(format!(
                "HTTP {}: {}",
                r.status,
                String::from_utf8_lossy(&r.body[..r.body.len().min(200)]).trim()
            )),
        ),
        Err(e) => (ANNOUNCE_ERROR_DEFAULT, Some(format!("{e:#}"))),
    }
}

pub fn announcement_body(addresses: &[String]) -> Vec<u8> {
    Announcement {
        addresses: addresses.to_vec(),
    }
    .to_json()
}

/// Interprets a lookup reply: addresses with how long to keep them, or a
/// negative answer with its lifetime (Retry-After, else one minute).
pub fn lookup_outcome(result: &Result<Reply>) -> (Duration, Option<Vec<String>>, Option<String>) {
    match result {
        Ok(r) if r.status == 200 => match LookupReply::from_json(&r.body) {
            Ok(reply) => {
                let addrs: Vec<String> = reply
                    .addresses
                    .into_iter()
                    .filter(|a| !a.is_empty() && a.len() <= MAX_ADDRESS_LEN)
                    .take(MAX_ADDRESSES)
                    .collect();
                (LOOKUP_CACHE, Some(addrs), None)
            }
            Err(e) => (
                NEGATIVE_CACHE_DEFAULT,
                None,
                Some(format!("lookup reply is not JSON: {e}")),
            ),
        },
        Ok(r) => (
            r.secs("Retry-After").unwrap_or(NEGATIVE_CACHE_DEFAULT),
            None,
            (r.status != 404).then(|| format!("HTTP {}", r.status)),
        ),
        Err(e) => (NEGATIVE_CACHE_DEFAULT, None, Some(format!("{e:#}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls() {
        let id = "LYXKCHX-VI3NYZR-ALCJBHF-WMZYSPK-QG6QJA3-MPFYMSO-U56GTUK-NA2MIAW";
        let s =
            ServerUrl::parse(&format!("https://127.0.0.1:8443/v2/?id={id}&noannounce")).unwrap();
        assert!(s.insecure && s.no_announce && !s.no_lookup && s.pin.is_some());
        assert_eq!((s.port, s.path.as_str()), (8443, "/v2/"));
        let s = ServerUrl::parse("https://disco.example/?insecure=false").unwrap();
        assert!(!s.insecure && s.pin.is_none() && s.port == 443);
        assert!(ServerUrl::parse("http://x/").is_err());
        assert!(ServerUrl::parse("http://x/?insecure&noannounce").is_ok());
        assert!(ServerUrl::parse("ftp://x/").is_err());
        assert!(ServerUrl::parse("https://x/?id=bad").is_err());
    }

    fn reply(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Result<Reply> {
        let mut h = http::HeaderMap::new();
        for (k, v) in headers {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        Ok(Reply {
            status,
            headers: h,
            body: Bytes::copy_from_slice(body),
        })
    }

    #[test]
    fn timing_follows_the_server() {
        let (d, e) = announce_outcome(&reply(204, &[("Reannounce-After", "3411")], b""));
        assert_eq!((d.as_secs(), e), (3411, None));
        let (d, e) = announce_outcome(&reply(400, &[("Retry-After", "1756")], b"bad"));
        assert_eq!(d.as_secs(), 1756);
        assert!(e.is_some());
        assert_eq!(
            announce_outcome(&reply(204, &[], b"")).0,
            ANNOUNCE_OK_DEFAULT
        );
        assert_eq!(
            announce_outcome(&reply(500, &[("Retry-After", "junk")], b"")).0,
            ANNOUNCE_ERROR_DEFAULT
        );
        let (d, v, _) = lookup_outcome(&reply(404, &[("Retry-After", "117")], b"Not Found"));
        assert_eq!((d.as_secs(), v), (117, None));
        let (d, v, _) = lookup_outcome(&reply(
            200,
            &[],
            br#"{"seen":"x","addresses":["tcp://localhost:1"]}"#,
        ));
        assert_eq!(
            (d, v),
            (LOOKUP_CACHE, Some(vec!["tcp://localhost:1".into()]))
        );
        let (d, v, e) = lookup_outcome(&reply(200, &[], b"\x00junk"));
        assert_eq!((d, v), (NEGATIVE_CACHE_DEFAULT, None));
        assert!(e.is_some());
    }
}
