//! HTTPS: the API over TLS with a generated certificate and a verifying client, HTTP/2 or
//! HTTP/1.1 by ALPN, and a renewed certificate served without a restart, whether the engine
//! notices the files change or is sent SIGHUP.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use reqwest::{StatusCode, Version};

use crate::support::{ALL_SCOPES, App, BIN, spawn_app_with};

type Authority = CertifiedIssuer<'static, KeyPair>;

/// A certificate authority of the test's own, trusted only by the clients the test builds.
fn authority(name: &str) -> Authority {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA certificate")
}

/// Writes a certificate for localhost and 127.0.0.1 issued by `authority`, and its key.
fn write_server_certificate(authority: &Authority, files: &CertificateFiles) {
    let key = KeyPair::generate().expect("server key");
    let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).expect("parameters");
    let certificate = params.signed_by(&key, authority).expect("server certificate");
    std::fs::write(&files.key, key.serialize_pem()).expect("write key");
    std::fs::write(&files.cert, certificate.pem()).expect("write certificate");
}

struct CertificateFiles {
    cert: PathBuf,
    key: PathBuf,
}

impl CertificateFiles {
    fn in_dir(dir: &Path) -> Self {
        Self { cert: dir.join("server.crt"), key: dir.join("server.key") }
    }
}

fn spawn_https(files: &CertificateFiles, extra: &[&str]) -> App {
    let (cert, key) = (files.cert.to_str().unwrap(), files.key.to_str().unwrap());
    spawn_app_with(&[&["--tls-cert", cert, "--tls-key", key][..], extra].concat())
}

/// A client that trusts `authority` and nothing else, on fresh connections only.
fn client_trusting(authority: &Authority) -> reqwest::ClientBuilder {
    let root = reqwest::Certificate::from_der(authority.der()).expect("root certificate");
    reqwest::Client::builder().tls_certs_only([root]).pool_max_idle_per_host(0).timeout(Duration::from_secs(10))
}

async fn health(client: reqwest::ClientBuilder, app: &App) -> reqwest::Result<reqwest::Response> {
    client.build().expect("client").get(app.url("/healthz")).send().await
}

