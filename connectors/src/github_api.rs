//! GitHub's REST API client: the operations runs perform against GitHub.
//!
//! `OpenPullRequest` is "Create a pull request"
//! (`POST /repos/{owner}/{repo}/pulls`, <https://docs.github.com/rest/pulls/pulls#create-a-pull-request>):
//! JSON body `{title, head, base, body?, draft?}`, headers `Accept: application/vnd.github+json`,
//! `X-GitHub-Api-Version: 2022-11-28` and the connection's credential as the bearer token;
//! `201 Created` answers the pull request (`id`, `number`, `html_url`, `state`, ...), errors answer
//! `{message, errors?, documentation_url}` (`422 Validation Failed` for a duplicate pull request
//! or an unknown branch).

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::call::{CallError, Credential, endpoint, excerpt, status_error, transport_error};

/// The REST API version this client speaks.
pub const API_VERSION: &str = "2022-11-28";

/// The input of `OpenPullRequest`; `owner` defaults to the connection's `organization` and
/// `base` to its `defaultBranch`.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenPullRequest {
    pub owner: String,
    pub repo: String,
    pub title: String,
    pub head: String,
    pub base: String,
    pub body: Option<String>,
    pub draft: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OpenPullRequestInput {
    owner: Option<String>,
    repo: String,
    title: String,
    head: String,
    base: Option<String>,
    body: Option<String>,
    #[serde(default)]
    draft: bool,
}

impl OpenPullRequest {
    pub(crate) fn parse(input: &Value, configuration: &Map<String, Value>) -> Result<Self, String> {
        let input: OpenPullRequestInput = serde_json::from_value(input.clone()).map_err(|e| e.to_string())?;
        let setting = |key: &str| configuration.get(key).and_then(Value::as_str).map(str::to_owned);
        let owner = input
            .owner
            .or_else(|| setting("organization"))
            .ok_or("owner is missing and the connection has no configuration.organization")?;
        let base = input.base.or_else(|| setting("defaultBranch")).unwrap_or_else(|| "main".into());
        // Owner and repository become path segments: nothing that could leave them.
        for (field, value) in [("owner", &owner), ("repo", &input.repo)] {
            let valid = !value.is_empty()
                && value.len() <= 100
                && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                && value != "."
                && value != "..";
            if !valid {
                return Err(format!("{field} must be a GitHub account or repository name"));
            }
        }
        if input.title.trim().is_empty() {
            return Err("title must not be empty".into());
        }
        if input.head.trim().is_empty() {
            return Err("head must not be empty".into());
        }
        Ok(Self {
            owner,
            repo: input.repo,
            title: input.title,
            head: input.head,
            base,
            body: input.body,
            draft: input.draft,
        })
    }
}

/// The part of GitHub's pull request answer a run records.
#[derive(Deserialize)]
struct PullRequest {
    id: u64,
    number: u64,
    html_url: String,
    state: String,
}

/// GitHub's error body.
#[derive(Deserialize)]
struct GitHubError {
    message: String,
    #[serde(default)]
    errors: Vec<Value>,
}

