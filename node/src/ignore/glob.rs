//! Glob patterns with the syntax Syncthing 1.19.2 uses for `.stignore`
//! lines (the `gobwas/glob` dialect with `/` as separator): `*` (any run
//! of characters except `/`), `**` (any run, `/` included), `?` (one
//! character except `/`), `[abc]`, `[a-z]`, `[!a-z]`, `{alt1,alt2}` and `\`
//! escaping the next character.
//!
//! Matching runs as a set of token positions advanced one character at a
//! time, so its cost is bounded by name length × pattern length whatever
//! the pattern (no backtracking blow-up on `*a*a*a*…`).

use anyhow::{bail, Result};

/// Longest pattern accepted (bytes); `.stignore` lines are short.
const MAX_PATTERN: usize = 4096;
/// Alternatives `{…}` expand to at most this many plain globs.
const MAX_EXPANSIONS: usize = 256;

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Lit(char),
    /// `*`
    Star,
    /// `**`
    Super,
    /// `?`
    One,
    /// `[...]`: ranges (inclusive), negated with `!`.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

/// A compiled pattern: one token list per expansion of its alternatives.
#[derive(Debug, Clone)]
pub struct Glob {
    alternatives: Vec<Vec<Token>>,
}

/// Syntax tree before alternatives are expanded.
#[derive(Debug, Clone)]
enum Node {
    Tok(Token),
    Alt(Vec<Vec<Node>>),
}

struct Parser<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
}

impl Parser<'_> {
    /// Parses a sequence until the end, or until `,`/`}` when inside
    /// braces (`depth > 0`).
    fn sequence(&mut self, depth: usize) -> Result<Vec<Node>> {
        let mut out = Vec::new();
        while let Some(&c) = self.chars.peek() {
            if depth > 0 && (c == ',' || c == '}') {
                break;
            }
            self.chars.next();
            match c {
                '\\' => match self.chars.next() {
                    Some(e) => out.push(Node::Tok(Token::Lit(e))),
                    None => bail!("pattern ends with an escape character"),
                },
                '*' => {
                    if self.chars.peek() == Some(&'*') {
                        self.chars.next();
                        // Three or more stars are one super-star.
                        while self.chars.peek() == Some(&'*') {
                            self.chars.next();
                        }
                        out.push(Node::Tok(Token::Super));
                    } else {
                        out.push(Node::Tok(Token::Star));
                    }
                }
                '?' => out.push(Node::Tok(Token::One)),
                '[' => out.push(Node::Tok(self.class()?)),
                '{' => {
                    if depth >= 8 {
                        bail!("alternatives nested too deeply");
                    }
                    let mut alts = vec![self.sequence(depth + 1)?];
                    loop {
                        match self.chars.next() {
                            Some(',') => alts.push(self.sequence(depth + 1)?),
                            Some('}') => break,
                            _ => bail!("unclosed '{{'"),
                        }
                    }
                    out.push(Node::Alt(alts));
                }
                c => out.push(Node::Tok(Token::Lit(c))),
            }
        }
        Ok(out)
    }

    fn class(&mut self) -> Result<Token> {
        let mut negated = false;
        if self.chars.peek() == Some(&'!') {
            self.chars.next();
            negated = true;
        }
        let mut ranges = Vec::new();
        loop {
            let c = match self.chars.next() {
                None => bail!("unclosed '['"),
                Some(']') => break,
                Some('\\') => match self.chars.next() {
                    Some(e) => e,
                    None => bail!("unclosed '['"),
                },
                Some(c) => c,
            };
            if self.chars.peek() == Some(&'-') {
                self.chars.next();
                let hi = match self.chars.next() {
                    None => bail!("unclosed '['"),
                    Some('\\') => match self.chars.next() {
                        Some(e) => e,
                        None => bail!("unclosed '['"),
                    },
                    Some(h) => h,
                };
                if hi < c {
                    bail!("character range {c}-{hi} is reversed");
                }
                ranges.push((c, hi));
            } else {
                ranges.push((c, c));
            }
        }
        if ranges.is_empty() {
            bail!("empty character class '[]'");
        }
        Ok(Token::Class { negated, ranges })
    }
}

fn expand(nodes: &[Node], out: &mut Vec<Vec<Token>>) -> Result<()> {
    let mut acc: Vec<Vec<Token>> = vec![Vec::new()];
    for node in nodes {
        match node {
            Node::Tok(t) => acc.iter_mut().for_each(|a| a.push(t.clone())),
            Node::Alt(alts) => {
                let mut options = Vec::new();
                for alt in alts {
                    expand(alt, &mut options)?;
                }
                let mut next = Vec::new();
                for a in &acc {
                    for o in &options {
                        if next.len() >= MAX_EXPANSIONS {
                            bail!("too many alternatives (more than {MAX_EXPANSIONS})");
                        }
                        let mut v = a.clone();
                        v.extend(o.iter().cloned());
                        next.push(v);
                    }
                }
                acc = next;
            }
        }
    }
    if out.len() + acc.len() > MAX_EXPANSIONS {
        bail!("too many alternatives (more than {MAX_EXPANSIONS})");
    }
    out.extend(acc);
    Ok(())
}

