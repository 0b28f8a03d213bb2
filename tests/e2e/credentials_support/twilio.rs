//! A local stand-in for Twilio's REST API (v2010) speaking its documented wire format: the API
//! Keys resource (`POST/GET /2010-04-01/Accounts/{AccountSid}/Keys.json`, `DELETE
//! …/Keys/{Sid}.json`) and "Fetch the balance" (`GET …/Balance.json`), all with HTTP Basic
//! authentication as Twilio documents it. As on Twilio, only a Main key (or the account's auth
//! token) may use the Keys resource, a key's secret is shown once (in the create answer), and
//! errors are `{"code", "message", "more_info", "status"}`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use base64::Engine as _;
use serde_json::{Value, json};

pub const ACCOUNT_SID: &str = "AC11111111111111111111111111111111";
/// The Main key the engine issues and revokes with (`keyIssuerCredentialRef`).
pub const MAIN_KEY_SID: &str = "SK00000000000000000000000000000000";
pub const MAIN_KEY_SECRET: &str = "main-key-secret-that-manages-keys";

#[derive(Clone)]
struct Key {
    secret: String,
    friendly_name: String,
    main: bool,
}

#[derive(Default)]
struct TwilioState {
    /// Live keys by sid (a BTreeMap: listed in a stable order).
    keys: BTreeMap<String, Key>,
    /// Keys deleted, in order.
    deleted: Vec<String>,
    /// Balance requests per key sid.
    balance_calls: HashMap<String, usize>,
    /// Keys created so far (also the ones deleted later).
    created: Vec<String>,
    /// Creates that create the key but answer 500, as if the answer was lost.
    lose_create_answers: usize,
    /// Keys created from now on are refused by the balance (`401`) until accepted.
    refuse_new_keys: bool,
    /// How long a create waits, after creating the key, before it answers.
    create_delay: Option<std::time::Duration>,
    refused: Vec<String>,
}

/// The stand-in; `url` is its base URL (the provider's `baseUrl`).
#[derive(Clone)]
pub struct TwilioStub {
    pub url: String,
    state: Arc<Mutex<TwilioState>>,
}

impl TwilioStub {
    pub async fn start() -> Self {
        let mut state = TwilioState::default();
        state.keys.insert(
            MAIN_KEY_SID.into(),
            Key { secret: MAIN_KEY_SECRET.into(), friendly_name: "console main key".into(), main: true },
        );
        let state = Arc::new(Mutex::new(state));
        let app = Router::new()
            .route("/2010-04-01/Accounts/{account}/Keys.json", get(list_keys).post(create_key))
            .route("/2010-04-01/Accounts/{account}/Keys/{file}", delete(delete_key))
            .route("/2010-04-01/Accounts/{account}/Balance.json", get(balance))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url: format!("http://{addr}"), state }
    }

    /// A Standard key created in the console (the credential a connection starts with).
    pub fn console_key(&self, sid: &str, secret: &str) -> String {
        self.state.lock().unwrap().keys.insert(
            sid.into(),
            Key { secret: secret.into(), friendly_name: "console standard key".into(), main: false },
        );
        format!("{sid}:{secret}")
    }

    /// The next `n` creates create their key but answer `500`: the caller never sees the secret.
    pub fn lose_create_answers(&self, n: usize) {
        self.state.lock().unwrap().lose_create_answers = n;
    }

    /// Creates answer only after `delay` (the key exists meanwhile); `None` answers at once.
    pub fn delay_create_answers(&self, delay: Option<std::time::Duration>) {
        self.state.lock().unwrap().create_delay = delay;
    }

    /// Keys created from now on fail the balance check with `401`.
    pub fn refuse_new_keys(&self, refuse: bool) {
        self.state.lock().unwrap().refuse_new_keys = refuse;
    }

    pub fn is_live(&self, sid: &str) -> bool {
        self.state.lock().unwrap().keys.contains_key(sid)
    }

    pub fn deleted(&self) -> Vec<String> {
        self.state.lock().unwrap().deleted.clone()
    }

    pub fn created(&self) -> Vec<String> {
        self.state.lock().unwrap().created.clone()
    }

    /// The live keys labelled `friendly_name`.
    pub fn live_labelled(&self, friendly_name: &str) -> Vec<String> {
        let state = self.state.lock().unwrap();
        state.keys.iter().filter(|(_, k)| k.friendly_name == friendly_name).map(|(sid, _)| sid.clone()).collect()
    }

    /// The live key's `sid:secret` as the engine would store it.
    pub fn credential_of(&self, sid: &str) -> Option<String> {
        self.state.lock().unwrap().keys.get(sid).map(|k| format!("{sid}:{}", k.secret))
    }

    /// The label of a key, live or not yet deleted.
    pub fn label_of(&self, sid: &str) -> Option<String> {
        self.state.lock().unwrap().keys.get(sid).map(|k| k.friendly_name.clone())
    }

    /// How many balance requests authenticated with the key `sid`.
    pub fn balance_calls(&self, sid: &str) -> usize {
        self.state.lock().unwrap().balance_calls.get(sid).copied().unwrap_or(0)
    }
}

fn twilio_error(status: StatusCode, code: u32, message: &str) -> Response {
    let body = json!({"code": code, "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"), "status": status.as_u16()});
    (status, axum::Json(body)).into_response()
}

fn unauthenticated() -> Response {
    twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate")
}

