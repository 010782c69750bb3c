//! JavaScript regular expressions (as `new RegExp(p)` with no flags reads them) translated into
//! `regex-syntax` patterns over bytes with exactly the same matches, or refused.
//!
//! The Users server tests `origin.match(new RegExp(p))`. Node hands it the `Origin` header as a
//! Latin-1 string (one character per byte), and the broker matches the header's bytes; so a
//! JavaScript character U+0000..U+00FF is the byte of the same value, and a character above
//! U+00FF can never occur. The translation is a whitelist: it parses the JavaScript grammar
//! (Annex B, no `u` flag) and writes every character-consuming piece as an explicit byte class
//! (`\xHH`, `[\x30-\x39]`), so nothing in the output is read with Rust's own meaning of a
//! construct. What JavaScript would refuse (a `SyntaxError`), and what reads differently in the
//! other regex dialects an operator may have in mind, is refused with the reason:
//!
//! - inline flags `(?i)`, named groups `(?<n>..)` / `(?P<n>..)`, lookaround, back-references
//!   and legacy octal escapes (`\1`, `\01`), `\k`;
//! - escapes that JavaScript reads as the bare letter (`\z`, `\A`, `\p{L}`, `\Q`, `\e`, ...);
//! - `[` inside a class (`[[:alpha:]]`, nested classes) and the set operators `&&`, `--`, `~~`;
//! - `\x`, `\u` and `\c` without their digits or letter (JavaScript reads them as literals).
//!
//! Translated with JavaScript's meaning: `.` (any character but `\n` and `\r`), `\d` (`[0-9]`),
//! `\w` (`[A-Za-z0-9_]`), `\s` (JavaScript's white space: `\t\n\v\f\r`, space, U+00A0 and
//! characters above U+00FF), `\b`, `[^]`, `[]`, `{` and `}` that are not a quantifier (literal
//! characters), `{,n}` (literal text in JavaScript), lazy quantifiers.

/// Deepest group nesting accepted (the parser recurses).
const MAX_DEPTH: usize = 64;
/// Largest repetition count accepted in `{n,m}`.
const MAX_REPEAT: u32 = 1000;

/// A set of bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
struct ByteSet([u64; 4]);

impl ByteSet {
    const EMPTY: ByteSet = ByteSet([0; 4]);

    fn unit(u: u32) -> ByteSet {
        let mut s = ByteSet::EMPTY;
        s.insert_range(u, u);
        s
    }

    /// Inserts the code units `lo..=hi`; those above 0xFF can never occur and are dropped.
    fn insert_range(&mut self, lo: u32, hi: u32) {
        let hi = hi.min(0xFF);
        let mut c = lo;
        while c <= hi {
            self.0[(c / 64) as usize] |= 1 << (c % 64);
            c += 1;
        }
    }

    fn union(mut self, o: ByteSet) -> ByteSet {
        for i in 0..4 {
            self.0[i] |= o.0[i];
        }
        self
    }

    fn complement(mut self) -> ByteSet {
        for w in &mut self.0 {
            *w = !*w;
        }
        self
    }

    fn contains(&self, b: u32) -> bool {
        b <= 0xFF && self.0[(b / 64) as usize] & (1 << (b % 64)) != 0
    }

    fn of_ranges(ranges: &[(u32, u32)]) -> ByteSet {
        let mut s = ByteSet::EMPTY;
        for &(lo, hi) in ranges {
            s.insert_range(lo, hi);
        }
        s
    }

    /// `\d`, `\w`, `\s` and their complements, as JavaScript without the `u` flag has them.
    fn class_escape(c: u16) -> Option<ByteSet> {
        let digit = ByteSet::of_ranges(&[(0x30, 0x39)]);
        let word = ByteSet::of_ranges(&[(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)]);
        // WhiteSpace and LineTerminator (ECMA-262): the rest of the set is above U+00FF.
        let space = ByteSet::of_ranges(&[(0x09, 0x0D), (0x20, 0x20), (0xA0, 0xA0)]);
        Some(match c {
            0x64 => digit,
            0x44 => digit.complement(),
            0x77 => word,
            0x57 => word.complement(),
            0x73 => space,
            0x53 => space.complement(),
            _ => return None,
        })
    }

