//! Glob patterns with the syntax Syncthing 1.19.2 uses for `.stignore`
//! lines (the `gobwas/glob` dialect with `/` as separator): `*` (any run
//! of characters except `/`), `**` (any run, `/` included), `?` (one
//! character except `/`), `[abc]`, `[a-z]`, `[!a-z]`, `{alt1,alt2}` and `\`
//! escaping the next character.
//!
//! A pattern compiles to a small program (one instruction per token, plus
//! a branch per `{…}` and a jump per alternative) that is run as a set of
//! live positions advanced one character of the name at a time. Its size
//! is linear in the pattern, and a match costs at most name length × that
//! size, whatever the pattern: no backtracking blow-up on `*a*a*a*…`, and
//! no copy of the pattern per alternative. (Alternatives used to be
//! expanded into plain patterns: `{a,b}` eight times in a 4 KiB line made
//! 256 copies, 32 MiB, and over a second to check one name; found by
//! fuzz/node_ignore.) Only live positions are visited per character, and
//! behind `**/`, which every unrooted `.stignore` line gets, few are.

use anyhow::{bail, Result};

/// Longest pattern accepted (bytes); `.stignore` lines are short.
const MAX_PATTERN: usize = 4096;
/// `{…}` nested deeper than this is refused (the parser recurses).
const MAX_NESTING: usize = 8;

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Lit(char),
    /// `*`
    Star,
    /// `**`
    Super,
    /// `?`
    One,
    /// `[...]`: boxed, so that the common tokens stay small.
    Class(Box<Class>),
}

/// `[...]`: ranges (inclusive), negated with `!`.
#[derive(Debug, Clone, PartialEq)]
struct Class {
    negated: bool,
    ranges: Vec<(char, char)>,
}

impl Class {
    fn matches(&self, c: char) -> bool {
        self.ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != self.negated
    }
}

/// One step of a compiled pattern. Positions index `Glob::program`; the
/// position one past its end is the match.
#[derive(Debug, Clone, PartialEq)]
enum Inst {
    /// Consumes one character the token accepts; `*` and `**` may also
    /// consume none and go on.
    Token(Token),
    /// Goes on at each alternative's start, consuming nothing: the starts
    /// are `Glob::branches[first..first + count]`.
    Branch { first: u32, count: u32 },
    /// Goes on at another position (an alternative's end), consuming
    /// nothing.
    Jump(u32),
}

/// A compiled pattern.
#[derive(Debug, Clone)]
pub struct Glob {
    program: Vec<Inst>,
    branches: Vec<u32>,
}

/// Syntax tree, before it is compiled.
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
                    if depth >= MAX_NESTING {
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
        Ok(Token::Class(Box::new(Class { negated, ranges })))
    }
}

/// Appends the instructions of `nodes` to `glob`.
fn emit(nodes: &[Node], glob: &mut Glob) {
    for node in nodes {
        match node {
            Node::Tok(t) => glob.program.push(Inst::Token(t.clone())),
            Node::Alt(alts) => {
                let branch = glob.program.len();
                glob.program.push(Inst::Jump(0)); // the branch, once starts are known
                let mut starts = Vec::with_capacity(alts.len());
                let mut jumps = Vec::with_capacity(alts.len());
                for alt in alts {
                    starts.push(position(glob.program.len()));
                    emit(alt, glob);
                    jumps.push(glob.program.len());
                    glob.program.push(Inst::Jump(0)); // to the group's end
                }
                let end = position(glob.program.len());
                for j in jumps {
                    glob.program[j] = Inst::Jump(end);
                }
                glob.program[branch] = Inst::Branch {
                    first: position(glob.branches.len()),
                    count: position(starts.len()),
                };
                glob.branches.extend(starts);
            }
        }
    }
}

