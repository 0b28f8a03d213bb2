//! The auditor's view of the store (scope `integration.audit.read`): the token's tenant's events
//! in global order, as stored or upcast to the current schema of their type, paged by position.
//!
//! - `GET /audit/events?from=N`: every event of the tenant, from global position `N` on.
//! - `GET /audit/streams/{streamId}/events`: one stream of the tenant's.
//!
//! A page answers `nextFrom`, the position to ask for next, and, when it was full (more may
//! follow), a `next` link (also as `Link: <...>; rel="next"`). An empty page with `nextFrom` is
//! the tail of the store: ask again later to follow it.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use axum::routing::get;
use chrono::{DateTime, Utc};
use domain::EventEnvelope;
use schemars::JsonSchema;
use serde::Serialize;
use store::EventFilter;
use store::audit::{MAX_EVENT_TYPES, QueryError};

use crate::Shared;
use crate::extract::Authorized;
use crate::operations as op;
use crate::problem::Problem;
use crate::respond::ok_json;

/// Events per page when the caller does not say.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest page a caller may ask for.
pub const MAX_LIMIT: usize = 1000;

pub fn router() -> Router<Shared> {
    Router::new()
        .route("/audit/events", get(tenant_events))
        .route("/audit/streams/{stream_id}/events", get(stream_events))
}

/// One page of an audit read.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditEventsPage {
    /// The events, in global order; each upcast to its type's current schema version unless
    /// `asStored=true` was asked (the hash chain covers the stored form).
    pub events: Vec<EventEnvelope>,
    /// The global position to continue from (`from` of the next request).
    pub next_from: u64,
    /// The next page, when this one was full; absent once the page reached the store's end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// The query parameters both endpoints read, checked; each error names its parameter.
struct AuditQuery {
    from: u64,
    limit: usize,
    event_types: Vec<String>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    as_stored: bool,
}

impl AuditQuery {
    /// `allowed` are the parameters the endpoint accepts; any other is refused so that a typo
    /// (`form=`) does not silently return the whole history.
    fn parse(pairs: &[(String, String)], allowed: &[&str]) -> Result<Self, Problem> {
        let mut query =
            Self { from: 1, limit: DEFAULT_LIMIT, event_types: Vec::new(), since: None, until: None, as_stored: false };
        let bad = |name: &str, why: &str| Problem::bad_request(format!("query parameter {name}: {why}"));
        for (name, value) in pairs {
            if !allowed.contains(&name.as_str()) {
                return Err(Problem::bad_request(format!(
                    "unknown query parameter {name}; this endpoint takes {}",
                    allowed.join(", ")
                )));
            }
            match name.as_str() {
                "from" => {
                    query.from = value
                        .parse()
                        .ok()
                        .filter(|p| *p >= 1)
                        .ok_or_else(|| bad("from", "must be a global position (an integer of at least 1)"))?;
                }
                "limit" => {
                    query.limit = value
                        .parse()
                        .ok()
                        .filter(|l| (1..=MAX_LIMIT).contains(l))
                        .ok_or_else(|| bad("limit", &format!("must be an integer from 1 to {MAX_LIMIT}")))?;
                }
                "type" => query
                    .event_types
                    .extend(value.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned)),
                "since" => query.since = Some(instant(value).map_err(|why| bad("since", &why))?),
                "until" => query.until = Some(instant(value).map_err(|why| bad("until", &why))?),
                "asStored" => {
                    query.as_stored = match value.as_str() {
                        "true" => true,
                        "false" => false,
                        _ => return Err(bad("asStored", "must be true or false")),
                    }
                }
                other => return Err(bad(other, "is not supported here")),
            }
        }
        Ok(query)
    }

    /// The query string that asks for the page after this one, from `next_from`.
    fn next_query(&self, next_from: u64) -> String {
        let mut parts = vec![format!("from={next_from}"), format!("limit={}", self.limit)];
        if !self.event_types.is_empty() {
            let types: Vec<String> = self.event_types.iter().map(|t| percent_encode(t)).collect();
            parts.push(format!("type={}", types.join(",")));
        }
        let time = |t: &DateTime<Utc>| percent_encode(&t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true));
        if let Some(since) = &self.since {
            parts.push(format!("since={}", time(since)));
        }
        if let Some(until) = &self.until {
            parts.push(format!("until={}", time(until)));
        }
        if self.as_stored {
            parts.push("asStored=true".into());
        }
        parts.join("&")
    }
}

