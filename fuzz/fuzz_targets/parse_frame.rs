//! Frame decoding and action parsing: never panics, and every refusal encodes to an error frame.
#![no_main]

use chat_core::protocol::{Inbound, parse_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(rejection) = parse_frame(Inbound::Text(text)) {
        let frame: serde_json::Value =
            serde_json::from_str(&rejection.to_payload().to_text()).expect("error frames are JSON");
        assert_eq!(frame["type"], "error");
    }
});