/// A position as stored: patterns are at most [`MAX_PATTERN`] bytes, so
/// every count fits in 32 bits.
fn position(p: usize) -> u32 {
    u32::try_from(p).unwrap_or(u32::MAX)
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
        let mut glob = Glob {
            program: Vec::new(),
            branches: Vec::new(),
        };
        emit(&nodes, &mut glob);
        Ok(glob)
    }

    /// Instructions held: what the pattern costs to keep (16 bytes each)
    /// and, per character of a name, at most to match.
    pub fn size(&self) -> usize {
        self.program.len() + self.branches.len()
    }

    pub fn matches(&self, name: &str) -> bool {
        self.run(name).0
    }

    /// Whether `name` matches, and the work it took: live positions
    /// visited, over all characters (the tests bound it, as a clock would
    /// be at the mercy of the machine's load).
    fn run(&self, name: &str) -> (bool, usize) {
        let n = self.program.len();
        let mut visited = 0;
        // `seen[i] == step`: position `i` was reached for this step. Steps
        // count from 1, so the zeroed marks mean "not yet".
        let mut seen = vec![0usize; n + 1];
        let mut pending = Vec::new();
        let mut cur = Live {
            list: Vec::new(),
            step: 1,
        };
        let mut next = Live {
            list: Vec::new(),
            step: 2,
        };
        self.reach(&mut cur, &mut seen, &mut pending, 0);
        for c in name.chars() {
            next.list.clear();
            next.step = cur.step + 1;
            visited += cur.list.len();
            for &i in &cur.list {
                let Some(Inst::Token(token)) = self.program.get(i) else {
                    continue; // the match: nothing left to consume a character
                };
                let (advance, stay) = match token {
                    Token::Lit(x) => (*x == c, false),
                    Token::One => (c != '/', false),
                    Token::Class(class) => (class.matches(c), false),
                    Token::Star => (false, c != '/'),
                    Token::Super => (false, true),
                };
                if advance {
                    self.reach(&mut next, &mut seen, &mut pending, i + 1);
                }
                if stay {
                    self.reach(&mut next, &mut seen, &mut pending, i);
                }
            }
            if next.list.is_empty() {
                return (false, visited);
            }
            std::mem::swap(&mut cur, &mut next);
        }
        (seen[n] == cur.step, visited)
    }

    /// Live positions visited to check `name` (tests).
    #[cfg(test)]
    pub fn work(&self, name: &str) -> usize {
        self.run(name).1
    }

    /// Adds to `live` the positions reachable from `from` without
    /// consuming a character: through branches and jumps, and past `*` and
    /// `**` (which match the empty run). Iterative: a pattern such as
    /// `{,}{,}{,}…` chains thousands of them.
    fn reach(&self, live: &mut Live, seen: &mut [usize], pending: &mut Vec<usize>, from: usize) {
        pending.push(from);
        while let Some(i) = pending.pop() {
            if seen[i] == live.step {
                continue;
            }
            seen[i] = live.step;
            match self.program.get(i) {
                Some(Inst::Branch { first, count }) => {
                    let (first, count) = (*first as usize, *count as usize);
                    let starts = self.branches.get(first..first + count).unwrap_or(&[]);
                    pending.extend(starts.iter().map(|&s| s as usize));
                }
                Some(Inst::Jump(to)) => pending.push(*to as usize),
                Some(Inst::Token(Token::Star | Token::Super)) => {
                    live.list.push(i);
                    pending.push(i + 1);
                }
                Some(Inst::Token(_)) | None => live.list.push(i),
            }
        }
    }
}

/// The positions alive after some characters of a name, each once.
struct Live {
    list: Vec<usize>,
    step: usize,
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
        let deep = "{a,".repeat(MAX_NESTING + 1) + &"}".repeat(MAX_NESTING + 1);
        assert!(Glob::compile(&deep).is_err());
    }

    #[test]
    fn pathological_patterns_stay_fast() {
        let p = Glob::compile(&"*a".repeat(30)).unwrap();
        let name = "a".repeat(29) + "b";
        assert!(!p.matches(&name));
        // At most every position, every character: no backtracking.
        assert!(p.work(&name) <= (p.size() + 1) * name.len());
    }

    #[test]
    fn alternatives_are_not_copied_out() {
        // 2^12 combinations of a 4 KiB line: held as one program, and a
        // 4,000-character name checked with a few live positions per
        // character (expanded, 256 combinations of such a line took over
        // a second per name; fuzz/node_ignore found it).
        let pattern = format!("**/{}{}*", "{a,b}".repeat(12), "y".repeat(4000));
        let p = Glob::compile(&pattern).unwrap();
        assert!(p.size() < 2 * pattern.len(), "{} instructions", p.size());
        let miss = "x/".repeat(2000);
        let hit = format!("d/{}{}z", "ab".repeat(6), "y".repeat(4000));
        assert!(!p.matches(&miss));
        assert!(p.matches(&hit));
        assert!(!p.matches(&hit.replacen("ab", "ac", 1)));
        for name in [&miss, &hit] {
            let per_char = p.work(name) / name.len();
            assert!(per_char <= 4, "{per_char} positions per character");
        }
    }

    #[test]
    fn long_chains_of_empty_alternatives_do_not_recurse() {
        let p = Glob::compile(&("{,}".repeat(1300) + "x")).unwrap();
        assert!(p.matches("x"));
        assert!(!p.matches("y"));
    }

    #[test]
    fn instructions_stay_small() {
        assert!(std::mem::size_of::<Inst>() <= 16);
    }
}
