//! JSON exactly as `JSON.parse` reads it, plus two conveniences: `//` and `/* */` comments and
//! trailing commas (after the last element of an array or object) outside strings.
//!
//! Comments and trailing commas are blanked out with spaces (newlines kept, so line and column
//! numbers stay those of the original text) and the result is parsed with `serde_json`: string
//! escapes are exactly JSON's. An unknown escape such as `"\."` is an error, not the bare
//! character (a JSON5 reader turns `"^app\.example\.com$"` into `^app.example.com$`, which then
//! approves `appXexample.com`).
//!
//! Errors carry the line, column and, where it can be told, the key path of the value
//! (`websocket.approvedSocketDomains[0]`).

use serde_json::Value;

/// Why a text is not JSON (with comments and trailing commas).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsoncError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// The key path of the value where the error is (`a.b[2]`), when it can be told.
    pub path: Option<String>,
    /// What is wrong and, when we know, how to fix it.
    pub message: String,
}

impl std::fmt::Display for JsoncError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)?;
        if let Some(p) = &self.path {
            write!(f, " (in {p})")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Parses `text` as JSON with comments and trailing commas.
pub fn parse(text: &str) -> Result<Value, JsoncError> {
    let stripped = strip(text)?;
    match serde_json::from_str::<Value>(&stripped) {
        Ok(v) => Ok(v),
        Err(e) => {
            // An invalid escape is the error that matters most (it silently changed patterns
            // under the old reader): find the first one ourselves, with its exact place.
            if let Some(err) = first_invalid_escape(&stripped) {
                return Err(err);
            }
            let offset = offset_of(&stripped, e.line(), e.column());
            let (line, column) = line_col(&stripped, offset);
            let message = e.to_string();
            // serde_json appends its own position; keep only the description.
            let message = message
                .split(" at line ")
                .next()
                .unwrap_or(&message)
                .to_string();
            Err(JsoncError {
                line: if e.line() == 0 { line } else { e.line() },
                column: if e.line() == 0 { column } else { column.max(1) },
                path: path_at(&stripped, offset),
                message: format!("not valid JSON: {message}"),
            })
        }
    }
}

/// Blanks comments and trailing commas outside strings (byte offsets are kept).
fn strip(text: &str) -> Result<String, JsoncError> {
    let b = text.as_bytes();
    let mut out = b.to_vec();
    let mut i = 0;
    // A comma that directly follows a value, waiting to see whether a closing bracket is next.
    let mut pending_comma: Option<usize> = None;
    // The last significant byte outside comments (0 at the start).
    let mut last = 0u8;
    while i < b.len() {
        match b[i] {
            b'"' => {
                pending_comma = None;
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                last = b'"';
                i += 1;
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    out[i] = b' ';
                    i += 1;
                }
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let start = i;
                out[i] = b' ';
                out[i + 1] = b' ';
                i += 2;
                loop {
                    if i + 1 >= b.len() {
                        let (line, column) = line_col(text, start);
                        return Err(JsoncError {
                            line,
                            column,
                            path: None,
                            message: "a /* comment is never closed: end it with */".into(),
                        });
                    }
                    if b[i] == b'*' && b[i + 1] == b'/' {
                        out[i] = b' ';
                        out[i + 1] = b' ';
                        i += 2;
                        break;
                    }
                    if b[i] != b'\n' {
                        out[i] = b' ';
                    }
                    i += 1;
                }
                continue;
            }
            b',' => {
                // Only a comma after a value can be a trailing one; `[,]` stays an error.
                pending_comma = if matches!(last, b'[' | b'{' | b',' | b':' | 0) {
                    None
                } else {
                    Some(i)
                };
                last = b',';
            }
            b']' | b'}' => {
                if let Some(c) = pending_comma.take() {
                    out[c] = b' ';
                }
                last = b[i];
            }
            c if c.is_ascii_whitespace() => {}
            c => {
                pending_comma = None;
                last = c;
            }
        }
        i += 1;
    }
    // Only ASCII bytes were written, over whole characters: still UTF-8.
    String::from_utf8(out).map_err(|_| JsoncError {
        line: 1,
        column: 1,
        path: None,
        message: "not valid UTF-8".into(),
    })
}

/// The first backslash escape in a string that JSON does not allow.
fn first_invalid_escape(text: &str) -> Option<JsoncError> {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'"' {
            i += 1;
            continue;
        }
        i += 1;
        while i < b.len() && b[i] != b'"' {
            if b[i] == b'\\' {
                let at = i;
                let next = text[i + 1..].chars().next();
                let ok = match next {
                    Some('"' | '\\' | '/' | 'b' | 'f' | 'n' | 'r' | 't') => true,
                    Some('u') => {
                        b.len() >= i + 6 && b[i + 2..i + 6].iter().all(u8::is_ascii_hexdigit)
                    }
                    _ => false,
                };
                if !ok {
                    let (line, column) = line_col(text, at);
                    return Some(JsoncError {
                        line,
                        column,
                        path: path_at(text, at),
                        message: escape_advice(next),
                    });
                }
                i += 1;
            }
            i += 1;
        }
        i += 1;
    }
    None
}

