//! The per-stream hash chain.
//!
//! Every event stores the hash of its predecessor in the stream (`prev_hash`, [`GENESIS`] for
//! the first) and its own hash over `prev_hash` and its canonical content. Changing, removing or
//! reordering a stored event therefore breaks the chain from that event on, which a verifier
//! finds by recomputing [`event_hash`] and checking each link with [`verify_link`].
//!
//! The global position is not hashed: it is the store's place for the event, not its content,
//! and a stream's chain must verify the same whichever adapter (or migration) numbered it.

use chrono::{DateTime, SecondsFormat, Utc};
use domain::EventEnvelope;
use ring::digest;
use serde_json::Value;

/// The `prev_hash` of the first event of every stream.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Names the encoding below, so that a future change of what is hashed can be told apart from
/// tampering.
const SCHEME: &[u8] = b"integration-engine/event-hash/v1";

/// Hex SHA-256 over `prev_hash` and the canonical content of `event`.
///
/// Every field is length-prefixed, so no two different events encode to the same bytes (moving
/// characters from one field to the next changes the hash). `event.prev_hash`,
/// `event.global_position` and `event.hash` are not read.
pub fn event_hash(prev_hash: &str, event: &EventEnvelope) -> String {
    let mut hash = CanonicalHasher::new();
    hash.field(SCHEME);
    hash.field(prev_hash.as_bytes());
    hash.field(event.event_id.as_bytes());
    hash.field(event.event_type.as_bytes());
    hash.field(&event.schema_version.to_be_bytes());
    hash.field(event.stream_id.as_bytes());
    hash.field(&event.stream_version.to_be_bytes());
    hash.field(event.tenant_id.as_bytes());
    hash.field(canonical_time(&event.occurred_at).as_bytes());
    hash.field(event.trace_id.as_bytes());
    hash.field(event.correlation_id.as_bytes());
    hash.optional_field(event.causation_id.as_deref().map(str::as_bytes));
    hash.field(event.actor.subject.as_bytes());
    hash.optional_field(event.actor.client_id.as_deref().map(str::as_bytes));
    let mut data = Vec::new();
    write_canonical_json(&event.data, &mut data);
    hash.field(&data);
    hash.finish()
}

/// Whether `event` follows `prev_hash` (the hash of the previous event in its stream, or
/// [`GENESIS`]) and its stored hash matches its content.
pub fn verify_link(prev_hash: &str, event: &EventEnvelope) -> bool {
    event.prev_hash == prev_hash && event.hash == event_hash(prev_hash, event)
}

/// The text form of a timestamp that is hashed and stored: RFC 3339 in UTC with nanoseconds
/// always written, so it parses back to the same instant and every writer produces the same text.
pub fn canonical_time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

struct CanonicalHasher(digest::Context);

impl CanonicalHasher {
    fn new() -> Self {
        Self(digest::Context::new(&digest::SHA256))
    }

    fn field(&mut self, bytes: &[u8]) {
        self.0.update(&(bytes.len() as u64).to_be_bytes());
        self.0.update(bytes);
    }

    /// A presence tag first, so `None` and `Some("")` differ.
    fn optional_field(&mut self, bytes: Option<&[u8]>) {
        match bytes {
            None => self.0.update(&[0]),
            Some(bytes) => {
                self.0.update(&[1]);
                self.field(bytes);
            }
        }
    }

    fn finish(self) -> String {
        hex::encode(self.0.finish())
    }
}

