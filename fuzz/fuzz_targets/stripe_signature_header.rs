//! Fuzzes the stripe-signature parser and the Stripe verifier with arbitrary header values: neither may
//! panic, and nothing but the real signature may verify.
#![no_main]

use connectors::inbound::Scheme;

connectors_fuzz::hmac_header_target!(
    Scheme::Stripe,
    connectors::stripe::parse_signature_header,
    "stripe-signature",
);
