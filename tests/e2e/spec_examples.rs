//! Replays every example of the spec (fixtures/spec) over HTTP against the real binary and
//! checks the status, headers and every field of each answer.

use crate::support;

use std::collections::HashMap;

use regex::Regex;
use serde_json::Value;
use support::{ALL_SCOPES, github_signature};

const WEBHOOK_SECRET: &str = "whsec-github-test-value-0123456789";

fn fill(template: &str, vars: &HashMap<String, String>) -> String {
    vars.iter().fold(template.to_string(), |s, (k, v)| s.replace(&format!("{{{k}}}"), v))
}

/// Checks `actual` against `expected`: same keys, equal values, `~regex` strings matched.
fn check(path: &str, expected: &Value, actual: &Value, vars: &HashMap<String, String>, failures: &mut Vec<String>) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for key in a.keys().filter(|k| !e.contains_key(*k)) {
                failures.push(format!("{path}.{key}: unexpected field"));
            }
            for (key, ev) in e {
                match a.get(key) {
                    Some(av) => check(&format!("{path}.{key}"), ev, av, vars, failures),
                    None => failures.push(format!("{path}.{key}: missing")),
                }
            }
        }
        (Value::String(pattern), Value::String(a)) if pattern.starts_with('~') => {
            let re = Regex::new(&pattern[1..]).expect("fixture regex");
            if !re.is_match(a) {
                failures.push(format!("{path}: {a:?} does not match {pattern}"));
            }
        }
        (Value::String(e), a) => {
            let e = fill(e, vars);
            if a.as_str() != Some(e.as_str()) {
                failures.push(format!("{path}: expected {e:?}, got {a}"));
            }
        }
        (e, a) if e == a => {}
        (e, a) => failures.push(format!("{path}: expected {e}, got {a}")),
    }
}

#[tokio::test]
async fn every_spec_example_replays_with_the_documented_shape() {
    // No workers: the examples show the run and the connection as recorded, before any check
    // or verification has run (see fixtures/spec/README.md).
    let dir = tempfile::tempdir().unwrap();
    let app = support::spawn_app_in(dir.path(), &["--no-workers"]);
    app.put_secret("kv://factory-integration/github-webhook", WEBHOOK_SECRET);
    app.put_secret("kv://factory-integration/github-booking", "gh-client-secret-v1");
    // The version the rotation example verifies, staged by an operator.
    support::put_secret_as(
        &app.data_dir,
        "kv://factory-integration/github-booking",
        "gh-client-secret-v2",
        &["--stage", "pending", "--tenant", "connectsoft"],
    );
    let token = app.token("connectsoft", ALL_SCOPES);

    let mut files: Vec<_> = std::fs::read_dir("fixtures/spec")
        .expect("fixtures/spec")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 8, "expected a fixture per spec example, found {}", files.len());

    let mut vars = HashMap::new();
    for file in files {
        let name = file.display().to_string();
        let fixture: Value = serde_json::from_str(&std::fs::read_to_string(&file).expect("read")).expect(&name);
        let request = &fixture["request"];
        let method = request["method"].as_str().expect("method");
        let path = fill(request["path"].as_str().expect("path"), &vars);
        let body = serde_json::to_vec(&request["body"]).expect("body");
        vars.insert("signature".into(), github_signature(WEBHOOK_SECRET, &body));

        let mut builder = app.client.request(method.parse().expect("method"), app.url(&path));
        if request["auth"].as_str() != Some("none") {
            builder = builder.bearer_auth(&token);
        }
        for (k, v) in request["headers"].as_object().into_iter().flatten() {
            builder = builder.header(k, fill(v.as_str().expect("header"), &vars));
        }
        if method == "POST" {
            builder = builder.header("content-type", "application/json").body(body);
        }
        let response = builder.send().await.expect("send");

        let expected = &fixture["response"];
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        assert_eq!(status as u64, expected["status"].as_u64().expect("status"), "{name}: {text}");
        assert_eq!(headers["content-type"], "application/vnd.connectsoft.integration.v1+json", "{name}");
        assert!(headers.contains_key("x-trace-id"), "{name}: no X-Trace-Id");
        let mut failures = Vec::new();
        for (k, v) in expected["headers"].as_object().into_iter().flatten() {
            let actual =
                headers.get(k).map(|h| Value::String(h.to_str().expect("ascii").into())).unwrap_or(Value::Null);
            check(&format!("header {k}"), v, &actual, &vars, &mut failures);
        }
        let actual: Value = serde_json::from_str(&text).expect("json body");
        check("body", &expected["body"], &actual, &vars, &mut failures);
        assert!(failures.is_empty(), "{name}:\n  {}\nbody: {text}", failures.join("\n  "));
        // A POST's body names the trace of the request itself; a GET's, the trace the resource
        // was created under.
        if let (Some(trace_id), "POST") = (actual.get("traceId").and_then(Value::as_str), method) {
            assert_eq!(headers["x-trace-id"], trace_id, "{name}: header and body trace ids differ");
        }
        for (var, field) in fixture["capture"].as_object().into_iter().flatten() {
            let value = actual[field.as_str().expect("field")].as_str().expect("captured string");
            vars.insert(var.clone(), value.to_string());
        }
    }
}
