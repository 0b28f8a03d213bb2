//! The OpenAPI 3.1 document served at `/openapi.json`, built from the same Rust types that
//! (de)serialise the bodies, and the JSON Schemas of those bodies committed under `schemas/api/`.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Value, json};

use crate::bodies::*;
use crate::operations::{self as op, Operation};
use crate::problem::{PROBLEM_JSON, Problem};
use crate::routes::audit::AuditEventsPage;
use crate::versioning::MEDIA_TYPE_V1;
use store::audit::MAX_EVENT_TYPES;

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
            $m!(HandshakeAnswer),
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

/// The OpenAPI 3.1 document of the public API. Each operation lists every status it can answer;
/// every error is a problem document ([`Problem`]).
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
    let body = |name: &str, example: Value| {
        json!({ "required": true,
                "content": { "application/json": { "schema": schema_ref(name), "example": example } } })
    };
    let ok = |name: &str, description: &str| {
        json!({ "description": description, "content": { MEDIA_TYPE_V1: { "schema": schema_ref(name) } },
                "headers": { "X-Trace-Id": { "$ref": "#/components/headers/TraceId" } } })
    };
    // What a POST creates or starts: `Location` names it; a replay under the same
    // Idempotency-Key answers the first response again, marked.
    let created = |name: &str, description: &str, location: &str| {
        json!({ "description": description, "content": { MEDIA_TYPE_V1: { "schema": schema_ref(name) } },
                "headers": {
                    "Location": { "required": true, "description": "The resource created, or the run started",
                                  "schema": { "type": "string", "pattern": location } },
                    "Idempotent-Replayed": { "$ref": "#/components/headers/IdempotentReplayed" },
                    "X-Trace-Id": { "$ref": "#/components/headers/TraceId" } } })
    };
    let with = |mut responses: Value, problems: &[(&str, Option<&str>)]| {
        if let Some(m) = responses.as_object_mut() {
            for (code, specific) in problems {
                let response = match specific {
                    Some(description) => problem_response(code, description),
                    None => json!({ "$ref": format!("#/components/responses/Problem{code}") }),
                };
                m.insert(code.to_string(), response);
            }
        }
        responses
    };
    let idempotency = json!({ "$ref": "#/components/parameters/IdempotencyKey" });
    let bearer = |scope: &str| json!([{ "bearer": [scope] }]);
    let id_parameter = |name: &str| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string", "minLength": 1 } });
    // Any request: its HTTP unreadable (400, 414, 431), its Accept refused, a body declared over
    // the limit, our failure, a dependency's (the store, the JWKS).
    let any = [("400", None), ("406", None), ("413", None), ("414", None), ("431", None), ("500", None), ("503", None)];
    let authorized = [("401", None), ("403", None)];
    let json_body = [("408", None), ("415", None)];
    let get_problems: Vec<_> = any.iter().chain(&authorized).copied().chain([("404", None)]).collect();
    let post_problems =
        |specific: &[(&'static str, Option<&'static str>)]| -> Vec<(&'static str, Option<&'static str>)> {
            let mut all: Vec<_> = any.iter().chain(&authorized).chain(&json_body).copied().collect();
            for (code, description) in specific {
                all.retain(|(c, _)| c != code);
                all.push((code, *description));
            }
            all
        };
    let audit_stream_parameters: Vec<Value> =
        std::iter::once(id_parameter("streamId")).chain(audit_parameters(false)).collect();

    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Integration engine",
            "version": "1",
            "description": "Connections, providers, webhook subscriptions and deliveries, runs and credential rotation. \
                            Send `Accept: application/vnd.connectsoft.integration.v1+json` (or application/json). \
                            Every error is an RFC 9457 problem document (`application/problem+json`); a method a path \
                            does not take is 405 with `Allow`, a path that is none of these 404."
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": {
            "/integrations/connections": { "post": {
                "operationId": op::EstablishConnection::ID, "summary": "Establish a new integration connection",
                "security": bearer(op::EstablishConnection::SCOPE),
                "parameters": [idempotency, { "name": "Prefer", "in": "header", "required": false,
                    "schema": { "type": "string" }, "example": "wait=10",
                    "description": "RFC 7240 preferences; `wait=N` waits up to N seconds (at most 60) for the connection's first health check and answers its outcome in `health` (without it, `health` is `Unknown`). Other preferences are ignored." }],
                "requestBody": body("EstablishConnectionRequest", json!({
                    "tenantId": "connectsoft", "projectId": "proj-booking-saas", "providerId": "prov-github",
                    "displayName": "Booking SaaS GitHub", "authMode": "OAuth2ClientCredentials",
                    "credentialRef": "kv://factory-integration/github-booking",
                    "configuration": { "organization": "connectsoft-booking", "defaultBranch": "main",
                                       "webhookSecretRef": "kv://factory-integration/github-webhook" } })),
                "responses": with(json!({ "201": {
                    "description": "Established; Location names the connection",
                    "content": { MEDIA_TYPE_V1: { "schema": schema_ref("ConnectionEstablishedResponse") } },
                    "headers": { "Location": { "required": true, "description": "The connection",
                                               "schema": { "type": "string", "pattern": "^/integrations/connections/conn-[0-9a-f]{32}$" } },
                                 "Idempotent-Replayed": { "$ref": "#/components/headers/IdempotentReplayed" },
                                 "X-Trace-Id": { "$ref": "#/components/headers/TraceId" },
                                 "Preference-Applied": { "schema": { "type": "string" }, "example": "wait=10",
                                     "description": "RFC 7240: `wait=N` when the request's `Prefer: wait=N` was honoured (N as applied, capped at 60)" } } } }),
                    &post_problems(&[
                        ("404", Some("`providerId` names no provider registered in the tenant, or a `kv://` reference no vault of the tenant's (another tenant's reads the same); `errors` names the field")),
                        ("409", Some("The connection or its credential changed concurrently (retry), or the Idempotency-Key was used before with another body")),
                        ("422", Some("A field breaks a rule this document states (see `errors`); also a `credentialRef` whose credential is a webhook signing secret")),
                    ]))
            }},
            "/integrations/connections/{connectionId}": { "get": {
                "operationId": op::GetConnection::ID, "summary": "Retrieve a connection and its health",
                "security": bearer(op::GetConnection::SCOPE),
                "parameters": [id_parameter("connectionId")],
                "responses": with(json!({ "200": ok("ConnectionResponse", "The connection") }), &get_problems)
            }},
            "/integrations/providers": { "post": {
                "operationId": op::RegisterProvider::ID, "summary": "Register a provider in the vendor registry",
                "security": bearer(op::RegisterProvider::SCOPE), "parameters": [idempotency],
                "requestBody": body("RegisterProviderRequest", json!({
                    "tenantId": "connectsoft", "key": "twilio-sms", "displayName": "Twilio SMS", "category": "Communication",
                    "authModel": "ApiKey", "apiClient": "ConnectSoft.Sms.Providers.Twilio",
                    "capabilities": ["sms.send", "sms.status"], "baseUrl": "https://api.twilio.com" })),
                "responses": with(
                    json!({ "201": created("ProviderRegisteredResponse", "Registered; Location names the provider", "^/integrations/providers/prov-[a-z0-9-]+$") }),
                    &post_problems(&[
                        ("409", Some("`key` is registered in the tenant already, the registry changed concurrently, or the Idempotency-Key was used before with another body")),
                        ("422", Some("A field breaks a rule this document states (see `errors`)")),
                    ]))
            }},
            "/integrations/providers/{providerId}": { "get": {
                "operationId": op::GetProvider::ID, "summary": "Retrieve a registered provider (the registration's Location)",
                "security": bearer(op::GetProvider::SCOPE),
                "parameters": [id_parameter("providerId")],
                "responses": with(json!({ "200": ok("ProviderResponse", "The provider") }), &get_problems)
            }},
            "/webhooks/subscriptions": { "post": {
                "operationId": op::CreateSubscription::ID, "summary": "Create an outbound webhook subscription",
                "security": bearer(op::CreateSubscription::SCOPE), "parameters": [idempotency],
                "requestBody": body("CreateSubscriptionRequest", json!({
                    "tenantId": "connectsoft", "projectId": "proj-booking-saas", "eventType": "DeploymentPromoted",
                    "endpointUrl": "https://hooks.partner.example/connectsoft",
                    "signingSecretRef": "kv://factory-integration/partner-hook-secret", "active": true })),
                "responses": with(
                    json!({ "201": created("SubscriptionCreatedResponse", "Created; Location names the subscription", "^/webhooks/subscriptions/sub-[0-9a-f]{32}$") }),
                    &post_problems(&[
                        ("404", Some("`signingSecretRef` names no vault of the tenant's (another tenant's reads the same); `errors` names the field")),
                        ("409", Some("The subscription or its credential changed concurrently (retry), or the Idempotency-Key was used before with another body")),
                        ("422", Some("A field breaks a rule this document states (see `errors`)")),
                    ]))
            }},
            "/webhooks/subscriptions/{subscriptionId}": { "get": {
                "operationId": op::GetSubscription::ID, "summary": "Retrieve an outbound webhook subscription (the creation's Location)",
                "description": "The signing secret appears only as its kv:// reference, never its value.",
                "security": bearer(op::GetSubscription::SCOPE),
                "parameters": [id_parameter("subscriptionId")],
                "responses": with(json!({ "200": ok("SubscriptionResponse", "The subscription") }), &get_problems)
            }},
            "/webhooks/deliveries": { "post": {
                "operationId": op::IngestDelivery::ID, "summary": "Ingest an inbound webhook delivery",
                "description": "Authenticated by the provider's signature over the raw body, with the scheme and secret of the \
                                target connection (GitHub X-Hub-Signature-256, Stripe-Signature, Standard Webhooks, Slack, \
                                Shopify, Twilio, GitLab X-Gitlab-Token, or a compact JWS body verified with the provider's \
                                JWKS); a bearer token is optional. With X-CS-Provider the body is the spec's envelope \
                                (`InboundDeliveryRequest`), without it the vendor's own delivery: JSON, or for Slack and \
                                Twilio also a form, for JWS `application/jose`, `application/jwt` or `text/plain`. The \
                                vendor's delivery id is unique per connection: a repeat is answered 200 with the first \
                                deliveryId and `duplicate: true`, and stores nothing. Slack's `url_verification` handshake \
                                (signed like a delivery) is answered 200 with its `challenge`. See docs/webhooks.md.",
                "security": [{ "githubSignature": [] }, { "githubSignature": [], "bearer": [op::IngestDelivery::SCOPE] }],
                "parameters": [
                    { "name": "X-CS-Provider", "in": "header", "required": false,
                      "description": "Announces the spec's envelope; names an inbound scheme, or a provider key that implies one \
                                      (`github-enterprise` is GitHub, `svix` Standard Webhooks). Another name is 400.",
                      "schema": { "type": "string", "pattern": X_CS_PROVIDER,
                                  "examples": ["github", "stripe", "standard-webhooks", "slack", "shopify", "twilio", "gitlab", "jws"] } },
                    { "name": "connectionId", "in": "query", "required": true, "schema": { "type": "string", "minLength": 1 },
                      "description": "The target connection. The X-CS-Connection header may name it instead; without either \
                                      the request is 400. An unknown connection, or another tenant's, is 401 like a bad signature." },
                    { "name": "X-CS-Connection", "in": "header", "required": false, "schema": { "type": "string" },
                      "description": "The target connection, when the query does not name it (the query wins)" }
                ],
                "requestBody": body("InboundDeliveryRequest", json!({
                    "providerDeliveryId": "gh-12345", "eventName": "pull_request",
                    "payload": { "action": "closed", "merged": true } })),
                "responses": with(
                    json!({ "202": ok("DeliveryAcceptedResponse", "Accepted"),
                            "200": {
                                "description": "A repeat of an accepted delivery (`duplicate: true`, nothing stored), or the answer to Slack's `url_verification` handshake",
                                "content": { MEDIA_TYPE_V1: { "schema": { "oneOf": [schema_ref("DeliveryAcceptedResponse"), schema_ref("HandshakeAnswer")] } } },
                                "headers": { "X-Trace-Id": { "$ref": "#/components/headers/TraceId" } } } }),
                    &[
                        ("400", Some("Malformed request: no connection named, X-CS-Provider naming no inbound scheme, the envelope not JSON, a verified vendor delivery its rules cannot read, or an X-CS-Provider the connection contradicts")),
                        ("401", Some("The signature does not verify with the connection's secret or keys (or the timestamp is stale), the connection is unknown or another tenant's, or a bearer token sent is invalid; WWW-Authenticate says which")),
                        ("403", Some("A bearer token was sent without the webhooks.deliveries.ingest scope (or a role the role policy allows)")),
                        ("406", None), ("408", None), ("409", Some("The delivery's connection changed concurrently; retry")),
                        ("413", None), ("414", None),
                        ("415", Some("A media type the connection's vendor never sends")),
                        ("422", Some("A verified envelope breaks a rule of `InboundDeliveryRequest` (see `errors`)")),
                        ("431", None), ("500", None), ("503", None),
                    ])
            }},
            "/integrations/runs/{runId}": { "get": {
                "operationId": op::GetRun::ID, "summary": "Retrieve an integration run and its outcome",
                "security": bearer(op::GetRun::SCOPE),
                "parameters": [id_parameter("runId")],
                "responses": with(json!({ "200": ok("RunResponse", "The run") }), &get_problems)
            }},
            "/integrations/credentials/rotate": { "post": {
                "operationId": op::RotateCredential::ID, "summary": "Rotate a stored credential",
                "security": bearer(op::RotateCredential::SCOPE), "parameters": [idempotency],
                "requestBody": body("RotateCredentialRequest", json!({
                    "tenantId": "connectsoft", "credentialId": "cred-github-booking", "reason": "ScheduledRotation" })),
                "responses": with(
                    json!({ "202": created("RotationStartedResponse", "Rotation started; Location names the verification run", "^/integrations/runs/run-[0-9a-f]{32}$") }),
                    &post_problems(&[
                        ("404", Some("`credentialId` names no credential of the tenant")),
                        ("409", Some("A rotation of the credential is in flight, there is no pending version to rotate to (a vendor-issued secret nobody staged), the secret's vault has no owner yet, the credential changed concurrently, or the Idempotency-Key was used before with another body")),
                        ("422", Some("A field breaks a rule this document states (see `errors`)")),
                    ]))
            }},
            "/audit/events": { "get": {
                "operationId": op::AuditTenantEvents::ID, "summary": "Replay the tenant's events in global order (auditors)",
                "description": "The token's tenant's events from global position `from` on, upcast to the current schema \
                                version of their type unless `asStored=true` (the hash chain covers the stored form). \
                                Paged by position: `nextFrom` continues; `next` (and `Link: rel=\"next\"`) is present when the \
                                page was full. A time range that ends where or before it starts is an empty page. \
                                Parameters other than these are 400. See docs/audit.md.",
                "security": bearer(op::AuditTenantEvents::SCOPE),
                "parameters": audit_parameters(true),
                "responses": with(json!({ "200": audit_page("A page of events") }), &audit_problems(&any, &authorized, false))
            }},
            "/audit/streams/{streamId}/events": { "get": {
                "operationId": op::AuditStreamEvents::ID, "summary": "Replay one of the tenant's streams (auditors)",
                "description": "`streamId` is the resource id (`prov-github`) or the full stream id `{tenantId}/{resourceId}`, \
                                percent-encoded. Another tenant's stream is 404.",
                "security": bearer(op::AuditStreamEvents::SCOPE),
                "parameters": audit_stream_parameters,
                "responses": with(json!({ "200": audit_page("A page of the stream's events") }), &audit_problems(&any, &authorized, true))
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
                "IdempotencyKey": { "name": "Idempotency-Key", "in": "header", "required": false,
                                    "schema": { "type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]{1,255}$" },
                                    "description": "1 to 255 printable ASCII characters (else 400). The same key and body replays \
                                                    the first response (marked `Idempotent-Replayed: true`); the same key with \
                                                    another body is 409." }
            },
            "headers": {
                "TraceId": { "schema": { "type": "string" }, "description": "The request's trace id" },
                "IdempotentReplayed": { "schema": { "type": "string", "enum": ["true"] },
                                        "description": "Present when the answer repeats the first one given to this Idempotency-Key" },
                "WwwAuthenticate": { "required": true, "schema": { "type": "string" },
                                     "description": "RFC 6750 `Bearer` challenge (or `HMAC realm=\"webhooks\"` for a refused delivery) saying what is wrong" }
            },
            "responses": problem_responses()
        }
    })
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// The names `X-CS-Provider` accepts (`connectors::inbound::Scheme`): a scheme, or a provider key
/// whose family (the part before its first `-`) is one; `svix` is Standard Webhooks, and a
/// `jws-` key names none.
const X_CS_PROVIDER: &str = r"^(standard-webhooks|jws|(svix|github|stripe|slack|shopify|twilio|gitlab)(-[\s\S]*)?)$";

