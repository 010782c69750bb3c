//! Realistic events of every type, and the `serde_json` decoder that `simd-json` is measured
//! against.
//!
//! File and bucket objects have the fields the Users API sends (ids, names, owner, storage URL,
//! MIME type, size, timestamps), so sizes and shapes are those of real traffic: a FilesUploaded
//! event grows by about 400 bytes per file.

use broker::event::{ErrorReason, EventInfo, EventType};
use serde::Serialize;
use serde_json::{json, Map, Value};

/// One stored file, as the Users API describes it in FilesUploaded and FilesRemoved.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FileEntry {
    #[serde(rename = "_id")]
    pub id: String,
    pub name: String,
    pub user: String,
    pub identifier: String,
    pub bucket_id: String,
    pub bucket_name: String,
    #[serde(rename = "publicURL")]
    pub public_url: String,
    pub mime_type: String,
    pub is_public: bool,
    pub num_downloads: u64,
    pub size: u64,
    pub created: u64,
    pub parent_file: Option<String>,
}

/// A FilesUploaded (5) or FilesRemoved (6) event as a typed server would hold it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FilesEvent {
    pub event_type: u8,
    pub username: String,
    pub files: Vec<FileEntry>,
}

const USER: &str = "alice.smith";

fn object_id(seed: u64) -> String {
    format!("5f1c3a9e{:016x}", seed.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

fn uuid(seed: u64) -> String {
    let h = seed.wrapping_mul(0xd6e8_feb8_6659_fd93) ^ 0x5bd1_e995;
    format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        h >> 32,
        (h >> 16) & 0xffff,
        h & 0xfff,
        (h >> 20) & 0xfff,
        h & 0xffff_ffff_ffff
    )
}

/// The `i`th file of a realistic upload.
pub fn file_entry(i: u64) -> FileEntry {
    let identifier = uuid(i);
    FileEntry {
        id: object_id(i + 1000),
        name: format!("holiday-photo-{i:04}.jpg"),
        user: USER.to_string(),
        public_url: format!(
            "https://storage.googleapis.com/webinate-users/alice-uploads/{identifier}.jpg"
        ),
        identifier,
        bucket_id: object_id(7),
        bucket_name: "alice-uploads".to_string(),
        mime_type: "image/jpeg".to_string(),
        is_public: i % 3 != 1,
        num_downloads: i * 7 % 50,
        size: 1_048_576 + i * 48_611 % 4_000_000,
        created: 1_764_115_200_000 + i * 1_117,
        parent_file: None,
    }
}

/// A FilesUploaded event with `n` files.
pub fn files_uploaded(n: u64) -> FilesEvent {
    FilesEvent {
        event_type: 5,
        username: USER.to_string(),
        files: (0..n).map(file_entry).collect(),
    }
}

fn bucket() -> Value {
    json!({
        "_id": object_id(7),
        "name": "alice-uploads",
        "identifier": uuid(7),
        "user": USER,
        "created": 1_764_115_200_000u64,
        "memoryUsed": 734_003_200u64,
        "meta": {"description": "Photos from the phone", "source": "mobile-app"},
    })
}

/// One benchmark input: a name for the report and the message's bytes.
#[derive(Debug, Clone)]
pub struct Fixture {
    pub name: &'static str,
    pub payload: Vec<u8>,
}

fn fixture(name: &'static str, v: &impl Serialize) -> Fixture {
    Fixture {
        name,
        payload: serde_json::to_vec(v).expect("serializes"),
    }
}

fn message(len: usize) -> String {
    "Hello world? ".chars().cycle().take(len).collect()
}

/// Every event type at realistic sizes, in type order.
pub fn fixtures() -> Vec<Fixture> {
    vec![
        fixture("01_login", &json!({"eventType": 1, "username": USER})),
        fixture("02_logout", &json!({"eventType": 2, "username": USER})),
        fixture("03_activated", &json!({"eventType": 3, "username": USER})),
        fixture("04_removed", &json!({"eventType": 4, "username": USER})),
        fixture("05_files_uploaded_1", &files_uploaded(1)),
        fixture("05_files_uploaded_10", &files_uploaded(10)),
        fixture("05_files_uploaded_100", &files_uploaded(100)),
        fixture(
            "06_files_removed_10",
            &json!({"eventType": 6, "files": (0..10).map(|i| object_id(i + 1000)).collect::<Vec<_>>()}),
        ),
        fixture(
            "07_bucket_uploaded",
            &json!({"eventType": 7, "username": USER, "bucket": bucket()}),
        ),
        fixture(
            "08_bucket_removed",
            &json!({"eventType": 8, "bucket": bucket()}),
        ),
        fixture(
            "09_meta_request",
            &json!({"eventType": 9, "username": USER, "property": "theme", "val": {"dark": true, "fontSize": 14}}),
        ),
        fixture(
            "10_echo_20B",
            &json!({"eventType": 10, "message": message(20)}),
        ),
        fixture(
            "10_echo_4KiB",
            &json!({"eventType": 10, "message": message(4096), "broadcast": true}),
        ),
    ]
}

/// The straightforward decoder: `serde_json` into a `Value` tree, then the same checks and
/// routing fields as `broker::event::decode`.
pub fn decode_serde_json(payload: &[u8]) -> Result<EventInfo, ErrorReason> {
    let value: Value = serde_json::from_slice(payload).map_err(|_| ErrorReason::NotJson)?;
    let Value::Object(map) = value else {
        return Err(ErrorReason::NotObject);
    };
    let event_type = match map.get("eventType") {
        Some(Value::Number(n)) => number(n),
        _ => return Err(ErrorReason::NoEventType),
    };
    let username = string(&map, "username")?;
    let to = string(&map, "to")?;
    let broadcast = match map.get("broadcast") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ErrorReason::WrongFieldType),
    };
    let ok = match event_type {
        EventType::ECHO => matches!(map.get("message"), Some(Value::String(_))),
        EventType::Int(5 | 6) => !matches!(map.get("files"), Some(v) if !v.is_array()),
        EventType::Int(7 | 8) => !matches!(map.get("bucket"), Some(v) if !v.is_object()),
        _ => true,
    };
    if !ok {
        return Err(ErrorReason::WrongFieldType);
    }
    Ok(EventInfo {
        event_type,
        username,
        to,
        broadcast,
    })
}

