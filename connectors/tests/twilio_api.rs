//! Twilio's API Keys client against a local endpoint speaking Twilio's documented wire format:
//! the form `FriendlyName` and HTTP Basic of the issuer on create, key lists paged through
//! `next_page_uri`, `DELETE` answering `204` (or `404` for a key already gone).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use base64::Engine as _;
use connectors::operations::Credential;
use connectors::twilio_api::{Account, delete_key, issue_key, keys_labelled};
use serde_json::json;

const ACCOUNT: &str = "AC22222222222222222222222222222222";
const MAIN: &str = "SK00000000000000000000000000000000:main-secret";

#[derive(Default)]
struct Keys {
    /// (sid, friendly name), listed one per page.
    keys: Vec<(String, String)>,
    /// The `Authorization` and form body of each create.
    creates: Vec<(String, String)>,
    deleted: Vec<String>,
    /// A next page that leaves the key list.
    foreign_next_page: bool,
}

type Shared = Arc<Mutex<Keys>>;

async fn list(State(state): State<Shared>, Query(query): Query<HashMap<String, String>>) -> Response {
    let s = state.lock().unwrap();
    let page: usize = query.get("Page").and_then(|p| p.parse().ok()).unwrap_or(0);
    let keys: Vec<_> =
        s.keys.iter().skip(page).take(1).map(|(sid, name)| json!({"sid": sid, "friendly_name": name})).collect();
    let next = if s.foreign_next_page {
        Some("/2010-04-01/Accounts/AC22222222222222222222222222222222/Messages.json?Page=1".to_owned())
    } else {
        (page + 1 < s.keys.len())
            .then(|| format!("/2010-04-01/Accounts/{ACCOUNT}/Keys.json?PageSize=1&Page={}", page + 1))
    };
    axum::Json(json!({"keys": keys, "next_page_uri": next, "page": page, "page_size": 1})).into_response()
}

async fn create(State(state): State<Shared>, headers: HeaderMap, body: String) -> Response {
    let auth = headers.get("authorization").unwrap().to_str().unwrap().to_owned();
    state.lock().unwrap().creates.push((auth, body));
    let sid = "SK33333333333333333333333333333333";
    (
        StatusCode::CREATED,
        axum::Json(json!({"sid": sid, "friendly_name": "x", "secret": "fresh-secret",
        "date_created": "Sun, 29 Nov 2026 18:00:00 +0000", "date_updated": "Sun, 29 Nov 2026 18:00:00 +0000"})),
    )
        .into_response()
}

async fn remove(State(state): State<Shared>, Path((_, file)): Path<(String, String)>) -> Response {
    let mut s = state.lock().unwrap();
    let sid = file.trim_end_matches(".json").to_owned();
    let before = s.keys.len();
    s.keys.retain(|(k, _)| *k != sid);
    if s.keys.len() == before {
        return (StatusCode::NOT_FOUND, axum::Json(json!({"code": 20404, "message": "Not found", "status": 404})))
            .into_response();
    }
    s.deleted.push(sid);
    StatusCode::NO_CONTENT.into_response()
}

async fn endpoint(keys: Keys) -> (Account, Shared) {
    let state: Shared = Arc::new(Mutex::new(keys));
    let app = Router::new()
        .route("/2010-04-01/Accounts/{account}/Keys.json", get(list).post(create))
        .route("/2010-04-01/Accounts/{account}/Keys/{file}", delete(remove))
        .with_state(Arc::clone(&state));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (Account::new(reqwest::Url::parse(&format!("http://{addr}")).unwrap(), ACCOUNT).unwrap(), state)
}

fn sid(n: u8) -> String {
    format!("SK{}", format!("{n:x}").repeat(32))
}

#[tokio::test]
async fn a_label_is_looked_for_on_every_page_and_its_keys_deleted_before_the_new_one_is_created() {
    let label = "run-1 cred-twilio-sms v2";
    let keys =
        vec![(sid(1), "console".into()), (sid(2), label.into()), (sid(3), "other".into()), (sid(4), label.into())];
    let (account, state) = endpoint(Keys { keys, ..Keys::default() }).await;
    let http = reqwest::Client::new();
    let issuer = Credential::new(MAIN.as_bytes().to_vec());

    assert_eq!(keys_labelled(&http, &account, &issuer, label).await.unwrap(), vec![sid(2), sid(4)]);
    let issued = issue_key(&http, &account, &issuer, label).await.unwrap();
    assert_eq!(issued.sid, "SK33333333333333333333333333333333");
    assert_eq!(issued.credential.value_for_vault(), b"SK33333333333333333333333333333333:fresh-secret");

    let s = state.lock().unwrap();
    assert_eq!(s.deleted, vec![sid(2), sid(4)], "the orphans under the label, before the create");
    let (auth, body) = &s.creates[0];
    assert_eq!(auth, &format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(MAIN)));
    assert_eq!(body, "FriendlyName=run-1+cred-twilio-sms+v2");
}

#[tokio::test]
async fn a_key_already_gone_counts_as_deleted_and_a_page_outside_the_key_list_is_refused() {
    let (account, state) = endpoint(Keys { keys: vec![(sid(1), "a".into())], ..Keys::default() }).await;
    let http = reqwest::Client::new();
    let issuer = Credential::new(MAIN.as_bytes().to_vec());
    delete_key(&http, &account, &issuer, &sid(1)).await.unwrap();
    delete_key(&http, &account, &issuer, &sid(1)).await.unwrap();
    assert!(delete_key(&http, &account, &issuer, "../Messages/SM1").await.is_err(), "only key sids");

    state.lock().unwrap().foreign_next_page = true;
    let refused = keys_labelled(&http, &account, &issuer, "a").await.unwrap_err();
    assert!(!refused.is_retryable() && refused.to_string().contains("leaves the key list"), "{refused}");
}
