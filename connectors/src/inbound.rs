//! The inbound gateway's vendor side: which scheme verifies a connection's deliveries, running
//! it over the raw request, and reading the vendor-native delivery (id, event, payload) out of
//! the verified bytes.

use ring::digest;
use serde::Deserialize;
use serde_json::Value;

use crate::jws::JwkSet;
pub use crate::signature::{Headers, SignedRequest};
use crate::signature::{KeyIndex, SignatureError};
use crate::{form, github, gitlab, jws, shopify, slack, standard_webhooks, stripe, twilio};

/// The shape of a delivery's body (and which shape a normalization rule applies to).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// The spec's condensed envelope (`providerDeliveryId`, `eventName`, `payload`).
    Envelope,
    /// The vendor's own body, exactly as sent.
    Native,
}

/// One way a vendor authenticates its deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    GitHub,
    Stripe,
    StandardWebhooks,
    Slack,
    Shopify,
    Twilio,
    GitLab,
    Jws,
}

impl Scheme {
    pub const ALL: [Scheme; 8] = [
        Self::GitHub,
        Self::Stripe,
        Self::StandardWebhooks,
        Self::Slack,
        Self::Shopify,
        Self::Twilio,
        Self::GitLab,
        Self::Jws,
    ];

    /// The name used in `X-CS-Provider`, the connection's `webhookScheme`, the rule table and
    /// the `provider` of `DeliveryAccepted`.
    pub fn name(self) -> &'static str {
        match self {
            Self::GitHub => "github",
            Self::Stripe => "stripe",
            Self::StandardWebhooks => "standard-webhooks",
            Self::Slack => "slack",
            Self::Shopify => "shopify",
            Self::Twilio => "twilio",
            Self::GitLab => "gitlab",
            Self::Jws => "jws",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The scheme a provider key implies when the connection names none: the key itself, or
    /// the part before its first `-` (`twilio-sms` is Twilio). `svix` is Standard Webhooks.
    pub fn for_provider_key(key: &str) -> Option<Self> {
        let family = key.split('-').next().unwrap_or(key);
        match family {
            "svix" => Some(Self::StandardWebhooks),
            "jws" => None,
            _ => Self::from_name(key).or_else(|| Self::from_name(family)),
        }
    }

    /// The header that carries the proof, for error messages and `WWW-Authenticate`.
    pub fn signature_header(self) -> &'static str {
        match self {
            Self::GitHub => "X-Hub-Signature-256",
            Self::Stripe => "Stripe-Signature",
            Self::StandardWebhooks => "webhook-signature",
            Self::Slack => "X-Slack-Signature",
            Self::Shopify => "X-Shopify-Hmac-Sha256",
            Self::Twilio => "X-Twilio-Signature",
            Self::GitLab => "X-Gitlab-Token",
            Self::Jws => "the JWS body",
        }
    }

    /// Whether the scheme verifies with the connection's secret (all but JWS, which uses the
    /// provider's public keys).
    pub fn uses_secret(self) -> bool {
        self != Self::Jws
    }
}

/// What verifies a delivery: the connection's secrets (current first, then the previous one
/// during a rotation) or the provider's public keys.
#[derive(Debug, Clone, Copy)]
pub enum Keys<'a> {
    Secrets(&'a [&'a [u8]]),
    Jwks(&'a JwkSet),
}

/// A verified request: which key verified it and the signed bytes (the body itself, or a JWS's
/// payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub key_index: KeyIndex,
    pub signed_body: Vec<u8>,
}