fn instant(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("must be an RFC 3339 instant such as 2026-06-11T09:00:00Z ({e})"))
}

async fn tenant_events(
    caller: Authorized<op::AuditTenantEvents>,
    State(app): State<Shared>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, Problem> {
    let query = AuditQuery::parse(&pairs, &["from", "limit", "type", "since", "until", "asStored"])?;
    // A range that ends where (or before) it starts holds no events: its page is empty, like
    // that of any range nothing occurred in.
    if let (Some(since), Some(until)) = (query.since, query.until)
        && since >= until
    {
        return Ok(page(Vec::new(), &query, "/audit/events"));
    }
    let filter = EventFilter {
        tenant_id: Some(caller.0.tenant_id.clone()),
        event_types: query.event_types.clone(),
        occurred_from: query.since,
        occurred_before: query.until,
        ..EventFilter::default()
    };
    store::audit::check(&filter).map_err(refused)?;
    let events = app.store.read_filtered(&filter, query.from - 1, query.limit).await?;
    Ok(page(events, &query, "/audit/events"))
}

async fn stream_events(
    caller: Authorized<op::AuditStreamEvents>,
    State(app): State<Shared>,
    Path(stream_id): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, Problem> {
    let query = AuditQuery::parse(&pairs, &["from", "limit", "asStored"])?;
    let tenant = &caller.0.tenant_id;
    // The resource id alone names the stream in the token's tenant; a full stream id must be
    // the tenant's own. Another tenant's stream is as unknown as a missing one.
    let full_id = match stream_id.split_once('/') {
        None => format!("{tenant}/{stream_id}"),
        Some((owner, _)) if owner == tenant => stream_id.clone(),
        Some(_) => return Err(Problem::not_found(format!("stream {stream_id} not found"))),
    };
    let filter = EventFilter { tenant_id: Some(tenant.clone()), stream_id: Some(full_id), ..EventFilter::default() };
    let events = app.store.read_filtered(&filter, query.from - 1, query.limit).await?;
    // An empty page past a stream's end is still the stream's; one with no events at all is not.
    if events.is_empty() && app.store.read_filtered(&filter, 0, 1).await?.is_empty() {
        return Err(Problem::not_found(format!("stream {stream_id} not found")));
    }
    let path = format!("/audit/streams/{}/events", percent_encode(&stream_id));
    Ok(page(events, &query, &path))
}

/// A question the auditors' read refuses, named by the query parameter that asked it.
fn refused(error: QueryError) -> Problem {
    let (name, why) = match error {
        QueryError::TimesReversed => ("since", "must be before until".to_owned()),
        QueryError::TooManyTypes => ("type", format!("names at most {MAX_EVENT_TYPES} event types")),
        // Neither is asked by these endpoints: `from` is one bound, the stream is the tenant's.
        other => ("from", other.to_string()),
    };
    Problem::bad_request(format!("query parameter {name}: {why}"))
}

/// The answer for a page of `events` read for `query`.
fn page(mut events: Vec<EventEnvelope>, query: &AuditQuery, path: &str) -> Response {
    let full = events.len() == query.limit;
    let next_from = events.last().map_or(query.from, |e| e.global_position + 1);
    for event in &mut events {
        if let Err(e) = store::audit::show(event, query.as_stored) {
            tracing::warn!(global_position = event.global_position, error = %e, "audit: event shown as stored");
        }
    }
    let next = full.then(|| format!("{path}?{}", query.next_query(next_from)));
    let mut response = ok_json(&AuditEventsPage { events, next_from, next: next.clone() });
    if let Some(link) = next.and_then(|n| HeaderValue::from_str(&format!("<{n}>; rel=\"next\"")).ok()) {
        response.headers_mut().insert(header::LINK, link);
    }
    response
}

/// Percent-encodes all but RFC 3986's unreserved characters (a stream id's `/`, a time's `:`),
/// for a path segment or a query value.
fn percent_encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}