/// Opens the pull request; the output is `{number, id, htmlUrl, state}`.
pub async fn open_pull_request(
    http: &reqwest::Client,
    base_url: &reqwest::Url,
    input: &OpenPullRequest,
    credential: &Credential,
) -> Result<Value, CallError> {
    let url = endpoint(base_url, &["repos", &input.owner, &input.repo, "pulls"])?;
    let token = std::str::from_utf8(credential.expose())
        .map_err(|_| CallError::Permanent("the connection's credential is not a valid token".into()))?;
    let mut body = json!({"title": input.title, "head": input.head, "base": input.base});
    if let Some(text) = &input.body {
        body["body"] = json!(text);
    }
    if input.draft {
        body["draft"] = json!(true);
    }
    let response = http
        .post(url)
        .header(reqwest::header::ACCEPT, "application/vnd.github+json")
        .header("X-GitHub-Api-Version", API_VERSION)
        .bearer_auth(token.trim())
        .json(&body)
        .send()
        .await
        .map_err(|e| transport_error(&e))?;
    let status = response.status();
    let rate_limited = response.headers().get("x-ratelimit-remaining").is_some_and(|v| v.as_bytes() == b"0");
    let bytes = response.bytes().await.map_err(|e| transport_error(&e))?;
    if status.is_success() {
        let pr: PullRequest = serde_json::from_slice(&bytes)
            .map_err(|e| CallError::Retryable(format!("GitHub answered {status} with an unreadable body: {e}")))?;
        return Ok(json!({"number": pr.number, "id": pr.id, "htmlUrl": pr.html_url, "state": pr.state}));
    }
    let detail = match serde_json::from_slice::<GitHubError>(&bytes) {
        Ok(error) if error.errors.is_empty() => error.message,
        Ok(error) => format!("{} {}", error.message, Value::Array(error.errors)),
        Err(_) => excerpt(&bytes),
    };
    // GitHub answers an exhausted rate limit with 403 (primary) as well as 429 (secondary).
    if status == reqwest::StatusCode::FORBIDDEN && rate_limited {
        return Err(CallError::Retryable(format!("{status}: rate limited: {detail}")));
    }
    Err(status_error(status, &format!("GitHub: {detail}")))
}

/// The health operation: "Get the authenticated user" (`GET /user`,
/// <https://docs.github.com/rest/users/users#get-the-authenticated-user>). `200` with the user
/// (`login`, `id`, ...) says the credential works; `401 Bad credentials` says it does not.
pub async fn get_authenticated_user(
    http: &reqwest::Client,
    base_url: &reqwest::Url,
    token: &str,
) -> Result<Value, CallError> {
    let url = endpoint(base_url, &["user"])?;
    let response = http
        .get(url)
        .header(reqwest::header::ACCEPT, "application/vnd.github+json")
        .header("X-GitHub-Api-Version", API_VERSION)
        .bearer_auth(token.trim())
        .send()
        .await
        .map_err(|e| transport_error(&e))?;
    let status = response.status();
    let bytes = response.bytes().await.map_err(|e| transport_error(&e))?;
    if status.is_success() {
        let user: Value = serde_json::from_slice(&bytes)
            .map_err(|e| CallError::Retryable(format!("GitHub answered {status} with an unreadable body: {e}")))?;
        return Ok(json!({"status": status.as_u16(), "login": user["login"], "id": user["id"]}));
    }
    let detail = match serde_json::from_slice::<GitHubError>(&bytes) {
        Ok(error) => error.message,
        Err(_) => excerpt(&bytes),
    };
    Err(status_error(status, &format!("GitHub: {detail}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configuration() -> Map<String, Value> {
        json!({"organization": "connectsoft-booking", "defaultBranch": "develop"})
            .as_object()
            .cloned()
            .unwrap_or_default()
    }

    #[test]
    fn owner_and_base_default_to_the_connections_configuration() {
        let pr =
            OpenPullRequest::parse(&json!({"repo": "booking", "title": "Add x", "head": "feat/x"}), &configuration())
                .unwrap();
        assert_eq!((pr.owner.as_str(), pr.base.as_str()), ("connectsoft-booking", "develop"));
    }

    #[test]
    fn names_that_would_leave_their_path_segment_are_refused() {
        for repo in ["../admin", "a/b", "", ".."] {
            let input = json!({"repo": repo, "title": "t", "head": "h"});
            assert!(OpenPullRequest::parse(&input, &configuration()).is_err(), "{repo}");
        }
        assert!(
            OpenPullRequest::parse(&json!({"repo": "r", "title": "t", "head": "h", "extra": 1}), &configuration())
                .is_err()
        );
    }

    #[test]
    fn endpoints_keep_the_base_path() {
        let base = reqwest::Url::parse("https://ghe.example/api/v3/").unwrap();
        assert_eq!(
            endpoint(&base, &["repos", "o", "r", "pulls"]).unwrap().as_str(),
            "https://ghe.example/api/v3/repos/o/r/pulls"
        );
    }
}