    /// The set written as one regex-syntax atom.
    fn emit(&self, out: &mut String) {
        let members: Vec<u32> = (0..=0xFF).filter(|&b| self.contains(b)).collect();
        if members.len() == 1 {
            out.push_str(&format!("\\x{:02X}", members[0]));
            return;
        }
        if members.is_empty() {
            // Matches nothing, like JavaScript's `[]`.
            out.push_str("[^\\x00-\\xFF]");
            return;
        }
        out.push('[');
        let mut i = 0;
        while i < members.len() {
            let lo = members[i];
            let mut hi = lo;
            while i + 1 < members.len() && members[i + 1] == hi + 1 {
                i += 1;
                hi = members[i];
            }
            if lo == hi {
                out.push_str(&format!("\\x{lo:02X}"));
            } else {
                out.push_str(&format!("\\x{lo:02X}-\\x{hi:02X}"));
            }
            i += 1;
        }
        out.push(']');
    }
}

struct Parser {
    units: Vec<u16>,
    pos: usize,
    out: String,
}

/// What a term was: assertions take no quantifier in JavaScript.
#[derive(PartialEq)]
enum Term {
    Atom,
    Assertion,
}

fn is_digit(u: u16) -> bool {
    (0x30..=0x39).contains(&u)
}

fn is_hex(u: u16) -> bool {
    is_digit(u) || (0x41..=0x46).contains(&u) || (0x61..=0x66).contains(&u)
}

fn hex_value(units: &[u16]) -> u32 {
    units.iter().fold(0, |acc, &u| {
        acc * 16
            + char::from_u32(u32::from(u))
                .and_then(|c| c.to_digit(16))
                .unwrap_or(0)
    })
}

fn show(u: u16) -> String {
    char::from_u32(u32::from(u)).map_or_else(|| format!("\\u{u:04x}"), |c| c.to_string())
}

/// Translates a JavaScript pattern; `Err` says why it is refused.
pub fn translate(pattern: &str) -> Result<String, String> {
    let mut p = Parser {
        units: pattern.encode_utf16().collect(),
        pos: 0,
        out: String::with_capacity(pattern.len() * 4),
    };
    p.disjunction(0)?;
    if p.pos < p.units.len() {
        // Only an unmatched `)` stops the top level early.
        return Err(format!(
            "does not compile: unmatched ')' at position {}",
            p.pos + 1
        ));
    }
    Ok(p.out)
}

impl Parser {
    fn peek(&self) -> Option<u16> {
        self.units.get(self.pos).copied()
    }

    fn peek_at(&self, n: usize) -> Option<u16> {
        self.units.get(self.pos + n).copied()
    }

