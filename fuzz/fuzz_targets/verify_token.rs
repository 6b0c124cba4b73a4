//! Token verification on arbitrary input: never panics, never accepts garbage.
#![no_main]

use std::sync::OnceLock;

use chat_auth::Verifier;
use libfuzzer_sys::fuzz_target;

fn verifier() -> &'static Verifier {
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    VERIFIER.get_or_init(|| Verifier::hs256(b"fuzzing secret"))
}

fuzz_target!(|data: &[u8]| {
    if let Ok(token) = std::str::from_utf8(data) {
        // A random string forging a valid HS256 signature would be a finding.
        assert!(verifier().verify(Some(token)).is_err());
    }
});
