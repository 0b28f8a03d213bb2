//! HTTPS: the server's certificate chain and key from PEM files, read again when they change,
//! so a renewed certificate is served from the next handshake on without a restart.
//!
//! Certificate managers (cert-manager, certbot, an operator's script) replace the files in
//! place and signal no one, so the files are compared with what was loaded every so often
//! ([`ReloadingCertificate::watch`]); `serve` also reloads on SIGHUP. A pair that does not
//! load (half written, the key of another certificate) leaves the current certificate in
//! service and is tried again when the files change once more.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_util::sync::CancellationToken;

/// Where the server's certificate chain (leaf first) and its private key are, both PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why a certificate pair could not be put in service.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("the key in {key} does not belong to the certificate in {cert}: {reason}")]
    Mismatch { cert: PathBuf, key: PathBuf, reason: String },
}

/// The certificate served to every client, replaced when its files change.
#[derive(Debug)]
pub struct ReloadingCertificate {
    files: CertificateFiles,
    provider: Arc<CryptoProvider>,
    serving: RwLock<Arc<CertifiedKey>>,
    /// The files' contents last tried, loaded or not: a pair is tried once per change.
    last_seen: std::sync::Mutex<(Vec<u8>, Vec<u8>)>,
}

impl ReloadingCertificate {
    /// Loads the pair, or says why it cannot serve.
    pub fn load(files: CertificateFiles) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let contents = read(&files)?;
        let key = certified_key(&files, &contents, &provider)?;
        Ok(Arc::new(Self {
            files,
            provider,
            serving: RwLock::new(Arc::new(key)),
            last_seen: std::sync::Mutex::new(contents),
        }))
    }

    /// Reads the files again: `Ok(true)` when a changed pair was put in service, `Ok(false)`
    /// when they have not changed since last tried, the reason when the changed pair fails.
    pub fn reload(&self) -> Result<bool, TlsError> {
        // Held to the end, so that of two reloads at once (the timer and SIGHUP) the one that
        // read the older files cannot put them in service after the other.
        let mut last_seen = self.last_seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let contents = read(&self.files)?;
        if *last_seen == contents {
            return Ok(false);
        }
        let key = certified_key(&self.files, &contents, &self.provider);
        *last_seen = contents;
        *self.serving.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(key?);
        Ok(true)
    }

    /// Reloads now, logging what happened; for a timer or a signal.
    pub fn reload_and_log(&self) {
        match self.reload() {
            Ok(true) => tracing::info!(cert = %self.files.cert.display(), "serving the renewed TLS certificate"),
            Ok(false) => {}
            Err(error) => {
                tracing::error!(%error, "the TLS certificate files changed but do not load; still serving the previous certificate")
            }
        }
    }

    /// Compares the files with what was loaded every `every` until `stop`.
    pub async fn watch(self: Arc<Self>, every: Duration, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = stop.cancelled() => return,
            }
            let certificate = self.clone();
            // Two small files, but still file I/O: off the async threads.
            let _ = tokio::task::spawn_blocking(move || certificate.reload_and_log()).await;
        }
    }

    /// The rustls configuration that serves this certificate, offering HTTP/2 and HTTP/1.1 by
    /// ALPN.
    pub fn server_config(self: &Arc<Self>) -> Arc<ServerConfig> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the default provider supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.serving.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone())
    }
}

fn read(files: &CertificateFiles) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let read = |path: &PathBuf| std::fs::read(path).map_err(|source| TlsError::Read { path: path.clone(), source });
    Ok((read(&files.cert)?, read(&files.key)?))
}

fn certified_key(
    files: &CertificateFiles,
    (cert_pem, key_pem): &(Vec<u8>, Vec<u8>),
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let unreadable = |path: &PathBuf, reason: String| TlsError::Unreadable { path: path.clone(), reason };
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreadable(&files.cert, format!("not a PEM certificate chain ({})", pem_problem(&e))))?;
    if chain.is_empty() {
        return Err(unreadable(&files.cert, "no CERTIFICATE block".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| unreadable(&files.key, format!("no PEM private key ({})", pem_problem(&e))))?;
    let key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| unreadable(&files.key, format!("not a usable private key ({e})")))?;
    let certified = CertifiedKey::new(chain, key);
    match certified.keys_match() {
        // A key that cannot tell its public half is taken on trust, as rustls itself does.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(e) => Err(TlsError::Mismatch { cert: files.cert.clone(), key: files.key.clone(), reason: e.to_string() }),
    }
}

/// What is wrong with a PEM file, in words (the library's own text spells markers as bytes).
fn pem_problem(error: &pem::Error) -> String {
    match error {
        pem::Error::MissingSectionEnd { end_marker } => {
            format!("a section does not end with {}", String::from_utf8_lossy(end_marker))
        }
        pem::Error::IllegalSectionStart { .. } => "a malformed BEGIN line".into(),
        pem::Error::Base64Decode(_) => "a section is not base64".into(),
        pem::Error::NoItemsFound => "no section of the expected kind".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let certified = rcgen::generate_simple_self_signed(vec![name.to_owned()]).expect("a certificate");
        (certified.cert.pem(), certified.signing_key.serialize_pem())
    }

    fn served_leaf(certificate: &ReloadingCertificate) -> Vec<u8> {
        certificate.serving.read().unwrap().cert[0].to_vec()
    }

    #[test]
    fn a_changed_pair_replaces_the_certificate_and_a_broken_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let files = CertificateFiles { cert: dir.path().join("cert.pem"), key: dir.path().join("key.pem") };
        let (cert, key) = pair("first.test");
        std::fs::write(&files.cert, &cert).unwrap();
        std::fs::write(&files.key, &key).unwrap();
        let certificate = ReloadingCertificate::load(files.clone()).unwrap();
        let first = served_leaf(&certificate);
        assert!(!certificate.reload().unwrap(), "unchanged files are not loaded again");

        // A new certificate written before its key: the pair does not match yet.
        let (cert, key) = pair("second.test");
        std::fs::write(&files.cert, &cert).unwrap();
        assert!(matches!(certificate.reload(), Err(TlsError::Mismatch { .. })));
        assert_eq!(served_leaf(&certificate), first, "the old certificate stays in service");
        std::fs::write(&files.key, &key).unwrap();
        assert!(certificate.reload().unwrap());
        assert_ne!(served_leaf(&certificate), first);

        std::fs::write(&files.cert, "not pem").unwrap();
        assert!(matches!(certificate.reload(), Err(TlsError::Unreadable { .. })));
        assert!(!certificate.reload().unwrap(), "a broken pair is tried once per change");
        assert!(ReloadingCertificate::load(files).is_err(), "and refused at start");
    }
}
