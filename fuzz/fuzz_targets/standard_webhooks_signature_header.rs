//! Fuzzes the webhook-signature parser and the StandardWebhooks verifier with arbitrary header values: neither may
//! panic, and nothing but the real signature may verify.
#![no_main]

use connectors::inbound::Scheme;

connectors_fuzz::hmac_header_target!(
    Scheme::StandardWebhooks,
    connectors::standard_webhooks::parse_signature_header,
    "webhook-signature",
    "webhook-id" => "msg_1",
    "webhook-timestamp" => "1767225600",
);
