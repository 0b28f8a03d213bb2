//! Cleaning what a vendor answered of the secrets its call used, before anything keeps it.
//!
//! A provider may echo the credential it was sent in an error text or an output (a debug
//! field, a "token X is invalid" message); kept as is, the value would live on in events, read
//! models, `GET /runs`, the audit API and the log. A [`Redactor`] knows every spelling of the
//! call's secrets a vendor could echo and replaces each with [`MASK`]:
//! - raw, JSON-escaped, and percent-encoded (as in a URL or a form);
//! - base64, standard and URL-safe, padded or not, at any position in a longer encoded text,
//!   which covers HTTP Basic auth (`base64(user:secret)`, whatever the user).

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};

/// What a secret's spelling is replaced with.
pub const MASK: &str = "[redacted]";

/// The shortest base64 run taken as a secret's: shorter ones would match ordinary words.
const MIN_ENCODED_CHARS: usize = 8;

/// The shortest part of a composite secret masked on its own, for the same reason.
const MIN_PART_BYTES: usize = 8;

/// The spellings to remove, longest first (so that a longer spelling is not cut by a shorter
/// one it contains).
#[derive(Debug, Default, Clone)]
pub struct Redactor {
    needles: Vec<String>,
}

impl Redactor {
    /// A redactor of `secrets`.
    pub fn of<'a>(secrets: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut redactor = Self::default();
        for secret in secrets {
            redactor.add(secret);
        }
        redactor
    }

    /// Removes `secret` too, in every spelling, and the secret parts of a composite one: the
    /// password of `user:password` (Twilio's `SID:secret`, Basic credentials) and the key of a
    /// `whsec_KEY` signing secret, which vendors and subscribers may echo alone.
    pub fn add(&mut self, secret: &[u8]) {
        let parts = [
            secret.iter().position(|&b| b == b':').map(|colon| &secret[colon + 1..]),
            secret.strip_prefix(b"whsec_".as_slice()),
        ];
        for part in parts.into_iter().flatten().filter(|part| part.len() >= MIN_PART_BYTES) {
            self.add_spellings(part);
        }
        self.add_spellings(secret);
    }

    fn add_spellings(&mut self, secret: &[u8]) {
        if secret.is_empty() {
            return;
        }
        if let Ok(text) = std::str::from_utf8(secret) {
            self.needles.push(text.to_owned());
            let escaped = serde_json::to_string(text).unwrap_or_default();
            self.needles.push(escaped[1..escaped.len() - 1].to_owned());
        }
        self.needles.push(percent_encoded(secret, false));
        self.needles.push(percent_encoded(secret, true));
        self.needles.push(lowercase_escapes(&percent_encoded(secret, false)));
        for engine in [STANDARD, URL_SAFE] {
            for offset in 0..3 {
                if let Some(run) = base64_run(&engine, secret, offset) {
                    self.needles.push(run);
                }
            }
        }
        self.needles.retain(|needle| !needle.is_empty());
        self.needles.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        self.needles.dedup();
    }

    /// `text` without any spelling of the secrets.
    pub fn scrub<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let mut scrubbed = Cow::Borrowed(text);
        for needle in &self.needles {
            if scrubbed.contains(needle.as_str()) {
                scrubbed = Cow::Owned(scrubbed.replace(needle.as_str(), MASK));
            }
        }
        scrubbed
    }

    /// Scrubs every string (and key) of a JSON value in place.
    pub fn scrub_json(&self, value: &mut serde_json::Value) {
        use serde_json::Value;
        match value {
            Value::String(text) => {
                if let Cow::Owned(clean) = self.scrub(text) {
                    *text = clean;
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|item| self.scrub_json(item)),
            Value::Object(map) => {
                let fields = std::mem::take(map);
                for (key, mut field) in fields {
                    self.scrub_json(&mut field);
                    map.insert(self.scrub(&key).into_owned(), field);
                }
            }
            _ => {}
        }
    }
}

/// The characters of `engine`'s base64 of a text that hold only `secret`'s bytes when the
/// secret starts `offset` bytes (mod 3) into that text: the groups of four that mix in bytes
/// before or after it are left out. `None` when too little is left to be told from other text.
fn base64_run(engine: &base64::engine::GeneralPurpose, secret: &[u8], offset: usize) -> Option<String> {
    let mut aligned = vec![0u8; offset];
    aligned.extend_from_slice(secret);
    let whole_groups = aligned.len() / 3;
    let first_clean = if offset == 0 { 0 } else { 1 };
    if whole_groups <= first_clean {
        return None;
    }
    let encoded = engine.encode(&aligned[..whole_groups * 3]);
    let run = &encoded[first_clean * 4..];
    (run.len() >= MIN_ENCODED_CHARS).then(|| run.trim_end_matches('=').to_owned())
}

