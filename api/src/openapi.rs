//! The OpenAPI 3.1 document served at `/openapi.json`, built from the same Rust types that
//! (de)serialise the bodies, and the JSON Schemas of those bodies committed under `schemas/api/`.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Value, json};

use crate::bodies::*;
use crate::operations::{self as op, Operation};
use crate::problem::Problem;
use crate::routes::audit::AuditEventsPage;
use crate::versioning::MEDIA_TYPE_V1;

/// Calls `$m!(Type)` for every request and response body, so lists cannot drift apart.
macro_rules! for_each_body {
    ($m:ident) => {
        [
            $m!(EstablishConnectionRequest),
            $m!(ConnectionEstablishedResponse),
            $m!(ConnectionResponse),
            $m!(RegisterProviderRequest),
            $m!(ProviderRegisteredResponse),
            $m!(ProviderResponse),
            $m!(CreateSubscriptionRequest),
            $m!(SubscriptionCreatedResponse),
            $m!(SubscriptionResponse),
            $m!(InboundDeliveryRequest),
            $m!(DeliveryAcceptedResponse),
            $m!(RunResponse),
            $m!(RotateCredentialRequest),
            $m!(RotationStartedResponse),
            $m!(Problem),
            $m!(AuditEventsPage),
        ]
    };
}

/// A standalone JSON Schema (2020-12) of every API body, by type name.
pub fn body_schemas() -> Vec<(&'static str, Schema)> {
    macro_rules! root {
        ($t:ty) => {
            (stringify!($t), SchemaGenerator::new(SchemaSettings::draft2020_12()).into_root_schema_for::<$t>())
        };
    }
    for_each_body!(root).into_iter().collect()
}

fn component<T: JsonSchema>(generator: &mut SchemaGenerator) -> Value {
    generator.subschema_for::<T>().to_value()
}

