//! The node's configuration file: TOML as a user edits it, and the JSON
//! of older versions that is migrated once. Whatever is accepted must be
//! written back (`render`, as `save` does) to text that is accepted again
//! and renders identically: `save` refuses a configuration that does not
//! read back, so a failure here is a configuration that can never change.
#![no_main]

use libfuzzer_sys::fuzz_target;
use node::config::{file, Config};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = file::parse(text) {
        round_trip(&config, text);
    }
    if let Ok(config) = serde_json::from_str::<Config>(text) {
        round_trip(&config, text);
    }
});

fn round_trip(config: &Config, from: &str) {
    let Ok(rendered) = file::render(config) else {
        // Not expressible as TOML (a value TOML lacks): refused with an
        // error, which is what `save` does too.
        return;
    };
    let again = file::parse(&rendered).unwrap_or_else(|e| {
        panic!("rendered config does not parse: {e:#}\n{rendered}\nfrom {from:?}")
    });
    let rendered_again = file::render(&again).expect("a parsed config renders");
    assert_eq!(rendered, rendered_again, "render is not stable");
}
