//! Fuzzes the compact JWS parser (the JWS scheme's "header" is the whole body) and its
//! verification against a fixed key set: no panic, and nothing the fuzzer makes verifies.
#![no_main]

use connectors::inbound::{self, Headers, Keys, Scheme, SignedRequest};
use connectors::jws::{JwkSet, parse_compact};
use libfuzzer_sys::fuzz_target;

const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

fuzz_target!(|data: &[u8]| {
    let _ = parse_compact(data);
    let keys = JwkSet::parse(JWKS.as_bytes()).expect("the fixed key set parses");
    let headers = Headers::default();
    let request = SignedRequest { headers: &headers, body: data, url: "", now: 1_300_819_000, tolerance_seconds: 300 };
    let _ = inbound::verify(Scheme::Jws, &request, Keys::Jwks(&keys));
    let _ = JwkSet::parse(data);
});
