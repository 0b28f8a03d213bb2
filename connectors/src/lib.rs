//! Everything vendor-specific: the inbound webhook verifiers (one per signature scheme), the
//! normalization rule table, and the outbound API clients that run operations call through the
//! SSRF-safe egress client.
#![forbid(unsafe_code)]

/// GitHub's `X-Hub-Signature-256`.
pub mod github;
/// The signed request, refusal reasons, constant-time comparison and the timestamp window
/// shared by the verifiers.
pub mod signature;

// Inbound: one verifier per scheme, the dispatcher, the rule table.
/// `application/x-www-form-urlencoded` bodies (Twilio, Slack).
pub mod form;
/// GitLab's `X-Gitlab-Token`.
pub mod gitlab;
/// Choosing and running a connection's scheme; reading vendor-native deliveries.
pub mod inbound;
/// JSON Web Keys: the one parser of the identity provider's and the providers' key sets.
pub mod jwk;
/// Compact JWS deliveries (RS256/384/512, ES256, EdDSA) verified with the provider's JWKS.
pub mod jws;
/// Providers' key sets for JWS deliveries, fetched through the webhook egress rules and cached.
pub mod key_sets;
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

// Outbound: the API clients of run operations.
/// What every API client's call shares: the credential, `CallError` and reading failures.
pub mod call;
/// The SSRF-safe outbound HTTP client the API clients share.
pub mod egress;
/// GitHub's REST API client (`OpenPullRequest`).
pub mod github_api;
/// The generic signed HTTP call (`http.request`).
pub mod http_call;
/// OAuth2 client credentials: cached, single-flight access tokens from the provider's token endpoint.
pub mod oauth2_client_credentials;
/// Run operations resolved to the provider's API client, with their retry policies.
pub mod operations;
/// Outbound webhook deliveries: Standard Webhooks signatures, CloudEvents headers, answers.
pub mod outbound_webhooks;
/// Every spelling of a call's secrets removed from what the vendor answered, before it is kept.
pub mod redact;
/// Twilio's REST API client: the balance as health check, API keys issued and deleted.
pub mod twilio_api;

pub use signature::SignatureError;