/// Compact JSON with object keys sorted at every level.
///
/// `serde_json` keeps maps sorted only while no crate in the build enables its `preserve_order`
/// feature; sorting here keeps the hash independent of that and of the order a producer wrote
/// the keys in.
fn write_canonical_json(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                // A `Value::String` prints as an escaped JSON string literal.
                out.extend_from_slice(Value::String(key.clone()).to_string().as_bytes());
                out.push(b':');
                write_canonical_json(value, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical_json(item, out);
            }
            out.push(b']');
        }
        scalar => out.extend_from_slice(scalar.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use domain::Actor;
    use serde_json::json;
    use uuid::Uuid;

    use super::*;

    fn sample() -> EventEnvelope {
        EventEnvelope {
            event_id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001),
            event_type: "ConnectionEstablished".into(),
            schema_version: 1,
            stream_id: "connection-conn-1".into(),
            stream_version: 1,
            global_position: 7,
            tenant_id: "tenant-a".into(),
            occurred_at: Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 5).unwrap(),
            trace_id: "trace".into(),
            correlation_id: "corr".into(),
            causation_id: None,
            actor: Actor { subject: "alice".into(), client_id: None },
            prev_hash: GENESIS.into(),
            hash: String::new(),
            data: json!({"provider": "github", "settings": {"b": 1, "a": [1, 2]}}).into(),
        }
    }

    #[test]
    fn genesis_is_a_hash_of_zeros() {
        assert_eq!(GENESIS.len(), 64);
        assert!(GENESIS.bytes().all(|b| b == b'0'));
    }

    #[test]
    fn the_hash_is_hex_sha256_and_deterministic() {
        let h = event_hash(GENESIS, &sample());
        assert_eq!(h.len(), 64);
        assert!(h.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(h, event_hash(GENESIS, &sample()));
    }

    /// Alters one field of an event.
    type Change = fn(&mut EventEnvelope);

    #[test]
    fn changing_any_hashed_field_changes_the_hash() {
        let base = event_hash(GENESIS, &sample());
        let changes: [(&str, Change); 13] = [
            ("event_id", |e| e.event_id = Uuid::from_u128(2)),
            ("event_type", |e| e.event_type.push('x')),
            ("schema_version", |e| e.schema_version = 2),
            ("stream_id", |e| e.stream_id.push('x')),
            ("stream_version", |e| e.stream_version = 2),
            ("tenant_id", |e| e.tenant_id.push('x')),
            ("occurred_at", |e| e.occurred_at += chrono::Duration::nanoseconds(1)),
            ("trace_id", |e| e.trace_id.push('x')),
            ("correlation_id", |e| e.correlation_id.push('x')),
            ("causation_id", |e| e.causation_id = Some(String::new())),
            ("actor.subject", |e| e.actor.subject.push('x')),
            ("actor.client_id", |e| e.actor.client_id = Some("svc".into())),
            ("data", |e| {
                let mut data = e.data.clone().into_value();
                data["settings"]["b"] = json!(2);
                e.data = data.into();
            }),
        ];
        for (field, change) in changes {
            let mut e = sample();
            change(&mut e);
            assert_ne!(event_hash(GENESIS, &e), base, "{field} is not hashed");
        }
        assert_ne!(event_hash(&"1".repeat(64), &sample()), base, "prev_hash is not hashed");
    }

    #[test]
    fn the_store_assigned_fields_are_not_hashed() {
        let base = event_hash(GENESIS, &sample());
        let mut e = sample();
        e.global_position = 99;
        e.prev_hash = "ignored".into();
        e.hash = "ignored".into();
        assert_eq!(event_hash(GENESIS, &e), base);
    }

    #[test]
    fn moving_bytes_between_fields_changes_the_hash() {
        let mut a = sample();
        a.trace_id = "ab".into();
        a.correlation_id = "c".into();
        let mut b = sample();
        b.trace_id = "a".into();
        b.correlation_id = "bc".into();
        assert_ne!(event_hash(GENESIS, &a), event_hash(GENESIS, &b));
    }

    #[test]
    fn key_order_in_the_data_does_not_matter() {
        let mut a = sample();
        a.data = serde_json::from_str(r#"{"x": 1, "y": {"q": [true, null], "p": "s"}}"#).unwrap();
        let mut b = sample();
        b.data = serde_json::from_str(r#"{"y": {"p": "s", "q": [true, null]}, "x": 1}"#).unwrap();
        assert_eq!(event_hash(GENESIS, &a), event_hash(GENESIS, &b));
    }

    #[test]
    fn canonical_json_is_compact_sorted_and_escaped() {
        let mut out = Vec::new();
        write_canonical_json(&json!({"b": [1, 2.5, "x\"y"], "a": {"d": null, "c": false}}), &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), r#"{"a":{"c":false,"d":null},"b":[1,2.5,"x\"y"]}"#);
    }

    #[test]
    fn verify_link_checks_the_predecessor_and_the_content() {
        let mut e = sample();
        e.hash = event_hash(GENESIS, &e);
        assert!(verify_link(GENESIS, &e));
        assert!(!verify_link(&"1".repeat(64), &e));
        e.data = json!({"tampered": true}).into();
        assert!(!verify_link(GENESIS, &e));
    }

    #[test]
    fn canonical_time_round_trips_to_the_nanosecond() {
        let t = Utc.timestamp_opt(1_700_000_000, 123_456_789).unwrap();
        let text = canonical_time(&t);
        assert_eq!(text, "2023-11-14T22:13:20.123456789Z");
        assert_eq!(DateTime::parse_from_rfc3339(&text).unwrap().with_timezone(&Utc), t);
    }
}
