//! Fuzzes the x-slack-signature parser and the Slack verifier with arbitrary header values: neither may
//! panic, and nothing but the real signature may verify.
#![no_main]

use connectors::inbound::Scheme;

connectors_fuzz::hmac_header_target!(
    Scheme::Slack,
    connectors::slack::parse_signature_header,
    "x-slack-signature",
    "x-slack-request-timestamp" => "1767225600",
);
