//! No input makes the server panic or answer a bare error: hundreds of malformed requests, each
//! must get a 4xx problem document (or a success), never a 5xx.

use crate::support;

use reqwest::header::{HeaderName, HeaderValue};
use serde_json::{Value, json};
use support::{ALL_SCOPES, spawn_app};

/// A small deterministic generator, so a failure reproduces.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn valid_bodies() -> Vec<(&'static str, Value)> {
    vec![
        (
            "/integrations/providers",
            json!({"key": "github", "displayName": "GitHub", "category": "SourceControl",
            "authModel": "ApiKey", "apiClient": "A.B", "capabilities": ["x"], "baseUrl": "https://api.github.com"}),
        ),
        (
            "/integrations/connections",
            json!({"projectId": "p", "providerId": "prov-github", "displayName": "d",
            "authMode": "ApiKey", "credentialRef": "kv://a/b", "configuration": {"webhookSecretRef": "kv://a/w"}}),
        ),
        (
            "/webhooks/subscriptions",
            json!({"eventType": "X*", "endpointUrl": "https://x.example",
            "signingSecretRef": "kv://a/s", "active": true}),
        ),
        ("/integrations/credentials/rotate", json!({"credentialId": "cred-b", "reason": "r"})),
        (
            "/webhooks/deliveries?connectionId=conn-x",
            json!({"providerDeliveryId": "1", "eventName": "push", "payload": {}}),
        ),
    ]
}

/// Replaces one field (at any depth) of `body` with a hostile value.
fn mutate(body: &Value, rng: &mut XorShift) -> Value {
    let hostile = [
        json!(null),
        json!(-1),
        json!(1e308),
        json!(u64::MAX),
        json!(true),
        json!([]),
        json!({}),
        json!(""),
        json!(" "),
        json!("x".repeat(5000)),
        json!("\u{0000}\u{202e}é漢"),
        json!("kv://"),
        json!("../../etc/passwd"),
        json!([null, [null]]),
    ];
    let mut out = body.clone();
    if let Value::Object(map) = &mut out {
        let keys: Vec<String> = map.keys().cloned().collect();
        match rng.below(4) {
            0 => {
                let key = &keys[rng.below(keys.len())];
                map.insert(key.clone(), hostile[rng.below(hostile.len())].clone());
            }
            1 => {
                let key = &keys[rng.below(keys.len())];
                map.remove(key);
            }
            2 => {
                map.insert("tenantId".into(), hostile[rng.below(hostile.len())].clone());
            }
            _ => {
                map.insert("unexpected".into(), hostile[rng.below(hostile.len())].clone());
            }
        }
    }
    out
}

fn raw_garbage(rng: &mut XorShift) -> Vec<u8> {
    let samples: [&[u8]; 8] = [b"", b"{", b"[", b"null", b"\"str\"", b"{\"a\":", b"\xff\xfe\xfd", b"{}{}"];
    let mut out = samples[rng.below(samples.len())].to_vec();
    if rng.below(3) == 0 {
        out.extend(std::iter::repeat_n(b'[', 10_000));
    }
    out
}

#[tokio::test]
async fn malformed_requests_get_problem_documents_never_a_server_error() {
    let app = spawn_app();
    let token = app.token("connectsoft", ALL_SCOPES);
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let bodies = valid_bodies();
    let mut checked = 0;
    for i in 0..400 {
        let (path, body) = &bodies[i % bodies.len()];
        let mut request = app.client.post(app.url(path));
        let bytes =
            if i % 5 == 4 { raw_garbage(&mut rng) } else { serde_json::to_vec(&mutate(body, &mut rng)).unwrap() };
        request = match rng.below(6) {
            0 => request.header("authorization", HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap()),
            1 => request.header("authorization", "Bearer a.b.c"),
            _ => request.bearer_auth(&token),
        };
        let content_type =
            ["application/json", "application/json; charset=utf-8", "text/plain", "application/x+json", ""]
                [rng.below(5)];
        if !content_type.is_empty() {
            request = request.header("content-type", content_type);
        }
        let extra: [(&str, &[u8]); 6] = [
            ("accept", b"application/vnd.connectsoft.integration.v9+json"),
            ("accept", b";;;,,,q=abc"),
            ("idempotency-key", b"\xff"),
            ("traceparent", b"00-zz-zz-zz"),
            ("x-cs-provider", b"github"),
            ("x-hub-signature-256", b"sha256=00"),
        ];
        let (name, value) = extra[rng.below(extra.len())];
        request = request.header(HeaderName::from_static(name), HeaderValue::from_bytes(value).unwrap());
        let response = request.body(bytes).send().await.expect("the server answered");
        let status = response.status();
        assert!(
            status.as_u16() < 500,
            "request {i} to {path} got {status}: {}",
            response.text().await.unwrap_or_default()
        );
        if !status.is_success() {
            assert_eq!(response.headers()["content-type"], "application/problem+json", "request {i}");
            let problem: Value = response.json().await.expect("problem body");
            assert_eq!(problem["status"], status.as_u16(), "request {i}");
        }
        checked += 1;
    }
    for path in [
        "/integrations/connections/%00",
        "/integrations/runs/..%2F..",
        &format!("/integrations/runs/{}", "r".repeat(10_000)),
        "/integrations/connections/ü",
    ] {
        let response = app.get(path, &token).await;
        assert!(response.status().is_client_error(), "{path}: {}", response.status());
        checked += 1;
    }
    assert!(checked > 400);
    // Still alive and well.
    assert_eq!(app.client.get(app.url("/healthz")).send().await.unwrap().status(), 200);
}
