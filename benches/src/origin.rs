//! Origin allow-lists and the original one-at-a-time check.
//!
//! The original server ran `origin.match(new RegExp(p))` for every pattern on every connection.
//! [`OneAtATime`] is that design with the regexes compiled once at start-up (its best case);
//! [`compile_each_and_match`] also compiles every pattern per connection, as the JavaScript did
//! (compiled here by the Rust `regex` crate, not by V8, so it shows the shape of that cost rather
//! than V8's figure).

use regex::bytes::{Regex, RegexBuilder};

/// The seed's example `approvedSocketDomains`.
pub const SEED_PATTERNS: [&str; 7] = [
    "localhost",
    "^ws://www.webinate.net:123$",
    r"^webinate\.net:80$",
    r"^example\.com$",
    r"^.+\.example\.com$",
    r"^example\.org",
    r"^.+\.example\.org",
];

/// An allow-list of `n` patterns (at least 7): the seed's, then anchored tenant patterns
/// `^https://tenant{i}\.example\.com(:\d+)?$` as a multi-tenant deployment would list them.
pub fn patterns(n: usize) -> Vec<String> {
    assert!(n >= SEED_PATTERNS.len(), "at least the seed's patterns");
    SEED_PATTERNS
        .iter()
        .map(|p| p.to_string())
        .chain(
            (0..n - SEED_PATTERNS.len())
                .map(|i| format!(r"^https://tenant{i}\.example\.com(:\d+)?$")),
        )
        .collect()
}

/// An origin that only the last of [`patterns`]`(n)` approves: the worst case for trying the
/// patterns in turn. (The port keeps the seed's `^.+\.example\.com$` from approving it.)
pub fn approved_origin(n: usize) -> String {
    if n == SEED_PATTERNS.len() {
        "https://app.example.org".to_string()
    } else {
        format!(
            "https://tenant{}.example.com:8443",
            n - SEED_PATTERNS.len() - 1
        )
    }
}

/// An origin no pattern approves: a look-alike of a tenant's, as an attacker would send.
pub const REFUSED_ORIGIN: &str = "https://tenant5.example.com.evil.net";

fn compile_one(pattern: &str) -> Regex {
    // Byte-oriented and without Unicode classes, as the broker compiles them.
    RegexBuilder::new(pattern)
        .unicode(false)
        .build()
        .unwrap_or_else(|e| panic!("{pattern:?} does not compile: {e}"))
}

/// The original check with each pattern compiled once at start-up, tried in turn.
pub struct OneAtATime {
    regexes: Vec<Regex>,
}

impl OneAtATime {
    pub fn new(patterns: &[String]) -> OneAtATime {
        OneAtATime {
            regexes: patterns.iter().map(|p| compile_one(p)).collect(),
        }
    }

    pub fn is_approved(&self, origin: &[u8]) -> bool {
        self.regexes.iter().any(|re| re.is_match(origin))
    }

    /// The indexes of the patterns that approve `origin`.
    pub fn approving(&self, origin: &[u8]) -> Vec<usize> {
        (0..self.regexes.len())
            .filter(|&i| self.regexes[i].is_match(origin))
            .collect()
    }
}

/// The original check exactly as the JavaScript ran it: `origin.match(new RegExp(p))` for each
/// pattern in turn, compiling every pattern on every connection.
pub fn compile_each_and_match(patterns: &[String], origin: &[u8]) -> bool {
    patterns.iter().any(|p| compile_one(p).is_match(origin))
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker::origin::OriginPolicy;

    const SIZES: [usize; 3] = [7, 100, 1000];

    #[test]
    fn the_approved_origin_is_approved_by_the_last_pattern_alone() {
        for n in SIZES {
            let list = patterns(n);
            assert_eq!(list.len(), n);
            let reference = OneAtATime::new(&list);
            let origin = approved_origin(n);
            assert_eq!(
                reference.approving(origin.as_bytes()),
                vec![n - 1],
                "{origin}"
            );
            assert!(OriginPolicy::new(&list)
                .expect("compiles")
                .is_approved(origin.as_bytes()));
            assert!(compile_each_and_match(&list, origin.as_bytes()));
        }
    }

    #[test]
    fn the_refused_origin_is_refused_by_every_check() {
        for n in SIZES {
            let list = patterns(n);
            let origin = REFUSED_ORIGIN.as_bytes();
            assert!(OneAtATime::new(&list).approving(origin).is_empty());
            assert!(!OriginPolicy::new(&list)
                .expect("compiles")
                .is_approved(origin));
            assert!(!compile_each_and_match(&list, origin));
        }
    }
}
