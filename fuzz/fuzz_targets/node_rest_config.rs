//! Request bodies of the node's config endpoints (`PUT /rest/config`,
//! `PATCH …/options` and `…/gui`, folder and device entries): the first
//! byte picks the endpoint, the rest is the body. Law: a body the endpoint
//! accepts, shown as `GET` shows it and sent back, is accepted again and
//! reads back the same (tools read, edit and PUT back); anything else is a
//! 400 with a message, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use node::fuzzing::{rest_config_body, BodyError, BodyFor};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let endpoint = match pick % 5 {
        0 => BodyFor::Config,
        1 => BodyFor::Options,
        2 => BodyFor::Gui,
        3 => BodyFor::Folder,
        _ => BodyFor::Device,
    };
    match rest_config_body(endpoint, body) {
        Ok(()) | Err(BodyError::Refused(_)) => {}
        Err(e @ BodyError::NotStable(_)) => panic!("{endpoint:?}: {e}"),
    }
});
