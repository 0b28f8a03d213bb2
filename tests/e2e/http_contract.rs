//! The HTTP contract through the real binary: errors as problem documents, auth, tenancy,
//! versioning, tracing, idempotency, read-your-writes, health and the OpenAPI document.

use crate::support;

use serde_json::{Value, json};
use support::{ALL_SCOPES, App, github_signature, spawn_app};

const TENANT: &str = "connectsoft";

fn provider(key: &str) -> Value {
    json!({
        "tenantId": TENANT, "key": key, "displayName": "GitHub", "category": "SourceControl",
        "authModel": "OAuth2ClientCredentials", "apiClient": "ConnectSoft.Scm.GitHub",
        "capabilities": [], "baseUrl": "https://api.github.com"
    })
}

fn connection(webhook_secret_ref: Option<&str>) -> Value {
    let mut configuration = json!({ "organization": "acme" });
    if let Some(r) = webhook_secret_ref {
        configuration["webhookSecretRef"] = json!(r);
    }
    json!({
        "projectId": "proj-1", "providerId": "prov-github", "displayName": "Acme GitHub",
        "authMode": "OAuth2ClientCredentials", "credentialRef": "kv://factory/acme-github",
        "configuration": configuration
    })
}

async fn problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let trace = response.headers().get("x-trace-id").expect("X-Trace-Id on errors").to_str().unwrap().to_string();
    let body: Value = response.json().await.expect("problem json");
    assert_eq!(body["status"], status);
    assert_eq!(body["traceId"], trace.as_str());
    for field in ["type", "title", "detail"] {
        assert!(body[field].is_string(), "problem without {field}: {body}");
    }
    body
}

async fn setup_connection(app: &App, token: &str) -> String {
    let r = app.post_json("/integrations/providers", token, &provider("github")).await;
    assert_eq!(r.status(), 201);
    let r = app.post_json("/integrations/connections", token, &connection(Some("kv://factory/acme-webhook"))).await;
    assert_eq!(r.status(), 201);
    r.json::<Value>().await.unwrap()["connectionId"].as_str().unwrap().to_string()
}

