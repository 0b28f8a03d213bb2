//! Fuzzes the form-body parser Twilio's signature (sorted parameters) and Slack's commands use,
//! and reading a native delivery from arbitrary bytes: no panic.
#![no_main]

use connectors::inbound::{Headers, Scheme, native_delivery};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let pairs = connectors::form::parse(data);
    let _ = connectors::twilio::signed_string("https://hooks.example/x", &pairs);
    let headers = Headers::from_pairs([("x-github-event", "push"), ("x-github-delivery", "d")]);
    for scheme in Scheme::ALL {
        let _ = native_delivery(scheme, &headers, data);
    }
});
