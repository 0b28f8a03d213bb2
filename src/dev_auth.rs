//! Development mode: with no JWKS configured, tokens are HS256-signed with a secret kept in the
//! data dir, so `integration-engine token` and `serve` agree without any identity provider.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

const DEV_SECRET_FILE: &str = "dev-hs256.secret";

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(DEV_SECRET_FILE)
}

/// The data dir's dev secret, created (32 random bytes, mode 0600) on first use.
pub fn load_or_create_dev_secret(data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    let file = path(data_dir);
    if file.exists() {
        return load_dev_secret(data_dir);
    }
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let mut secret = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
        .map_err(|_| anyhow::anyhow!("no system randomness"))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut out = options.open(&file).with_context(|| format!("creating {}", file.display()))?;
    out.write_all(hex::encode(secret).as_bytes())?;
    out.sync_all()?;
    Ok(secret.to_vec())
}

/// The data dir's existing dev secret.
pub fn load_dev_secret(data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    let file = path(data_dir);
    let text = std::fs::read_to_string(&file).with_context(|| {
        format!("reading {} (run `integration-engine serve` once without --jwks to create it)", file.display())
    })?;
    hex::decode(text.trim()).with_context(|| format!("{} is not hex", file.display()))
}
