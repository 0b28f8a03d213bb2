//! Fuzzes the x-twilio-signature parser and the Twilio verifier with arbitrary header values: neither may
//! panic, and nothing but the real signature may verify.
#![no_main]

use connectors::inbound::Scheme;

connectors_fuzz::hmac_header_target!(
    Scheme::Twilio,
    connectors::twilio::parse_signature_header,
    "x-twilio-signature",
);
