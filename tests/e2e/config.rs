//! Configuration through the real binary: a TOML file, `IE_` variables and flags, merged with
//! the precedence flags > environment > file > defaults, validated at start with errors that
//! name the key; `config show` with secrets masked; README documenting every key.

use crate::support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};
use support::{ALL_SCOPES, App, BIN};

/// The binary with a clean environment as far as the engine's variables go.
fn engine(envs: &[(&str, &str)]) -> Command {
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars() {
        if name.starts_with("IE_") {
            command.env_remove(name);
        }
    }
    command.envs(envs.iter().copied());
    command
}

fn run(args: &[&str], envs: &[(&str, &str)]) -> Output {
    engine(envs).args(args).stdin(Stdio::null()).output().expect("run the engine")
}

fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("engine.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// `config show --format json` as key → (value, source).
fn show(args: &[&str], envs: &[(&str, &str)]) -> (Value, BTreeMap<String, (Value, String)>) {
    let mut all = args.to_vec();
    all.extend(["config", "show", "--format", "json"]);
    let out = run(&all, envs);
    assert!(out.status.success(), "config show failed: {}", String::from_utf8_lossy(&out.stderr));
    let document: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let settings = document["settings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (s["key"].as_str().unwrap().to_owned(), (s["value"].clone(), s["source"].as_str().unwrap().to_owned()))
        })
        .collect();
    (document, settings)
}

#[test]
fn config_show_tells_each_value_and_where_it_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        dir.path(),
        r#"
        token-leeway-seconds = 7
        max_body_bytes = 1000          # either spelling of a key
        no-workers = true
        [kafka]                        # a table groups keys: kafka-group-prefix
        group-prefix = "from-file"
        "#,
    );
    let (document, settings) = show(
        &["--config", &file, "--log-format", "json"],
        &[("IE_MAX_BODY_BYTES", "2000"), ("IE_LISTEN", "127.0.0.1:9999"), ("IE_LISTN", "typo")],
    );
    assert_eq!(document["file"], file.as_str());
    assert_eq!(document["unknownEnvironment"], json!(["IE_LISTN"]), "a variable naming no setting is pointed out");
    let at = |key: &str| settings.get(key).unwrap_or_else(|| panic!("no key {key}: {settings:?}")).clone();
    let from_file = format!("file {file}");
    assert_eq!(at("token-leeway-seconds"), (json!("7"), from_file.clone()));
    assert_eq!(at("kafka-group-prefix"), (json!("from-file"), from_file.clone()));
    assert_eq!(at("no-workers"), (json!("true"), from_file));
    // The environment wins over the file.
    assert_eq!(at("max-body-bytes"), (json!("2000"), "env IE_MAX_BODY_BYTES".to_owned()));
    assert_eq!(at("listen"), (json!("127.0.0.1:9999"), "env IE_LISTEN".to_owned()));
    // A flag wins over everything.
    assert_eq!(at("log-format"), (json!("json"), "flag".to_owned()));
    assert_eq!(at("data-dir"), (json!("./data"), "default".to_owned()));
    assert_eq!(at("jwks"), (Value::Null, "default".to_owned()));

    // IE_CONFIG names the file as well as --config.
    let (_, settings) = show(&[], &[("IE_CONFIG", &file)]);
    assert_eq!(settings["token-leeway-seconds"].0, "7");
}

#[test]
fn secrets_and_url_credentials_are_masked() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(dir.path(), "jwks = \"https://alice:hunter2@idp.example/jwks.json\"\n");
    let master_key = "00".repeat(32);
    let out = run(
        &["--config", &file, "config", "show"],
        &[("IE_OTLP_ENDPOINT", "https://user:otlp-pass@collector.example:4318"), ("IE_MASTER_KEY", &master_key)],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    for secret in ["hunter2", "alice", "otlp-pass", &master_key] {
        assert!(!text.contains(secret), "{secret} shown: {text}");
    }
    assert!(text.contains("https://********@idp.example/jwks.json"), "{text}");
    assert!(text.contains("https://********@collector.example:4318"), "{text}");
    assert!(text.contains("IE_MASTER_KEY = ********"), "{text}");
}

#[test]
fn an_unknown_key_is_refused_naming_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(dir.path(), "listen = \"127.0.0.1:0\"\n[kafka]\nbrokerz = \"localhost:9092\"\n");
    let out = run(&["--config", &file, "serve", "--data-dir", &dir.path().display().to_string()], &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&file), "{stderr}");
    assert!(stderr.contains("unknown key `kafka.brokerz`"), "{stderr}");
    assert!(stderr.contains("did you mean `kafka-brokers`?"), "{stderr}");
    assert!(!dir.path().join("events.db").exists(), "nothing started");
}