/// The OpenAPI 3.1 document of the public API.
pub fn document() -> Value {
    let mut g =
        SchemaSettings::draft2020_12().with(|s| s.definitions_path = "/components/schemas".into()).into_generator();
    macro_rules! register {
        ($t:ty) => {
            component::<$t>(&mut g)
        };
    }
    for_each_body!(register);
    let schemas = Value::Object(g.take_definitions(true));
    let r = |name: &str| json!({ "$ref": format!("#/components/schemas/{name}") });
    let body = |name: &str| json!({ "required": true, "content": { "application/json": { "schema": r(name) } } });
    let ok = |name: &str, description: &str| {
        json!({ "description": description, "content": { MEDIA_TYPE_V1: { "schema": r(name) } },
                "headers": { "X-Trace-Id": { "$ref": "#/components/headers/TraceId" } } })
    };
    let problems = |codes: &[&str]| {
        codes
            .iter()
            .map(|c| (c.to_string(), json!({ "$ref": format!("#/components/responses/Problem{c}") })))
            .collect::<serde_json::Map<_, _>>()
    };
    let with = |mut responses: Value, extra: serde_json::Map<String, Value>| {
        if let Some(m) = responses.as_object_mut() {
            m.extend(extra);
        }
        responses
    };
    let idempotency = json!({ "$ref": "#/components/parameters/IdempotencyKey" });
    let bearer = |scope: &str| json!([{ "bearer": [scope] }]);
    let post_codes = ["400", "401", "403", "406", "409", "413", "415", "422"];
    let get_codes = ["401", "403", "404", "406"];
    let audit_stream_parameters: Vec<Value> =
        std::iter::once(json!({ "name": "streamId", "in": "path", "required": true, "schema": { "type": "string" } }))
            .chain(audit_parameters(false))
            .collect();

    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Integration engine",
            "version": "1",
            "description": "Connections, providers, webhook subscriptions and deliveries, runs and credential rotation. \
                            Send `Accept: application/vnd.connectsoft.integration.v1+json` (or application/json)."
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": {
            "/integrations/connections": { "post": {
                "operationId": op::EstablishConnection::ID, "summary": "Establish a new integration connection",
                "security": bearer(op::EstablishConnection::SCOPE),
                "parameters": [idempotency, { "name": "Prefer", "in": "header", "required": false,
                    "schema": { "type": "string" }, "example": "wait=10",
                    "description": "RFC 7240 preferences; `wait=N` waits up to N seconds (at most 60) for the connection's first health check and answers its outcome in `health` (without it, `health` is `Unknown`). Other preferences are ignored." }],
                "requestBody": body("EstablishConnectionRequest"),
                "responses": with(json!({ "201": {
                    "description": "Established; Location names the connection",
                    "content": { MEDIA_TYPE_V1: { "schema": r("ConnectionEstablishedResponse") } },
                    "headers": { "X-Trace-Id": { "$ref": "#/components/headers/TraceId" },
                                 "Preference-Applied": { "schema": { "type": "string" }, "example": "wait=10",
                                     "description": "RFC 7240: `wait=N` when the request's `Prefer: wait=N` was honoured (N as applied, capped at 60)" } } } }), problems(&post_codes))
            }},
            "/integrations/connections/{connectionId}": { "get": {
                "operationId": op::GetConnection::ID, "summary": "Retrieve a connection and its health",
                "security": bearer(op::GetConnection::SCOPE),
                "parameters": [{ "name": "connectionId", "in": "path", "required": true, "schema": { "type": "string" } }],
                "responses": with(json!({ "200": ok("ConnectionResponse", "The connection") }), problems(&get_codes))
            }},
            "/integrations/providers": { "post": {
                "operationId": op::RegisterProvider::ID, "summary": "Register a provider in the vendor registry",
                "security": bearer(op::RegisterProvider::SCOPE), "parameters": [idempotency],
                "requestBody": body("RegisterProviderRequest"),
                "responses": with(json!({ "201": ok("ProviderRegisteredResponse", "Registered") }), problems(&post_codes))
            }},
            "/integrations/providers/{providerId}": { "get": {
                "operationId": op::GetProvider::ID, "summary": "Retrieve a registered provider (the registration's Location)",
                "security": bearer(op::GetProvider::SCOPE),
                "parameters": [{ "name": "providerId", "in": "path", "required": true, "schema": { "type": "string" } }],
                "responses": with(json!({ "200": ok("ProviderResponse", "The provider") }), problems(&get_codes))
            }},
            "/webhooks/subscriptions": { "post": {
                "operationId": op::CreateSubscription::ID, "summary": "Create an outbound webhook subscription",
                "security": bearer(op::CreateSubscription::SCOPE), "parameters": [idempotency],
                "requestBody": body("CreateSubscriptionRequest"),
                "responses": with(json!({ "201": ok("SubscriptionCreatedResponse", "Created") }), problems(&post_codes))
            }},
            "/webhooks/subscriptions/{subscriptionId}": { "get": {
                "operationId": op::GetSubscription::ID, "summary": "Retrieve an outbound webhook subscription (the creation's Location)",
                "description": "The signing secret appears only as its kv:// reference, never its value.",
                "security": bearer(op::GetSubscription::SCOPE),
                "parameters": [{ "name": "subscriptionId", "in": "path", "required": true, "schema": { "type": "string" } }],
                "responses": with(json!({ "200": ok("SubscriptionResponse", "The subscription") }), problems(&get_codes))
            }},
            "/webhooks/deliveries": { "post": {
                "operationId": op::IngestDelivery::ID, "summary": "Ingest an inbound webhook delivery",
                "description": "Authenticated by the provider's signature over the raw body, with the scheme and secret of the \
                                target connection (GitHub X-Hub-Signature-256, Stripe-Signature, Standard Webhooks, Slack, \
                                Shopify, Twilio, GitLab X-Gitlab-Token, or a compact JWS body verified with the provider's \
                                JWKS); a bearer token is optional. With X-CS-Provider the body is the spec's envelope, \
                                without it the vendor's own delivery (any content type the vendor sends). The vendor's \
                                delivery id is unique per connection: a repeat is answered 200 with the first deliveryId \
                                and `duplicate: true`, and stores nothing. See docs/webhooks.md.",
                "security": [{ "githubSignature": [] }, { "githubSignature": [], "bearer": [op::IngestDelivery::SCOPE] }],
                "parameters": [
                    { "name": "X-CS-Provider", "in": "header", "required": false,
                      "description": "Announces the spec's envelope; names the connection's scheme or provider key",
                      "schema": { "type": "string", "examples": ["github", "stripe", "standard-webhooks", "slack", "shopify", "twilio", "gitlab", "jws"] } },
                    { "name": "connectionId", "in": "query", "required": false, "schema": { "type": "string" },
                      "description": "The target connection (or the X-CS-Connection header)" },
                    { "name": "X-CS-Connection", "in": "header", "required": false, "schema": { "type": "string" } }
                ],
                "requestBody": body("InboundDeliveryRequest"),
                "responses": with(
                    json!({ "202": ok("DeliveryAcceptedResponse", "Accepted"),
                            "200": ok("DeliveryAcceptedResponse", "A repeat of an accepted delivery; nothing stored") }),
                    problems(&["400", "401", "403", "406", "413", "415", "422"])
                )
            }},
            "/integrations/runs/{runId}": { "get": {
                "operationId": op::GetRun::ID, "summary": "Retrieve an integration run and its outcome",
                "security": bearer(op::GetRun::SCOPE),
                "parameters": [{ "name": "runId", "in": "path", "required": true, "schema": { "type": "string" } }],
                "responses": with(json!({ "200": ok("RunResponse", "The run") }), problems(&get_codes))
            }},
            "/integrations/credentials/rotate": { "post": {
                "operationId": op::RotateCredential::ID, "summary": "Rotate a stored credential",
                "security": bearer(op::RotateCredential::SCOPE), "parameters": [idempotency],
                "requestBody": body("RotateCredentialRequest"),
                "responses": with(json!({ "202": ok("RotationStartedResponse", "Rotation started; Location names the verification run") }), problems(&["400", "401", "403", "404", "406", "409", "413", "415", "422"]))
            }},
            "/audit/events": { "get": {
                "operationId": op::AuditTenantEvents::ID, "summary": "Replay the tenant's events in global order (auditors)",
                "description": "The token's tenant's events from global position `from` on, upcast to the current schema \
                                version of their type unless `asStored=true` (the hash chain covers the stored form). \
                                Paged by position: `nextFrom` continues; `next` (and `Link: rel=\"next\"`) is present when the \
                                page was full. See docs/audit.md.",
                "security": bearer(op::AuditTenantEvents::SCOPE),
                "parameters": audit_parameters(true),
                "responses": with(json!({ "200": ok("AuditEventsPage", "A page of events") }), problems(&["400", "401", "403", "406"]))
            }},
            "/audit/streams/{streamId}/events": { "get": {
                "operationId": op::AuditStreamEvents::ID, "summary": "Replay one of the tenant's streams (auditors)",
                "description": "`streamId` is the resource id (`prov-github`) or the full stream id `{tenantId}/{resourceId}`, \
                                percent-encoded. Another tenant's stream is 404.",
                "security": bearer(op::AuditStreamEvents::SCOPE),
                "parameters": audit_stream_parameters,
                "responses": with(json!({ "200": ok("AuditEventsPage", "A page of the stream's events") }), problems(&["400", "401", "403", "404", "406"]))
            }}
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                            "description": "OAuth2 access token (RS256/ES256/EdDSA from the configured JWKS); tenant from the tenantId claim" },
                "githubSignature": { "type": "apiKey", "in": "header", "name": "X-Hub-Signature-256",
                                     "description": "sha256=<hex HMAC-SHA256 of the raw body> under the connection's webhookSecretRef" }
            },
            "parameters": {
                "IdempotencyKey": { "name": "Idempotency-Key", "in": "header", "required": false, "schema": { "type": "string", "maxLength": 255 },
                                    "description": "Same key and body replays the first response; same key with another body is 422" }
            },
            "headers": { "TraceId": { "schema": { "type": "string" }, "description": "The request's trace id" } },
            "responses": problem_responses(&["400", "401", "403", "404", "406", "409", "413", "415", "422"])
        }
    })
}

