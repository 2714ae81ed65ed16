//! The HTTP API: `POST /` announce, `GET /?device=ID` lookup, `/ping`,
//! `/healthz`. Status codes and headers as stdiscosrv's.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::store::record::MAX_RECORD_ADDRESS_BYTES;
use bytes::Bytes;
use daemon::Shutdown;
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use ipnet::IpNet;
use proto::discovery::messages::MAX_ANNOUNCEMENT_BYTES;
use proto::discovery::{self, CertHeader, CertHeaderError, HeaderValues, LookupReply, Source};
use proto::DeviceId;

use crate::allow::{Allow, RefusalLog};
use crate::config::PathPrefix;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimit;
use crate::retry::{self, NotFoundTracker};
use crate::store::{Announced, Lookup, Now, Store};

/// Time allowed for an announcement body to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// A response body that also keeps the request's body until the response
/// has been sent. Over HTTP/2, a request body dropped while its stream is
/// still open and unanswered makes h2 reset the stream with CANCEL, and the
/// client never sees the answer (a 403 or 413 sent before the upload ended
/// was lost that way); dropped after the response's last frame, h2 resets
/// with NO_ERROR as RFC 9113 §8.1 asks, and the answer stands.
///
/// Some clients (curl 7.88, Debian 12's) still drop an answer whose stream
/// is reset, even with NO_ERROR, while they upload. So over HTTP/2 the rest
/// of an unread request body is read and dropped after the answer, on its
/// own task, bounded by [`H2_DRAIN_BYTES`] and [`H2_DRAIN_TIME`]: the
/// upload then ends normally and no reset is needed. That task belongs to
/// the server's [`Shutdown`] and ends when it stops.
pub struct Body {
    data: Option<Bytes>,
    request: Option<Incoming>,
    /// Set for HTTP/2 requests only: who owns the drain task.
    h2_tasks: Option<Shutdown>,
}

/// How much of an unread HTTP/2 request body is read after the answer.
const H2_DRAIN_BYTES: usize = 4 * 1024 * 1024;
const H2_DRAIN_TIME: Duration = Duration::from_secs(10);

