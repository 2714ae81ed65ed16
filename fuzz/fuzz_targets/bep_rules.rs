//! What 2.1.2 refuses on the wire: index entries and Requests decoded from
//! peer bytes. An entry repaired by `fit_for_sending` must pass the check
//! it claims to have passed, and an entry that passes needs no repair that
//! could fail.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use proto::bep::rules::{check_file_info, check_request, fit_for_sending};
use proto::bep::wire::{FileInfo, Index, Request};

fuzz_target!(|data: &[u8]| {
    let (selector, body) = match data.split_first() {
        Some((s, b)) => (*s, b),
        None => return,
    };
    match selector % 3 {
        0 => {
            if let Ok(f) = FileInfo::decode(body) {
                file(f);
            }
        }
        1 => {
            if let Ok(index) = Index::decode(body) {
                index.files.into_iter().for_each(file);
            }
        }
        _ => {
            if let Ok(r) = Request::decode(body) {
                let _ = check_request(&r);
            }
        }
    }
});

fn file(f: FileInfo) {
    let accepted = check_file_info(&f).is_ok();
    let mut repaired = f.clone();
    match fit_for_sending(&mut repaired) {
        Ok(()) => assert!(check_file_info(&repaired).is_ok()),
        Err(_) => assert!(check_file_info(&repaired).is_err()),
    }
    if accepted {
        // An entry that already passes needs no repair that could fail.
        let mut again = f.clone();
        assert!(fit_for_sending(&mut again).is_ok());
    }
}