impl Glob {
    pub fn compile(pattern: &str) -> Result<Glob> {
        if pattern.len() > MAX_PATTERN {
            bail!("pattern longer than {MAX_PATTERN} bytes");
        }
        let mut p = Parser {
            chars: pattern.chars().peekable(),
        };
        let nodes = p.sequence(0)?;
        if p.chars.next().is_some() {
            bail!("unbalanced '}}'");
        }
        let mut alternatives = Vec::new();
        expand(&nodes, &mut alternatives)?;
        Ok(Glob { alternatives })
    }

    pub fn matches(&self, name: &str) -> bool {
        self.alternatives.iter().any(|t| run(t, name))
    }
}

fn class_matches(negated: bool, ranges: &[(char, char)], c: char) -> bool {
    ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != negated
}

/// Adds the positions reachable from `i` without consuming a character
/// (stars match the empty run).
fn add(tokens: &[Token], set: &mut [bool], mut i: usize) {
    while i <= tokens.len() && !set[i] {
        set[i] = true;
        match tokens.get(i) {
            Some(Token::Star) | Some(Token::Super) => i += 1,
            _ => break,
        }
    }
}

fn run(tokens: &[Token], name: &str) -> bool {
    let n = tokens.len();
    let mut cur = vec![false; n + 1];
    let mut next = vec![false; n + 1];
    add(tokens, &mut cur, 0);
    for c in name.chars() {
        next.iter_mut().for_each(|b| *b = false);
        let mut any = false;
        for i in 0..n {
            if !cur[i] {
                continue;
            }
            let (advance, stay) = match &tokens[i] {
                Token::Lit(x) => (*x == c, false),
                Token::One => (c != '/', false),
                Token::Class { negated, ranges } => (class_matches(*negated, ranges, c), false),
                Token::Star => (false, c != '/'),
                Token::Super => (false, true),
            };
            if advance {
                add(tokens, &mut next, i + 1);
                any = true;
            }
            if stay {
                add(tokens, &mut next, i);
                any = true;
            }
        }
        if !any {
            return false;
        }
        std::mem::swap(&mut cur, &mut next);
    }
    cur[n]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, name: &str) -> bool {
        Glob::compile(p).unwrap().matches(name)
    }

    #[test]
    fn stars_questions_classes_and_alternatives() {
        assert!(m("te*st", "test"));
        assert!(m("te*st", "telerest"));
        assert!(!m("te*st", "tele/rest"));
        assert!(m("te**st", "tele/sub/dir/rest"));
        assert!(m("te??st", "tebest"));
        assert!(!m("te??st", "teb/st"));
        assert!(!m("te??st", "test"));
        assert!(m("[a-c]x", "bx"));
        assert!(!m("[a-c]x", "dx"));
        assert!(m("[!a-c]x", "dx"));
        assert!(!m("[!a-c]x", "ax"));
        assert!(m("{banana,pineapple}", "banana"));
        assert!(m("{banana,pineapple}", "pineapple"));
        assert!(!m("{banana,pineapple}", "apple"));
        assert!(m("\\{banana\\}", "{banana}"));
        assert!(!m("\\{banana\\}", "banana"));
        assert!(m("a\\*b", "a*b"));
        assert!(!m("a\\*b", "axb"));
        assert!(m("**", "a/b/c"));
        assert!(m("a/**", "a/"));
        assert!(m("a/**", "a/b/c"));
        assert!(!m("a/**", "a"));
        assert!(m("x{a,b{c,d}}y", "xbdy"));
        assert!(m("ü*", "üñï"));
    }

    #[test]
    fn bad_patterns_are_errors() {
        for bad in ["[abc", "{a,b", "x\\", "[]", "[z-a]"] {
            assert!(Glob::compile(bad).is_err(), "{bad}");
        }
        let many = "{a,b}".repeat(9);
        assert!(Glob::compile(&many).is_err());
    }

    #[test]
    fn pathological_patterns_stay_fast() {
        let p = Glob::compile(&"*a".repeat(30)).unwrap();
        let name = "a".repeat(29) + "b";
        let t = std::time::Instant::now();
        assert!(!p.matches(&name));
        assert!(t.elapsed() < std::time::Duration::from_millis(100));
    }
}
