//! Everything vendor-specific. For now: GitHub's inbound webhook signature and the
//! normalization of its events into integration event types.
#![forbid(unsafe_code)]

pub mod github;
pub mod signature;

// Inbound webhook gateway (issue 4): one verifier per scheme, the dispatcher, the rule table.
/// `application/x-www-form-urlencoded` bodies (Twilio, Slack).
pub mod form;
/// GitLab's `X-Gitlab-Token`.
pub mod gitlab;
/// Choosing and running a connection's scheme; reading vendor-native deliveries.
pub mod inbound;
/// Compact JWS deliveries (RS256/ES256) verified with the provider's JWKS.
pub mod jws;
/// The normalization rule table.
pub mod normalization;
/// Shopify's `X-Shopify-Hmac-Sha256`.
pub mod shopify;
/// Slack's `X-Slack-Signature` v0.
pub mod slack;
/// Standard Webhooks (`webhook-signature` v1 and v1a).
pub mod standard_webhooks;
/// Stripe's `Stripe-Signature`.
pub mod stripe;
/// Twilio's `X-Twilio-Signature`.
pub mod twilio;

/// The SSRF-safe outbound HTTP client the API clients share.
pub mod egress;
/// GitHub's REST API client (`OpenPullRequest`).
pub mod github_api;
/// The generic signed HTTP call (`http.request`).
pub mod http_call;
/// Run operations resolved to the provider's API client, with their retry policies.
pub mod operations;

pub use signature::SignatureError;
