//! Resource ids are opaque strings: the spec's prefix and the 32 hex digits of a UUIDv7, so they
//! carry 122 bits of uniqueness (74 random) and sort by creation time. The UUID comes from outside
//! the domain, which has no clock and no randomness.

use uuid::Uuid;

pub const CONNECTION: &str = "conn";
pub const PROVIDER: &str = "prov";
pub const SUBSCRIPTION: &str = "sub";
pub const DELIVERY: &str = "del";
pub const RUN: &str = "run";
pub const CREDENTIAL: &str = "cred";

/// `prefix-` followed by the UUID's 32 lowercase hex digits.
pub fn new_id(prefix: &str, uuid: Uuid) -> String {
    format!("{prefix}-{}", uuid.simple())
}

/// Providers are addressed by key within their tenant: `prov-{key}`.
pub fn provider_id(key: &str) -> String {
    format!("{PROVIDER}-{key}")
}

/// Whether `id` has the given prefix and a non-empty, well-formed rest.
pub fn has_prefix(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix).and_then(|rest| rest.strip_prefix('-')).is_some_and(is_slug)
}

/// Lowercase letters, digits and inner hyphens: the shape of keys and id suffixes.
pub fn is_slug(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A tenant id: letters, digits, `-`, `_`, `.`; never `/`, which separates it in stream ids.
pub fn is_tenant_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Streams are per tenant, so the same resource id in two tenants never shares a stream.
pub fn stream_id(tenant_id: &str, resource_id: &str) -> String {
    format!("{tenant_id}/{resource_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_the_prefix_and_sort_by_time() {
        let a = new_id(RUN, Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001));
        let b = new_id(RUN, Uuid::from_u128(0x0191_0000_0000_7000_8000_0000_0000_0000));
        assert!(has_prefix(&a, RUN));
        assert!(!has_prefix(&a, CONNECTION));
        assert!(a < b);
        assert_eq!(a.len(), "run-".len() + 32);
    }

    #[test]
    fn slugs_and_tenants() {
        assert!(is_slug("twilio-sms"));
        assert!(!is_slug("Twilio"));
        assert!(!is_slug("-x"));
        assert!(is_tenant_id("connectsoft"));
        assert!(!is_tenant_id("a/b"));
        assert_eq!(stream_id("t", "conn-1"), "t/conn-1");
    }
}
