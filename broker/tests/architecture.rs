//! The broker's modules form a stack (lib.rs): each uses only modules below it. This reads the
//! sources and fails on any `crate::<module>` reference upwards or sideways into an unknown
//! module, outside test code, comments and doc links.

/// Top to bottom, as lib.rs lists them. Modules on one line are peers that do not use each
/// other.
const STACK: &[&[&str]] = &[
    &["main"],
    &["app"],
    &["ops"],
    &["admin"],
    &["fleet"],
    &["control", "memory", "server"],
    &["shared"],
    &["connection", "publish"],
    &["router"],
    &["cluster"],
    &["shutdown", "activity", "handshake", "gate"],
    &["metrics"],
    &["registry"],
    &["config"],
    &["origin", "tls"],
    &[
        "jsregex", "jsonc", "event", "auth", "history", "outbox", "target",
    ],
];

fn layer(module: &str) -> Option<usize> {
    STACK.iter().position(|l| l.contains(&module))
}

/// The module names `text` refers to as `crate::<name>`, outside comments and the test module.
fn uses(text: &str) -> Vec<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or(text);
    let mut out = Vec::new();
    for line in code.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        let line = line.split("//").next().unwrap_or(line);
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && !out.contains(&name) {
                out.push(name);
            }
        }
    }
    out
}

#[test]
fn no_module_uses_one_above_it() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut problems = Vec::new();
    let mut seen = Vec::new();
    // A module is `src/<m>.rs`, or `src/<m>/*.rs` for one split into files.
    let mut modules: Vec<(String, String)> = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("src") {
        let path = entry.expect("entry").path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        if path.is_dir() {
            let mut text = String::new();
            for file in std::fs::read_dir(&path).expect("module dir") {
                let file = file.expect("entry").path();
                if file.extension().is_some_and(|e| e == "rs") {
                    text.push_str(&std::fs::read_to_string(&file).expect("read"));
                    text.push('\n');
                }
            }
            modules.push((name, text));
        } else if let Some(module) = name.strip_suffix(".rs") {
            modules.push((
                module.to_string(),
                std::fs::read_to_string(&path).expect("read"),
            ));
        }
    }
    for (module, text) in &modules {
        let module = module.as_str();
        if module == "lib" {
            continue;
        }
        seen.push(module.to_string());
        let Some(mine) = layer(module) else {
            problems.push(format!(
                "{module} is not in the stack: add it to lib.rs and STACK"
            ));
            continue;
        };
        for used in uses(text) {
            match layer(&used) {
                None => problems.push(format!(
                    "{module} uses crate::{used}, which is not in the stack"
                )),
                Some(theirs) if theirs <= mine && used != module => problems.push(format!(
                    "{module} (layer {mine}) uses crate::{used} (layer {theirs}): not below it"
                )),
                _ => {}
            }
        }
    }
    for l in STACK.iter().flat_map(|l| l.iter()) {
        assert!(
            seen.iter().any(|s| s == l),
            "STACK names {l}, which has no file"
        );
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_check_sees_an_upward_use() {
    assert_eq!(
        uses("use crate::router::Router;\n// crate::app\n"),
        ["router"]
    );
    assert_eq!(
        uses("x\n#[cfg(test)]\nmod tests { use crate::app::start; }"),
        Vec::<String>::new()
    );
    assert_eq!(
        uses("let a = crate::shared::X; let b = crate::app::y();"),
        ["shared", "app"]
    );
}
