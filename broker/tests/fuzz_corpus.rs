//! The fuzz corpus (fuzz/corpus/, where every input that ever crashed a target is kept) run
//! through the same checks as the fuzz targets, on every `cargo test`.

use std::path::Path;

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).expect("read"),
            )
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no corpus for {target}");
    out
}

#[test]
fn event_decode_corpus() {
    for (name, data) in inputs("event_decode") {
        match broker::event::decode(&data) {
            Ok(info) => {
                let v: serde_json::Value =
                    serde_json::from_slice(&data).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert!(v.get("eventType").is_some_and(|t| t.is_number()), "{name}");
                if let Some(user) = &info.username {
                    assert_eq!(v["username"].as_str(), Some(&**user), "{name}");
                }
            }
            Err(e) => {
                let v: serde_json::Value =
                    serde_json::from_str(e.to_frame().as_str()).expect("error event is JSON");
                assert!(v["error"].is_string(), "{name}");
            }
        }
    }
}

#[test]
fn config_corpus() {
    for (name, data) in inputs("config") {
        let Ok(text) = std::str::from_utf8(&data) else {
            continue;
        };
        if let Err(e) = broker::config::Config::from_json_str(text, "fuzz") {
            assert!(!e.to_string().contains('\n'), "{name}: {e}");
        }
    }
}

#[test]
fn origin_corpus() {
    for (name, data) in inputs("origin") {
        let Ok(text) = std::str::from_utf8(&data) else {
            continue;
        };
        let mut lines: Vec<&str> = text.split('\n').collect();
        let Some(origin) = lines.pop() else { continue };
        let patterns: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
        let Ok(policy) = broker::origin::OriginPolicy::new(&patterns) else {
            continue;
        };
        let expected = patterns.iter().any(|p| {
            let Ok(p) = broker::origin::to_rust_pattern(p) else {
                return false;
            };
            regex::bytes::RegexBuilder::new(&p)
                .unicode(false)
                .build()
                .is_ok_and(|re| re.is_match(origin.as_bytes()))
        });
        assert_eq!(policy.is_approved(origin.as_bytes()), expected, "{name}");
    }
}