/// The query parameters of the audit reads; the stream read has no type or time filters.
fn audit_parameters(with_filters: bool) -> Vec<Value> {
    let mut parameters = vec![
        json!({ "name": "from", "in": "query", "required": false, "schema": { "type": "integer", "minimum": 1, "default": 1 },
                "description": "The first global position to return (inclusive); `nextFrom` of the previous page" }),
        json!({ "name": "limit", "in": "query", "required": false,
                "schema": { "type": "integer", "minimum": 1, "maximum": crate::routes::audit::MAX_LIMIT, "default": crate::routes::audit::DEFAULT_LIMIT } }),
        json!({ "name": "asStored", "in": "query", "required": false, "schema": { "type": "boolean", "default": false },
                "description": "Return each event at the schema version it was stored at" }),
    ];
    if with_filters {
        parameters.extend([
            json!({ "name": "type", "in": "query", "required": false, "schema": { "type": "string" },
                    "description": "Only these event types, comma-separated" }),
            json!({ "name": "since", "in": "query", "required": false, "schema": { "type": "string", "format": "date-time" },
                    "description": "Only events that occurred at or after this instant" }),
            json!({ "name": "until", "in": "query", "required": false, "schema": { "type": "string", "format": "date-time" },
                    "description": "Only events that occurred before this instant" }),
        ]);
    }
    parameters
}

fn problem_responses(codes: &[&str]) -> Value {
    let responses = codes
        .iter()
        .map(|c| {
            let description = match *c {
                "400" => "Malformed request",
                "401" => "Missing or invalid credentials (WWW-Authenticate says why)",
                "403" => "insufficient_scope, insufficient_role (when a role policy is configured), or a tenantId other than the token's",
                "404" => "Unknown id, or another tenant's",
                "406" => "Unsupported API version in Accept",
                "409" => "Conflicts with the resource's state",
                "413" => "Body too large",
                "415" => "Body is not JSON",
                _ => "Invalid fields (see errors)",
            };
            let content =
                json!({ "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } });
            (format!("Problem{c}"), json!({ "description": description, "content": content }))
        })
        .collect();
    Value::Object(responses)
}
