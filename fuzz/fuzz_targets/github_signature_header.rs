//! Fuzzes the x-hub-signature-256 parser and the GitHub verifier with arbitrary header values: neither may
//! panic, and nothing but the real signature may verify.
#![no_main]

use connectors::inbound::Scheme;

connectors_fuzz::hmac_header_target!(
    Scheme::GitHub,
    connectors::github::parse_signature_header,
    "x-hub-signature-256",
);
