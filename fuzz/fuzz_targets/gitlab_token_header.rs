//! Fuzzes GitLab's token check with arbitrary `X-Gitlab-Token` values: no panic, and only the
//! secret itself verifies.
#![no_main]

use connectors::inbound::{self, Headers, Keys, Scheme, SignedRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let headers = Headers::from_pairs([("x-gitlab-token", text)]);
    let request = SignedRequest { headers: &headers, body: b"{}", url: "", now: 0, tolerance_seconds: 300 };
    let secrets: [&[u8]; 1] = [b"fuzz-gitlab-token"];
    let verified = inbound::verify(Scheme::GitLab, &request, Keys::Secrets(&secrets));
    assert_eq!(verified.is_ok(), text.trim() == "fuzz-gitlab-token");
});
