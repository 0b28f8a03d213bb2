//! Fuzzes the x-shopify-hmac-sha256 parser and the Shopify verifier with arbitrary header values: neither may
//! panic, and nothing but the real signature may verify.
#![no_main]

use connectors::inbound::{self, Headers, Keys, Scheme, SignedRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = connectors::shopify::parse_signature_header(text);
    let headers = Headers::from_pairs([("x-shopify-hmac-sha256", text)]);
    let request = SignedRequest {
        headers: &headers,
        body: b"{}",
        url: "https://hooks.example/x",
        now: 1_767_225_600,
        tolerance_seconds: 300,
    };
    let secrets: [&[u8]; 2] = [b"fuzz-current-secret", b"fuzz-previous-secret"];
    // An HMAC cannot be forged by the fuzzer: a pass would be a verifier bug.
    assert!(inbound::verify(Scheme::Shopify, &request, Keys::Secrets(&secrets)).is_err());
});
