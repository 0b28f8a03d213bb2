//! Twilio's REST API (v2010) client: the health operation and the API Keys resource, through
//! which the engine has Twilio issue a connection's next API key and revoke old ones.
//!
//! - A Twilio credential in the vault is an API key as HTTP Basic user and password,
//!   `SK…:secret` (the key's sid, a colon, its secret); the account is the connection's
//!   `configuration.accountSid` (`AC…`), which every URL names.
//! - **Health** is "Fetch the balance" (`GET /2010-04-01/Accounts/{AccountSid}/Balance.json`), a
//!   read every Standard key may make: `200 {account_sid, balance, currency}`; a refused key is
//!   `401 {"code": 20003, "message": "Authenticate", ...}`.
//! - **Keys** (<https://www.twilio.com/docs/iam/api-keys/key-resource-v2010>): `POST
//!   /2010-04-01/Accounts/{AccountSid}/Keys.json` with the form field `FriendlyName` answers `201
//!   {sid, friendly_name, date_created, date_updated, secret}`; the secret is shown only in this
//!   answer. `GET …/Keys.json?PageSize=N` lists keys (`keys`, `next_page_uri`) without secrets;
//!   `DELETE …/Keys/{sid}.json` answers `204`. Only a Main key or the account's own credentials
//!   (`AC…:authToken`) may call the Keys resource, so issuing uses the connection's
//!   `keyIssuerCredentialRef`, never the key being rotated.
//!
//! Creating a key is not idempotent and its secret cannot be read again, so each key is created
//! with a label (its `FriendlyName`) the caller derives from the rotation: before creating, keys
//! already carrying the label (left by an attempt that died before the secret was stored) are
//! deleted, so a retry never leaves a second live key behind.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::call::{CallError, Credential, endpoint, excerpt, status_error, transport_error};

/// The REST API version every path starts with.
pub const API_VERSION_PATH: &str = "2010-04-01";
/// The configuration key naming the Twilio account (`AC…`).
pub const ACCOUNT_SID: &str = "accountSid";
/// `FriendlyName` is at most 64 characters.
pub const MAX_FRIENDLY_NAME: usize = 64;
/// Keys listed per page (Twilio's maximum is 1000), and pages read at most when looking for
/// keys with a label.
const PAGE_SIZE: u32 = 1000;
const MAX_PAGES: usize = 20;

/// A Twilio account sid: `AC` and 32 hex digits.
pub fn is_account_sid(sid: &str) -> bool {
    sid_with_prefix(sid, "AC")
}

/// A Twilio API key sid: `SK` and 32 hex digits.
pub fn is_key_sid(sid: &str) -> bool {
    sid_with_prefix(sid, "SK")
}

fn sid_with_prefix(sid: &str, prefix: &str) -> bool {
    sid.len() == 34 && sid.starts_with(prefix) && sid[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// HTTP Basic user and password from a credential `USER:PASSWORD` (an API key `SK…:secret`, or
/// the account's `AC…:authToken`). The error never contains the credential.
pub fn basic_auth(credential: &Credential) -> Result<(String, String), CallError> {
    let text = std::str::from_utf8(credential.expose())
        .map_err(|_| CallError::Permanent("the Twilio credential is not text".into()))?
        .trim();
    match text.split_once(':') {
        Some((user, password)) if (is_key_sid(user) || is_account_sid(user)) && !password.is_empty() => {
            Ok((user.to_owned(), password.to_owned()))
        }
        _ => Err(CallError::Permanent(
            "the Twilio credential is not `SK…:secret` (an API key) or `AC…:authToken`".into(),
        )),
    }
}

/// The API key sid of a credential `SK…:secret`; `None` for anything else.
pub fn key_sid(credential: &Credential) -> Option<String> {
    basic_auth(credential).ok().map(|(user, _)| user).filter(|user| is_key_sid(user))
}

/// Where a connection's account lives: the API's base URL and the account sid.
#[derive(Debug, Clone, PartialEq)]
pub struct Account {
    pub base_url: reqwest::Url,
    pub sid: String,
}

impl Account {
    pub fn new(base_url: reqwest::Url, sid: &str) -> Result<Self, String> {
        if !is_account_sid(sid) {
            return Err(format!("configuration.{ACCOUNT_SID} must be a Twilio account sid (AC and 32 hex digits)"));
        }
        Ok(Self { base_url, sid: sid.to_owned() })
    }

    fn url(&self, tail: &[&str]) -> Result<reqwest::Url, CallError> {
        let mut segments = vec![API_VERSION_PATH, "Accounts"];
        segments.extend_from_slice(tail);
        endpoint(&self.base_url, &segments)
    }
}

/// A key Twilio issued: its sid and the credential `SK…:secret` to store. `Debug` hides it.
pub struct IssuedKey {
    pub sid: String,
    pub credential: Credential,
}

impl std::fmt::Debug for IssuedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedKey").field("sid", &self.sid).field("credential", &self.credential).finish()
    }
}