/// The sid of the key (or account) authenticating with HTTP Basic, if valid; whether it may
/// manage keys (a Main key or the account itself).
fn authenticate(state: &TwilioState, headers: &HeaderMap) -> Option<(String, bool)> {
    let encoded = headers.get("authorization")?.to_str().ok()?.strip_prefix("Basic ")?;
    let decoded = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(encoded).ok()?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    let key = state.keys.get(user)?;
    (key.secret == password).then(|| (user.to_owned(), key.main))
}

fn new_sid() -> String {
    format!("SK{}", uuid::Uuid::new_v4().simple())
}

fn rfc2822_now() -> String {
    "Sun, 29 Nov 2026 18:00:00 +0000".into()
}

async fn create_key(
    State(state): State<Arc<Mutex<TwilioState>>>,
    Path(account): Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let (answer, delay) = create_key_now(&state, &account, &headers, &form);
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    answer
}

/// Creates the key (the lock is not held across the answer's delay); the answer and its delay.
fn create_key_now(
    state: &Mutex<TwilioState>,
    account: &str,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> (Response, Option<std::time::Duration>) {
    let mut s = state.lock().unwrap();
    match authenticate(&s, headers) {
        Some((_, true)) if account == ACCOUNT_SID => {}
        Some((_, false)) => {
            return (twilio_error(StatusCode::FORBIDDEN, 20003, "Standard keys cannot manage keys"), None);
        }
        _ => return (unauthenticated(), None),
    }
    let friendly_name = form.get("FriendlyName").cloned().unwrap_or_default();
    if friendly_name.chars().count() > 64 {
        return (twilio_error(StatusCode::BAD_REQUEST, 21202, "FriendlyName is too long"), None);
    }
    let sid = new_sid();
    let secret = format!("issued_{}", uuid::Uuid::new_v4().simple());
    s.keys.insert(sid.clone(), Key { secret: secret.clone(), friendly_name: friendly_name.clone(), main: false });
    s.created.push(sid.clone());
    if s.refuse_new_keys {
        s.refused.push(sid.clone());
    }
    if s.lose_create_answers > 0 {
        s.lose_create_answers -= 1;
        return (twilio_error(StatusCode::INTERNAL_SERVER_ERROR, 20500, "Internal Server Error"), None);
    }
    let date = rfc2822_now();
    let body = json!({"sid": sid, "friendly_name": friendly_name, "date_created": date, "date_updated": date,
        "secret": secret});
    ((StatusCode::CREATED, axum::Json(body)).into_response(), s.create_delay)
}

async fn list_keys(
    State(state): State<Arc<Mutex<TwilioState>>>,
    Path(account): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let s = state.lock().unwrap();
    match authenticate(&s, &headers) {
        Some((_, true)) if account == ACCOUNT_SID => {}
        Some((_, false)) => return twilio_error(StatusCode::FORBIDDEN, 20003, "Standard keys cannot manage keys"),
        _ => return unauthenticated(),
    }
    // Pages of 2 at most, whatever PageSize asks, so the client must follow next_page_uri.
    let page_size = query.get("PageSize").and_then(|p| p.parse::<usize>().ok()).unwrap_or(50).clamp(1, 2);
    let page = query.get("Page").and_then(|p| p.parse::<usize>().ok()).unwrap_or(0);
    let all: Vec<Value> = s
        .keys
        .iter()
        .map(|(sid, k)| {
            json!({"sid": sid, "friendly_name": k.friendly_name, "date_created": rfc2822_now(),
                "date_updated": rfc2822_now()})
        })
        .collect();
    let start = page * page_size;
    let keys: Vec<Value> = all.iter().skip(start).take(page_size).cloned().collect();
    let base = format!("/2010-04-01/Accounts/{account}/Keys.json");
    let next = (start + page_size < all.len())
        .then(|| format!("{base}?PageSize={page_size}&Page={}&PageToken=PA{}", page + 1, page + 1));
    axum::Json(
        json!({"keys": keys, "end": start + keys.len(), "first_page_uri": format!("{base}?PageSize={page_size}&Page=0"),
        "next_page_uri": next, "page": page, "page_size": page_size, "previous_page_uri": null, "start": start,
        "uri": format!("{base}?PageSize={page_size}&Page={page}")}),
    )
    .into_response()
}

async fn delete_key(
    State(state): State<Arc<Mutex<TwilioState>>>,
    Path((account, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let mut s = state.lock().unwrap();
    match authenticate(&s, &headers) {
        Some((_, true)) if account == ACCOUNT_SID => {}
        Some((_, false)) => return twilio_error(StatusCode::FORBIDDEN, 20003, "Standard keys cannot manage keys"),
        _ => return unauthenticated(),
    }
    let Some(sid) = file.strip_suffix(".json") else {
        return twilio_error(StatusCode::NOT_FOUND, 20404, "The requested resource was not found");
    };
    if s.keys.remove(sid).is_none() {
        return twilio_error(StatusCode::NOT_FOUND, 20404, "The requested resource was not found");
    }
    s.deleted.push(sid.to_owned());
    StatusCode::NO_CONTENT.into_response()
}

async fn balance(
    State(state): State<Arc<Mutex<TwilioState>>>,
    Path(account): Path<String>,
    headers: HeaderMap,
) -> Response {
    let mut s = state.lock().unwrap();
    let Some((sid, _)) = authenticate(&s, &headers) else { return unauthenticated() };
    *s.balance_calls.entry(sid.clone()).or_default() += 1;
    if account != ACCOUNT_SID || s.refused.contains(&sid) {
        return unauthenticated();
    }
    axum::Json(json!({"account_sid": ACCOUNT_SID, "balance": "12.34", "currency": "USD"})).into_response()
}