#[test]
fn a_bad_value_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (text, key, reason) in [
        ("max-body-bytes = \"lots\"\n", "max-body-bytes", "invalid digit"),
        ("log-format = \"yaml\"\n", "log-format", "text, json"),
        ("no-workers = \"sometimes\"\n", "no-workers", "true or false"),
        ("listen = [\"a\", \"b\"]\n", "listen", "expected a string, number or boolean"),
        ("otlp-endpoint = \"collector:4318\"\n", "otlp-endpoint", "http:// or https://"),
        ("this is not toml\n", "", "TOML parse error"),
    ] {
        let file = write_config(dir.path(), text);
        let out = run(&["--config", &file, "config", "show"], &[]);
        assert_eq!(out.status.code(), Some(2), "{text}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&format!("config file {file}")), "{stderr}");
        assert!(key.is_empty() || stderr.contains(&format!("key `{key}`")), "{text}: {stderr}");
        assert!(stderr.contains(reason), "{text}: {stderr}");
    }
    let out = run(&["config", "show"], &[("IE_KAFKA_PARTITIONS", "six")]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("IE_KAFKA_PARTITIONS (key `kafka-partitions`)"), "{stderr}");
    let missing = run(&["--config", "/nonexistent/engine.toml", "config", "show"], &[]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/engine.toml"));
}

/// Starts `serve` with a config file, environment and flags; the body limit it ends up with
/// is observed by posting bodies around it.
fn serve_with(dir: &Path, file: &str, envs: &[(&str, &str)], flags: &[&str]) -> App {
    let mut command = engine(envs);
    command
        .args(["--config", file, "serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(flags)
        .env("IE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    App::when_listening(command.spawn().unwrap(), dir)
}

async fn accepts_a_body_of(app: &App, token: &str, bytes: usize) -> bool {
    let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(bytes - 10));
    assert_eq!(body.len(), bytes);
    let response = app
        .client
        .post(app.url("/integrations/providers"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    response.status() != 413
}

#[tokio::test]
async fn serve_takes_flags_over_env_over_file_over_defaults() {
    let temp = tempfile::tempdir().unwrap();
    let file = write_config(temp.path(), "max-body-bytes = 300\n");

    let dir = temp.path().join("file");
    let app = serve_with(&dir, &file, &[], &[]);
    let token = app.token("t", ALL_SCOPES);
    assert!(accepts_a_body_of(&app, &token, 290).await);
    assert!(!accepts_a_body_of(&app, &token, 310).await, "the file's limit applies");
    drop(app);

    let dir = temp.path().join("env");
    let app = serve_with(&dir, &file, &[("IE_MAX_BODY_BYTES", "400")], &[]);
    let token = app.token("t", ALL_SCOPES);
    assert!(accepts_a_body_of(&app, &token, 390).await, "the environment wins over the file");
    assert!(!accepts_a_body_of(&app, &token, 410).await);
    drop(app);

    let dir = temp.path().join("flag");
    let app = serve_with(&dir, &file, &[("IE_MAX_BODY_BYTES", "400")], &["--max-body-bytes", "200"]);
    let token = app.token("t", ALL_SCOPES);
    assert!(!accepts_a_body_of(&app, &token, 290).await, "the flag wins over the environment");
    assert!(accepts_a_body_of(&app, &token, 190).await);
}

/// Every key `config keys` knows, with its environment variable.
fn keys() -> Vec<(String, String)> {
    let out = run(&["config", "keys"], &[]);
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    let keys: Vec<(String, String)> = table
        .lines()
        .skip(2)
        .map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            (cells[1].trim_matches('`').to_owned(), cells[2].trim_matches('`').to_owned())
        })
        .collect();
    assert!(keys.len() > 20, "{table}");
    keys
}

#[test]
fn every_key_is_its_flag_name_and_its_variable_is_the_prefixed_name() {
    for (key, env) in keys() {
        assert_eq!(env, format!("IE_{}", key.to_uppercase().replace('-', "_")), "key {key}");
    }
}

#[test]
fn the_readme_documents_every_key() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let missing: Vec<String> = keys()
        .into_iter()
        .filter(|(key, env)| !readme.contains(&format!("| `{key}` | `{env}` |")))
        .map(|(key, _)| key)
        .collect();
    assert!(missing.is_empty(), "README.md lacks rows for {missing:?}: paste `integration-engine config keys`");
}

#[test]
fn the_example_config_file_is_valid() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/engine.example.toml");
    let out = run(&["--config", &example.display().to_string(), "config", "show"], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