/// Runs `scheme`'s verification over the raw request.
pub fn verify(scheme: Scheme, request: &SignedRequest<'_>, keys: Keys<'_>) -> Result<Verified, SignatureError> {
    let by_secret = |verify: fn(&SignedRequest<'_>, &[&[u8]]) -> Result<KeyIndex, SignatureError>| match keys {
        Keys::Secrets(secrets) => {
            verify(request, secrets).map(|key_index| Verified { key_index, signed_body: request.body.to_vec() })
        }
        Keys::Jwks(_) => Err(SignatureError::UnknownKey("this scheme verifies with a secret, not a JWKS")),
    };
    match scheme {
        Scheme::GitHub => by_secret(github::verify),
        Scheme::Stripe => by_secret(stripe::verify),
        Scheme::StandardWebhooks => by_secret(standard_webhooks::verify),
        Scheme::Slack => by_secret(slack::verify),
        Scheme::Shopify => by_secret(shopify::verify),
        Scheme::Twilio => by_secret(twilio::verify),
        Scheme::GitLab => by_secret(gitlab::verify),
        Scheme::Jws => match keys {
            Keys::Jwks(set) => jws::verify(request, set).map(|payload| Verified { key_index: 0, signed_body: payload }),
            Keys::Secrets(_) => Err(SignatureError::UnknownKey("JWS deliveries verify with the provider's JWKS")),
        },
    }
}

// The configuration keys of a connection that say how its deliveries are verified.
const SCHEME_KEY: &str = "webhookScheme";
const SECRET_REF_KEY: &str = domain::connection::WEBHOOK_SECRET_REF;
const JWKS_KEY: &str = domain::connection::WEBHOOK_JWKS;
const URL_KEY: &str = "webhookUrl";

/// How a connection's deliveries are verified, read from its configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboundSettings<'a> {
    /// `webhookScheme`, else the scheme its provider key implies; `None` when neither names one.
    pub scheme: Option<Scheme>,
    /// `webhookSecretRef`: the vault reference of the shared secret.
    pub secret_ref: Option<&'a str>,
    /// `webhookJwks`: where the provider publishes its public keys (JWS deliveries).
    pub jwks: Option<&'a str>,
    /// `webhookUrl`: the URL configured at the vendor, exactly (Twilio signs it).
    pub webhook_url: Option<&'a str>,
}

impl<'a> InboundSettings<'a> {
    /// The settings of a connection with this `configuration` and provider key (its provider
    /// id without `prov-`).
    pub fn of(configuration: &'a serde_json::Map<String, Value>, provider_key: &str) -> Self {
        let text = |key: &str| configuration.get(key).and_then(Value::as_str);
        Self {
            scheme: connection_scheme(text(SCHEME_KEY), provider_key),
            secret_ref: text(SECRET_REF_KEY),
            jwks: text(JWKS_KEY),
            webhook_url: text(URL_KEY),
        }
    }
}

/// One request as the gateway received it: what the vendor's rules read of it.
#[derive(Debug, Clone, Copy)]
pub struct Arrival<'a> {
    pub scheme: Scheme,
    pub shape: Shape,
    pub headers: &'a Headers,
    /// Where the vendor says it sent the request (see [`CalledUrl::signed`]).
    pub url: CalledUrl<'a>,
    /// The raw body, exactly as received.
    pub body: &'a [u8],
    /// Unix seconds now, and how far a signed timestamp may be from it either way.
    pub now: i64,
    pub tolerance_seconds: u64,
}

/// What verifies a connection's deliveries, as the gateway fetched it: the connection's
/// secrets (the current one first, then the previous one during a rotation) or the provider's
/// public keys.
#[derive(Debug, Clone)]
pub enum VerificationKeys {
    Secrets(Vec<Vec<u8>>),
    Jwks(std::sync::Arc<JwkSet>),
}

/// What a verified request is.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// A delivery, with the index of the key that verified it (0 the current secret, 1 the
    /// previous one during a rotation).
    Delivery { key_index: KeyIndex, content: Content },
    /// A vendor's handshake (Slack's `url_verification`): answered with this, never stored.
    Handshake(Value),
}

/// What a delivery carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    /// The spec's envelope: the verified bytes, which the caller reads against its contract.
    Envelope(Vec<u8>),
    /// A vendor-native delivery, read by the vendor's rules.
    Native(NativeDelivery),
}

