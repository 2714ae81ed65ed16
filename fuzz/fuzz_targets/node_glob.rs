//! The `.stignore` glob matcher against a reference: a plain backtracking
//! matcher written from the documented syntax, for the subset it knows
//! (literals, `*`, `**`, `?`) on short names. Any disagreement is a bug in
//! one of them. Patterns with classes, braces and escapes only run for
//! crashes and hangs.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use node::fuzzing::Glob;

#[derive(Arbitrary, Debug)]
struct Input {
    pattern: String,
    names: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tok {
    Lit(char),
    Star,
    Super,
    One,
}

/// The subset's tokens, or None for a pattern outside it.
fn tokens(p: &str) -> Option<Vec<Tok>> {
    let chars: Vec<char> = p.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '[' | ']' | '{' | '}' | ',' | '\\' | '!' => return None,
            '*' if chars.get(i + 1) == Some(&'*') => {
                out.push(Tok::Super);
                i += 1;
            }
            '*' => out.push(Tok::Star),
            '?' => out.push(Tok::One),
            c => out.push(Tok::Lit(c)),
        }
        i += 1;
    }
    Some(out)
}

fn reference(p: &[Tok], n: &[char]) -> bool {
    match p.split_first() {
        None => n.is_empty(),
        Some((Tok::Lit(c), rest)) => n.first() == Some(c) && reference(rest, &n[1..]),
        Some((Tok::One, rest)) => n.first().is_some_and(|&c| c != '/') && reference(rest, &n[1..]),
        Some((Tok::Star, rest)) => {
            // Any run without '/'.
            let max = n.iter().position(|&c| c == '/').unwrap_or(n.len());
            (0..=max).any(|k| reference(rest, &n[k..]))
        }
        Some((Tok::Super, rest)) => (0..=n.len()).any(|k| reference(rest, &n[k..])),
    }
}

fuzz_target!(|input: Input| {
    let Ok(glob) = Glob::compile(&input.pattern) else {
        return;
    };
    let subset = tokens(&input.pattern).filter(|t| t.len() <= 12);
    for name in input.names.iter().take(8) {
        let got = glob.matches(name);
        if let Some(t) = &subset {
            let n: Vec<char> = name.chars().collect();
            if n.len() <= 24 {
                assert_eq!(
                    got,
                    reference(t, &n),
                    "pattern {:?} name {name:?}",
                    input.pattern
                );
            }
        }
    }
});
