//! The event decoder on any bytes: never panics; whatever it accepts is a JSON object with a
//! numeric `eventType` to `serde_json` too, and every refusal encodes as valid JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match broker::event::decode(data) {
        Ok(info) => {
            let v: serde_json::Value =
                serde_json::from_slice(data).expect("simd-json accepted what serde_json refuses");
            assert!(
                v.get("eventType").is_some_and(|t| t.is_number()),
                "accepted without a numeric eventType"
            );
            if let Some(user) = &info.username {
                assert_eq!(v["username"].as_str(), Some(&**user));
            }
        }
        Err(e) => {
            let frame = e.to_frame();
            let v: serde_json::Value =
                serde_json::from_str(frame.as_str()).expect("error event is JSON");
            assert!(v["error"].is_string());
        }
    }
});