fn number(n: &serde_json::Number) -> EventType {
    if let Some(i) = n.as_i64() {
        return EventType::Int(i);
    }
    let f = n.as_f64().unwrap_or(f64::NAN);
    if n.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15 {
        EventType::Int(f as i64)
    } else {
        EventType::Other(f)
    }
}

fn string(map: &Map<String, Value>, field: &str) -> Result<Option<Box<str>>, ErrorReason> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str().into())),
        Some(_) => Err(ErrorReason::WrongFieldType),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker::event::decode;

    #[test]
    fn both_decoders_route_every_fixture_alike() {
        for f in fixtures() {
            let simd = decode(&f.payload).unwrap_or_else(|e| panic!("{}: {e:?}", f.name));
            let serde = decode_serde_json(&f.payload).expect(f.name);
            assert_eq!(simd, serde, "{}", f.name);
        }
    }

    #[test]
    fn both_decoders_refuse_bad_input_alike() {
        let bad: [&[u8]; 8] = [
            b"hello",
            b"[1,2]",
            br#"{"message":"x"}"#,
            br#"{"eventType":"10"}"#,
            br#"{"eventType":10}"#,
            br#"{"eventType":1,"username":7}"#,
            br#"{"eventType":5,"files":"a"}"#,
            br#"{"eventType":7,"bucket":[]}"#,
        ];
        for payload in bad {
            let simd = decode(payload).map_err(|e| e.reason);
            assert_eq!(simd, decode_serde_json(payload), "{payload:?}");
            assert!(simd.is_err());
        }
    }

    #[test]
    fn fixture_sizes_are_the_realistic_ones() {
        let size = |name: &str| {
            fixtures()
                .into_iter()
                .find(|f| f.name == name)
                .map(|f| f.payload.len())
                .expect(name)
        };
        assert!(
            (30..=50).contains(&size("01_login")),
            "{}",
            size("01_login")
        );
        let one = size("05_files_uploaded_1");
        assert!((350..=550).contains(&one), "{one}");
        assert!(size("05_files_uploaded_100") > 90 * one);
        assert!((20..=60).contains(&size("10_echo_20B")));
        assert!((4096..=4160).contains(&size("10_echo_4KiB")));
    }
}
