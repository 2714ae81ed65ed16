//! `relay://` URIs from configuration, the relay pool and peers: a parsed
//! URI prints to text that parses back to the same URI.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::relay::RelayUri;

fuzz_target!(|text: &str| {
    let Ok(uri) = text.parse::<RelayUri>() else {
        return;
    };
    let printed = uri.to_string();
    let again: RelayUri = printed
        .parse()
        .unwrap_or_else(|e| panic!("{printed:?} (from {text:?}) does not parse: {e}"));
    assert_eq!(again, uri, "{printed:?}");
    let _ = uri.authority();
    let _ = uri.without_token();
});