/// Why a request is not a delivery of its connection's vendor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The vendor never sends this media type (answered 415).
    #[error("{scheme} deliveries cannot be {media:?}")]
    MediaType { scheme: &'static str, media: String },
    /// The signature does not verify (401).
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// Verified, but not a delivery the vendor's rules can read (400).
    #[error(transparent)]
    Shape(#[from] ShapeError),
}

/// Refuses a media type `scheme`'s vendor never sends for `shape` ([`receive`] checks it first;
/// a gateway calls it before reading the body, so such a request is refused unread).
pub fn check_media_type(scheme: Scheme, shape: Shape, headers: &Headers) -> Result<(), Refused> {
    let content_type = headers.get("content-type").unwrap_or_default();
    if accepts_media_type(scheme, shape, content_type) {
        return Ok(());
    }
    Err(Refused::MediaType { scheme: scheme.name(), media: media_type(content_type) })
}

/// The vendor's rules over one request, in order: the media types the vendor sends, its
/// signature over the raw bytes (and the URL, for Twilio), then the delivery read from the
/// verified bytes only, or the answer to its handshake.
pub fn receive(arrival: &Arrival<'_>, keys: &VerificationKeys) -> Result<Received, Refused> {
    let Arrival { scheme, shape, headers, .. } = *arrival;
    check_media_type(scheme, shape, headers)?;
    // Only Twilio signs the URL it called.
    let url = if scheme == Scheme::Twilio { arrival.url.signed() } else { String::new() };
    let request = SignedRequest {
        headers,
        body: arrival.body,
        url: &url,
        now: arrival.now,
        tolerance_seconds: arrival.tolerance_seconds,
    };
    let verified = match keys {
        VerificationKeys::Secrets(secrets) => {
            let secrets: Vec<&[u8]> = secrets.iter().map(Vec::as_slice).collect();
            verify(scheme, &request, Keys::Secrets(&secrets))?
        }
        VerificationKeys::Jwks(set) => verify(scheme, &request, Keys::Jwks(set))?,
    };
    let content = match shape {
        Shape::Envelope => Content::Envelope(verified.signed_body),
        Shape::Native => {
            let native = native_delivery(scheme, headers, &verified.signed_body)?;
            if let Some(answer) = handshake_answer(scheme, &native) {
                return Ok(Received::Handshake(answer));
            }
            Content::Native(native)
        }
    };
    Ok(Received::Delivery { key_index: verified.key_index, content })
}

/// A delivery read from its verified bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct NativeDelivery {
    /// The vendor's id of the delivery: deliveries are deduplicated on it, per connection.
    pub provider_delivery_id: String,
    pub event_name: String,
    pub payload: Value,
}

/// Why a verified vendor-native request is not a delivery we can read (answered 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ShapeError(pub String);

/// The scheme that verifies a connection's deliveries: the one its configuration names
/// (`webhookScheme`), else the one its provider key implies.
fn connection_scheme(configured: Option<&str>, provider_key: &str) -> Option<Scheme> {
    match configured {
        Some(name) => Scheme::from_name(name),
        None => Scheme::for_provider_key(provider_key),
    }
}

/// The media type of a `Content-Type` value: its parameters dropped, in lower case.
fn media_type(content_type: &str) -> String {
    content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase()
}

/// Whether `scheme`'s deliveries of `shape` may come as `content_type` (a `Content-Type` value,
/// parameters and case ignored): JSON for every envelope and most vendors, forms too for Slack
/// and Twilio, compact JWS text for JWS deliveries.
fn accepts_media_type(scheme: Scheme, shape: Shape, content_type: &str) -> bool {
    let media = media_type(content_type);
    let json = media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"));
    match (shape, scheme) {
        (Shape::Envelope, _) | (Shape::Native, Scheme::GitHub | Scheme::Stripe | Scheme::StandardWebhooks) => json,
        (Shape::Native, Scheme::Shopify | Scheme::GitLab) => json,
        (Shape::Native, Scheme::Slack | Scheme::Twilio) => json || media == "application/x-www-form-urlencoded",
        (Shape::Native, Scheme::Jws) => {
            json || matches!(media.as_str(), "application/jose" | "application/jwt" | "text/plain")
        }
    }
}

