//! The compiled allow-list against the original one-pattern-at-a-time check (each pattern's
//! JavaScript translation alone, with the regex crate). Input: up to 8 lines of patterns, then
//! the origin on the last line.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines: Vec<&str> = text.split('\n').collect();
    let Some(origin) = lines.pop() else { return };
    if lines.is_empty() || lines.len() > 8 || lines.iter().any(|p| p.len() > 64) {
        return;
    }
    let patterns: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
    let Ok(translated) = patterns
        .iter()
        .map(|p| broker::origin::to_rust_pattern(p))
        .collect::<Result<Vec<String>, String>>()
    else {
        return;
    };
    let reference: Result<Vec<regex::bytes::Regex>, _> = translated
        .iter()
        .map(|p| {
            regex::bytes::RegexBuilder::new(p)
                .unicode(false)
                .size_limit(1 << 20)
                .build()
        })
        .collect();
    let (Ok(policy), Ok(reference)) = (broker::origin::OriginPolicy::new(&patterns), reference)
    else {
        return;
    };
    let expected = reference.iter().any(|re| re.is_match(origin.as_bytes()));
    assert_eq!(
        policy.is_approved(origin.as_bytes()),
        expected,
        "patterns {patterns:?}, origin {origin:?}"
    );
});
