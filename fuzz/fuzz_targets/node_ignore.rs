//! `.stignore` text as a user (or a REST client) writes it, checked
//! against names: parsing refuses or accepts without panicking, and a
//! verdict is the same for a name and its repeat.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use node::ignore::Ignores;

#[derive(Arbitrary, Debug)]
struct Input {
    text: String,
    names: Vec<String>,
}

fuzz_target!(|input: Input| {
    let Ok(ignores) = Ignores::parse(&input.text) else {
        return;
    };
    let _ = ignores.skip_ignored_dirs();
    for name in input.names.iter().take(16) {
        let v = ignores.check(name);
        assert!(!v.deletable || v.ignored);
        assert_eq!(ignores.check(name), v);
    }
});
