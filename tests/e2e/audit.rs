//! The auditor's HTTP view: `GET /audit/events` and `GET /audit/streams/{streamId}/events`
//! (scope `integration.audit.read`), tenant-scoped, paged by position, upcast by default.

use crate::support;

use std::path::Path;

use serde_json::{Value, json};
use support::streams::{V1_FIXTURE, fixture_lines, load_fixture};
use support::{ALL_SCOPES, App, spawn_app_in};

const AUDIT: &str = "integration.audit.read";

/// The v1 fixture (connectsoft and globex providers) plus events the engine writes itself.
async fn audited_app(dir: &Path) -> App {
    load_fixture(dir, V1_FIXTURE).await;
    let app = spawn_app_in(dir, &[]);
    for tenant in ["connectsoft", "globex"] {
        let token = app.token(tenant, ALL_SCOPES);
        for key in ["stripe", "slack", "shopify"] {
            let body = json!({ "key": key, "displayName": key, "category": "X", "authModel": "ApiKey",
                               "apiClient": "Vendor.Client", "baseUrl": "https://example.com" });
            assert_eq!(app.post_json("/integrations/providers", &token, &body).await.status(), 201);
        }
        let connection = json!({ "projectId": "proj-1", "providerId": "prov-github", "displayName": "Code",
                                 "authMode": "ApiKey", "configuration": {} });
        assert_eq!(app.post_json("/integrations/connections", &token, &connection).await.status(), 201);
    }
    app
}

async fn get_json(app: &App, path: &str, token: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    let response = app.get(path, token).await;
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    (status, headers, response.json().await.expect("a JSON body"))
}

/// Follows `next` from `path` and returns every event, checking each page's cursor.
async fn all_pages(app: &App, path: &str, token: &str) -> Vec<Value> {
    let (mut events, mut next) = (Vec::new(), Some(path.to_string()));
    while let Some(path) = next {
        let (status, headers, page) = get_json(app, &path, token).await;
        assert_eq!(status, 200, "{path}: {page}");
        let got = page["events"].as_array().unwrap();
        if let Some(last) = got.last() {
            assert_eq!(page["nextFrom"], last["globalPosition"].as_u64().unwrap() + 1);
        }
        next = page["next"].as_str().map(str::to_owned);
        let link = headers.get("link").map(|l| l.to_str().unwrap().to_owned());
        assert_eq!(link, next.as_ref().map(|n| format!("<{n}>; rel=\"next\"")), "Link mirrors next");
        events.extend(got.iter().cloned());
    }
    events
}

fn positions(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["globalPosition"].as_u64().unwrap()).collect()
}

#[tokio::test]
async fn an_auditor_pages_through_their_tenants_events_upcast_to_the_current_schema() {
    let dir = tempfile::tempdir().unwrap();
    let app = audited_app(dir.path()).await;
    let token = app.token("connectsoft", AUDIT);

    let (status, headers, first) = get_json(&app, "/audit/events", &token).await;
    assert_eq!(status, 200);
    assert!(headers["content-type"].to_str().unwrap().contains("json"));
    let events = first["events"].as_array().unwrap().clone();
    assert!(events.len() >= 6, "{first}");
    assert!(first.get("next").is_none(), "one page holds everything: {first}");
    assert!(events.iter().all(|e| e["tenantId"] == "connectsoft"), "only the token's tenant");
    let ps = positions(&events);
    assert!(ps.windows(2).all(|w| w[0] < w[1]), "global order: {ps:?}");
    // The v1 fixture's events come upcast; the engine's own were written at v2.
    let providers: Vec<_> = events.iter().filter(|e| e["eventType"] == "ProviderRegistered").collect();
    assert_eq!(providers.len(), 5, "two from the v1 fixture, three written now");
    assert!(providers.iter().all(|e| e["schemaVersion"] == 2 && e["data"]["apiClientVersion"] == 1));

    // Page by two: the same events, with next links and a Link header.
    let paged = all_pages(&app, "/audit/events?limit=2", &token).await;
    assert_eq!(paged, events);
    // From a position on.
    let from = ps[2];
    let (_, _, later) = get_json(&app, &format!("/audit/events?from={from}"), &token).await;
    assert_eq!(positions(later["events"].as_array().unwrap()), ps[2..]);
    // Past the end: an empty page that says where to continue.
    let past = ps.last().unwrap() + 100;
    let (status, _, tail) = get_json(&app, &format!("/audit/events?from={past}"), &token).await;
    assert_eq!((status, tail["events"].as_array().unwrap().len(), tail["nextFrom"].as_u64()), (200, 0, Some(past)));

    // As stored: the fixture's v1 events exactly as the fixture has them.
    let (_, _, stored) = get_json(&app, "/audit/events?asStored=true&type=ProviderRegistered", &token).await;
    let fixture: Vec<Value> =
        fixture_lines(V1_FIXTURE).into_iter().filter(|e| e["tenantId"] == "connectsoft").collect();
    assert_eq!(stored["events"].as_array().unwrap()[..2], fixture[..]);

    // Type and time filters.
    let (_, _, connections) = get_json(&app, "/audit/events?type=ConnectionEstablished", &token).await;
    let connections = connections["events"].as_array().unwrap();
    assert_eq!(connections.len(), 1);
    assert_eq!(connections[0]["eventType"], "ConnectionEstablished");
    let (_, _, march) =
        get_json(&app, "/audit/events?since=2026-03-01T00:00:00Z&until=2026-03-04T00:00:00Z", &token).await;
    let streams: Vec<_> = march["events"].as_array().unwrap().iter().map(|e| e["streamId"].clone()).collect();
    assert_eq!(streams, [json!("connectsoft/prov-github"), json!("connectsoft/prov-twilio-sms")]);
}