/// Asks until the server's certificate is `authority`'s, or `limit` passes.
async fn until_served_by(authority: &Authority, app: &App, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if health(client_trusting(authority), app).await.is_ok_and(|answer| answer.status() == StatusCode::OK) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn the_api_is_served_over_https_with_the_protocol_chosen_by_alpn() {
    let dir = tempfile::tempdir().unwrap();
    let files = CertificateFiles::in_dir(dir.path());
    let trusted = authority("engine test CA");
    write_server_certificate(&trusted, &files);
    let app = spawn_https(&files, &[]);
    assert!(app.base.starts_with("https://127.0.0.1:"), "{}", app.base);

    let h2 = health(client_trusting(&trusted), &app).await.expect("an HTTPS answer");
    assert_eq!((h2.status(), h2.version()), (StatusCode::OK, Version::HTTP_2), "HTTP/2 by ALPN");
    let h1 = health(client_trusting(&trusted).http1_only(), &app).await.expect("an HTTPS answer");
    assert_eq!((h1.status(), h1.version()), (StatusCode::OK, Version::HTTP_11), "HTTP/1.1 by ALPN");

    // The API itself, authenticated, over TLS.
    let token = app.token("connectsoft", ALL_SCOPES);
    let client = client_trusting(&trusted).build().unwrap();
    let missing =
        client.get(app.url("/integrations/connections/conn-missing")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(missing.headers()["content-type"], "application/problem+json");

    // A client that does not trust the certificate, and one speaking plain HTTP, get nothing.
    let stranger = health(client_trusting(&authority("another CA")), &app).await;
    assert!(stranger.is_err(), "a certificate from an unknown CA is refused by the client: {stranger:?}");
    let plain = reqwest::get(app.url("/healthz").replacen("https://", "http://", 1)).await;
    assert!(plain.is_err(), "plain HTTP on the TLS port is not served: {plain:?}");
    // ...and the server still answers everyone else.
    assert!(health(client_trusting(&trusted), &app).await.is_ok());
}

#[tokio::test]
async fn a_renewed_certificate_is_served_once_its_files_change() {
    let dir = tempfile::tempdir().unwrap();
    let files = CertificateFiles::in_dir(dir.path());
    let (first, second) = (authority("first CA"), authority("second CA"));
    write_server_certificate(&first, &files);
    let app = spawn_https(&files, &["--tls-reload-seconds", "1"]);
    assert!(until_served_by(&first, &app, Duration::from_secs(5)).await);

    write_server_certificate(&second, &files);
    assert!(until_served_by(&second, &app, Duration::from_secs(10)).await, "the renewed certificate is served");
    assert!(health(client_trusting(&first), &app).await.is_err(), "the replaced certificate is not");

    // A pair that does not load leaves the certificate in service.
    std::fs::write(&files.cert, "-----BEGIN CERTIFICATE-----\nbroken\n").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(until_served_by(&second, &app, Duration::from_secs(1)).await, "still served after a broken renewal");
}

#[tokio::test]
async fn sighup_reloads_the_certificate_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let files = CertificateFiles::in_dir(dir.path());
    let (first, second) = (authority("first CA"), authority("second CA"));
    write_server_certificate(&first, &files);
    // The files are looked at once an hour: only the signal can explain a quick reload.
    let app = spawn_https(&files, &["--tls-reload-seconds", "3600"]);
    assert!(until_served_by(&first, &app, Duration::from_secs(5)).await);

    write_server_certificate(&second, &files);
    let sent = Command::new("kill").args(["-HUP", &app.pid().to_string()]).status().expect("run kill");
    assert!(sent.success());
    assert!(
        until_served_by(&second, &app, Duration::from_secs(5)).await,
        "SIGHUP put the renewed certificate in service"
    );
    assert!(until_served_by(&second, &app, Duration::from_secs(1)).await, "and the process lives on");
}

#[test]
fn a_certificate_that_cannot_serve_stops_the_start_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let files = CertificateFiles::in_dir(dir.path());
    write_server_certificate(&authority("a CA"), &files);
    let other = CertificateFiles { cert: dir.path().join("other.crt"), key: dir.path().join("other.key") };
    write_server_certificate(&authority("another CA"), &other);

    let start = |cert: &Path, key: &Path| {
        Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .output()
            .expect("run serve")
    };
    let mismatched = start(&files.cert, &other.key);
    let reason = String::from_utf8_lossy(&mismatched.stderr);
    assert!(!mismatched.status.success());
    assert!(reason.contains("does not belong to the certificate"), "{reason}");

    let missing = start(&dir.path().join("absent.crt"), &files.key);
    let reason = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success() && reason.contains("absent.crt"), "{reason}");

    let alone = Command::new(BIN).args(["serve", "--tls-cert"]).arg(&files.cert).output().unwrap();
    let reason = String::from_utf8_lossy(&alone.stderr);
    assert!(!alone.status.success() && reason.contains("--tls-key"), "a certificate needs its key: {reason}");
}

#[tokio::test]
async fn a_client_that_never_shakes_hands_loses_its_slot_at_the_header_timeout() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let files = CertificateFiles::in_dir(dir.path());
    let trusted = authority("engine test CA");
    write_server_certificate(&trusted, &files);
    let app = spawn_https(&files, &["--header-read-timeout-seconds", "1", "--max-connections", "1"]);

    // The only slot, taken by a client that sends nothing.
    let mut silent = tokio::net::TcpStream::connect(app.base.trim_start_matches("https://")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let answer = health(client_trusting(&trusted), &app).await.expect("served once the slot is free");
    assert_eq!(answer.status(), StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(500), "it waited for the silent client's timeout");
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut byte)).await;
    assert!(matches!(closed, Ok(Ok(0) | Err(_))), "the silent client was closed: {closed:?}");
}