impl Drop for Body {
    fn drop(&mut self) {
        use hyper::body::Body as _;
        let (Some(mut request), Some(tasks)) = (self.request.take(), self.h2_tasks.take()) else {
            return;
        };
        if request.is_end_stream() || tasks.is_cancelled() {
            return;
        }
        let stop = tasks.clone();
        tasks.spawn(async move {
            let drain = tokio::time::timeout(H2_DRAIN_TIME, async {
                let mut total = 0usize;
                while let Some(Ok(frame)) = request.frame().await {
                    if let Ok(data) = frame.into_data() {
                        total = total.saturating_add(data.len());
                        if total > H2_DRAIN_BYTES {
                            break;
                        }
                    }
                }
            });
            // At shutdown the connection closes anyway: no need to drain.
            tokio::select! {
                _ = drain => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

impl Body {
    fn new(data: Bytes) -> Body {
        Body {
            data: (!data.is_empty()).then_some(data),
            request: None,
            h2_tasks: None,
        }
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(
            self.get_mut()
                .data
                .take()
                .map(|d| Ok(hyper::body::Frame::data(d))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

/// What the connection knows about its client.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// From the TLS client certificate.
    pub device: Option<DeviceId>,
}

pub struct App<S> {
    pub store: S,
    pub metrics: Metrics,
    pub limiter: Option<RateLimit>,
    /// `--new-device-rate`: announcements of devices the store lacks.
    pub new_device_limiter: Option<RateLimit>,
    pub seen_tracker: NotFoundTracker,
    pub unseen_tracker: NotFoundTracker,
    /// `--http`: plain HTTP behind a reverse proxy.
    pub http_mode: bool,
    pub trusted_proxies: Vec<IpNet>,
    /// `--client-cert-header`: the only certificate header believed.
    pub cert_header: CertHeader,
    /// Who may announce and be found.
    pub allow: Allow,
    /// Which refused devices get a log line now.
    pub refusal_log: RefusalLog,
    /// `--path-prefix`: the only path answered.
    pub path_prefix: Option<PathPrefix>,
}

/// Who sent a request, after deciding whether to believe proxy headers.
struct Client {
    source: Source,
    /// Key for rate limiting: the real client when known, else the peer.
    limit_ip: IpAddr,
    /// Proxy headers are believed for this request.
    via_trusted_proxy: bool,
}

impl<S: Store> App<S> {
    fn client(&self, conn: &ConnInfo, headers: &HeaderMap) -> Client {
        let peer_ip = conn.peer.ip().to_canonical();
        let trusted = self.http_mode && self.trusted_proxies.iter().any(|n| n.contains(&peer_ip));
        if !trusted {
            return Client {
                source: Source::new(peer_ip, conn.peer.port()),
                limit_ip: peer_ip,
                via_trusted_proxy: false,
            };
        }
        // Non-UTF-8 lines become "", which is not an address.
        let ip = discovery::forwarded_for(
            headers
                .get_all("x-forwarded-for")
                .iter()
                .map(|v| v.to_str().unwrap_or("")),
            |ip| self.trusted_proxies.iter().any(|n| n.contains(&ip)),
        );
        let port = header_str(headers, "x-client-port").and_then(discovery::client_port);
        Client {
            // Without X-Forwarded-For the client's address is unknown: the
            // proxy's own address must not be published for it.
            source: Source {
                ip,
                port: ip.and(port),
            },
            limit_ip: ip.unwrap_or(peer_ip),
            via_trusted_proxy: true,
        }
    }

    /// The announcing device: the TLS client certificate, or in `--http`
    /// mode the certificate a trusted proxy forwarded.
    fn device(
        &self,
        conn: &ConnInfo,
        client: &Client,
        headers: &HeaderMap,
    ) -> Result<Option<DeviceId>, CertHeaderError> {
        if let Some(id) = conn.device {
            return Ok(Some(id));
        }
        if !client.via_trusted_proxy {
            return Ok(None);
        }
        let lookup = |name: &str| {
            let mut all = headers.get_all(name).iter();
            match (all.next(), all.next()) {
                (None, _) => HeaderValues::Absent,
                (Some(v), None) => HeaderValues::One(v.as_bytes()),
                _ => HeaderValues::Many,
            }
        };
        Ok(
            discovery::client_cert_from_headers(self.cert_header, lookup)?
                .map(|der| DeviceId::from_der_cert(&der)),
        )
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Answers one request. `tasks` owns what outlives the answer (the
/// draining of an HTTP/2 upload).
pub async fn handle<S: Store>(
    app: Arc<App<S>>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
    tasks: &Shutdown,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let (parts, mut body) = req.into_parts();
    let mut resp = route(&app, &conn, &parts, &mut body).await;
    app.metrics
        .request(&parts.method, resp.status().as_u16(), started.elapsed());
    let b = resp.body_mut();
    if parts.version == http::Version::HTTP_2 {
        b.h2_tasks = Some(tasks.clone());
    }
    b.request = Some(body);
    Ok(resp)
}

async fn route<S: Store>(
    app: &App<S>,
    conn: &ConnInfo,
    req: &http::request::Parts,
    body: &mut Incoming,
) -> Response<Body> {
    // Outside the secret prefix nothing else is looked at, not even the
    // rate limit: a 429 would tell a prober that a server is here.
    let path = match &app.path_prefix {
        None => req.uri.path(),
        Some(prefix) => match prefix.strip(req.uri.path()) {
            Some(path @ ("/" | "/ping" | "/healthz")) => path,
            _ => {
                app.metrics.refused_bad_path();
                return unknown_path();
            }
        },
    };
    let client = app.client(conn, &req.headers);
    if let Some(limiter) = &app.limiter {
        if let Err(wait) = limiter.check(client.limit_ip) {
            app.metrics.rate_limited.inc();
            let secs = wait.as_secs() + 1;
            return text(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests\n")
                .with_header("retry-after", secs);
        }
    }
    match path {
        "/ping" => return empty(StatusCode::NO_CONTENT),
        "/healthz" => {
            return if app.store.healthy().await {
                text(StatusCode::OK, "OK\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "Store Unavailable\n")
                    .with_header("retry-after", retry::unavailable_retry_after())
            };
        }
        _ => {}
    }
    match req.method {
        Method::GET => lookup(app, req.uri.query()).await,
        Method::POST => announce(app, conn, &client, req, body).await,
        _ => text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n")
            .with_header("allow", HeaderValue::from_static("GET, POST")),
    }
}

async fn lookup<S: Store>(app: &App<S>, query: Option<&str>) -> Response<Body> {
    let device = query.and_then(device_param);
    let Some(device) = device.filter(|d| !d.is_reserved()) else {
        app.metrics.lookup("bad_request");
        return bad_request();
    };
    let t = Instant::now();
    let result = app.store.lookup(device, Now::system()).await;
    // An unlisted device is answered exactly as one never seen, after the
    // same store call: neither the answer nor its timing may tell an
    // outsider which devices are listed.
    // (A store error is answered alike for both, below.)
    if result.is_ok() && !app.allow.permits(&device) {
        app.metrics.refused_not_allowed();
        app.metrics.lookup("not_found_ever");
        return not_found(&app.unseen_tracker);
    }
    match result {
        Ok(Lookup::Found(found)) => {
            app.metrics.store_op("get", "success", t.elapsed());
            app.metrics.lookup("success");
            let reply = LookupReply {
                seen: rfc3339(found.seen_unix_ns),
                addresses: found.addresses,
            };
            let mut resp = Response::new(Body::new(Bytes::from(reply.to_json())));
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
        Ok(Lookup::NotFound { seen_before }) => {
            app.metrics.store_op("get", "not_found", t.elapsed());
            let (result, tracker) = if seen_before {
                ("not_found_recent", &app.seen_tracker)
            } else {
                ("not_found_ever", &app.unseen_tracker)
            };
            app.metrics.lookup(result);
            not_found(tracker)
        }
        Err(e) => {
            app.metrics.store_op("get", "error", t.elapsed());
            app.metrics.store_errors.inc();
            app.metrics.lookup("internal_error");
            tracing::warn!(error = %e, "lookup failed");
            unavailable()
        }
    }
}

async fn announce<S: Store>(
    app: &App<S>,
    conn: &ConnInfo,
    client: &Client,
    req: &http::request::Parts,
    body: &mut Incoming,
) -> Response<Body> {
    let device = match app.device(conn, client, &req.headers) {
        Ok(Some(d)) => d,
        Ok(None) => {
            app.metrics.announcement("no_certificate");
            return text(StatusCode::FORBIDDEN, "Forbidden\n")
                .with_header("retry-after", retry::error_retry_after());
        }
        Err(e) => {
            // The error names header names only, never their contents.
            tracing::debug!(client = %client.limit_ip, reason = e.reason(), error = %e, "announcement refused");
            app.metrics.announcement("bad_certificate_header");
            app.metrics.refused(e.reason());
            return text_owned(StatusCode::FORBIDDEN, format!("Forbidden: {e}"))
                .with_header("retry-after", retry::error_retry_after());
        }
    };
    if !app.allow.permits(&device) {
        app.metrics.refused_not_allowed();
        app.metrics.announcement("not_allowed");
        if app.refusal_log.should_log(device, Instant::now()) {
            tracing::warn!(device = %device, client = %client.limit_ip, "announcement refused: the device is not in the allow-list");
        }
        // As stdiscosrv answers an announcement without a certificate:
        // Syncthing shows the error and retries after Retry-After.
        return text(StatusCode::FORBIDDEN, "Forbidden\n")
            .with_header("retry-after", retry::error_retry_after());
    }
    // A new device costs a record: fresh certificates are free to make, so
    // each source gets few new ones (known devices are not counted).
    if let Some(limiter) = &app.new_device_limiter {
        if app.store.knows(&device) == Some(false) {
            if let Err(wait) = limiter.check(client.limit_ip) {
                app.metrics.refused("new_device_rate");
                app.metrics.announcement("new_device_rate");
                tracing::debug!(client = %client.limit_ip, "new device refused: --new-device-rate");
                return text(StatusCode::TOO_MANY_REQUESTS, "Too Many New Devices\n")
                    .with_header("retry-after", wait.as_secs() + 1);
            }
        }
    }
    let declared = req
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // A body a little too large is still read (and dropped by `read_limited`)
    // so the 413 is not lost to a reset; only one far too large to drain
    // is refused from its declared length alone.
    if declared.is_some_and(|n| n > (MAX_ANNOUNCEMENT_BYTES + DRAIN_BYTES) as u64) {
        app.metrics.announcement("bad_request");
        return too_large();
    }
    let bytes = match tokio::time::timeout(
        BODY_TIMEOUT,
        daemon::body::read_limited_mut(body, MAX_ANNOUNCEMENT_BYTES, DRAIN_BYTES),
    )
    .await
    {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(daemon::body::BodyError::TooLarge)) => {
            app.metrics.announcement("bad_request");
            return too_large();
        }
        Ok(Err(daemon::body::BodyError::Failed(_))) | Err(_) => {
            app.metrics.announcement("bad_request");
            return text(StatusCode::REQUEST_TIMEOUT, "Request Timeout\n");
        }
    };
    let announcement = match discovery::parse_announcement(&bytes) {
        Ok(a) => a,
        Err(e) => {
            tracing::debug!(device = %device.short(), error = %e, "bad announcement");
            app.metrics.announcement("bad_request");
            return bad_request();
        }
    };
    let addresses = discovery::rewrite_addresses(&announcement.addresses, &client.source);
    if addresses.is_empty() {
        tracing::debug!(device = %device.short(), announced = ?announcement.addresses, "no usable address");
        app.metrics.announcement("bad_request");
        return bad_request();
    }
    // A record holds at most this much address text, whatever the body.
    if addresses.iter().map(String::len).sum::<usize>() > MAX_RECORD_ADDRESS_BYTES {
        app.metrics.refused("announcement_too_large");
        app.metrics.announcement("bad_request");
        return too_large();
    }
    let t = Instant::now();
    match app.store.announce(device, addresses, Now::system()).await {
        Ok(Announced::Full) => {
            app.metrics.store_op("merge", "full", t.elapsed());
            app.metrics.refused("store_full");
            app.metrics.announcement("store_full");
            tracing::debug!(device = %device.short(), "new device refused: the store's budget is spent");
            unavailable()
        }
        Ok(Announced::Stored) => {
            app.metrics.store_op("merge", "success", t.elapsed());
            app.metrics.announcement("success");
            empty(StatusCode::NO_CONTENT).with_header("reannounce-after", retry::reannounce_after())
        }
        Err(e) => {
            app.metrics.store_op("merge", "error", t.elapsed());
            app.metrics.store_errors.inc();
            app.metrics.announcement("internal_error");
            tracing::warn!(error = %e, "announcement not stored");
            unavailable()
        }
    }
}

/// The `device` query parameter as a device ID. The plain form real
/// clients send is taken as it is; anything else goes through the full
/// form decoder.
fn device_param(query: &str) -> Option<DeviceId> {
    // The usual query, `device=` and the canonical ID, parsed without a
    // scan: a value with `&`, `%` or `+` fails to parse here (none of them
    // is an ID character) and goes through form decoding below.
    if let Some(Ok(id)) = query.strip_prefix("device=").map(str::parse) {
        return Some(id);
    }
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "device")
        .and_then(|(_, v)| v.parse().ok())
}

/// How much of a too-large body is read and dropped before answering 413.
const DRAIN_BYTES: usize = 256 * 1024;

/// `seen` as Go's RFC 3339 with nanoseconds (trailing zeros trimmed), in
/// UTC. Written by hand: it is on every successful lookup.
pub fn rfc3339(unix_ns: i64) -> String {
    let secs = unix_ns.div_euclid(1_000_000_000);
    let nanos = unix_ns.rem_euclid(1_000_000_000) as u32;
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400) as u32;
    let (y, m, d) = civil_from_days(days);
    // By hand rather than with `format!`: one of these per lookup answer.
    let mut out = String::with_capacity(30);
    if (0..=9999).contains(&y) {
        push_digits(&mut out, y as u32, 4);
    } else {
        // Outside RFC 3339's range; never for a real clock.
        out.push_str(&format!("{y:04}"));
    }
    out.push('-');
    push_digits(&mut out, m, 2);
    out.push('-');
    push_digits(&mut out, d, 2);
    out.push('T');
    push_digits(&mut out, tod / 3600, 2);
    out.push(':');
    push_digits(&mut out, tod % 3600 / 60, 2);
    out.push(':');
    push_digits(&mut out, tod % 60, 2);
    if nanos != 0 {
        // Nanoseconds without trailing zeros, as Go's RFC3339Nano.
        let mut frac = nanos;
        let mut width = 9;
        while frac.is_multiple_of(10) {
            frac /= 10;
            width -= 1;
        }
        out.push('.');
        push_digits(&mut out, frac, width);
    }
    out.push('Z');
    out
}

/// `n` in exactly `width` decimal digits (zero-padded; `n` must fit).
fn push_digits(out: &mut String, n: u32, width: u32) {
    let mut div = 10u32.pow(width.saturating_sub(1));
    while div > 0 {
        out.push(char::from(b'0' + (n / div % 10) as u8));
        div /= 10;
    }
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's
/// algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

trait WithHeader {
    fn with_header(self, name: &'static str, value: impl Into<HeaderValue>) -> Self;
}

impl WithHeader for Response<Body> {
    fn with_header(mut self, name: &'static str, value: impl Into<HeaderValue>) -> Self {
        self.headers_mut().insert(name, value.into());
        self
    }
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(Body::new(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

/// A plain-text error like Go's `http.Error`.
/// A fixed text answer; `msg` ends with its newline (no allocation).
fn text(status: StatusCode, msg: &'static str) -> Response<Body> {
    text_body(status, Bytes::from_static(msg.as_bytes()))
}

fn text_owned(status: StatusCode, msg: String) -> Response<Body> {
    text_body(status, Bytes::from(msg + "\n"))
}

fn text_body(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(Body::new(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// The 404 of a device not found (or not listed): Retry-After from the
/// not-found tracker, so clients back off as the load asks.
fn not_found(tracker: &NotFoundTracker) -> Response<Body> {
    text(StatusCode::NOT_FOUND, "Not Found\n").with_header("retry-after", tracker.hit())
}

/// A path outside `--path-prefix`: Go's plain `404 page not found`, the
/// answer of any Go web server to a path it lacks, whatever the method,
/// query, headers or certificate.
fn unknown_path() -> Response<Body> {
    text(StatusCode::NOT_FOUND, "404 page not found\n")
}

fn bad_request() -> Response<Body> {
    text(StatusCode::BAD_REQUEST, "Bad Request\n")
        .with_header("retry-after", retry::error_retry_after())
}

fn too_large() -> Response<Body> {
    text(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large\n")
        .with_header("retry-after", retry::error_retry_after())
}

fn unavailable() -> Response<Body> {
    text(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable\n")
        .with_header("retry-after", retry::unavailable_retry_after())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(ns: i64) -> String {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
            .unwrap()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    }

    #[test]
    fn seen_format_matches_the_time_crate() {
        for ns in [
            0i64,
            1,
            951_782_400_000_000_000, // 2000-02-29
            1_795_000_000_306_772_819,
            4_102_444_799_999_999_999,
            1_700_000_000_123_000_000,
        ] {
            assert_eq!(rfc3339(ns), reference(ns), "{ns}");
        }
        for _ in 0..10_000 {
            let ns = rand::random_range(0..4_102_444_800_000_000_000i64);
            assert_eq!(rfc3339(ns), reference(ns), "{ns}");
        }
    }

    #[test]
    fn device_parameter_forms() {
        let id = DeviceId::from_bytes([9; 32]);
        let text = id.to_string();
        assert_eq!(device_param(&format!("device={text}")), Some(id));
        assert_eq!(device_param(&format!("x=1&device={text}")), Some(id));
        let escaped = text.replace('-', "%2D");
        assert_eq!(device_param(&format!("device={escaped}")), Some(id));
        assert_eq!(device_param("device=nope"), None);
        assert_eq!(device_param("other=1"), None);
    }

    #[test]
    fn seen_format() {
        assert_eq!(
            rfc3339(1_795_000_000_306_772_819),
            "2026-11-18T11:06:40.306772819Z"
        );
        assert_eq!(rfc3339(1_795_000_000_000_000_000), "2026-11-18T11:06:40Z");
    }
}
