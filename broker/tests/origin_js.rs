//! Differential test of the origin check against JavaScript itself: generated patterns and
//! origins, Node's `new RegExp(p).test(origin)` against the broker's decision.
//!
//! The broker must either refuse a pattern (fine, whatever Node says) or, for a pattern it
//! accepts, decide every origin exactly as Node does; a pattern the broker accepts and
//! JavaScript throws on is a failure too. Node gets the origin as the Users server gets a
//! header: a Latin-1 string, one character per byte.
//!
//! One node process answers JSON lines over stdin/stdout. The run is bounded in time
//! (`ORIGIN_JS_SECONDS`, default 60) and in pairs (400,000); the seed is printed and can be
//! replayed with `ORIGIN_JS_SEED`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use broker::origin::OriginPolicy;

const NODE_SCRIPT: &str = r#"
const rl = require('readline').createInterface({ input: process.stdin });
rl.on('line', (line) => {
  const { p, o } = JSON.parse(line);
  let re;
  try { re = new RegExp(p); } catch (e) {
    process.stdout.write(JSON.stringify({ err: String(e.message) }) + '\n');
    return;
  }
  process.stdout.write(JSON.stringify({ r: o.map((s) => re.test(s)) }) + '\n');
});
"#;

/// xorshift64*: small, seedable, good enough for generating test cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// A generated piece of pattern with a sample of text it may match (bytes, Latin-1).
struct Piece {
    pattern: String,
    sample: Vec<u8>,
    /// Whether it may carry a quantifier (not after an assertion).
    quantifiable: bool,
    /// Whether it contains an unbounded quantifier (not to be nested under another one:
    /// Node's backtracking would take exponential time).
    unbounded: bool,
}

fn latin1(s: &str) -> Vec<u8> {
    s.chars()
        .map(|c| {
            if (c as u32) <= 0xFF {
                c as u32 as u8
            } else {
                b'?'
            }
        })
        .collect()
}

const LITERALS: &[&str] = &[
    "https",
    "http",
    "://",
    "app",
    "example",
    "com",
    "localhost",
    ":",
    "8080",
    "-",
    "www",
    "a",
    "b",
    "x",
    "A",
    "Z",
    "é",
    "ÿ",
    "€",
    "_",
    "0",
    "9",
    " ",
    "/",
    ",",
    "=",
    "!",
    "<",
    "#",
    "'",
];

/// Single escapes and classes, with a sample byte.
const ATOMS: &[(&str, &str)] = &[
    (r"\.", "."),
    (".", "q"),
    (r"\/", "/"),
    (r"\-", "-"),
    (r"\d", "7"),
    (r"\D", "x"),
    (r"\w", "k"),
    (r"\W", "."),
    (r"\s", " "),
    (r"\S", "s"),
    ("[a-z]", "m"),
    ("[^a-z]", "M"),
    ("[A-Z0-9]", "Q"),
    ("[.]", "."),
    (r"[\d.]", "5"),
    ("[^]", "\n"),
    ("[]", ""),
    (r"[\w-]", "-"),
    (r"[\s\S]", "\u{85}"),
    ("[é-ÿ]", "ñ"),
    (r"[\x00-\x7f]", "a"),
    (r"[\u00a0]", "\u{a0}"),
    (r"[^\s]", "\u{a0}"),
    (r"[\d-z]", "-"),
    (r"[a-]", "-"),
    (r"[-.:]", ":"),
    (r"[\b]", "\u{8}"),
    (r"\x41", "A"),
    (r"\u0041", "A"),
    (r"\u00e9", "é"),
    (r"\u2028", ""),
    (r"\t", "\t"),
    (r"\n", "\n"),
    (r"\r", "\r"),
    (r"\0", "\0"),
    (r"\cA", "\u{1}"),
    (r"\v", "\u{b}"),
    (r"\$", "$"),
    (r"\^", "^"),
    (r"\{", "{"),
    (r"\]", "]"),
    ("]", "]"),
    ("}", "}"),
    ("{", "{"),
    ("a{,3}", "a{,3}"),
    ("a{1", "a{1"),
    ("\u{a0}", "\u{a0}"),
];

/// Constructs whose meaning differs between dialects or that JavaScript refuses.
const RISKY: &[&str] = &[
    "(?i)",
    "(?i:a)",
    "(?-i)",
    "(?x)",
    "(?#c)",
    "[[:alpha:]]",
    "[[:digit:]]+",
    r"\p{L}",
    r"\P{L}",
    r"\pL",
    r"\z",
    r"\A",
    r"\Z",
    r"\Q.\E",
    r"\e",
    r"\h",
    r"\G",
    r"\K",
    r"\R",
    r"\X",
    r"\N",
    r"\a",
    "(?<n>a)",
    "(?P<n>a)",
    r"\k<n>",
    "[a&&b]",
    "[a--b]",
    "[a~~b]",
    "[a-z&&[^m]]",
    r"(a)\1",
    r"\01",
    r"\8",
    "a*+",
    "a++",
    "a**",
    "a{2}{3}",
    r"\x4",
    r"\u{41}",
    r"\c1",
    r"\c",
    "(?=a)",
    "(?!a)",
    "(?<=a)",
    "(?<!a)",
    "\\",
    "(",
    ")",
    "[",
    "[z-a]",
    "a{3,2}",
    "{1}",
    "*",
    "+a",
    "^*",
    r"\b+",
    "$?",
    "(?:)",
    "()",
    "|",
    "[\\",
    "a{1,}",
    "a{0}",
    r"[\c1]",
    r"[\1]",
    r"[\B]",
    r"\_",
    r"\ ",
    r"\é",
    "(?s).",
    "(?m)^a$",
    r"\Ba\b",
];

