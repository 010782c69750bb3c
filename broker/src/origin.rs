//! The origin allow-list, compiled once into a single multi-pattern regex.
//!
//! The original server ran `origin.match(new RegExp(p))` for each pattern in turn on every
//! connection. We keep those semantics exactly (an unanchored, case-sensitive search; any
//! pattern approves) but compile all patterns into one `regex-automata` meta regex, which
//! answers "does any pattern match" in one pass of a lazy DFA, however many patterns there are.
//!
//! Each pattern is first read as JavaScript reads it and translated into an explicit byte
//! regex ([`crate::jsregex`]): `.`, `\d`, `\w`, `\s` and the rest keep JavaScript's meaning on
//! the header's bytes (Node reads a header as Latin-1), and whatever would mean something else
//! in Rust's dialect (`(?i)`, `[[:alpha:]]`, `\p{..}`, `\z`, ...) or makes JavaScript throw is
//! refused with the reason. No pattern can approve an origin that `new RegExp(p)` refuses
//! (`broker/tests/origin_js.rs` checks this against Node).
//!
//! ```
//! let policy = broker::origin::OriginPolicy::new(&["localhost".to_string()]).unwrap();
//! assert!(policy.is_approved(b"http://localhost:3000"));
//! assert!(!policy.is_approved(b"https://example.com"));
//! ```

use regex_automata::dfa::{dense, Automaton, StartKind};
use regex_automata::meta::{self, Regex};
use regex_automata::util::start;
use regex_automata::{util::syntax, Anchored, MatchKind};
use regex_syntax::hir::Look;

/// A pattern that does not compile, or is refused.
#[derive(Debug, thiserror::Error)]
#[error("approvedSocketDomains[{index}]: {pattern:?} {message}")]
pub struct PatternError {
    pub index: usize,
    pub pattern: String,
    pub message: String,
}

/// The compiled allow-list.
#[derive(Debug, Clone)]
pub struct OriginPolicy {
    patterns: Vec<String>,
    /// The patterns translated into byte regexes with JavaScript's meaning.
    translated: Vec<String>,
    /// `None` when the list is empty: nothing is approved.
    all: Option<Regex>,
    /// Each pattern alone, compiled on first use by [`OriginPolicy::approving`].
    singles: std::sync::OnceLock<Vec<Regex>>,
}

fn syntax_config() -> syntax::Config {
    syntax::Config::new().unicode(false).utf8(false)
}

fn compile(patterns: &[&str]) -> Result<Regex, Box<meta::BuildError>> {
    Regex::builder()
        .syntax(syntax_config())
        .configure(Regex::config().utf8_empty(false))
        .build_many(patterns)
        .map_err(Box::new)
}

impl OriginPolicy {
    /// Compiles every pattern; the first that fails is reported with its index and text.
    pub fn new(patterns: &[String]) -> Result<OriginPolicy, PatternError> {
        let mut translated = Vec::with_capacity(patterns.len());
        for (index, p) in patterns.iter().enumerate() {
            let t = to_rust_pattern(p).map_err(|message| PatternError {
                index,
                pattern: p.clone(),
                message,
            })?;
            compile(&[t.as_str()]).map_err(|e| PatternError {
                index,
                pattern: p.clone(),
                message: format!("does not compile: {}", describe_build_error(&e)),
            })?;
            translated.push(t);
        }
        let all = if patterns.is_empty() {
            None
        } else {
            let refs: Vec<&str> = translated.iter().map(String::as_str).collect();
            Some(compile(&refs).map_err(|e| PatternError {
                index: 0,
                pattern: String::new(),
                message: format!("the patterns together are too large: {e}"),
            })?)
        };
        Ok(OriginPolicy {
            patterns: patterns.to_vec(),
            translated,
            all,
            singles: std::sync::OnceLock::new(),
        })
    }

    /// Whether any pattern approves `origin`: one search, whatever the number of patterns.
    pub fn is_approved(&self, origin: &[u8]) -> bool {
        self.all.as_ref().is_some_and(|re| re.is_match(origin))
    }

