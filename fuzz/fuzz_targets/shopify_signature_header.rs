//! Fuzzes the x-shopify-hmac-sha256 parser and the Shopify verifier with arbitrary header values: neither may
//! panic, and nothing but the real signature may verify.
#![no_main]

use connectors::inbound::Scheme;

connectors_fuzz::hmac_header_target!(
    Scheme::Shopify,
    connectors::shopify::parse_signature_header,
    "x-shopify-hmac-sha256",
);
