//! A global discovery server's answer to a lookup, as the node reads it:
//! any status, headers and body give addresses within the limits or a
//! negative answer with a bounded cache time, never a panic.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use node::discovery::global::{lookup_outcome, Reply};

#[derive(Arbitrary, Debug)]
struct Input {
    status: u16,
    retry_after: Option<Vec<u8>>,
    body: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let mut headers = http::HeaderMap::new();
    if let Some(v) = input.retry_after {
        if let Ok(v) = http::HeaderValue::from_bytes(&v) {
            headers.insert("Retry-After", v);
        }
    }
    let reply = Reply {
        status: input.status,
        headers,
        body: bytes::Bytes::from(input.body),
    };
    let (cache, addresses, _error) = lookup_outcome(&Ok(reply));
    if let Some(a) = addresses {
        assert!(a.len() <= 100);
        assert!(a.iter().all(|a| !a.is_empty() && a.len() <= 1024));
    }
    let _ = cache;
});