    /// The patterns (index and text) that approve `origin`, for `broker check-origin`.
    /// Each pattern is tried alone, the way the original server did.
    pub fn approving(&self, origin: &[u8]) -> Vec<(usize, &str)> {
        let singles = self.singles.get_or_init(|| {
            self.translated
                .iter()
                .filter_map(|p| compile(&[p.as_str()]).ok())
                .collect()
        });
        singles
            .iter()
            .zip(&self.patterns)
            .enumerate()
            .filter(|(_, (re, _))| re.is_match(origin))
            .map(|(i, (_, p))| (i, p.as_str()))
            .collect()
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Patterns that are probably not what the operator meant, worded as advice.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, (p, t)) in self.patterns.iter().zip(&self.translated).enumerate() {
            if !can_match_browser_origin(t) {
                out.push(format!(
                    "approvedSocketDomains[{i}]: {p:?} can never match a browser Origin: browsers send \
                     scheme://host[:port] (e.g. \"https://example.com\"); write e.g. \"^https?://example\\\\.com$\""
                ));
                continue;
            }
            let Ok(hir) = regex_syntax::ParserBuilder::new()
                .unicode(false)
                .utf8(false)
                .build()
                .parse(t)
            else {
                continue;
            };
            let props = hir.properties();
            let start = props.look_set_prefix().contains(Look::Start);
            let end = props.look_set_suffix().contains(Look::End);
            match (start, end) {
                (true, true) => {}
                (true, false) => out.push(format!(
                    "approvedSocketDomains[{i}]: {p:?} has no '$': it also approves any origin that \
                     merely starts like it (e.g. a host name that continues with \".evil.example\")"
                )),
                (false, true) => out.push(format!(
                    "approvedSocketDomains[{i}]: {p:?} has no '^': it also approves any origin that \
                     merely ends like it (e.g. \"https://evil-\" followed by it)"
                )),
                (false, false) => out.push(format!(
                    "approvedSocketDomains[{i}]: {p:?} is not anchored: it approves every origin that \
                     contains it anywhere (\"localhost\" also approves \"http://localhost.evil.com\"); \
                     anchor it with '^' and '$'"
                )),
            }
        }
        out
    }
}

/// A JavaScript pattern as the byte regex the broker runs (regex-syntax, Unicode off), or why
/// it is refused: see [`crate::jsregex`].
pub fn to_rust_pattern(pattern: &str) -> Result<String, String> {
    crate::jsregex::translate(pattern)
}

fn describe_build_error(e: &meta::BuildError) -> String {
    // The syntax error's own Display draws the pattern with a caret; one line is what an
    // operator wants in a log, so keep the short description.
    if let Some(se) = e.syntax_error() {
        match se {
            regex_syntax::Error::Parse(pe) => return pe.kind().to_string(),
            regex_syntax::Error::Translate(te) => return te.kind().to_string(),
            _ => return se.to_string(),
        }
    }
    e.to_string()
}