/// The problems of an audit read: a query parameter refused says which; the stream read is
/// 404 for a stream the tenant does not have.
fn audit_problems<'a>(
    any: &[(&'a str, Option<&'a str>)],
    authorized: &[(&'a str, Option<&'a str>)],
    stream: bool,
) -> Vec<(&'a str, Option<&'a str>)> {
    let refused = "A query parameter that does not parse, is out of its range, is not one of this endpoint's, or \
                   is given twice (`type` may repeat); or HTTP that does not parse";
    let mut problems: Vec<_> = any.iter().chain(authorized).copied().filter(|(code, _)| *code != "400").collect();
    problems.push(("400", Some(refused)));
    if stream {
        problems.push(("404", Some("The tenant has no stream of that id (another tenant's reads the same)")));
    }
    problems
}

/// An audit page, with the `Link` to the next one when it is full.
fn audit_page(description: &str) -> Value {
    json!({ "description": description, "content": { MEDIA_TYPE_V1: { "schema": schema_ref("AuditEventsPage") } },
            "headers": {
                "X-Trace-Id": { "$ref": "#/components/headers/TraceId" },
                "Link": { "schema": { "type": "string" }, "description": "`<next>; rel=\"next\"` when the page was full" } } })
}

/// The query parameters of the audit reads; the stream read has no type or time filters.
fn audit_parameters(with_filters: bool) -> Vec<Value> {
    let mut parameters = vec![
        json!({ "name": "from", "in": "query", "required": false,
                "schema": { "type": "integer", "format": "uint64", "minimum": 1, "maximum": u64::MAX, "default": 1 },
                "description": "The first global position to return (inclusive); `nextFrom` of the previous page" }),
        json!({ "name": "limit", "in": "query", "required": false,
                "schema": { "type": "integer", "minimum": 1, "maximum": crate::routes::audit::MAX_LIMIT, "default": crate::routes::audit::DEFAULT_LIMIT } }),
        json!({ "name": "asStored", "in": "query", "required": false, "schema": { "type": "boolean", "default": false },
                "description": "Return each event at the schema version it was stored at" }),
    ];
    if with_filters {
        parameters.extend([
            json!({ "name": "type", "in": "query", "required": false,
                    "schema": { "type": "string", "pattern": event_type_list_pattern() },
                    "description": format!("Only these event types, comma-separated (blank names are ignored); at most {MAX_EVENT_TYPES}, \
                                            counted over every `type` parameter") }),
            json!({ "name": "since", "in": "query", "required": false, "schema": { "type": "string", "format": "date-time" },
                    "description": "Only events that occurred at or after this instant (RFC 3339)" }),
            json!({ "name": "until", "in": "query", "required": false, "schema": { "type": "string", "format": "date-time" },
                    "description": "Only events that occurred before this instant (RFC 3339); at or before `since`, the page is empty" }),
        ]);
    }
    parameters
}