/// `encoded` with lowercase hex digits in its percent escapes (`%2f`), which decoders accept too.
fn lowercase_escapes(encoded: &str) -> String {
    let mut lowered = String::with_capacity(encoded.len());
    let mut rest = encoded;
    while let Some(percent) = rest.find('%') {
        lowered.push_str(&rest[..percent]);
        let escape = rest.get(percent..percent + 3).unwrap_or(&rest[percent..]);
        lowered.push_str(&escape.to_ascii_lowercase());
        rest = &rest[percent + escape.len()..];
    }
    lowered.push_str(rest);
    lowered
}

/// `bytes` percent-encoded (every byte but `A-Za-z0-9-._~`); in a form, a space is `+`.
fn percent_encoded(bytes: &[u8], form: bool) -> String {
    let mut encoded = String::with_capacity(bytes.len());
    for &byte in bytes {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => encoded.push(byte as char),
            b' ' if form => encoded.push('+'),
            _ => encoded.push_str(&format!("%{byte:02X}")),
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};

    const SECRET: &str = "ghp_s3cr3t/value+with=odd chars";

    fn redactor() -> Redactor {
        Redactor::of([SECRET.as_bytes()])
    }

    #[test]
    fn every_spelling_of_the_secret_is_masked() {
        let spellings = [
            SECRET.to_owned(),
            serde_json::to_string(SECRET).unwrap(),
            percent_encoded(SECRET.as_bytes(), false),
            percent_encoded(SECRET.as_bytes(), true),
            STANDARD.encode(SECRET),
            STANDARD_NO_PAD.encode(SECRET),
            URL_SAFE_NO_PAD.encode(SECRET),
            STANDARD.encode(format!("x-access-token:{SECRET}")),
            STANDARD.encode(format!("AC0123:{SECRET}")),
            STANDARD.encode(format!("ab:{SECRET}:tail")),
            format!("Basic {}", STANDARD.encode(format!("user:{SECRET}"))),
        ];
        for spelling in spellings {
            let text = format!("401 Bad credentials: token {spelling} is not valid");
            let scrubbed = redactor().scrub(&text).into_owned();
            assert!(scrubbed.contains(MASK), "{spelling} was not masked: {scrubbed}");
            assert!(!scrubbed.contains(SECRET) && !scrubbed.contains(&STANDARD_NO_PAD.encode(SECRET)), "{scrubbed}");
            assert!(scrubbed.starts_with("401 Bad credentials: token ") && scrubbed.ends_with(" is not valid"));
        }
    }

    #[test]
    fn the_secret_parts_of_composite_secrets_are_masked_alone_too() {
        let redactor =
            Redactor::of([b"SKaaaaaaaa:twilio-key-secret".as_slice(), b"whsec_MfKQ9r8GKYqrTwjUPD8IL".as_slice()]);
        assert_eq!(redactor.scrub("secret twilio-key-secret refused"), format!("secret {MASK} refused"));
        assert_eq!(redactor.scrub("key MfKQ9r8GKYqrTwjUPD8IL"), format!("key {MASK}"));
        assert_eq!(redactor.scrub("pct ghp%2fx"), "pct ghp%2fx", "unrelated text stays");
        let slashed = Redactor::of([b"a/secret/value".as_slice()]);
        assert_eq!(slashed.scrub("as a%2fsecret%2fvalue"), format!("as {MASK}"));
    }

    #[test]
    fn text_without_the_secret_is_left_as_it_is() {
        let text = "404 Not Found: repository acme/booking does not exist";
        assert!(matches!(redactor().scrub(text), Cow::Borrowed(_)));
        assert_eq!(Redactor::default().scrub(SECRET), SECRET);
    }

    #[test]
    fn json_outputs_are_scrubbed_in_values_and_keys() {
        let mut output = serde_json::json!({
            "echo": {"authorization": format!("Bearer {SECRET}"), "list": [SECRET, 3]},
            SECRET: true,
        });
        redactor().scrub_json(&mut output);
        let text = output.to_string();
        assert!(!text.contains(SECRET), "{text}");
        assert_eq!(output["echo"]["list"][1], 3);
        assert_eq!(output["echo"]["authorization"], format!("Bearer {MASK}"));
    }
}