#[tokio::test]
async fn a_stream_is_read_by_its_resource_id_or_full_id_and_other_tenants_streams_are_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let app = audited_app(dir.path()).await;
    let token = app.token("connectsoft", AUDIT);

    let (status, _, page) = get_json(&app, "/audit/streams/prov-github/events", &token).await;
    assert_eq!(status, 200, "{page}");
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["streamId"], "connectsoft/prov-github");
    assert_eq!(events[0]["schemaVersion"], 2);
    let (status, _, by_full_id) = get_json(&app, "/audit/streams/connectsoft%2Fprov-github/events", &token).await;
    assert_eq!((status, &by_full_id["events"]), (200, &page["events"]));
    // Past the stream's end: still the stream, an empty page.
    let (status, _, past) = get_json(&app, "/audit/streams/prov-github/events?from=100000", &token).await;
    assert_eq!((status, past["events"].as_array().map(Vec::len)), (200, Some(0)));
    let (_, _, as_stored) = get_json(&app, "/audit/streams/prov-github/events?asStored=true", &token).await;
    assert_eq!(as_stored["events"][0]["schemaVersion"], 1);

    // globex has a prov-github too: naming it is 404, exactly like a stream that does not exist.
    for path in ["/audit/streams/globex%2Fprov-github/events", "/audit/streams/prov-nothing/events"] {
        let response = app.get(path, &token).await;
        assert_eq!(response.status(), 404, "{path}");
        assert_eq!(response.headers()["content-type"], "application/problem+json");
    }
    // globex's own token sees globex's.
    let globex = app.token("globex", AUDIT);
    let (status, _, theirs) = get_json(&app, "/audit/streams/prov-github/events", &globex).await;
    assert_eq!((status, &theirs["events"][0]["streamId"]), (200, &json!("globex/prov-github")));
}

#[tokio::test]
async fn audit_reads_need_the_audit_scope_and_refuse_bad_parameters_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let app = audited_app(dir.path()).await;

    let anonymous = app.client.get(app.url("/audit/events")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert!(anonymous.headers().contains_key("www-authenticate"));
    // Every other scope, but not the audit one.
    let without = app.token("connectsoft", ALL_SCOPES);
    for path in ["/audit/events", "/audit/streams/prov-github/events"] {
        let response = app.get(path, &without).await;
        assert_eq!(response.status(), 403, "{path}");
        assert!(response.headers()["www-authenticate"].to_str().unwrap().contains(AUDIT));
        assert_eq!(response.headers()["content-type"], "application/problem+json");
    }

    let token = app.token("connectsoft", AUDIT);
    let too_many_types = format!("type={}", vec!["ProviderRegistered"; 65].join(","));
    for (query, names) in [
        (too_many_types.as_str(), "type"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("from=0", "from"),
        ("from=abc", "from"),
        ("since=yesterday", "since"),
        ("asStored=yes", "asStored"),
        ("form=3", "form"),
    ] {
        let response = app.get(&format!("/audit/events?{query}"), &token).await;
        assert_eq!(response.status(), 400, "{query}");
        assert_eq!(response.headers()["content-type"], "application/problem+json");
        let problem: Value = response.json().await.unwrap();
        assert!(problem["detail"].as_str().unwrap().contains(names), "{query}: {problem}");
        assert!(problem["traceId"].is_string());
    }
    // The stream read takes no type filter.
    let response = app.get("/audit/streams/prov-github/events?type=X", &token).await;
    assert_eq!(response.status(), 400);
    // A range that ends before it starts holds no event: an empty page, not an error.
    let empty = app.get("/audit/events?since=2026-03-04T00:00:00Z&until=2026-03-01T00:00:00Z", &token).await;
    assert_eq!(empty.status(), 200);
    assert_eq!(empty.json::<Value>().await.unwrap()["events"], json!([]));
}

#[tokio::test]
async fn the_openapi_document_describes_the_audit_reads() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_in(dir.path(), &[]);
    let doc: Value = app.client.get(app.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    for path in ["/audit/events", "/audit/streams/{streamId}/events"] {
        let get = &doc["paths"][path]["get"];
        assert_eq!(get["security"], json!([{ "bearer": [AUDIT] }]), "{path}");
        assert_eq!(
            get["responses"]["200"]["content"]["application/vnd.connectsoft.integration.v1+json"]["schema"]["$ref"],
            "#/components/schemas/AuditEventsPage"
        );
        let names: Vec<_> = get["parameters"].as_array().unwrap().iter().map(|p| p["name"].clone()).collect();
        assert!(
            names.contains(&json!("from")) && names.contains(&json!("limit")) && names.contains(&json!("asStored"))
        );
    }
    assert!(doc["components"]["schemas"]["AuditEventsPage"]["properties"]["nextFrom"].is_object());
}