fn escape_advice(next: Option<char>) -> String {
    match next {
        None => "a backslash ends the text".into(),
        Some('u') => {
            "invalid escape \"\\u\": JSON needs four hex digits after \\u (\\u00e9)".into()
        }
        Some(c) if c.is_control() => format!(
            "invalid escape: a backslash before the control character {c:?} in a JSON string: remove the backslash"
        ),
        Some(c) => {
            let meaning = match c {
                '.' => " for a literal dot in a pattern".to_string(),
                'd' => " for the digit class \\d in a pattern".to_string(),
                'w' | 's' | 'b' | 'D' | 'W' | 'S' | 'B' => {
                    format!(" for \\{c} in a pattern")
                }
                _ => format!(" to keep the backslash (a pattern then reads \\{c})"),
            };
            format!(
                "invalid escape \"\\{c}\" in a JSON string (JSON allows only \\\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX, \
                 as Node's JSON.parse does): write \\\\{c}{meaning}"
            )
        }
    }
}

/// Byte offset of serde_json's (1-based line, column) position.
fn offset_of(text: &str, line: usize, column: usize) -> usize {
    if line == 0 {
        return text.len();
    }
    let mut start = 0;
    for _ in 1..line {
        match text[start..].find('\n') {
            Some(n) => start += n + 1,
            None => return text.len(),
        }
    }
    // serde_json counts columns in bytes; the error is at the byte before `column`.
    (start + column.saturating_sub(1)).min(text.len())
}

/// 1-based line and character column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |n| n + 1);
    (line, before[line_start..].chars().count() + 1)
}

enum Frame {
    Obj {
        key: Option<String>,
        expect_key: bool,
    },
    Arr {
        index: usize,
    },
}

fn render(stack: &[Frame]) -> Option<String> {
    let mut out = String::new();
    for f in stack {
        match f {
            Frame::Obj {
                key: Some(k),
                expect_key: false,
            } => {
                if !out.is_empty() {
                    out.push('.');
                }
                // A key with control characters (a newline, say) is quoted, so that an error
                // stays one line.
                if k.chars().any(char::is_control) {
                    out.push_str(&format!("{k:?}"));
                } else {
                    out.push_str(k);
                }
            }
            Frame::Obj { .. } => break,
            Frame::Arr { index } => out.push_str(&format!("[{index}]")),
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The key path of the value at byte `offset` of (comment-free) JSON text, e.g.
/// `websocket.approvedSocketDomains[0]`.
pub(crate) fn path_at(text: &str, offset: usize) -> Option<String> {
    let b = text.as_bytes();
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if i >= offset {
            return render(&stack);
        }
        match b[i] {
            b'"' => {
                let start = i;
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                let end = i.min(b.len());
                if offset <= end {
                    return render(&stack);
                }
                if let Some(Frame::Obj { key, expect_key }) = stack.last_mut() {
                    if *expect_key {
                        let raw = text.get(start + 1..end).unwrap_or("");
                        *key = Some(
                            serde_json::from_str::<String>(&format!("\"{raw}\""))
                                .unwrap_or_else(|_| raw.to_string()),
                        );
                        *expect_key = false;
                    }
                }
            }
            b'{' => stack.push(Frame::Obj {
                key: None,
                expect_key: true,
            }),
            b'[' => stack.push(Frame::Arr { index: 0 }),
            b'}' | b']' => {
                stack.pop();
            }
            b',' => match stack.last_mut() {
                Some(Frame::Arr { index }) => *index += 1,
                Some(Frame::Obj { expect_key, .. }) => *expect_key = true,
                None => {}
            },
            _ => {}
        }
        i += 1;
    }
    render(&stack)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_and_trailing_commas_are_accepted() {
        let v = parse(
            "// head\n{\n  /* a\n  block */ \"a\": [1, 2,],\n  \"b\": {\"c\": \"// not a comment\",}, // tail\n}\n",
        )
        .expect("parses");
        assert_eq!(v["a"], serde_json::json!([1, 2]));
        assert_eq!(v["b"]["c"], "// not a comment");
    }

    #[test]
    fn escapes_are_exactly_json() {
        let v = parse(r#"{"p": "^a\\.b\/c\u0041\n"}"#).expect("parses");
        assert_eq!(v["p"], "^a\\.b/cA\n");
        let e = parse("{\n  \"websocket\": {\n    \"approvedSocketDomains\": [\"^https://app\\.example\\.com(:\\d+)?$\"]\n  }\n}")
            .unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert_eq!(e.column, 44, "{e}");
        assert_eq!(
            e.path.as_deref(),
            Some("websocket.approvedSocketDomains[0]"),
            "{e}"
        );
        assert!(e.message.contains("write \\\\."), "{e}");
        let e = parse(r#"{"a": [1, "x", "\d"]}"#).unwrap_err();
        assert_eq!(e.path.as_deref(), Some("a[2]"), "{e}");
        assert!(e.message.contains("\\\\d"), "{e}");
    }

    #[test]
    fn json5_extensions_are_refused() {
        for text in [
            "{a: 1}",
            "{'a': 1}",
            "{\"a\": 0x10}",
            "{\"a\": [,]}",
            "{\"a\": 1,,}",
            "{\"a\": NaN}",
            "{\"a\": 1 /* open",
            "{\"a\": \"\\x41\"}",
        ] {
            let e = parse(text).unwrap_err();
            assert!(!e.to_string().contains('\n'), "{e}");
        }
    }

    #[test]
    fn positions_are_of_the_original_text() {
        let e = parse("{\n  // comment é\n  \"port\": 80,,\n}").unwrap_err();
        assert_eq!(e.line, 3, "{e}");
    }
}
