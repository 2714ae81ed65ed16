//! A Syncthing-style REST client (`X-API-Key`, JSON), shared by the real
//! Syncthing nodes and ours: both speak the same API.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::https::{Endpoint, PinnedCert};

/// REST failure: transport error or HTTP status ≥ 400 (with the body).
pub type RestResult = Result<Value, String>;

/// The REST API on 127.0.0.1:`port`, over HTTPS when `https` is given.
pub struct Rest<'a> {
    pub port: u16,
    pub api_key: &'a str,
    pub timeout: Duration,
    pub https: Option<Arc<PinnedCert>>,
}

impl Rest<'_> {
    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let endpoint = Endpoint {
            port: self.port,
            https: self.https.clone(),
        };
        endpoint
            .agent(ureq::AgentBuilder::new().timeout(self.timeout))
            .request(method, &endpoint.url(path))
            .set("X-API-Key", self.api_key)
    }

    /// The JSON body of the reply; an empty body is `Value::Null`.
    fn finish(r: Result<ureq::Response, ureq::Error>) -> RestResult {
        match r {
            Ok(resp) => {
                let body = resp.into_string().map_err(|e| e.to_string())?;
                if body.trim().is_empty() {
                    Ok(Value::Null)
                } else {
                    serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))
                }
            }
            Err(ureq::Error::Status(code, resp)) => Err(format!(
                "HTTP {code}: {}",
                resp.into_string().unwrap_or_default()
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    pub fn get(&self, path: &str) -> RestResult {
        Self::finish(self.request("GET", path).call())
    }

    /// A call with a JSON body (POST, PUT, PATCH).
    pub fn send(&self, method: &str, path: &str, body: &Value) -> RestResult {
        Self::finish(self.request(method, path).send_json(body.clone()))
    }

    pub fn post(&self, path: &str) -> RestResult {
        Self::finish(self.request("POST", path).call())
    }
}