fn quantifier(rng: &mut Rng, allow_unbounded: bool) -> (&'static str, bool) {
    let bounded: &[&str] = &["?", "{2}", "{1,3}", "{0,2}", "??", "{1,2}?", "{0}"];
    let unbounded: &[&str] = &["*", "+", "{1,}", "*?", "+?", "{0,}"];
    if allow_unbounded && rng.chance(50) {
        (*rng.pick(unbounded), true)
    } else {
        (*rng.pick(bounded), false)
    }
}

fn repeat_sample(rng: &mut Rng, sample: &[u8], q: &str) -> Vec<u8> {
    let n = match q {
        "{2}" => 2,
        "{0}" => 0,
        "{1,3}" | "{1,2}?" | "+" | "+?" | "{1,}" => 1 + rng.below(2),
        _ => rng.below(3),
    };
    sample.repeat(n)
}

fn piece(rng: &mut Rng, depth: usize) -> Piece {
    let roll = rng.below(100);
    let mut p = if roll < 4 {
        let r = *rng.pick(RISKY);
        Piece {
            pattern: r.to_string(),
            sample: latin1(r),
            quantifiable: false,
            unbounded: true,
        }
    } else if roll < 10 {
        let a = *rng.pick(&["^", "$", r"\b", r"\B"]);
        Piece {
            pattern: a.to_string(),
            sample: Vec::new(),
            quantifiable: false,
            unbounded: false,
        }
    } else if roll < 40 {
        let l = *rng.pick(LITERALS);
        Piece {
            pattern: l.to_string(),
            sample: latin1(l),
            quantifiable: l.chars().count() == 1,
            unbounded: false,
        }
    } else if roll < 80 || depth >= 2 {
        let (a, s) = *rng.pick(ATOMS);
        Piece {
            pattern: a.to_string(),
            sample: latin1(s),
            quantifiable: !a.contains('{') || a.starts_with('\\') || a == "{",
            unbounded: false,
        }
    } else {
        // A group with alternatives.
        let alts = 1 + rng.below(3);
        let chosen = rng.below(alts);
        let mut pattern = rng.pick(&["(", "(?:"]).to_string();
        let mut sample = Vec::new();
        let mut unbounded = false;
        for i in 0..alts {
            if i > 0 {
                pattern.push('|');
            }
            let s = sequence(rng, depth + 1, 3);
            pattern.push_str(&s.pattern);
            unbounded |= s.unbounded;
            if i == chosen {
                sample = s.sample;
            }
        }
        pattern.push(')');
        Piece {
            pattern,
            sample,
            quantifiable: true,
            unbounded,
        }
    };
    if p.quantifiable && rng.chance(30) {
        let (q, unb) = quantifier(rng, !p.unbounded);
        p.sample = repeat_sample(rng, &p.sample, q);
        p.pattern.push_str(q);
        p.unbounded |= unb;
    }
    p
}

fn sequence(rng: &mut Rng, depth: usize, max: usize) -> Piece {
    let n = 1 + rng.below(max);
    let mut out = Piece {
        pattern: String::new(),
        sample: Vec::new(),
        quantifiable: true,
        unbounded: false,
    };
    for _ in 0..n {
        let p = piece(rng, depth);
        out.pattern.push_str(&p.pattern);
        out.sample.extend(p.sample);
        out.unbounded |= p.unbounded;
    }
    out
}

/// Bytes that make interesting substitutions: case, separators, line breaks, Latin-1 and
/// UTF-8 non-ASCII.
const SUBST: &[u8] = &[
    b'a', b'A', b'z', b'Z', b'.', b'X', b'0', b'9', b':', b'/', b'-', b'_', b' ', b'\t', b'\n',
    b'\r', 0x0B, 0x0C, 0x00, 0x7F, 0x80, 0x85, 0xA0, 0xC3, 0xA9, 0xE9, 0xFF, 0xE2, 0x80, 0xA8,
];

fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut o = base.to_vec();
    for _ in 0..1 + rng.below(3) {
        match rng.below(9) {
            0 if !o.is_empty() => {
                let i = rng.below(o.len());
                o[i] = *rng.pick(SUBST);
            }
            1 if !o.is_empty() => {
                let i = rng.below(o.len());
                o[i] = if o[i].is_ascii_lowercase() {
                    o[i].to_ascii_uppercase()
                } else {
                    o[i].to_ascii_lowercase()
                };
            }
            2 => {
                let i = rng.below(o.len() + 1);
                o.insert(i, *rng.pick(SUBST));
            }
            3 if !o.is_empty() => {
                let i = rng.below(o.len());
                o.remove(i);
            }
            4 => {
                let p = rng.pick(&["https://", "http://", "x", "evil-", "ws://"]);
                o.splice(0..0, p.bytes());
            }
            5 => {
                let tails: [&[u8]; 5] = [b".evil.com", b":8080", b"\n", b"x", b"/"];
                let tail: &[u8] = rng.pick::<&[u8]>(&tails);
                o.extend_from_slice(tail);
            }
            6 if !o.is_empty() => o.truncate(rng.below(o.len())),
            7 => o.extend_from_slice("é".as_bytes()),
            _ => {}
        }
    }
    o.truncate(48);
    o
}

fn origins(rng: &mut Rng, sample: &[u8], n: usize) -> Vec<Vec<u8>> {
    let mut out = vec![sample.to_vec()];
    while out.len() < n {
        let o = match rng.below(10) {
            0 => (0..rng.below(12))
                .map(|_| *rng.pick(SUBST))
                .collect::<Vec<u8>>(),
            1 => {
                let mut o = b"https://".to_vec();
                o.extend_from_slice(sample);
                o
            }
            _ => mutate(rng, sample),
        };
        out.push(o);
    }
    out
}

fn show(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                (b as char).to_string()
            } else {
                format!("\\x{b:02x}")
            }
        })
        .collect()
}

#[test]
fn origin_decisions_agree_with_javascript() {
    let node = std::env::var("NODE").unwrap_or_else(|_| "/usr/bin/node".into());
    let child = Command::new(&node)
        .args(["-e", NODE_SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "SKIPPED origin_decisions_agree_with_javascript: cannot run node ({node}: {e}); \
                 install Node.js or set NODE=/path/to/node"
            );
            return;
        }
    };
    let seed: u64 = std::env::var("ORIGIN_JS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    let budget = Duration::from_secs(
        std::env::var("ORIGIN_JS_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    eprintln!("origin_js: seed {seed} (replay with ORIGIN_JS_SEED={seed})");
    let mut rng = Rng(seed);
    let mut stdin = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let start = Instant::now();
    let (mut pairs, mut patterns, mut refused, mut node_threw, mut approved) = (0, 0, 0, 0, 0);
    let mut failures = Vec::new();
    while start.elapsed() < budget && pairs < 400_000 && failures.len() < 10 {
        let gen = sequence(&mut rng, 0, 6);
        let pattern = gen.pattern;
        let candidates = origins(&mut rng, &gen.sample, 96);
        let as_js: Vec<String> = candidates
            .iter()
            .map(|o| o.iter().map(|&b| b as char).collect())
            .collect();
        let line = serde_json::json!({ "p": pattern, "o": as_js }).to_string();
        writeln!(stdin, "{line}").expect("write to node");
        let answer = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| {
                panic!("node did not answer for pattern {pattern:?} (seed {seed})")
            });
        let answer: serde_json::Value = serde_json::from_str(&answer).expect("node's JSON");
        patterns += 1;
        let policy = match OriginPolicy::new(std::slice::from_ref(&pattern)) {
            Ok(p) => p,
            Err(_) => {
                refused += 1;
                continue;
            }
        };
        let Some(results) = answer["r"].as_array() else {
            node_threw += 1;
            failures.push(format!(
                "the broker accepts {pattern:?} but JavaScript throws: {}",
                answer["err"]
            ));
            continue;
        };
        for (origin, js) in candidates.iter().zip(results) {
            let js = js.as_bool().expect("a boolean");
            let ours = policy.is_approved(origin);
            pairs += 1;
            approved += usize::from(js);
            if ours != js {
                failures.push(format!(
                    "pattern {pattern:?}, origin \"{}\": JavaScript {}, broker {} (translated: {:?})",
                    show(origin),
                    if js { "approves" } else { "refuses" },
                    if ours { "approves" } else { "refuses" },
                    broker::origin::to_rust_pattern(&pattern).unwrap_or_default()
                ));
                break;
            }
        }
    }
    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();
    eprintln!(
        "origin_js: {pairs} pairs over {patterns} patterns ({refused} refused by the broker, \
         {approved} approvals) in {:.1}s",
        start.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "seed {seed} (replay with ORIGIN_JS_SEED={seed}):\n{}",
        failures.join("\n")
    );
    let _ = node_threw;
    assert!(
        refused * 2 < patterns,
        "most generated patterns should be accepted ({refused} of {patterns} refused): the test would say little"
    );
    assert!(
        pairs >= 50_000,
        "only {pairs} pairs compared in the time budget"
    );
}
