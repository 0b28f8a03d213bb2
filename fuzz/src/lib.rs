//! What the fuzz targets share: the shape of a target that fuzzes one HMAC signature header.

/// A fuzz target for the signature header `$header` of `$scheme`: `$parse` reads it from arbitrary
/// text and the verifier checks a request carrying it (with the other headers the scheme needs,
/// `$name => $value`). Neither may panic, and nothing may verify: an HMAC cannot be forged by the
/// fuzzer, so a pass would be a verifier bug.
#[macro_export]
macro_rules! hmac_header_target {
    ($scheme:expr, $parse:path, $header:literal $(, $name:literal => $value:literal)* $(,)?) => {
        ::libfuzzer_sys::fuzz_target!(|data: &[u8]| {
            use ::connectors::inbound::{self, Headers, Keys, SignedRequest};
            let Ok(text) = std::str::from_utf8(data) else { return };
            let _ = $parse(text);
            let headers = Headers::from_pairs([($header, text) $(, ($name, $value))*]);
            let request = SignedRequest {
                headers: &headers,
                body: b"{}",
                url: "https://hooks.example/x",
                now: 1_767_225_600,
                tolerance_seconds: 300,
            };
            let secrets: [&[u8]; 2] = [b"fuzz-current-secret", b"fuzz-previous-secret"];
            assert!(inbound::verify($scheme, &request, Keys::Secrets(&secrets)).is_err());
        });
    };
}