/// Where the vendor says a request was sent, for schemes that sign the URL (Twilio).
#[derive(Debug, Clone, Copy, Default)]
pub struct CalledUrl<'a> {
    /// The URL configured at the vendor (the connection's `webhookUrl`), exactly.
    pub configured: Option<&'a str>,
    /// `X-Forwarded-Proto`, `X-Forwarded-Host` or `Host`, as received.
    pub forwarded_proto: Option<&'a str>,
    pub host: Option<&'a str>,
    /// This request's path and query.
    pub path_and_query: &'a str,
}

impl CalledUrl<'_> {
    /// The URL the vendor signed: the configured one when set (Twilio appends `bodySHA256` to
    /// it for a JSON request and signs the result), else rebuilt from the forwarded protocol
    /// and host and this request's path and query.
    pub fn signed(&self) -> String {
        if let Some(url) = self.configured {
            let query = self.path_and_query.split_once('?').map(|(_, q)| q);
            let body_hash = query.and_then(|q| {
                q.split('&').find(|pair| pair.starts_with("bodySHA256=") && !url.contains("bodySHA256="))
            });
            return match body_hash {
                Some(pair) => format!("{url}{}{pair}", if url.contains('?') { '&' } else { '?' }),
                None => url.to_string(),
            };
        }
        let scheme = self.forwarded_proto.unwrap_or("http");
        let host = self.host.unwrap_or("localhost");
        let path = if self.path_and_query.is_empty() { "/" } else { self.path_and_query };
        format!("{scheme}://{host}{path}")
    }
}

/// The answer a vendor's handshake expects instead of a delivery (Slack's `url_verification`
/// when an Events URL is configured): answered, never stored.
fn handshake_answer(scheme: Scheme, native: &NativeDelivery) -> Option<Value> {
    if scheme != Scheme::Slack {
        return None;
    }
    slack::url_verification_challenge(&native.payload).map(|challenge| serde_json::json!({ "challenge": challenge }))
}

