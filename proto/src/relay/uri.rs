//! Relay addresses: `relay://host:port/?id=DEVICE-ID[&token=…][&…]`.

use std::time::Duration;

use crate::device_id::DeviceId;

/// Port of a relay URI that names none (strelaysrv's default).
pub const DEFAULT_PORT: u16 = 22067;

/// Why a string is not a usable relay URI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayUriError {
    #[error("not a URI: {0}")]
    Syntax(String),
    #[error("scheme is {0:?}, expected \"relay\"")]
    Scheme(String),
    #[error("no host in relay URI")]
    NoHost,
    #[error("bad relay id {0:?}: {1}")]
    BadId(String, String),
}

/// A parsed relay URI. Parameters other than `id` and `token` are kept in
/// order (they are informational: `pingInterval`, `networkTimeout`, …).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayUri {
    /// Host name or IP; IPv6 without brackets.
    pub host: String,
    pub port: u16,
    /// Certificate pin of the relay; `None` means unchecked.
    pub id: Option<DeviceId>,
    pub token: Option<String>,
    pub params: Vec<(String, String)>,
}

impl RelayUri {
    pub fn new(host: &str, port: u16, id: Option<DeviceId>) -> Self {
        RelayUri {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
            id,
            token: None,
            params: Vec::new(),
        }
    }

    /// Adds an informational parameter.
    pub fn with_param(mut self, key: &str, value: impl Into<String>) -> Self {
        self.params.push((key.to_owned(), value.into()));
        self
    }

    /// `host:port` to dial, with brackets around IPv6 literals.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The URI without the token: what may be announced or logged.
    pub fn without_token(&self) -> RelayUri {
        RelayUri {
            token: None,
            ..self.clone()
        }
    }
}

impl std::str::FromStr for RelayUri {
    type Err = RelayUriError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let url = url::Url::parse(s.trim()).map_err(|e| RelayUriError::Syntax(e.to_string()))?;
        if url.scheme() != "relay" {
            return Err(RelayUriError::Scheme(url.scheme().to_owned()));
        }
        let host = match url.host() {
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(h) => h.to_string(),
            None => return Err(RelayUriError::NoHost),
        };
        // `relay://:22067` (a relay that let the pool fill in its address)
        // has no host either; `url` reports it as an empty domain.
        if host.is_empty() {
            return Err(RelayUriError::NoHost);
        }
        let mut uri = RelayUri::new(&host, url.port().unwrap_or(DEFAULT_PORT), None);
        for (k, v) in url.query_pairs() {
            match k.as_ref() {
                "id" => {
                    let id = v
                        .parse::<DeviceId>()
                        .map_err(|e| RelayUriError::BadId(v.to_string(), e.to_string()))?;
                    uri.id = Some(id);
                }
                "token" => uri.token = Some(v.into_owned()),
                _ => uri.params.push((k.into_owned(), v.into_owned())),
            }
        }
        Ok(uri)
    }
}

impl std::fmt::Display for RelayUri {
    /// Parameters are percent-encoded (1.19.2 wrote them raw, which only
    /// works while they contain no `&`, `#` or spaces).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        if let Some(id) = &self.id {
            query.append_pair("id", &id.to_string());
        }
        for (k, v) in &self.params {
            query.append_pair(k, v);
        }
        if let Some(token) = &self.token {
            query.append_pair("token", token);
        }
        let query = query.finish();
        write!(f, "relay://{}/", self.authority())?;
        if !query.is_empty() {
            write!(f, "?{query}")?;
        }
        Ok(())
    }
}

/// A duration the way Go prints it (`1m0s`, `2m0s`, `1.5s`, `1h0m0s`), for
/// the informational URI parameters real relays publish.
pub fn format_go_duration(d: Duration) -> String {
    let total = d.as_secs();
    let millis = d.subsec_millis();
    if total == 0 {
        // Go switches to smaller units below one second.
        return if d.is_zero() {
            "0s".to_owned()
        } else if millis > 0 && d.subsec_micros().is_multiple_of(1000) {
            format!("{millis}ms")
        } else {
            format!("{}µs", d.as_micros())
        };
    }
    let (h, m, s) = (total / 3600, (total / 60) % 60, total % 60);
    let secs = if millis == 0 {
        format!("{s}s")
    } else {
        let frac = format!("{millis:03}");
        format!("{s}.{}s", frac.trim_end_matches('0'))
    };
    if h > 0 {
        format!("{h}h{m}m{secs}")
    } else if m > 0 {
        format!("{m}m{secs}")
    } else {
        secs
    }
}