/// Whether `pattern` could match some text beginning with `http://` or `https://`, which every
/// browser `Origin` (other than the opaque `null`) does. Decided exactly on the pattern's DFA:
/// walk the scheme prefix from the start state; a match on the way, or a live state at the end,
/// means it can.
fn can_match_browser_origin(pattern: &str) -> bool {
    let dfa = match dense::Builder::new()
        .syntax(syntax_config())
        .configure(
            dense::Config::new()
                .match_kind(MatchKind::All)
                .start_kind(StartKind::Unanchored)
                .dfa_size_limit(Some(8 << 20)),
        )
        .build(pattern)
    {
        Ok(dfa) => dfa,
        // Too big to decide cheaply: say nothing rather than guess.
        Err(_) => return true,
    };
    ["http://", "https://"].iter().any(|prefix| {
        let Ok(mut sid) = dfa.start_state(&start::Config::new().anchored(Anchored::No)) else {
            return true;
        };
        for &b in prefix.as_bytes() {
            sid = dfa.next_state(sid, b);
            if dfa.is_match_state(sid) {
                return true;
            }
            if dfa.is_dead_state(sid) || dfa.is_quit_state(sid) {
                return false;
            }
        }
        true
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed's example `approvedSocketDomains`.
    fn seed_patterns() -> Vec<String> {
        [
            "localhost",
            "^ws://www.webinate.net:123$",
            r"^webinate\.net:80$",
            r"^example\.com$",
            r"^.+\.example\.com$",
            r"^example\.org",
            r"^.+\.example\.org",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// The reference: every pattern alone (translated), with the `regex` crate, unanchored
    /// `is_match`.
    fn reference(patterns: &[String]) -> Vec<regex::bytes::Regex> {
        patterns
            .iter()
            .map(|p| {
                regex::bytes::RegexBuilder::new(&to_rust_pattern(p).expect("translates"))
                    .unicode(false)
                    .build()
                    .expect("reference compiles")
            })
            .collect()
    }

    fn origins() -> Vec<String> {
        let hosts = [
            "localhost",
            "localhost.evil.com",
            "notlocalhost",
            "LOCALHOST",
            "example.com",
            "a.example.com",
            "example.com.evil",
            "example.org",
            "x.example.org",
            "example.org.evil.net",
            "webinate.net",
            "www.webinate.net",
            "127.0.0.1",
            "[::1]",
            "evil.com",
            "",
        ];
        let mut out = Vec::new();
        for h in hosts {
            for scheme in ["", "http://", "https://", "ws://", "wss://"] {
                for port in ["", ":80", ":123", ":3000"] {
                    out.push(format!("{scheme}{h}{port}"));
                }
            }
        }
        out.push("null".into());
        out
    }

    #[test]
    fn dfa_agrees_with_each_pattern_alone() {
        let mut sets = vec![
            seed_patterns(),
            vec![],
            vec![r"^https?://(www\.)?example\.(com|org)(:\d+)?$".into()],
            vec![
                r"\d{3}".into(),
                r"^wss?:".into(),
                "org$".into(),
                "[^a-z]".into(),
            ],
            vec![
                r"[Ee][Xx]AMPLE".into(),
                r"\bexample\b".into(),
                r"\w+\.\w+$".into(),
            ],
        ];
        // Many patterns at once, as a big deployment might have.
        sets.push(
            (0..300)
                .map(|i| format!(r"^https://tenant{i}\.example\.com(:\d+)?$"))
                .chain(seed_patterns())
                .collect(),
        );
        let mut extra = origins();
        extra.extend(
            (0..300)
                .step_by(37)
                .map(|i| format!("https://tenant{i}.example.com")),
        );
        extra.push("https://tenant1000.example.com".into());
        for patterns in &sets {
            let policy = OriginPolicy::new(patterns).expect("compiles");
            let reference = reference(patterns);
            for origin in &extra {
                let expected: Vec<usize> = (0..patterns.len())
                    .filter(|&i| reference[i].is_match(origin.as_bytes()))
                    .collect();
                assert_eq!(
                    policy.is_approved(origin.as_bytes()),
                    !expected.is_empty(),
                    "patterns {patterns:?} on origin {origin:?}"
                );
                let which: Vec<usize> = policy
                    .approving(origin.as_bytes())
                    .into_iter()
                    .map(|(i, _)| i)
                    .collect();
                assert_eq!(which, expected, "which patterns approve {origin:?}");
            }
        }
    }

    #[test]
    fn seed_semantics_are_javascript_match() {
        let p = OriginPolicy::new(&seed_patterns()).expect("compiles");
        // Unanchored: `localhost` anywhere.
        assert!(p.is_approved(b"http://localhost:3000"));
        assert!(p.is_approved(b"http://localhost.evil.com"));
        // Anchored patterns never match a browser origin with a scheme.
        assert!(!p.is_approved(b"https://example.com"));
        assert!(p.is_approved(b"example.com"));
        // `^.+\.example\.com$` does match with a scheme, since `.+` eats it.
        assert!(p.is_approved(b"https://app.example.com"));
        assert!(p.is_approved(b"ws://www.webinate.net:123"));
        // Case-sensitive.
        assert!(!p.is_approved(b"http://LOCALHOST"));
        assert!(!p.is_approved(b""));
    }

    #[test]
    fn compile_error_names_index_and_text() {
        let err = OriginPolicy::new(&["ok".into(), "^(foo".into()]).unwrap_err();
        assert_eq!(err.index, 1);
        assert_eq!(err.pattern, "^(foo");
        let text = err.to_string();
        assert!(
            text.starts_with("approvedSocketDomains[1]: \"^(foo\" does not compile: "),
            "{text}"
        );
        assert!(!text.contains('\n'), "one line: {text}");
    }

    #[test]
    fn rust_only_syntax_is_refused_with_index_and_reason() {
        for (p, why) in [
            ("(?i)^https://example\\.com$", "inline flags"),
            ("^https://[[:alpha:]]+\\.example\\.com$", "POSIX class"),
            ("^https://\\p{L}+$", "Unicode class"),
            ("^https://example\\.com\\z", "letter 'z'"),
        ] {
            let err = OriginPolicy::new(&["localhost".into(), p.into()]).unwrap_err();
            assert_eq!(err.index, 1);
            let text = err.to_string();
            assert!(
                text.starts_with(&format!("approvedSocketDomains[1]: {p:?} is refused: ")),
                "{text}"
            );
            assert!(text.contains(why), "{text}");
            assert!(!text.contains('\n'), "{text}");
        }
    }

    #[test]
    fn classes_have_their_javascript_meaning_on_non_ascii() {
        // JavaScript's \d, \w and . on the header's bytes (Latin-1 for Node).
        let p = OriginPolicy::new(&[r"^https://\w+\.example\.com(:\d+)?$".into()]).expect("ok");
        assert!(p.is_approved(b"https://app.example.com:8080"));
        assert!(!p.is_approved("https://\u{e9}.example.com".as_bytes()));
        assert!(!p.is_approved("https://app.example.com:\u{661}".as_bytes()));
        let p = OriginPolicy::new(&[r"^a\Sb$".into(), r"^c.d$".into()]).expect("ok");
        assert!(p.is_approved(b"a\xe9b"), "one Latin-1 character");
        assert!(
            !p.is_approved(b"a\xa0b"),
            "U+00A0 is JavaScript white space"
        );
        assert!(
            !p.is_approved("a\u{e9}b".as_bytes()),
            "two bytes are two characters"
        );
        assert!(!p.is_approved(b"c\rd"), ". excludes \\r");
        assert!(p.is_approved(b"c\x85d"));
    }

    #[test]
    fn javascript_escapes_compile() {
        // `\/` is common in patterns copied from JavaScript source.
        let p = OriginPolicy::new(&[r"^https?:\/\/example\.com$".into()]).expect("compiles");
        assert!(p.is_approved(b"https://example.com"));
    }

    #[test]
    fn warnings_flag_the_traps() {
        let p = OriginPolicy::new(&seed_patterns()).expect("compiles");
        let w = p.warnings();
        let about = |i: usize| {
            w.iter()
                .find(|s| s.starts_with(&format!("approvedSocketDomains[{i}]")))
                .cloned()
        };
        assert!(
            about(0).is_some_and(|s| s.contains("not anchored")),
            "{w:?}"
        );
        assert!(
            about(1).is_some_and(|s| s.contains("never match a browser")),
            "{w:?}"
        );
        assert!(
            about(3).is_some_and(|s| s.contains("never match a browser")),
            "{w:?}"
        );
        assert!(
            about(5).is_some_and(|s| s.contains("never match a browser")),
            "{w:?}"
        );
        assert!(about(4).is_none(), "{w:?}");
        assert!(about(6).is_some_and(|s| s.contains("no '$'")), "{w:?}");

        let good = OriginPolicy::new(&[r"^https://(www\.)?example\.com(:\d+)?$".into()])
            .expect("compiles");
        assert!(good.warnings().is_empty(), "{:?}", good.warnings());
    }
}
