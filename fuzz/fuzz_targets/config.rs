//! The config reader on any text: never panics; errors are one line.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = broker::config::Config::from_json_str(text, "fuzz") {
        let line = e.to_string();
        assert!(
            !line.contains('\n'),
            "a config error must be one line: {line:?}"
        );
    }
});
