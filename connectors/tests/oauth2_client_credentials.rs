//! OAuth2 client credentials against a local token endpoint that follows RFC 6749 §4.4:
//! `POST` of `grant_type=client_credentials[&scope=...]` as a form, the client authenticated with
//! HTTP Basic (§2.3.1); `200 {access_token, token_type, expires_in}` with `Cache-Control:
//! no-store`, or `401 {"error": "invalid_client"}` (§5.2).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use connectors::egress::{EgressPolicy, http_client};
use connectors::oauth2_client_credentials::{ClientCredentialsGrant, TokenCache};
use connectors::operations::{ApiClients, CHECK_HEALTH, Credential, ProviderTarget, resolve};
use serde_json::{Value, json};

const CLIENT_ID: &str = "integration-engine";

#[derive(Default)]
struct Endpoint {
    /// Client secrets the endpoint accepts.
    secrets: Vec<String>,
    /// Every token request: (client secret, scope).
    requests: Vec<(String, String)>,
    issued: Vec<String>,
    expires_in: u64,
    delay: Duration,
    /// Bytes of padding added to the token response (a field the client ignores).
    padding: usize,
}

type Shared = Arc<Mutex<Endpoint>>;

async fn token(State(state): State<Shared>, headers: HeaderMap, body: String) -> Response {
    let delay = state.lock().unwrap().delay;
    tokio::time::sleep(delay).await;
    let form: HashMap<String, String> = url_form(&body);
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let Some((id, secret)) = basic.as_deref().and_then(|b| b.split_once(':')) else {
        return refuse(StatusCode::UNAUTHORIZED, "invalid_client");
    };
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return refuse(StatusCode::BAD_REQUEST, "unsupported_grant_type");
    }
    let mut s = state.lock().unwrap();
    s.requests.push((secret.to_owned(), form.get("scope").cloned().unwrap_or_default()));
    if id != CLIENT_ID || !s.secrets.iter().any(|known| known == secret) {
        return refuse(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    let issued = format!("at-{}-{}", s.issued.len() + 1, uuid_like(s.issued.len()));
    s.issued.push(issued.clone());
    let mut body = json!({"access_token": issued, "token_type": "Bearer", "expires_in": s.expires_in});
    if s.padding > 0 {
        body["padding"] = json!("p".repeat(s.padding));
    }
    ([(header::CACHE_CONTROL, "no-store"), (header::PRAGMA, "no-cache")], axum::Json(body)).into_response()
}

fn refuse(status: StatusCode, error: &str) -> Response {
    (status, [(header::WWW_AUTHENTICATE, "Basic")], axum::Json(json!({"error": error}))).into_response()
}

fn uuid_like(n: usize) -> String {
    format!("{:016x}", (n as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

fn url_form(body: &str) -> HashMap<String, String> {
    url::form_urlencoded::parse(body.as_bytes()).into_owned().collect()
}

/// GitHub's `GET /user`, accepting only tokens the endpoint issued.
async fn user(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let bearer = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let issued = state.lock().unwrap().issued.clone();
    if issued.iter().any(|t| bearer == format!("Bearer {t}")) {
        axum::Json(json!({"login": "engine-bot", "id": 7})).into_response()
    } else {
        (StatusCode::UNAUTHORIZED, axum::Json(json!({"message": "Bad credentials"}))).into_response()
    }
}

async fn start(secrets: &[&str], expires_in: u64, delay: Duration) -> (String, Shared) {
    let state: Shared = Arc::new(Mutex::new(Endpoint {
        secrets: secrets.iter().map(|s| (*s).to_owned()).collect(),
        expires_in,
        delay,
        ..Endpoint::default()
    }));
    let app = Router::new().route("/oauth/token", post(token)).route("/user", get(user)).with_state(Arc::clone(&state));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), state)
}

fn grant(base: &str) -> ClientCredentialsGrant {
    ClientCredentialsGrant {
        token_url: format!("{base}/oauth/token"),
        client_id: CLIENT_ID.into(),
        scopes: vec!["repo".into(), "read:org".into()],
    }
}

fn cache() -> TokenCache {
    TokenCache::new(http_client(EgressPolicy::AllowPrivate, Duration::from_secs(5)).unwrap())
}

#[tokio::test]
async fn concurrent_callers_share_one_token_request_and_reuse_the_token_until_shortly_before_expiry() {
    let (base, state) = start(&["s3cret-v1"], 2, Duration::from_millis(300)).await;
    let cache = Arc::new(cache());
    let secret = Credential::new(b"s3cret-v1".to_vec());
    let callers: Vec<_> = (0..16)
        .map(|_| {
            let (cache, grant, secret) = (Arc::clone(&cache), grant(&base), secret.clone());
            tokio::spawn(async move { cache.access_token(&grant, &secret).await.unwrap() })
        })
        .collect();
    let mut tokens = Vec::new();
    for caller in callers {
        tokens.push(caller.await.unwrap());
    }
    assert_eq!(state.lock().unwrap().requests.len(), 1, "one request for 16 concurrent callers");
    assert!(tokens.iter().all(|t| t == &tokens[0]));
    assert_eq!(state.lock().unwrap().requests[0], ("s3cret-v1".to_owned(), "repo read:org".to_owned()));

    // Cached: no new request. Past half of its 2 s lifetime: refreshed.
    assert_eq!(cache.access_token(&grant(&base), &secret).await.unwrap(), tokens[0]);
    assert_eq!(state.lock().unwrap().requests.len(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let refreshed = cache.access_token(&grant(&base), &secret).await.unwrap();
    assert_ne!(refreshed, tokens[0]);
    assert_eq!(state.lock().unwrap().requests.len(), 2);
    assert!(!format!("{refreshed:?}").contains("at-"), "Debug redacts the token");
}

#[tokio::test]
async fn a_refused_client_is_a_permanent_error_naming_the_rfc_code_and_never_the_secret() {
    let (base, _state) = start(&["s3cret-v1"], 3600, Duration::ZERO).await;
    let error = cache().access_token(&grant(&base), &Credential::new(b"wrong-secret".to_vec())).await.unwrap_err();
    assert!(!error.is_retryable());
    let message = error.to_string();
    assert!(message.contains("invalid_client"), "{message}");
    assert!(!message.contains("wrong-secret"), "{message}");
}

#[tokio::test]
async fn a_rotated_client_secret_gets_its_own_token() {
    let (base, state) = start(&["s3cret-v1", "s3cret-v2"], 3600, Duration::ZERO).await;
    let cache = cache();
    let first = cache.access_token(&grant(&base), &Credential::new(b"s3cret-v1".to_vec())).await.unwrap();
    let second = cache.access_token(&grant(&base), &Credential::new(b"s3cret-v2".to_vec())).await.unwrap();
    assert_ne!(first, second);
    let secrets: Vec<String> = state.lock().unwrap().requests.iter().map(|(s, _)| s.clone()).collect();
    assert_eq!(secrets, ["s3cret-v1", "s3cret-v2"]);
}

#[tokio::test]
async fn a_github_health_check_of_an_oauth2_connection_authenticates_with_the_access_token() {
    let (base, state) = start(&["s3cret-v1"], 3600, Duration::ZERO).await;
    let configuration: serde_json::Map<String, Value> = json!({
        "tokenUrl": format!("{base}/oauth/token"), "clientId": CLIENT_ID, "scope": "repo"
    })
    .as_object()
    .cloned()
    .unwrap();
    let target = ProviderTarget {
        provider_key: "github".into(),
        api_client: "ConnectSoft.SourceControl.Providers.GitHub".into(),
        base_url: base.clone(),
        configuration,
    };
    let clients = ApiClients::new(EgressPolicy::AllowPrivate, Arc::new(domain::clock::SystemClock)).unwrap();
    let check = resolve(CHECK_HEALTH, &target, &json!({})).unwrap();
    let secret = Credential::new(b"s3cret-v1".to_vec());
    let output = clients.call(&check, &target, &secret).await.unwrap();
    assert_eq!(output["login"], "engine-bot");
    clients.call(&check, &target, &secret).await.unwrap();
    assert_eq!(state.lock().unwrap().requests.len(), 1, "the token is reused across calls");
    // With the client secret as a bearer token (no grant), GitHub would refuse it.
    let plain = ProviderTarget { configuration: serde_json::Map::new(), ..target };
    assert!(clients.call(&check, &plain, &secret).await.is_err());
}

#[tokio::test]
async fn a_huge_expires_in_is_capped_and_the_token_still_reused() {
    // Seconds beyond any Instant: adding them to the clock unchecked panics.
    let (base, state) = start(&["s3cret-v1"], u64::MAX, Duration::ZERO).await;
    let cache = cache();
    let secret = Credential::new(b"s3cret-v1".to_vec());
    let first = cache.access_token(&grant(&base), &secret).await.unwrap();
    assert_eq!(cache.access_token(&grant(&base), &secret).await.unwrap(), first);
    assert_eq!(state.lock().unwrap().requests.len(), 1);
}

#[tokio::test]
async fn a_token_response_larger_than_64_kib_is_refused_without_reading_it_all() {
    let (base, state) = start(&["s3cret-v1"], 3600, Duration::ZERO).await;
    state.lock().unwrap().padding = 4 * 1024 * 1024;
    let error = cache().access_token(&grant(&base), &Credential::new(b"s3cret-v1".to_vec())).await.unwrap_err();
    assert!(error.to_string().contains("larger than 65536 bytes"), "{error}");
    // A normal response from the same endpoint is fine.
    state.lock().unwrap().padding = 1024;
    cache().access_token(&grant(&base), &Credential::new(b"s3cret-v1".to_vec())).await.unwrap();
}