/// A GitHub push in the spec's envelope, signed with `secret`, to `/webhooks/deliveries?{query}`.
async fn post_signed_push(app: &App, query: &str, secret: &str, delivery_id: &str) -> reqwest::Response {
    let body =
        serde_json::to_vec(&json!({"providerDeliveryId": delivery_id, "eventName": "push", "payload": {}})).unwrap();
    app.client
        .post(app.url(&format!("/webhooks/deliveries?{query}")))
        .header("x-cs-provider", "github")
        .header("x-hub-signature-256", github_signature(secret, &body))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// What the engine answers to the raw bytes `request` on a connection of its own, read until it
/// closes the connection or `within` passes.
async fn raw_answer(app: &App, request: &[u8], within: std::time::Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(app.base.trim_start_matches("http://")).await.unwrap();
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(within, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

async fn events_in_store(app: &App) -> u64 {
    let ready: Value = app.client.get(app.url("/readyz")).send().await.unwrap().json().await.unwrap();
    ready["storePosition"].as_u64().expect("storePosition")
}

#[tokio::test]
async fn bad_input_gets_problem_documents_with_the_right_status() {
    let app = spawn_app();
    let token = app.token(TENANT, ALL_SCOPES);
    let post = |body: &'static str, content_type: &'static str| {
        app.client
            .post(app.url("/integrations/providers"))
            .bearer_auth(&token)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    problem(post("{not json", "application/json").await.unwrap(), 400).await;
    problem(post("{}", "text/plain").await.unwrap(), 415).await;
    let missing = problem(post(r#"{"key":"x"}"#, "application/json").await.unwrap(), 422).await;
    assert!(missing["errors"][0]["field"].is_string(), "{missing}");
    let mut wrong_type = provider("github");
    wrong_type["capabilities"] = json!("sms.send");
    let wrong = problem(app.post_json("/integrations/providers", &token, &wrong_type).await, 422).await;
    assert_eq!(wrong["errors"][0]["field"], "capabilities");
    let mut bad_enum = provider("github");
    bad_enum["authModel"] = json!("Telepathy");
    assert_eq!(
        problem(app.post_json("/integrations/providers", &token, &bad_enum).await, 422).await["errors"][0]["field"],
        "authModel"
    );
    let mut bad_key = provider("Not A Slug");
    bad_key["key"] = json!("Not A Slug");
    assert_eq!(
        problem(app.post_json("/integrations/providers", &token, &bad_key).await, 422).await["errors"][0]["field"],
        "key"
    );

    let huge = format!(r#"{{"key":"{}"}}"#, "x".repeat(300 * 1024));
    let r = app
        .client
        .post(app.url("/integrations/providers"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    problem(r, 413).await;

    let r = app.client.delete(app.url("/integrations/providers")).bearer_auth(&token).send().await.unwrap();
    assert!(r.headers().contains_key("allow"));
    problem(r, 405).await;
    problem(app.get("/no/such/route", &token).await, 404).await;
    problem(app.get("/integrations/connections/conn-0000", &token).await, 404).await;
    problem(app.get("/integrations/runs/run-0000", &token).await, 404).await;

    // A connection to a provider that is not registered is 404, naming the field: stored state
    // decides it, not the body's shape (the OpenAPI document calls the body valid).
    let unknown = problem(app.post_json("/integrations/connections", &token, &connection(None)).await, 404).await;
    assert_eq!(unknown["errors"][0]["field"], "providerId");
    // A secret in place of a secret reference is refused.
    let mut plaintext = connection(None);
    plaintext["credentialRef"] = json!("hunter2");
    app.post_json("/integrations/providers", &token, &provider("github")).await;
    assert_eq!(
        problem(app.post_json("/integrations/connections", &token, &plaintext).await, 422).await["errors"][0]["field"],
        "credentialRef"
    );
    // Registering a key twice in a tenant conflicts.
    problem(app.post_json("/integrations/providers", &token, &provider("github")).await, 409).await;
    // Rotating an unknown credential is 404; a malformed id is 422.
    let rotate = |id: &str| json!({ "credentialId": id, "reason": "Manual" });
    problem(app.post_json("/integrations/credentials/rotate", &token, &rotate("cred-nope")).await, 404).await;
    problem(app.post_json("/integrations/credentials/rotate", &token, &rotate("nope")).await, 422).await;
}

#[tokio::test]
async fn tokens_scopes_and_tenants_are_enforced() {
    let app = spawn_app();
    let token = app.token(TENANT, ALL_SCOPES);
    let id = setup_connection(&app, &token).await;
    let path = format!("/integrations/connections/{id}");

    let r = app.client.get(app.url(&path)).send().await.unwrap();
    assert!(r.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    problem(r, 401).await;
    let r = app.client.get(app.url(&path)).bearer_auth("not-a-jwt").send().await.unwrap();
    assert!(r.headers()["www-authenticate"].to_str().unwrap().contains("invalid_token"));
    problem(r, 401).await;
    let forged = api::auth::mint_dev_token(
        &[7u8; 32],
        api::auth::DEV_ISSUER,
        api::auth::DEV_AUDIENCE,
        "mallory",
        TENANT,
        &["integration.connections.read"],
        std::time::Duration::from_secs(60),
    )
    .unwrap();
    problem(app.get(&path, &forged).await, 401).await;

    let write_only = app.token(TENANT, "integration.connections.write");
    let r = app.get(&path, &write_only).await;
    assert!(r.headers()["www-authenticate"].to_str().unwrap().contains("insufficient_scope"));
    assert_eq!(problem(r, 403).await["title"], "insufficient_scope");

    // Another tenant's resource does not exist for you, and you cannot write into another tenant.
    let other = app.token("globex", ALL_SCOPES);
    problem(app.get(&path, &other).await, 404).await;
    let mut foreign = provider("stripe");
    foreign["tenantId"] = json!(TENANT);
    problem(app.post_json("/integrations/providers", &other, &foreign).await, 403).await;
    assert_eq!(app.get(&path, &token).await.status(), 200);
}

#[tokio::test]
async fn versions_are_negotiated_by_accept_header() {
    let app = spawn_app();
    let token = app.token(TENANT, ALL_SCOPES);
    let id = setup_connection(&app, &token).await;
    let path = format!("/integrations/connections/{id}");
    for accept in [None, Some("application/vnd.connectsoft.integration.v1+json"), Some("application/json"), Some("*/*")]
    {
        let mut r = app.client.get(app.url(&path)).bearer_auth(&token);
        if let Some(a) = accept {
            r = r.header("accept", a);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 200, "{accept:?}");
        assert_eq!(r.headers()["content-type"], "application/vnd.connectsoft.integration.v1+json");
    }
    for accept in ["application/vnd.connectsoft.integration.v2+json", "application/vnd.connectsoft.integration.v0+json"]
    {
        let r = app.client.get(app.url(&path)).bearer_auth(&token).header("accept", accept).send().await.unwrap();
        problem(r, 406).await;
    }
}

#[tokio::test]
async fn an_incoming_traceparent_sets_the_trace_id() {
    let app = spawn_app();
    let token = app.token(TENANT, ALL_SCOPES);
    let r = app
        .client
        .post(app.url("/integrations/providers"))
        .bearer_auth(&token)
        .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .json(&provider("github"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-trace-id"], "trace-4bf92f3577b34da6a3ce929d0e0e4736");
    let r = app
        .client
        .get(app.url("/nowhere"))
        .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .send()
        .await
        .unwrap();
    assert_eq!(problem(r, 404).await["traceId"], "trace-4bf92f3577b34da6a3ce929d0e0e4736");
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_answer_and_appends_nothing() {
    // No workers: the connection's health check would append events while the test counts them.
    let app = support::spawn_app_with(&["--no-workers"]);
    let token = app.token(TENANT, ALL_SCOPES);
    app.post_json("/integrations/providers", &token, &provider("github")).await;
    let send = |body: Value| {
        app.client
            .post(app.url("/integrations/connections"))
            .bearer_auth(&token)
            .header("idempotency-key", "k-1")
            .json(&body)
            .send()
    };
    let first = send(connection(None)).await.unwrap();
    assert_eq!(first.status(), 201);
    let location = first.headers()["location"].clone();
    let first_body: Value = first.json().await.unwrap();
    let events = events_in_store(&app).await;

    let again = send(connection(None)).await.unwrap();
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["location"], location);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first_body);
    assert_eq!(events_in_store(&app).await, events, "a replay appended events");

    let mut other = connection(None);
    other["displayName"] = json!("Something else");
    problem(send(other).await.unwrap(), 409).await;
    assert_eq!(events_in_store(&app).await, events);

    // Without a key, the same body creates a second connection.
    let r = app.post_json("/integrations/connections", &token, &connection(None)).await;
    assert_ne!(r.json::<Value>().await.unwrap()["connectionId"], first_body["connectionId"]);
}

#[tokio::test]
async fn a_get_right_after_a_post_sees_the_resource() {
    let app = spawn_app();
    let token = app.token(TENANT, ALL_SCOPES);
    app.post_json("/integrations/providers", &token, &provider("github")).await;
    for _ in 0..20 {
        let r = app.post_json("/integrations/connections", &token, &connection(None)).await;
        let id = r.json::<Value>().await.unwrap()["connectionId"].as_str().unwrap().to_string();
        let got = app.get(&format!("/integrations/connections/{id}"), &token).await;
        assert_eq!(got.status(), 200);
    }
}

#[tokio::test]
async fn webhook_deliveries_fail_closed() {
    // No workers: the connection's health check would append events while the test counts them.
    let app = support::spawn_app_with(&["--no-workers"]);
    let token = app.token(TENANT, ALL_SCOPES);
    app.put_secret("kv://factory/acme-webhook", "the-webhook-secret");
    let id = setup_connection(&app, &token).await;
    let body = serde_json::to_vec(&json!({ "providerDeliveryId": "gh-1", "eventName": "pull_request", "payload": { "action": "closed", "merged": true } })).unwrap();
    let deliver = |signature: Option<String>, connection: &str, provider: &str| {
        let mut r = app
            .client
            .post(app.url(&format!("/webhooks/deliveries?connectionId={connection}")))
            .header("x-cs-provider", provider)
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(s) = signature {
            r = r.header("x-hub-signature-256", s);
        }
        r.send()
    };
    let before = events_in_store(&app).await;
    problem(deliver(None, &id, "github").await.unwrap(), 401).await;
    problem(deliver(Some(github_signature("wrong-secret", &body)), &id, "github").await.unwrap(), 401).await;
    problem(deliver(Some(github_signature("the-webhook-secret", &body)), "conn-unknown", "github").await.unwrap(), 401)
        .await;
    problem(deliver(Some(github_signature("the-webhook-secret", &body)), &id, "stripe").await.unwrap(), 400).await;
    // The signature is checked before the body is even parsed.
    let garbage = app
        .client
        .post(app.url(&format!("/webhooks/deliveries?connectionId={id}")))
        .header("x-cs-provider", "github")
        .header("x-hub-signature-256", github_signature("wrong-secret", b"{not json"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    problem(garbage, 401).await;
    assert_eq!(events_in_store(&app).await, before, "a refused delivery stored something");

    let ok = deliver(Some(github_signature("the-webhook-secret", &body)), &id, "github").await.unwrap();
    assert_eq!(ok.status(), 202);
    assert_eq!(ok.json::<Value>().await.unwrap()["normalizedEventType"], "PullRequestMerged");
    // The connection may also be named by header (another delivery: a repeat would be deduplicated).
    let second =
        serde_json::to_vec(&json!({ "providerDeliveryId": "gh-2", "eventName": "push", "payload": {} })).unwrap();
    let by_header = app
        .client
        .post(app.url("/webhooks/deliveries"))
        .header("x-cs-provider", "github")
        .header("x-cs-connection", &id)
        .header("x-hub-signature-256", github_signature("the-webhook-secret", &second))
        .header("content-type", "application/json")
        .body(second)
        .send()
        .await
        .unwrap();
    assert_eq!(by_header.status(), 202);
}

#[tokio::test]
async fn a_rotation_while_one_is_in_flight_conflicts_and_its_run_is_visible() {
    let app = spawn_app();
    let token = app.token(TENANT, ALL_SCOPES);
    setup_connection(&app, &token).await;
    // The version to rotate to, staged by an operator (a vendor-issued token is not generated).
    app.put_secret("kv://factory/acme-github", "token-v1");
    support::put_secret_as(
        &app.data_dir,
        "kv://factory/acme-github",
        "token-v2",
        &["--stage", "pending", "--tenant", TENANT],
    );
    let rotate = json!({ "tenantId": TENANT, "credentialId": "cred-acme-github", "reason": "ScheduledRotation" });
    let r = app.post_json("/integrations/credentials/rotate", &token, &rotate).await;
    assert_eq!(r.status(), 202);
    let started: Value = r.json().await.unwrap();
    assert_eq!(started["newVersionRef"], "kv://factory/acme-github?version=2");
    let run = app.get(&format!("/integrations/runs/{}", started["verificationRunId"].as_str().unwrap()), &token).await;
    assert_eq!(run.status(), 200);
    assert_eq!(run.json::<Value>().await.unwrap()["operation"], "VerifyCredential");
    problem(app.post_json("/integrations/credentials/rotate", &token, &rotate).await, 409).await;
}

#[tokio::test]
async fn health_endpoints_and_the_openapi_document() {
    let app = spawn_app();
    assert_eq!(app.client.get(app.url("/healthz")).send().await.unwrap().status(), 200);
    let mut ready = false;
    for _ in 0..50 {
        if app.client.get(app.url("/readyz")).send().await.unwrap().status() == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ready, "/readyz never became ready");
    let doc: Value = app.client.get(app.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    for (path, method) in [
        ("/integrations/connections", "post"),
        ("/integrations/connections/{connectionId}", "get"),
        ("/integrations/providers", "post"),
        ("/integrations/providers/{providerId}", "get"),
        ("/webhooks/subscriptions", "post"),
        ("/webhooks/subscriptions/{subscriptionId}", "get"),
        ("/webhooks/deliveries", "post"),
        ("/integrations/runs/{runId}", "get"),
        ("/integrations/credentials/rotate", "post"),
    ] {
        assert!(doc["paths"][path][method].is_object(), "{method} {path} missing");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    assert!(doc["components"]["securitySchemes"]["githubSignature"].is_object());
    assert!(doc["components"]["schemas"]["Problem"].is_object());
    // RFC 7240: `Prefer: wait=N` on establishing a connection, answered with `Preference-Applied`.
    let establish = &doc["paths"]["/integrations/connections"]["post"];
    let parameters = establish["parameters"].as_array().unwrap();
    assert!(parameters.iter().any(|p| p["name"] == "Prefer" && p["in"] == "header"), "{establish}");
    assert!(establish["responses"]["201"]["headers"]["Preference-Applied"].is_object(), "{establish}");
    // Every $ref resolves.
    let text = doc.to_string();
    for r in regex::Regex::new(r##""\$ref":"#/components/(\w+)/(\w+)""##).unwrap().captures_iter(&text) {
        assert!(doc["components"][&r[1]][&r[2]].is_object(), "dangling $ref {}/{}", &r[1], &r[2]);
    }
}

/// A secret is sent only where its owner meant: another tenant cannot name it (nor learn
/// whether its vault exists), a shared secret verifies deliveries but is never sent, and a
/// rotation cannot reach a secret that is not the tenant's.
#[tokio::test]
async fn another_tenants_secrets_can_neither_be_named_nor_verify_deliveries() {
    let app = spawn_app();
    app.put_secret("kv://factory/github-token", "connectsoft-token");
    app.put_secret("kv://connectsoft-vault/hook", "connectsoft-hook-secret");
    support::put_secret_as(&app.data_dir, "kv://ops/hook", "shared-hook-secret", &["--shared"]);
    let intruder = app.token("globex", ALL_SCOPES);
    assert_eq!(app.post_json("/integrations/providers", &intruder, &json!({"key": "github", "displayName": "GitHub",
        "category": "SourceControl", "authModel": "ApiKey", "apiClient": "A.GitHub", "baseUrl": "https://globex.example"})).await.status(), 201);

    // Sent to globex's host: neither connectsoft's secret, nor a shared one; the refusal of
    // connectsoft's vault reads like that of a vault that does not exist.
    let mut refusals = Vec::new();
    for vault in ["factory", "no-such-vault", "ops"] {
        let mut stolen = connection(None);
        stolen["credentialRef"] = json!(format!("kv://{vault}/github-token"));
        let refused = problem(app.post_json("/integrations/connections", &intruder, &stolen).await, 404).await;
        assert_eq!(refused["errors"][0]["field"], "credentialRef", "{refused}");
        refusals.push(refused["errors"][0]["message"].as_str().unwrap().replace(vault, "VAULT"));
    }
    assert_eq!(refusals[0], refusals[1]);
    let mut stolen = connection(Some("kv://connectsoft-vault/hook"));
    stolen["credentialRef"] = json!(null);
    let refused = problem(app.post_json("/integrations/connections", &intruder, &stolen).await, 404).await;
    assert_eq!(refused["errors"][0]["field"], "configuration.webhookSecretRef");
    let rotate = json!({ "tenantId": "globex", "credentialId": "cred-github-token", "reason": "Leaked" });
    problem(app.post_json("/integrations/credentials/rotate", &intruder, &rotate).await, 404).await;

    // A shared secret verifies globex's deliveries.
    let mut verifying = connection(Some("kv://ops/hook"));
    verifying["credentialRef"] = json!(null);
    let r = app.post_json("/integrations/connections", &intruder, &verifying).await;
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["connectionId"].as_str().unwrap().to_string();
    let r = post_signed_push(&app, &format!("connectionId={id}"), "shared-hook-secret", "gh-9").await;
    assert_eq!(r.status(), 202);
}

#[tokio::test]
async fn concurrent_registrations_with_one_idempotency_key_all_get_the_same_answer() {
    let app = spawn_app();
    let token = app.token(TENANT, ALL_SCOPES);
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let request = app
                .client
                .post(app.url("/integrations/providers"))
                .bearer_auth(&token)
                .header("idempotency-key", "register-github")
                .json(&provider("github"));
            tokio::spawn(async move {
                let answer = request.send().await.unwrap();
                let replayed = answer.headers().get("idempotent-replayed").map(|v| v.to_str().unwrap().to_owned());
                (answer.status().as_u16(), replayed, answer.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let (mut bodies, mut marks) = (Vec::new(), Vec::new());
    for task in tasks {
        let (status, replayed, body) = task.await.unwrap();
        assert_eq!(status, 201, "{body}");
        bodies.push(body);
        marks.push(replayed);
    }
    assert!(bodies.windows(2).all(|w| w[0]["providerId"] == w[1]["providerId"]));
    assert_eq!(events_in_store(&app).await, 1, "more than one registration was appended");
    // Only the request that reserved the key answers as the first: every other one, the losers
    // of the race included, says it repeats that answer.
    assert_eq!(marks.iter().filter(|m| m.is_none()).count(), 1, "{marks:?}");
    assert!(marks.iter().flatten().all(|m| m == "true"), "{marks:?}");
}

/// What a lenient parser would settle by guessing is refused, each as a problem document:
/// two Authorization headers, a query parameter named twice, a declared body over the limit
/// (before the body is sent or the token checked), what hyper cannot parse (a malformed
/// request line, a URI or headers too long), a loopback endpoint spelled with a trailing dot,
/// a provider key set at an address the egress rules refuse.
#[tokio::test]
async fn strict_parsing_refuses_what_a_lenient_parser_would_guess() {
    let app = spawn_app();
    let token = app.token(TENANT, ALL_SCOPES);
    let connection_id = setup_connection(&app, &token).await;

    let twice = app
        .client
        .get(app.url(&format!("/integrations/connections/{connection_id}")))
        .header("authorization", format!("Bearer {token}"))
        .header("authorization", "Bearer forged")
        .send()
        .await
        .unwrap();
    problem(twice, 400).await;

    let query = format!("connectionId={connection_id}&connectionId=conn-other");
    problem(post_signed_push(&app, &query, "whatever", "gh-1").await, 400).await;

    // Headers only, a body of 10 MB announced and never sent: 413 at once.
    let head = format!(
        "POST /integrations/providers HTTP/1.1\r\nHost: engine\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 10000000\r\n\r\n"
    );
    let answer = raw_answer(&app, head.as_bytes(), std::time::Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 413") && answer.contains("application/problem+json"), "{answer}");

    for endpoint in ["https://localhost./x", "https://LocalHost./x", "https://api.localhost./x"] {
        let subscription = json!({"eventType": "X", "endpointUrl": endpoint, "signingSecretRef": "kv://factory/hook"});
        let refused = problem(app.post_json("/webhooks/subscriptions", &token, &subscription).await, 422).await;
        assert_eq!(refused["errors"][0]["field"], "endpointUrl", "{endpoint}: {refused}");
    }

    // What hyper refuses before any handler runs is a problem document with a trace id too.
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: engine\r\n\r\n", "a".repeat(70_000));
    let huge_headers = format!("GET /healthz HTTP/1.1\r\nHost: engine\r\nX-Big: {}\r\n\r\n", "b".repeat(500_000));
    for (request, status) in [("NOT HTTP AT ALL\r\n\r\n".to_owned(), "400"), (long_uri, "414"), (huge_headers, "431")] {
        let answer = raw_answer(&app, request.as_bytes(), std::time::Duration::from_secs(5)).await;
        assert!(answer.starts_with(&format!("HTTP/1.1 {status}")), "{status}: {answer}");
        assert!(answer.contains("application/problem+json") && answer.contains("\"traceId\":\"trace-"), "{answer}");
    }

    let mut jws = connection(None);
    jws["configuration"] = json!({"webhookScheme": "jws", "webhookJwks": "https://127.0.0.1/jwks"});
    let refused = problem(app.post_json("/integrations/connections", &token, &jws).await, 422).await;
    assert_eq!(refused["errors"][0]["field"], "configuration.webhookJwks", "{refused}");
}