#[derive(Deserialize)]
struct CreatedKey {
    sid: String,
    secret: String,
}

#[derive(Deserialize)]
struct KeyPage {
    #[serde(default)]
    keys: Vec<ListedKey>,
    next_page_uri: Option<String>,
}

#[derive(Deserialize)]
struct ListedKey {
    sid: String,
    #[serde(default)]
    friendly_name: Option<String>,
}

/// Twilio's error body.
#[derive(Deserialize)]
struct TwilioError {
    #[serde(default)]
    code: Option<u64>,
    message: String,
}

fn failure(status: reqwest::StatusCode, body: &[u8]) -> CallError {
    let detail = match serde_json::from_slice::<TwilioError>(body) {
        Ok(TwilioError { code: Some(code), message }) => format!("Twilio: {message} (error {code})"),
        Ok(TwilioError { code: None, message }) => format!("Twilio: {message}"),
        Err(_) => format!("Twilio: {}", excerpt(body)),
    };
    status_error(status, &detail)
}

/// The health operation: "Fetch the balance". The output names the account and the currency,
/// never the credential (nor the balance).
pub async fn fetch_balance(
    http: &reqwest::Client,
    account: &Account,
    credential: &Credential,
) -> Result<Value, CallError> {
    let (user, password) = basic_auth(credential)?;
    let url = account.url(&[&account.sid, "Balance.json"])?;
    let response = http.get(url).basic_auth(&user, Some(&password)).send().await.map_err(|e| transport_error(&e))?;
    let status = response.status();
    let bytes = response.bytes().await.map_err(|e| transport_error(&e))?;
    if !status.is_success() {
        return Err(failure(status, &bytes));
    }
    let balance: Value = serde_json::from_slice(&bytes)
        .map_err(|e| CallError::Retryable(format!("Twilio answered {status} with an unreadable body: {e}")))?;
    Ok(json!({"status": status.as_u16(), "accountSid": balance["account_sid"], "currency": balance["currency"]}))
}

/// Creates an API key labelled `friendly_name` with the issuer's credentials (a Main key or the
/// account's auth token), after deleting keys that already carry the label: they were created
/// by an attempt that died before their secret was stored, so nobody can use them.
pub async fn issue_key(
    http: &reqwest::Client,
    account: &Account,
    issuer: &Credential,
    friendly_name: &str,
) -> Result<IssuedKey, CallError> {
    if friendly_name.is_empty() || friendly_name.chars().count() > MAX_FRIENDLY_NAME {
        return Err(CallError::Permanent(format!("a key label must be 1 to {MAX_FRIENDLY_NAME} characters")));
    }
    for orphan in keys_labelled(http, account, issuer, friendly_name).await? {
        delete_key(http, account, issuer, &orphan).await?;
    }
    let (user, password) = basic_auth(issuer)?;
    let body: String =
        url::form_urlencoded::Serializer::new(String::new()).append_pair("FriendlyName", friendly_name).finish();
    let response = http
        .post(account.url(&[&account.sid, "Keys.json"])?)
        .basic_auth(&user, Some(&password))
        .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .map_err(|e| transport_error(&e))?;
    let status = response.status();
    let bytes = response.bytes().await.map_err(|e| transport_error(&e))?;
    if !status.is_success() {
        return Err(failure(status, &bytes));
    }
    // An unreadable answer may still mean a key was created: the retry finds it by its label.
    let created: CreatedKey = serde_json::from_slice(&bytes)
        .map_err(|e| CallError::Retryable(format!("Twilio answered {status} without a readable key: {e}")))?;
    if !is_key_sid(&created.sid) || created.secret.is_empty() {
        return Err(CallError::Retryable(format!("Twilio answered {status} without a key sid and secret")));
    }
    let credential = Credential::new(format!("{}:{}", created.sid, created.secret).into_bytes());
    Ok(IssuedKey { sid: created.sid, credential })
}