    fn disjunction(&mut self, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("is refused: groups nested deeper than {MAX_DEPTH}"));
        }
        loop {
            self.alternative(depth)?;
            match self.peek() {
                Some(0x7C) => {
                    self.pos += 1;
                    self.out.push('|');
                }
                _ => return Ok(()),
            }
        }
    }

    fn alternative(&mut self, depth: usize) -> Result<(), String> {
        while let Some(u) = self.peek() {
            if u == 0x7C || u == 0x29 {
                return Ok(());
            }
            let start = self.out.len();
            let kind = self.term(depth)?;
            if let Some((min, max, lazy)) = self.quantifier()? {
                if kind == Term::Assertion {
                    return Err(
                        "does not compile: nothing to repeat (a quantifier after an assertion)"
                            .into(),
                    );
                }
                let atom = self.out.split_off(start);
                self.out.push_str("(?:");
                self.out.push_str(&atom);
                self.out.push(')');
                match max {
                    Some(m) if m == min => self.out.push_str(&format!("{{{min}}}")),
                    Some(m) => self.out.push_str(&format!("{{{min},{m}}}")),
                    None => self.out.push_str(&format!("{{{min},}}")),
                }
                if lazy {
                    self.out.push('?');
                }
            }
        }
        Ok(())
    }

    /// `{n}`, `{n,}` or `{n,m}` at the current position: its length and bounds.
    fn braced(&self) -> Option<(usize, u64, Option<u64>)> {
        let u = &self.units[self.pos..];
        if u.first() != Some(&0x7B) {
            return None;
        }
        let mut i = 1;
        let number = |i: &mut usize| -> Option<u64> {
            let start = *i;
            while *i < u.len() && is_digit(u[*i]) {
                *i += 1;
            }
            if *i == start {
                return None;
            }
            Some(u[start..*i].iter().fold(0u64, |acc, &d| {
                acc.saturating_mul(10).saturating_add(u64::from(d - 0x30))
            }))
        };
        let min = number(&mut i)?;
        let max = if u.get(i) == Some(&0x2C) {
            i += 1;
            if u.get(i) == Some(&0x7D) {
                None
            } else {
                Some(number(&mut i)?)
            }
        } else {
            Some(min)
        };
        if u.get(i) != Some(&0x7D) {
            return None;
        }
        Some((i + 1, min, max))
    }

    fn quantifier(&mut self) -> Result<Option<(u32, Option<u32>, bool)>, String> {
        let (min, max) = match self.peek() {
            Some(0x2A) => {
                self.pos += 1;
                (0, None)
            }
            Some(0x2B) => {
                self.pos += 1;
                (1, None)
            }
            Some(0x3F) => {
                self.pos += 1;
                (0, Some(1))
            }
            Some(0x7B) => match self.braced() {
                Some((len, min, max)) => {
                    self.pos += len;
                    if max.is_some_and(|m| m < min) {
                        return Err(
                            "does not compile: numbers out of order in {} quantifier".into()
                        );
                    }
                    let limit = u64::from(MAX_REPEAT);
                    if min > limit || max.is_some_and(|m| m > limit) {
                        return Err(format!(
                            "is refused: repetition counts above {MAX_REPEAT} are not supported"
                        ));
                    }
                    // Both are at most MAX_REPEAT here.
                    (min as u32, max.map(|m| m as u32))
                }
                None => return Ok(None),
            },
            _ => return Ok(None),
        };
        let lazy = self.peek() == Some(0x3F);
        if lazy {
            self.pos += 1;
        }
        Ok(Some((min, max, lazy)))
    }

    fn term(&mut self, depth: usize) -> Result<Term, String> {
        let Some(u) = self.peek() else {
            return Ok(Term::Atom);
        };
        self.pos += 1;
        match u {
            0x5E => {
                self.out.push('^');
                Ok(Term::Assertion)
            }
            0x24 => {
                self.out.push('$');
                Ok(Term::Assertion)
            }
            0x2E => {
                ByteSet::of_ranges(&[(0x0A, 0x0A), (0x0D, 0x0D)])
                    .complement()
                    .emit(&mut self.out);
                Ok(Term::Atom)
            }
            0x28 => self.group(depth),
            0x5B => {
                self.class()?;
                Ok(Term::Atom)
            }
            0x5C => self.atom_escape(),
            0x2A | 0x2B | 0x3F => Err(format!(
                "does not compile: nothing to repeat before '{}'",
                show(u)
            )),
            0x7B => {
                self.pos -= 1;
                if self.braced().is_some() {
                    return Err("does not compile: nothing to repeat before '{'".into());
                }
                self.pos += 1;
                ByteSet::unit(u32::from(u)).emit(&mut self.out);
                Ok(Term::Atom)
            }
            _ => {
                ByteSet::unit(u32::from(u)).emit(&mut self.out);
                Ok(Term::Atom)
            }
        }
    }

    fn group(&mut self, depth: usize) -> Result<Term, String> {
        if self.peek() == Some(0x3F) {
            match (self.peek_at(1), self.peek_at(2)) {
                (Some(0x3A), _) => self.pos += 2,
                (Some(0x3D | 0x21), _) | (Some(0x3C), Some(0x3D | 0x21)) => {
                    return Err(
                        "is refused: lookahead and lookbehind ((?=, (?!, (?<=, (?<!) are not supported"
                            .into(),
                    )
                }
                (Some(0x3C), _) | (Some(0x50), Some(0x3C)) => {
                    return Err(
                        "is refused: named groups are not supported; write (?:...)".into()
                    )
                }
                (next, _) => {
                    return Err(format!(
                        "is refused: '(?{}' is not a JavaScript group; inline flags such as (?i) do not exist \
                         in a JavaScript pattern (matching is case-sensitive; list the cases)",
                        next.map(show).unwrap_or_default()
                    ))
                }
            }
        }
        self.out.push_str("(?:");
        self.disjunction(depth + 1)?;
        if self.peek() != Some(0x29) {
            return Err("does not compile: unterminated group (a '(' without ')')".into());
        }
        self.pos += 1;
        self.out.push(')');
        Ok(Term::Atom)
    }

    /// After a backslash outside a class.
    fn atom_escape(&mut self) -> Result<Term, String> {
        match self.peek() {
            Some(0x62) => {
                self.pos += 1;
                self.out.push_str("\\b");
                Ok(Term::Assertion)
            }
            Some(0x42) => {
                self.pos += 1;
                self.out.push_str("\\B");
                Ok(Term::Assertion)
            }
            _ => {
                let set = self.escape(false)?;
                set.emit(&mut self.out);
                Ok(Term::Atom)
            }
        }
    }

    /// The set of an escape after a backslash (`\b` and `\B` outside classes are handled by
    /// the caller). Returns with `self.pos` after the escape.
    fn escape(&mut self, in_class: bool) -> Result<ByteSet, String> {
        let Some(u) = self.peek() else {
            return Err("does not compile: '\\' at the end of the pattern".into());
        };
        self.pos += 1;
        if let Some(set) = ByteSet::class_escape(u) {
            return Ok(set);
        }
        let single = |b: u32| Ok(ByteSet::unit(b));
        match u {
            0x66 => single(0x0C),
            0x6E => single(0x0A),
            0x72 => single(0x0D),
            0x74 => single(0x09),
            0x76 => single(0x0B),
            0x62 if in_class => single(0x08),
            0x30 if !self.peek().is_some_and(is_digit) => single(0),
            0x30..=0x39 => Err(format!(
                "is refused: \\{} is a back-reference or a legacy octal escape; write \\xHH for a character code",
                show(u)
            )),
            0x78 => {
                if self.peek().is_some_and(is_hex) && self.peek_at(1).is_some_and(is_hex) {
                    let v = hex_value(&self.units[self.pos..self.pos + 2]);
                    self.pos += 2;
                    single(v)
                } else {
                    Err("is refused: \\x needs two hex digits (JavaScript would read a bare 'x')".into())
                }
            }
            0x75 => {
                if (0..4).all(|i| self.peek_at(i).is_some_and(is_hex)) {
                    let v = hex_value(&self.units[self.pos..self.pos + 4]);
                    self.pos += 4;
                    single(v)
                } else {
                    Err("is refused: \\u needs four hex digits (JavaScript without the u flag reads \\u{...} as a repeated 'u')".into())
                }
            }
            0x63 => match self.peek() {
                Some(l) if (0x41..=0x5A).contains(&l) || (0x61..=0x7A).contains(&l) => {
                    self.pos += 1;
                    single(u32::from(l) % 32)
                }
                _ => Err("is refused: \\c needs a letter (JavaScript would read a backslash and 'c')".into()),
            },
            0x70 | 0x50 => Err(format!(
                "is refused: \\{} is a Unicode class in other dialects but the letter '{}' in JavaScript without the u flag",
                show(u),
                show(u)
            )),
            0x6B => Err("is refused: \\k (named back-reference) is not supported".into()),
            l if (0x41..=0x5A).contains(&l) || (0x61..=0x7A).contains(&l) => Err(format!(
                "is refused: \\{} means the letter '{}' in JavaScript but something else in other dialects \
                 (\\z, \\A: text boundaries; \\e: escape); write the letter, or ^ and $ for the ends",
                show(l),
                show(l)
            )),
            // Any other character escaped is itself: `\.`, `\/`, `\-`, `\$`, ...
            other => single(u32::from(other)),
        }
    }

    /// After `[`.
    fn class(&mut self) -> Result<(), String> {
        let negated = self.peek() == Some(0x5E);
        if negated {
            self.pos += 1;
        }
        let mut set = ByteSet::EMPTY;
        loop {
            let Some(u) = self.peek() else {
                return Err(
                    "does not compile: unterminated character class (a '[' without ']')".into(),
                );
            };
            if u == 0x5D {
                self.pos += 1;
                break;
            }
            if u == 0x5B {
                return Err(
                    "is refused: '[' inside [...] is a literal in JavaScript but a nested or POSIX class \
                     ([[:alpha:]]) in other dialects; write \\[ for the character"
                        .into(),
                );
            }
            if matches!(u, 0x26 | 0x2D | 0x7E) && self.peek_at(1) == Some(u) {
                return Err(format!(
                    "is refused: '{0}{0}' inside [...] is a set operation in other dialects but two literal \
                     characters in JavaScript; write \\{0} for the character",
                    show(u)
                ));
            }
            let (a, a_single) = self.class_atom()?;
            if self.peek() == Some(0x2D) && self.peek_at(1).is_some_and(|n| n != 0x5D) {
                self.pos += 1;
                let (b, b_single) = self.class_atom()?;
                match (a_single, b_single) {
                    (Some(lo), Some(hi)) => {
                        if lo > hi {
                            return Err(
                                "does not compile: range out of order in character class".into()
                            );
                        }
                        set.insert_range(lo, hi);
                    }
                    // Annex B: `[\d-z]` is \d, '-' and 'z'.
                    _ => set = set.union(a).union(ByteSet::unit(0x2D)).union(b),
                }
            } else {
                set = set.union(a);
            }
        }
        if negated {
            set = set.complement();
        }
        set.emit(&mut self.out);
        Ok(())
    }

    /// One class atom: its set, and its code unit when it is a single character.
    fn class_atom(&mut self) -> Result<(ByteSet, Option<u32>), String> {
        let Some(u) = self.peek() else {
            return Err("does not compile: unterminated character class".into());
        };
        self.pos += 1;
        if u != 0x5C {
            return Ok((ByteSet::unit(u32::from(u)), Some(u32::from(u))));
        }
        let escaped = self.peek();
        let before = self.pos;
        let set = self.escape(true)?;
        if escaped.is_some_and(|e| ByteSet::class_escape(e).is_some()) {
            return Ok((set, None));
        }
        // A single character: recover its code unit (possibly above 0xFF) for ranges.
        let code = self.escape_code(before);
        Ok((set, Some(code)))
    }

    /// The code unit of the single-character escape that starts at `start` (after the `\`).
    fn escape_code(&self, start: usize) -> u32 {
        let u = &self.units[start..self.pos];
        match u.first() {
            Some(0x66) => 0x0C,
            Some(0x6E) => 0x0A,
            Some(0x72) => 0x0D,
            Some(0x74) => 0x09,
            Some(0x76) => 0x0B,
            Some(0x62) => 0x08,
            Some(0x30) => 0,
            Some(0x78) | Some(0x75) => hex_value(&u[1..]),
            Some(0x63) => u.get(1).map_or(0, |&l| u32::from(l) % 32),
            Some(&other) => u32::from(other),
            None => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(p: &str) -> String {
        translate(p).unwrap_or_else(|e| panic!("{p:?}: {e}"))
    }

    #[test]
    fn js_meanings_are_kept() {
        assert_eq!(t("a.b"), r"\x61[\x00-\x09\x0B-\x0C\x0E-\xFF]\x62");
        assert_eq!(t(r"\d"), r"[\x30-\x39]");
        assert_eq!(t(r"[^]"), r"[\x00-\xFF]");
        assert_eq!(t(r"[]"), r"[^\x00-\xFF]");
        assert_eq!(t("a{,5}"), r"\x61\x7B\x2C\x35\x7D");
        assert_eq!(t("a{2,3}?"), r"(?:\x61){2,3}?");
        assert_eq!(t(r"\s"), r"[\x09-\x0D\x20\xA0]");
        assert_eq!(t("é"), r"\xE9");
        assert_eq!(t("€"), r"[^\x00-\xFF]");
        assert_eq!(
            t(r"^https?:\/\/x$"),
            r"^\x68\x74\x74\x70(?:\x73){0,1}\x3A\x2F\x2F\x78$"
        );
    }

    #[test]
    fn differing_constructs_are_refused() {
        for p in [
            "(?i)example",
            "(?i:example)",
            "[[:alpha:]]",
            r"\p{L}",
            r"\P{L}",
            r"a\z",
            r"\Aa",
            r"(?<n>a)",
            r"(?P<n>a)",
            r"(?=a)",
            r"(?<=a)b",
            r"(a)\1",
            r"\01",
            r"[a&&b]",
            r"[a--b]",
            r"[a~~b]",
            r"\x4",
            r"\u{41}",
            r"\c1",
            r"\k<n>",
            r"a*+",
            r"a**",
            r"^*",
            r"\b+",
            r"{1}",
            "*a",
            "(a",
            "a)",
            "[a",
            "[z-a]",
            "a{3,2}",
            "a{5000}",
            r"\",
            r"\e",
        ] {
            assert!(translate(p).is_err(), "{p:?} should be refused");
        }
    }
}