/// A comma-separated list with at most [`MAX_EVENT_TYPES`] names that are not blank once
/// trimmed: blank items anywhere, and up to that many others.
fn event_type_list_pattern() -> String {
    let blank = format!("[{WHITE_SPACE}]*");
    let name = format!("[^,]*[^,{WHITE_SPACE}][^,]*");
    let more = MAX_EVENT_TYPES - 1;
    format!("^({blank},)*({blank}|{name}((,{blank})*,{name}){{0,{more}}}(,{blank})*)$")
}

/// A problem answer; a 401 also challenges the client (`WWW-Authenticate`).
fn problem_response(code: &str, description: &str) -> Value {
    let mut response = json!({ "description": description,
                               "content": { PROBLEM_JSON: { "schema": { "$ref": "#/components/schemas/Problem" } } } });
    if code == "401" {
        response["headers"] = json!({ "WWW-Authenticate": { "$ref": "#/components/headers/WwwAuthenticate" } });
    }
    response
}

/// The problem answers most operations share, by status.
fn problem_responses() -> Value {
    let responses = [
        (
            "400",
            "Malformed request: HTTP or JSON that does not parse, a query or path parameter that does not, a query \
                 parameter given twice, two Authorization headers, a Content-Length that is no number, an \
                 Idempotency-Key that is not 1 to 255 printable ASCII characters",
        ),
        ("401", "Missing or invalid credentials (WWW-Authenticate says why)"),
        (
            "403",
            "insufficient_scope, insufficient_role (when a role policy is configured), or a tenantId other than the token's",
        ),
        ("404", "Unknown id, or another tenant's"),
        ("406", "Unsupported API version in Accept"),
        ("408", "The request body did not arrive within the body read timeout"),
        ("409", "Conflicts with the resource's state"),
        ("413", "Body larger than the limit (--max-body-bytes), declared or sent"),
        ("414", "The request's URI is too long"),
        ("415", "Body is not JSON"),
        ("422", "Invalid fields (see errors)"),
        ("431", "The request's headers are too large"),
        ("500", "The engine failed; the cause is logged under the trace id"),
        ("503", "A dependency (the store, the token key set) is unavailable; try again shortly"),
    ];
    Value::Object(
        responses
            .into_iter()
            .map(|(code, description)| (format!("Problem{code}"), problem_response(code, description)))
            .collect(),
    )
}
