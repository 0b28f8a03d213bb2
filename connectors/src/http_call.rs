//! `http.request`: a generic HTTP call to the provider's `baseUrl`, signed with the connection's
//! credential so the provider can tell it came from us and was not altered.
//!
//! Signature: `X-CS-Timestamp: <unix seconds>` and
//! `X-CS-Signature: v1=<hex HMAC-SHA256(credential, "<timestamp>.<METHOD>.<path and query>.<body>")>`.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::call::{CallError, Credential, excerpt, status_error, transport_error};

pub const TIMESTAMP_HEADER: &str = "x-cs-timestamp";
pub const SIGNATURE_HEADER: &str = "x-cs-signature";
/// Response bodies kept in the run's output, at most.
const MAX_RECORDED_BODY: usize = 64 * 1024;

/// The input of `http.request`.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRequestInput {
    pub method: reqwest::Method,
    /// Path and query, appended to the provider's `baseUrl`; always starts with `/`.
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// Sent as JSON when present.
    pub body: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInput {
    #[serde(default = "default_method")]
    method: String,
    path: String,
    #[serde(default)]
    headers: Map<String, Value>,
    body: Option<Value>,
}

fn default_method() -> String {
    "GET".into()
}

/// Headers a caller may not set: they carry our signature, auth or framing.
const RESERVED_HEADERS: &[&str] =
    &[TIMESTAMP_HEADER, SIGNATURE_HEADER, "authorization", "host", "content-length", "transfer-encoding", "connection"];

impl HttpRequestInput {
    pub(crate) fn parse(input: &Value) -> Result<Self, String> {
        let raw: RawInput = serde_json::from_value(input.clone()).map_err(|e| e.to_string())?;
        let method = match raw.method.to_ascii_uppercase().as_str() {
            m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE") => {
                reqwest::Method::from_bytes(m.as_bytes()).map_err(|e| e.to_string())?
            }
            other => return Err(format!("method {other} is not one of GET, POST, PUT, PATCH, DELETE")),
        };
        // Only a path: a full URL or `//host` would leave the provider's baseUrl.
        if !raw.path.starts_with('/') || raw.path.starts_with("//") || raw.path.contains("..") {
            return Err("path must be an absolute path below the provider's baseUrl".into());
        }
        let mut headers = Vec::new();
        for (name, value) in raw.headers {
            let lower = name.to_ascii_lowercase();
            if RESERVED_HEADERS.contains(&lower.as_str()) {
                return Err(format!("header {name} is set by the engine"));
            }
            let Value::String(value) = value else { return Err(format!("header {name} must be a string")) };
            headers.push((name, value));
        }
        Ok(Self { method, path: raw.path, headers, body: raw.body })
    }
}

/// The signature of one request, as the provider recomputes it.
pub fn signature(credential: &[u8], timestamp: u64, method: &str, path: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, credential);
    let mut context = ring::hmac::Context::with_key(&key);
    for part in [timestamp.to_string().as_bytes(), b".", method.as_bytes(), b".", path.as_bytes(), b"."] {
        context.update(part);
    }
    context.update(body);
    format!("v1={}", hex::encode(context.sign().as_ref()))
}

/// Sends the request, signed as made at `now`; the output is `{status, body}` (JSON when the
/// answer is JSON). With a `bearer` token (OAuth2 client credentials) it is sent as
/// `Authorization: Bearer` too.
pub async fn call(
    http: &reqwest::Client,
    base_url: &reqwest::Url,
    input: &HttpRequestInput,
    credential: &Credential,
    bearer: Option<&str>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Value, CallError> {
    let base = base_url.as_str().trim_end_matches('/');
    let url = reqwest::Url::parse(&format!("{base}{}", input.path))
        .map_err(|e| CallError::Permanent(format!("{base}{}: {e}", input.path)))?;
    // Signed over what goes on the wire: the path and query as the URL encodes them.
    let signed_path = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    };
    let body = match &input.body {
        Some(value) => serde_json::to_vec(value).map_err(|e| CallError::Permanent(e.to_string()))?,
        None => Vec::new(),
    };
    let timestamp = u64::try_from(now.timestamp()).unwrap_or_default();
    let signed = signature(credential.expose(), timestamp, input.method.as_str(), &signed_path, &body);
    let mut request = http
        .request(input.method.clone(), url)
        .header(TIMESTAMP_HEADER, timestamp.to_string())
        .header(SIGNATURE_HEADER, signed);
    for (name, value) in &input.headers {
        request = request.header(name, value);
    }
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    if input.body.is_some() {
        request = request.header(reqwest::header::CONTENT_TYPE, "application/json").body(body);
    }
    let response = request.send().await.map_err(|e| transport_error(&e))?;
    let status = response.status();
    let bytes = response.bytes().await.map_err(|e| transport_error(&e))?;
    if !status.is_success() {
        return Err(status_error(status, &excerpt(&bytes)));
    }
    let recorded = &bytes[..bytes.len().min(MAX_RECORDED_BODY)];
    let body = serde_json::from_slice(recorded)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(recorded).into_owned()));
    Ok(json!({"status": status.as_u16(), "body": body}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_stay_below_the_base_url_and_cannot_forge_our_headers() {
        assert!(HttpRequestInput::parse(&json!({"path": "/v1/messages", "method": "post", "body": {"a": 1}})).is_ok());
        for path in ["https://evil.example/", "//evil.example/x", "/a/../../b", "relative"] {
            assert!(HttpRequestInput::parse(&json!({"path": path})).is_err(), "{path}");
        }
        assert!(HttpRequestInput::parse(&json!({"path": "/x", "headers": {"Authorization": "Bearer x"}})).is_err());
        assert!(HttpRequestInput::parse(&json!({"path": "/x", "method": "TRACE"})).is_err());
    }

    #[test]
    fn the_signature_covers_timestamp_method_path_and_body() {
        let a = signature(b"k", 1, "POST", "/x", b"{}");
        assert!(a.starts_with("v1=") && a.len() == 3 + 64);
        assert_ne!(a, signature(b"k", 2, "POST", "/x", b"{}"));
        assert_ne!(a, signature(b"k", 1, "PUT", "/x", b"{}"));
        assert_ne!(a, signature(b"k", 1, "POST", "/y", b"{}"));
        assert_ne!(a, signature(b"k", 1, "POST", "/x", b"[]"));
    }
}