/// The sids of the account's keys labelled `friendly_name`.
pub async fn keys_labelled(
    http: &reqwest::Client,
    account: &Account,
    issuer: &Credential,
    friendly_name: &str,
) -> Result<Vec<String>, CallError> {
    let (user, password) = basic_auth(issuer)?;
    let first = account.url(&[&account.sid, "Keys.json"])?;
    let mut url = first.clone();
    url.query_pairs_mut().append_pair("PageSize", &PAGE_SIZE.to_string());
    let mut found = Vec::new();
    for _ in 0..MAX_PAGES {
        let response =
            http.get(url.clone()).basic_auth(&user, Some(&password)).send().await.map_err(|e| transport_error(&e))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| transport_error(&e))?;
        if !status.is_success() {
            return Err(failure(status, &bytes));
        }
        let page: KeyPage = serde_json::from_slice(&bytes)
            .map_err(|e| CallError::Retryable(format!("Twilio answered {status} with an unreadable key list: {e}")))?;
        found
            .extend(page.keys.into_iter().filter(|k| k.friendly_name.as_deref() == Some(friendly_name)).map(|k| k.sid));
        // The next page is a path of the same list: it never leaves the account's Keys.
        match page.next_page_uri {
            Some(next) if next.starts_with(first.path()) => {
                url = first.join(&next).map_err(|e| CallError::Permanent(format!("Twilio next_page_uri: {e}")))?;
            }
            Some(next) => return Err(CallError::Permanent(format!("Twilio next_page_uri {next} leaves the key list"))),
            None => return Ok(found),
        }
    }
    Err(CallError::Permanent(format!(
        "more than {} keys: the label could not be looked for",
        PAGE_SIZE as usize * MAX_PAGES
    )))
}

/// Deletes the key `sid`; a key that is already gone (`404`) counts as deleted.
pub async fn delete_key(
    http: &reqwest::Client,
    account: &Account,
    issuer: &Credential,
    sid: &str,
) -> Result<(), CallError> {
    if !is_key_sid(sid) {
        return Err(CallError::Permanent(format!("{sid} is not a Twilio API key sid")));
    }
    let (user, password) = basic_auth(issuer)?;
    let file = format!("{sid}.json");
    let response = http
        .delete(account.url(&[&account.sid, "Keys", &file])?)
        .basic_auth(&user, Some(&password))
        .send()
        .await
        .map_err(|e| transport_error(&e))?;
    let status = response.status();
    if status.is_success() || status == reqwest::StatusCode::NOT_FOUND {
        return Ok(());
    }
    let bytes = response.bytes().await.map_err(|e| transport_error(&e))?;
    Err(failure(status, &bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "SK0123456789abcdef0123456789abcdef";
    const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";

    #[test]
    fn credentials_are_a_key_or_account_sid_and_a_secret_and_errors_never_repeat_them() {
        let key = Credential::new(format!("{KEY}:s3cret\n").into_bytes());
        assert_eq!(basic_auth(&key).unwrap(), (KEY.to_owned(), "s3cret".to_owned()));
        assert_eq!(key_sid(&key).as_deref(), Some(KEY));
        let account = Credential::new(format!("{ACCOUNT}:token").into_bytes());
        assert!(basic_auth(&account).is_ok());
        assert_eq!(key_sid(&account), None, "an auth token is not a key");
        for bad in ["s3cret-only", "SKnothex:s3cret", &format!("{KEY}:")] {
            let error = basic_auth(&Credential::new(bad.as_bytes().to_vec())).unwrap_err();
            assert!(!error.is_retryable() && !error.to_string().contains("s3cret"), "{error}");
        }
    }

    #[test]
    fn urls_name_the_account_below_the_base() {
        let account = Account::new(reqwest::Url::parse("https://api.twilio.com").unwrap(), ACCOUNT).unwrap();
        assert_eq!(
            account.url(&[ACCOUNT, "Keys", &format!("{KEY}.json")]).unwrap().as_str(),
            format!("https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT}/Keys/{KEY}.json")
        );
        assert!(Account::new(reqwest::Url::parse("https://api.twilio.com").unwrap(), "AC/../x").is_err());
    }

    #[test]
    fn errors_name_twilios_code_and_classify_the_status() {
        let body = br#"{"code": 20003, "message": "Authenticate", "more_info": "https://www.twilio.com/docs/errors/20003", "status": 401}"#;
        let error = failure(reqwest::StatusCode::UNAUTHORIZED, body);
        assert_eq!(error, CallError::Permanent("401 Unauthorized: Twilio: Authenticate (error 20003)".into()));
        assert!(failure(reqwest::StatusCode::SERVICE_UNAVAILABLE, b"down").is_retryable());
    }

    #[test]
    fn issued_keys_are_redacted_in_debug() {
        let issued = IssuedKey { sid: KEY.into(), credential: Credential::new(b"SK:s3cret".to_vec()) };
        let shown = format!("{issued:?}");
        assert!(shown.contains(KEY) && !shown.contains("s3cret"), "{shown}");
    }
}
