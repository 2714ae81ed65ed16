//! Registration with relay pools (`--pools`, empty by default): POST the
//! relay URI as `{"url": …}` and re-register as the pool asks.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use proto::Identity;
use tokio::net::TcpStream;

use crate::state::Relay;

const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest pool reply read.
const MAX_REPLY: usize = 64 * 1024;

/// What to do after one attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    RetryIn(Duration),
    Stop,
}

/// The spec's handling of a pool's reply.
pub fn next_after(status: u16, body: &[u8]) -> Next {
    const MINUTE: Duration = Duration::from_secs(60);
    match status {
        200 => {
            let eviction = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v.get("evictionIn")?.as_u64());
            match eviction {
                // Go durations in integer nanoseconds; rejoin at 80 %.
                Some(ns) => {
                    let d = Duration::from_nanos(ns);
                    Next::RetryIn((d - d / 5).max(MINUTE))
                }
                None => Next::RetryIn(Duration::from_secs(3600)),
            }
        }
        401 => Next::Stop,
        _ => Next::RetryIn(MINUTE),
    }
}

pub async fn register_loop(relay: Arc<Relay>, pool: String, uri: String, identity: Identity) {
    loop {
        // A pool that holds the request open must not hold up the exit.
        let Some(posted) = relay.unless_stopping(post(&pool, &uri, &identity)).await else {
            return;
        };
        let next = match posted {
            Ok((status, body)) => {
                let next = next_after(status, &body);
                tracing::info!(%pool, status, ?next, "pool registration");
                next
            }
            Err(e) => {
                tracing::warn!(%pool, error = %format!("{e:#}"), "pool registration failed; retrying in 1 min");
                Next::RetryIn(Duration::from_secs(60))
            }
        };
        let Next::RetryIn(wait) = next else {
            tracing::warn!(%pool, "pool refused this relay (401); not registering there again");
            return;
        };
        if relay
            .unless_stopping(tokio::time::sleep(wait))
            .await
            .is_none()
        {
            return;
        }
    }
}

async fn post(pool: &str, uri: &str, identity: &Identity) -> anyhow::Result<(u16, Vec<u8>)> {
    let url = url_parts(pool)?;
    let body = serde_json::json!({ "url": uri }).to_string();
    let req = http::Request::post(&url.path)
        .header(http::header::HOST, &url.host_header)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let attempt = async {
        let tcp = TcpStream::connect((url.host.as_str(), url.port)).await?;
        if url.https {
            let tls = https_connector(identity)?;
            let name = rustls_pki_types::ServerName::try_from(url.host.clone())?;
            let stream = tls.connect(name, tcp).await?;
            send(TokioIo::new(stream), req).await
        } else {
            send(TokioIo::new(tcp), req).await
        }
    };
    tokio::time::timeout(HTTP_TIMEOUT, attempt)
        .await
        .context("pool did not answer within 30 s")?
}

async fn send<IO>(io: IO, req: http::Request<Full<Bytes>>) -> anyhow::Result<(u16, Vec<u8>)>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    let exchange = async move {
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let limited = http_body_util::Limited::new(resp.into_body(), MAX_REPLY);
        let body = limited
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading pool reply: {e}"))?
            .to_bytes();
        Ok((status, body.to_vec()))
    };
    // The connection is driven here rather than in a task of its own, so
    // nothing of a registration outlives it. If the connection ends first,
    // it is dropped (failing a request still waiting on it) and the
    // exchange finishes with what arrived, or an error.
    let mut exchange = std::pin::pin!(exchange);
    {
        let mut conn = std::pin::pin!(conn);
        tokio::select! {
            r = &mut exchange => return r,
            _ = &mut conn => {}
        }
    }
    exchange.await
}

struct UrlParts {
    https: bool,
    host: String,
    port: u16,
    host_header: String,
    path: String,
}

fn url_parts(pool: &str) -> anyhow::Result<UrlParts> {
    let url = url::Url::parse(pool).with_context(|| format!("bad pool URL {pool:?}"))?;
    let https = match url.scheme() {
        "https" => true,
        "http" => false,
        other => bail!("pool URL {pool:?}: scheme {other} (expected http or https)"),
    };
    let host = match url.host() {
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        Some(h) => h.to_string(),
        None => bail!("pool URL {pool:?} has no host"),
    };
    let port = url.port_or_known_default().unwrap_or(443);
    let host_header = match url.port() {
        Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_owned(),
    };
    let mut path = url.path().to_owned();
    if let Some(q) = url.query() {
        path = format!("{path}?{q}");
    }
    Ok(UrlParts {
        https,
        host,
        port,
        host_header,
        path,
    })
}

/// Public pools have CA-signed certificates: verify against the system's
/// roots, and present the relay's certificate so the pool can check `id`.
fn https_connector(identity: &Identity) -> anyhow::Result<tokio_rustls::TlsConnector> {
    use rustls_pki_types::pem::PemObject;
    let bundle = std::env::var_os("SSL_CERT_FILE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/etc/ssl/certs/ca-certificates.crt".into());
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(&bundle)
        .with_context(|| format!("CA bundle {}", bundle.display()))?
        .flatten()
    {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        bail!("no CA certificates in {}", bundle.display());
    }
    let config = rustls::ClientConfig::builder_with_provider(proto::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![identity.cert_der().clone()], identity.key_der())?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_handled_as_the_spec_says() {
        let hour_ns = 3_600_000_000_000u64;
        assert_eq!(
            next_after(200, format!("{{\"evictionIn\":{hour_ns}}}").as_bytes()),
            Next::RetryIn(Duration::from_secs(48 * 60))
        );
        assert_eq!(
            next_after(200, b"nonsense"),
            Next::RetryIn(Duration::from_secs(3600))
        );
        assert_eq!(next_after(401, b""), Next::Stop);
        for s in [400, 429, 500, 502] {
            assert_eq!(next_after(s, b""), Next::RetryIn(Duration::from_secs(60)));
        }
    }

    #[test]
    fn pool_urls() {
        let u = url_parts("https://relays.example/endpoint").unwrap();
        assert!(
            u.https && u.port == 443 && u.path == "/endpoint" && u.host_header == "relays.example"
        );
        let u = url_parts("http://127.0.0.1:8080/e?x=1").unwrap();
        assert!(
            !u.https && u.port == 8080 && u.path == "/e?x=1" && u.host_header == "127.0.0.1:8080"
        );
        assert!(url_parts("ftp://x/").is_err());
    }
}