/// Reads a vendor-native delivery: where each vendor puts its delivery id and event name, and
/// the payload (JSON, or a form body as an object of strings). Only `signed_body` decides
/// the payload; headers only supply ids and event names the vendor sends nowhere else.
pub fn native_delivery(scheme: Scheme, headers: &Headers, signed_body: &[u8]) -> Result<NativeDelivery, ShapeError> {
    let header = |name: &str| {
        headers
            .get(name)
            .filter(|v| !v.is_empty())
            .map(String::from)
            .ok_or_else(|| ShapeError(format!("the {name} header is required")))
    };
    let is_form =
        !signed_body.trim_ascii_start().starts_with(b"{") && !signed_body.trim_ascii_start().starts_with(b"[");
    // Vendors deliver JSON objects; an array, string or number is as malformed as broken JSON
    // (the envelope's `payload` must be an object too).
    let json = || -> Result<Value, ShapeError> {
        match serde_json::from_slice(signed_body) {
            Ok(object @ Value::Object(_)) => Ok(object),
            Ok(_) => Err(ShapeError("the body is not a JSON object".into())),
            Err(e) => Err(ShapeError(format!("the body is not JSON: {e}"))),
        }
    };
    let text = |payload: &Value, path: &[&str]| -> Option<String> {
        let mut value = payload;
        for key in path {
            value = value.get(key)?;
        }
        value.as_str().filter(|s| !s.is_empty()).map(String::from)
    };
    let digest_id = || format!("sha256:{}", hex::encode(digest::digest(&digest::SHA256, signed_body)));
    let delivery = match scheme {
        Scheme::GitHub => NativeDelivery {
            provider_delivery_id: header(github::DELIVERY_HEADER)?,
            event_name: header(github::EVENT_HEADER)?,
            payload: json()?,
        },
        Scheme::Shopify => NativeDelivery {
            provider_delivery_id: header(shopify::WEBHOOK_ID_HEADER)?,
            event_name: header(shopify::TOPIC_HEADER)?,
            payload: json()?,
        },
        Scheme::GitLab => {
            let payload = json()?;
            NativeDelivery {
                provider_delivery_id: header(gitlab::EVENT_UUID_HEADER)?,
                event_name: text(&payload, &["object_kind"])
                    .ok_or_else(|| ShapeError("the body has no object_kind".into()))?,
                payload,
            }
        }
        Scheme::Stripe => {
            let payload = json()?;
            NativeDelivery {
                provider_delivery_id: text(&payload, &["id"])
                    .ok_or_else(|| ShapeError("the event has no id".into()))?,
                event_name: text(&payload, &["type"]).ok_or_else(|| ShapeError("the event has no type".into()))?,
                payload,
            }
        }
        Scheme::StandardWebhooks => {
            let payload = json()?;
            NativeDelivery {
                provider_delivery_id: header(standard_webhooks::ID_HEADER)?,
                event_name: text(&payload, &["type"]).ok_or_else(|| ShapeError("the payload has no type".into()))?,
                payload,
            }
        }
        Scheme::Slack if is_form => {
            let pairs = form::parse(signed_body);
            let payload = form::to_json(&pairs);
            let event_name = if payload.get("command").is_some() { "slash_command" } else { "interaction" };
            // A form request has no id of its own: the digest of the signed bytes (timestamp
            // included by the signature) names it.
            NativeDelivery { provider_delivery_id: digest_id(), event_name: event_name.into(), payload }
        }
        Scheme::Slack => {
            let payload = json()?;
            let outer = text(&payload, &["type"]).ok_or_else(|| ShapeError("the body has no type".into()))?;
            let event_name = match outer.as_str() {
                "event_callback" => text(&payload, &["event", "type"]).unwrap_or(outer),
                _ => outer,
            };
            NativeDelivery {
                provider_delivery_id: text(&payload, &["event_id"]).unwrap_or_else(digest_id),
                event_name,
                payload,
            }
        }
        Scheme::Twilio => {
            let payload = if is_form { form::to_json(&form::parse(signed_body)) } else { json()? };
            let event_name = if payload.get("MessageStatus").is_some() || payload.get("SmsStatus").is_some() {
                "message.status".to_string()
            } else if payload.get("CallStatus").is_some() {
                "call.status".to_string()
            } else {
                text(&payload, &["type"]).unwrap_or_else(|| "request".into())
            };
            // Twilio's idempotency token header is not signed; the digest of the signed
            // parameters is, and a retry repeats them exactly.
            NativeDelivery { provider_delivery_id: digest_id(), event_name, payload }
        }
        Scheme::Jws => {
            let payload = json()?;
            let event_name = ["type", "event", "event_type", "notificationType"]
                .iter()
                .find_map(|k| text(&payload, &[k]))
                .ok_or_else(|| ShapeError("the JWS payload has no type".into()))?;
            NativeDelivery {
                provider_delivery_id: text(&payload, &["jti"])
                    .or_else(|| text(&payload, &["id"]))
                    .unwrap_or_else(digest_id),
                event_name,
                payload,
            }
        }
    };
    if delivery.provider_delivery_id.len() > 256 || delivery.event_name.len() > 128 {
        return Err(ShapeError("the delivery id or event name is too long".into()));
    }
    Ok(delivery)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_scheme_accepts_its_vendors_media_types_whatever_their_parameters_and_case() {
        assert!(accepts_media_type(Scheme::GitHub, Shape::Native, "Application/JSON; charset=utf-8"));
        assert!(accepts_media_type(Scheme::GitHub, Shape::Native, "application/vnd.github+json"));
        assert!(!accepts_media_type(Scheme::GitHub, Shape::Native, "application/x-www-form-urlencoded"));
        assert!(accepts_media_type(Scheme::Slack, Shape::Native, "application/x-www-form-urlencoded"));
        assert!(accepts_media_type(Scheme::Twilio, Shape::Native, "application/x-www-form-urlencoded"));
        assert!(accepts_media_type(Scheme::Jws, Shape::Native, "application/jose"));
        assert!(!accepts_media_type(Scheme::Slack, Shape::Envelope, "application/x-www-form-urlencoded"));
        assert!(!accepts_media_type(Scheme::Stripe, Shape::Native, ""));
    }

    #[test]
    fn the_signed_url_is_the_configured_one_with_twilios_body_hash_else_the_one_called() {
        let configured = CalledUrl {
            configured: Some("https://hooks.example/in?connectionId=c"),
            path_and_query: "/webhooks/deliveries?connectionId=c&bodySHA256=abc",
            ..CalledUrl::default()
        };
        assert_eq!(configured.signed(), "https://hooks.example/in?connectionId=c&bodySHA256=abc");
        let plain =
            CalledUrl { configured: Some("https://hooks.example/in"), path_and_query: "/x", ..CalledUrl::default() };
        assert_eq!(plain.signed(), "https://hooks.example/in");
        let forwarded = CalledUrl {
            forwarded_proto: Some("https"),
            host: Some("edge.example"),
            path_and_query: "/webhooks/deliveries?connectionId=c",
            ..CalledUrl::default()
        };
        assert_eq!(forwarded.signed(), "https://edge.example/webhooks/deliveries?connectionId=c");
        assert_eq!(CalledUrl::default().signed(), "http://localhost/");
    }

    #[test]
    fn only_slacks_url_verification_is_answered_as_a_handshake() {
        let challenge = NativeDelivery {
            provider_delivery_id: "d".into(),
            event_name: "url_verification".into(),
            payload: serde_json::json!({"type": "url_verification", "challenge": "c-1"}),
        };
        assert_eq!(handshake_answer(Scheme::Slack, &challenge), Some(serde_json::json!({"challenge": "c-1"})));
        assert_eq!(handshake_answer(Scheme::GitHub, &challenge), None);
    }

    #[test]
    fn schemes_have_unique_names_and_follow_provider_keys() {
        for scheme in Scheme::ALL {
            assert_eq!(Scheme::from_name(scheme.name()), Some(scheme));
        }
        assert_eq!(Scheme::for_provider_key("github"), Some(Scheme::GitHub));
        assert_eq!(Scheme::for_provider_key("twilio-sms"), Some(Scheme::Twilio));
        assert_eq!(Scheme::for_provider_key("standard-webhooks"), Some(Scheme::StandardWebhooks));
        assert_eq!(Scheme::for_provider_key("svix"), Some(Scheme::StandardWebhooks));
        assert_eq!(Scheme::for_provider_key("openai"), None);
        assert_eq!(Scheme::for_provider_key("jws"), None, "JWS is chosen explicitly, with its key set");
    }

    #[test]
    fn headers_are_case_insensitive_and_keep_the_first_value() {
        let h = Headers::from_pairs([("X-GitHub-Event", " push "), ("x-github-event", "other")]);
        assert_eq!(h.get("x-github-event"), Some("push"));
    }

    #[test]
    fn native_deliveries_name_their_ids_and_events() {
        let gh = Headers::from_pairs([("x-github-delivery", "d-1"), ("x-github-event", "push")]);
        let d = native_delivery(Scheme::GitHub, &gh, br#"{"ref":"refs/heads/main"}"#).unwrap();
        assert_eq!((d.provider_delivery_id.as_str(), d.event_name.as_str()), ("d-1", "push"));
        assert!(native_delivery(Scheme::GitHub, &Headers::default(), b"{}").is_err());
        for not_an_object in [&b"[1,2]"[..], b"\"push\"", b"42", b"null"] {
            let refused = native_delivery(Scheme::GitHub, &gh, not_an_object).unwrap_err();
            assert_eq!(refused.0, "the body is not a JSON object");
        }

        let stripe = native_delivery(Scheme::Stripe, &Headers::default(), br#"{"id":"evt_1","type":"invoice.paid"}"#);
        assert_eq!(stripe.unwrap().event_name, "invoice.paid");

        let slack = br#"{"type":"event_callback","event_id":"Ev1","event":{"type":"app_mention"}}"#;
        let d = native_delivery(Scheme::Slack, &Headers::default(), slack).unwrap();
        assert_eq!((d.provider_delivery_id.as_str(), d.event_name.as_str()), ("Ev1", "app_mention"));

        let twilio = b"MessageSid=SM1&MessageStatus=delivered";
        let d = native_delivery(Scheme::Twilio, &Headers::default(), twilio).unwrap();
        assert_eq!(d.event_name, "message.status");
        assert_eq!(d.payload["MessageStatus"], "delivered");
        assert!(d.provider_delivery_id.starts_with("sha256:"));
    }

    fn arrival<'a>(scheme: Scheme, shape: Shape, headers: &'a Headers, body: &'a [u8]) -> Arrival<'a> {
        Arrival { scheme, shape, headers, url: CalledUrl::default(), body, now: 1_700_000_000, tolerance_seconds: 300 }
    }

    fn secrets(values: &[&str]) -> VerificationKeys {
        VerificationKeys::Secrets(values.iter().map(|v| v.as_bytes().to_vec()).collect())
    }

    #[test]
    fn receive_reads_a_verified_native_delivery_and_names_the_key_that_verified_it() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let headers = Headers::from_pairs([
            ("content-type", "application/json"),
            ("x-github-delivery", "d-1"),
            ("x-github-event", "push"),
            ("x-hub-signature-256", &github::sign(b"old", body)),
        ]);
        let received = receive(&arrival(Scheme::GitHub, Shape::Native, &headers, body), &secrets(&["new", "old"]));
        let Ok(Received::Delivery { key_index, content: Content::Native(native) }) = received else {
            panic!("not a delivery: {received:?}")
        };
        assert_eq!(key_index, 1, "verified with the previous secret");
        assert_eq!((native.provider_delivery_id.as_str(), native.event_name.as_str()), ("d-1", "push"));

        let wrong = receive(&arrival(Scheme::GitHub, Shape::Native, &headers, body), &secrets(&["other"]));
        assert_eq!(wrong, Err(Refused::Signature(SignatureError::Mismatch)));
    }

    #[test]
    fn receive_refuses_a_media_type_before_looking_at_the_signature() {
        let headers = Headers::from_pairs([("content-type", "Text/Plain; charset=utf-8")]);
        let refused = receive(&arrival(Scheme::GitHub, Shape::Native, &headers, b"{}"), &secrets(&["s"]));
        assert_eq!(refused, Err(Refused::MediaType { scheme: "github", media: "text/plain".into() }));
    }

    #[test]
    fn receive_answers_slacks_handshake_and_hands_an_envelope_back_unread() {
        let body = br#"{"type":"url_verification","challenge":"c-1"}"#;
        let now = 1_700_000_000;
        let headers = Headers::from_pairs([
            ("content-type", "application/json"),
            ("x-slack-request-timestamp", &now.to_string()),
            ("x-slack-signature", &slack::sign(b"s", now, body)),
        ]);
        let handshake = receive(&arrival(Scheme::Slack, Shape::Native, &headers, body), &secrets(&["s"]));
        assert_eq!(handshake, Ok(Received::Handshake(serde_json::json!({"challenge": "c-1"}))));

        let envelope = receive(&arrival(Scheme::Slack, Shape::Envelope, &headers, body), &secrets(&["s"]));
        assert_eq!(envelope, Ok(Received::Delivery { key_index: 0, content: Content::Envelope(body.to_vec()) }));
    }

    #[test]
    fn a_connections_settings_come_from_its_configuration_and_provider() {
        let configuration = serde_json::json!({"webhookSecretRef": "kv://t/s", "webhookUrl": "https://in.example/x"});
        let settings = InboundSettings::of(configuration.as_object().unwrap(), "github");
        assert_eq!(settings.scheme, Some(Scheme::GitHub));
        assert_eq!(
            (settings.secret_ref, settings.webhook_url, settings.jwks),
            (Some("kv://t/s"), Some("https://in.example/x"), None)
        );
        let jws = serde_json::json!({"webhookScheme": "jws", "webhookJwks": "https://idp.example/jwks"});
        let settings = InboundSettings::of(jws.as_object().unwrap(), "github");
        assert_eq!((settings.scheme, settings.jwks), (Some(Scheme::Jws), Some("https://idp.example/jwks")));
    }
}
