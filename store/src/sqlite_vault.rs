//! The encrypted SQLite [`SecretStore`] and its master key.
//!
//! Each secret version is a row sealed with AES-256-GCM under the master key, with a fresh
//! random nonce. The associated data names the row (vault, name, version, key id), so a
//! ciphertext copied to another row, or to another version of the same secret, fails to decrypt
//! instead of passing for that secret. Rows are never updated: a new value is a new version.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use chrono::Utc;
use domain::clock::{Clock, SystemClock};
use domain::secret_ref::SecretRef;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::sqlite::{open_database, timestamp};
use crate::sqlite_readers::{Readers, cached_row};
use crate::vault::{
    PreviousSecret, SecretMetadata, SecretStore, SecretValue, Stage, VaultError, VaultOwner, VersionMetadata,
};

/// Read connections kept open: secrets are read once per request that names one, briefly.
const READERS: usize = 4;

const VAULT_MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE secret_versions (
        vault      TEXT    NOT NULL,
        name       TEXT    NOT NULL,
        version    INTEGER NOT NULL,
        key_id     TEXT    NOT NULL,
        nonce      BLOB    NOT NULL,
        ciphertext BLOB    NOT NULL,
        created_at TEXT    NOT NULL,
        PRIMARY KEY (vault, name, version)
    ) STRICT, WITHOUT ROWID;

    CREATE TRIGGER secret_versions_are_immutable BEFORE UPDATE ON secret_versions
    BEGIN
        SELECT RAISE(ABORT, 'secret versions are immutable');
    END;
",
    "
    CREATE TABLE vault_owners (
        vault     TEXT NOT NULL PRIMARY KEY,
        tenant_id TEXT NOT NULL
    ) STRICT;
",
    // Staging labels (current, pending, previous), each on at most one version of a secret.
    // Until now the highest version was current and the one before it previous: carried over.
    "
    CREATE TABLE secret_labels (
        vault    TEXT    NOT NULL,
        name     TEXT    NOT NULL,
        label    TEXT    NOT NULL CHECK (label IN ('current', 'pending', 'previous')),
        version  INTEGER NOT NULL,
        moved_at TEXT    NOT NULL,
        PRIMARY KEY (vault, name, label)
    ) STRICT, WITHOUT ROWID;

    INSERT INTO secret_labels (vault, name, label, version, moved_at)
        SELECT v.vault, v.name, 'current', v.version, v.created_at FROM secret_versions v
        WHERE v.version = (SELECT MAX(w.version) FROM secret_versions w WHERE w.vault = v.vault AND w.name = v.name);
    INSERT INTO secret_labels (vault, name, label, version, moved_at)
        SELECT p.vault, p.name, 'previous', p.version, c.created_at
        FROM secret_versions p JOIN secret_versions c
          ON c.vault = p.vault AND c.name = p.name AND c.version = p.version + 1
        WHERE c.version = (SELECT MAX(w.version) FROM secret_versions w WHERE w.vault = c.vault AND w.name = c.name);
",
];

/// The guard of migration 1, restored by `rekey` after it re-encrypted the versions.
const IMMUTABLE_VERSIONS_TRIGGER: &str = "
    CREATE TRIGGER secret_versions_are_immutable BEFORE UPDATE ON secret_versions
    BEGIN
        SELECT RAISE(ABORT, 'secret versions are immutable');
    END;";

/// Names the associated-data layout, so a future layout cannot be confused with this one.
const AAD_SCHEME: &[u8] = b"integration-engine/vault/v1";

/// The 256-bit key that encrypts every secret of the vault. `Debug` shows only its id.
pub struct MasterKey {
    bytes: [u8; 32],
    id: String,
}

impl MasterKey {
    /// The environment variable that, when set, holds the key as 64 hex characters.
    pub const ENV_VAR: &str = "IE_MASTER_KEY";
    /// The key file inside the data directory, used when [`Self::ENV_VAR`] is not set.
    pub const FILE_NAME: &str = "master.key";

    /// A key from its raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let digest = digest::digest(&digest::SHA256, &bytes);
        let id = hex::encode(&digest.as_ref()[..8]);
        Self { bytes, id }
    }

    /// A key from 64 hex characters (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<Self, VaultError> {
        // The message never repeats the input: it is, or is close to, the key.
        let invalid = || VaultError::Backend("a master key must be 64 hex characters (32 bytes)".into());
        let bytes = hex::decode(text.trim()).map_err(|_| invalid())?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| invalid())?;
        Ok(Self::from_bytes(bytes))
    }

    /// A new random key.
    pub fn generate() -> Result<Self, VaultError> {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| VaultError::Backend("the system random generator failed".into()))?;
        Ok(Self::from_bytes(bytes))
    }

    /// The key from `IE_MASTER_KEY` when it is set (and not empty), otherwise from
    /// `DATA_DIR/master.key`, which is created with a new random key (mode 0600) if missing.
    ///
    /// An invalid `IE_MASTER_KEY` is an error rather than a reason to fall back to the file:
    /// secrets written under another key would silently become unreadable.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, VaultError> {
        let from_env = match std::env::var(Self::ENV_VAR) {
            Ok(text) => Some(text),
            Err(std::env::VarError::NotPresent) => None,
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(VaultError::Backend(format!("{} is not valid hex", Self::ENV_VAR)));
            }
        };
        Self::load_or_create_from(from_env.as_deref(), data_dir)
    }

    fn load_or_create_from(from_env: Option<&str>, data_dir: &Path) -> Result<Self, VaultError> {
        if let Some(text) = from_env.filter(|text| !text.trim().is_empty()) {
            return Self::from_hex(text).map_err(|e| VaultError::Backend(format!("{}: {e}", Self::ENV_VAR)));
        }
        let path = data_dir.join(Self::FILE_NAME);
        let io_error = |e: io::Error| VaultError::Backend(format!("master key file {}: {e}", path.display()));
        match read_key_file(&path) {
            Ok(key) => return key,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(e)),
        }
        fs::create_dir_all(data_dir).map_err(io_error)?;
        let key = Self::generate()?;
        if install_key_file(&path, &key).map_err(io_error)? {
            tracing::info!(path = %path.display(), key_id = key.id(), "created a new master key");
            Ok(key)
        } else {
            // Another process created the file first: use its key, or the two would diverge.
            read_key_file(&path).map_err(io_error)?
        }
    }

    /// A key from a file of 64 hex characters.
    pub fn load_file(path: &Path) -> Result<Self, VaultError> {
        read_key_file(path).map_err(|e| VaultError::Backend(format!("master key file {}: {e}", path.display())))?
    }

    /// Writes the key to a new file (mode 0600), durably; refuses to overwrite one.
    pub fn save_new_file(&self, path: &Path) -> Result<(), VaultError> {
        let io_error = |e: io::Error| VaultError::Backend(format!("master key file {}: {e}", path.display()));
        let mut file = create_private_file(path).map_err(io_error)?;
        file.write_all(format!("{}\n", hex::encode(self.bytes)).as_bytes()).map_err(io_error)?;
        file.sync_all().map_err(io_error)
    }

    /// The first 16 hex characters of the key's SHA-256: names the key without revealing it.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey").field("id", &self.id).field("bytes", &"<redacted>").finish()
    }
}

/// Reads and parses a key file; the outer error is the I/O, the inner one the content.
fn read_key_file(path: &Path) -> io::Result<Result<MasterKey, VaultError>> {
    let text = fs::read_to_string(path)?;
    warn_if_readable_by_others(path);
    Ok(MasterKey::from_hex(&text).map_err(|e| VaultError::Backend(format!("{}: {e}", path.display()))))
}

/// Writes the key to a private temporary file, then links it into place. The link fails if the
/// file exists, so a key file is never overwritten nor seen half-written. Returns `false` when
/// another process installed its key first.
fn install_key_file(path: &Path, key: &MasterKey) -> io::Result<bool> {
    let temp = path.with_file_name(format!(".{}.{}.tmp", MasterKey::FILE_NAME, uuid::Uuid::new_v4()));
    let mut file = create_private_file(&temp)?;
    let written = file.write_all(format!("{}\n", hex::encode(key.bytes)).as_bytes()).and_then(|()| file.sync_all());
    let installed = written.and_then(|()| match fs::hard_link(&temp, path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    });
    let _ = fs::remove_file(&temp);
    if installed? {
        // Make the new directory entry durable before any secret depends on the key.
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        return Ok(true);
    }
    Ok(false)
}

#[cfg(unix)]
fn create_private_file(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)
}

#[cfg(not(unix))]
fn create_private_file(path: &Path) -> io::Result<File> {
    OpenOptions::new().write(true).create_new(true).open(path)
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), "the master key file is accessible to other users; chmod 600 it");
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

/// Secrets encrypted under a [`MasterKey`] in their own SQLite file.
pub struct SqliteVault {
    /// The connection every write goes through.
    conn: Arc<Mutex<Connection>>,
    readers: Arc<Readers>,
    cipher: Arc<VaultCipher>,
    /// What stamps versions' creation and supersession.
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for SqliteVault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteVault").field("key_id", &self.cipher.key_id).finish_non_exhaustive()
    }
}

impl SqliteVault {
    /// Opens the vault at `path`, creating the file and its schema if absent. Blocks on file I/O.
    pub fn open(path: &Path, master_key: MasterKey) -> Result<Self, VaultError> {
        let conn = open_database(path, "vault", VAULT_MIGRATIONS)
            .map_err(|e| VaultError::Backend(format!("opening {}: {e}", path.display())))?;
        let key = UnboundKey::new(&AES_256_GCM, &master_key.bytes)
            .map_err(|_| VaultError::Backend("the master key is not a valid AES-256 key".into()))?;
        let cipher = VaultCipher { key: LessSafeKey::new(key), key_id: master_key.id, random: SystemRandom::new() };
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            readers: Readers::new(path, READERS),
            cipher: Arc::new(cipher),
            clock: Arc::new(SystemClock),
        })
    }

    /// Stamps versions with `clock`'s time instead of the system clock's.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Re-encrypts every version under `new_key` (the master key rotation), in one transaction:
    /// either every version moves to the new key or none does. Versions already under the new
    /// key are left as they are, so an interrupted rekey can simply be run again. Values,
    /// version numbers and labels do not change. Returns how many versions were re-encrypted.
    ///
    /// This vault must have been opened with the key the versions are under now; a version under
    /// a third key stops the rekey with [`VaultError::Undecryptable`] naming it.
    pub async fn rekey(&self, new_key: &MasterKey) -> Result<usize, VaultError> {
        let unbound = UnboundKey::new(&AES_256_GCM, &new_key.bytes)
            .map_err(|_| VaultError::Backend("the new master key is not a valid AES-256 key".into()))?;
        let new_cipher =
            VaultCipher { key: LessSafeKey::new(unbound), key_id: new_key.id.clone(), random: SystemRandom::new() };
        self.with_connection(move |conn, old_cipher| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(VaultError::from)?;
            let rows = tx
                .prepare("SELECT vault, name, version, key_id, nonce, ciphertext FROM secret_versions")
                .map_err(VaultError::from)?
                .query_map([], |row| {
                    Ok((
                        SecretRef { vault: row.get(0)?, name: row.get(1)?, version: None },
                        row.get::<_, u32>(2)?,
                        StoredVersion { key_id: row.get(3)?, nonce: row.get(4)?, ciphertext: row.get(5)? },
                    ))
                })
                .map_err(VaultError::from)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(VaultError::from)?;
            // Versions are immutable; re-encrypting one keeps its value, so only rekey lifts the
            // guard, inside its own transaction (a failure restores it with everything else).
            tx.execute_batch("DROP TRIGGER secret_versions_are_immutable").map_err(VaultError::from)?;
            let mut re_encrypted = 0;
            for (secret, version, stored) in rows {
                if stored.key_id == new_cipher.key_id {
                    continue;
                }
                let value = old_cipher.open(&secret, version, stored)?;
                let (nonce, ciphertext) = new_cipher.seal(&secret, version, &value)?;
                tx.execute(
                    "UPDATE secret_versions SET key_id = ?4, nonce = ?5, ciphertext = ?6
                     WHERE vault = ?1 AND name = ?2 AND version = ?3",
                    params![secret.vault, secret.name, version, new_cipher.key_id, nonce, ciphertext],
                )
                .map_err(VaultError::from)?;
                re_encrypted += 1;
            }
            tx.execute_batch(IMMUTABLE_VERSIONS_TRIGGER).map_err(VaultError::from)?;
            tx.commit().map_err(VaultError::from)?;
            Ok(re_encrypted)
        })
        .await
    }

    /// Removes `stage` from the secret when it is on `version`.
    async fn drop_label_on(&self, secret: &SecretRef, stage: Stage, version: u32) -> Result<bool, VaultError> {
        let secret = secret.unversioned();
        self.with_connection(move |conn, _| {
            let dropped = conn
                .execute(
                    "DELETE FROM secret_labels WHERE vault = ?1 AND name = ?2 AND label = ?3 AND version = ?4",
                    params![secret.vault, secret.name, stage.as_str(), version],
                )
                .map_err(VaultError::from)?;
            Ok(dropped > 0)
        })
        .await
    }

    /// Runs a point read (a row or two by key, as every read here but `list` and `versions` is)
    /// on a reader: on the calling task when one is idle (it takes microseconds, less than the
    /// two thread wake-ups of a blocking task), else on the blocking pool.
    async fn read_point<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection, &VaultCipher) -> Result<T, VaultError> + Send + 'static,
    ) -> Result<T, VaultError> {
        let cipher = Arc::clone(&self.cipher);
        self.readers.read_point(move |conn| work(conn, &cipher)).await
    }

    /// Runs `work` on the connection in a blocking task.
    async fn with_connection<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection, &VaultCipher) -> Result<T, VaultError> + Send + 'static,
    ) -> Result<T, VaultError> {
        let (conn, cipher) = (Arc::clone(&self.conn), Arc::clone(&self.cipher));
        tokio::task::spawn_blocking(move || {
            // Transactions roll back when a panic drops them, so a poisoned lock holds a usable
            // connection.
            let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
            work(&mut conn, &cipher)
        })
        .await?
    }
}

struct VaultCipher {
    key: LessSafeKey,
    key_id: String,
    random: SystemRandom,
}

impl VaultCipher {
    fn seal(&self, secret: &SecretRef, version: u32, plaintext: &[u8]) -> Result<(Vec<u8>, Vec<u8>), VaultError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).map_err(|_| VaultError::Backend("the system random generator failed".into()))?;
        let mut sealed = plaintext.to_vec();
        let aad = associated_data(secret, version, &self.key_id);
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut sealed)
            .map_err(|_| VaultError::Backend("encryption failed".into()))?;
        Ok((nonce.to_vec(), sealed))
    }

    fn open(&self, secret: &SecretRef, version: u32, stored: StoredVersion) -> Result<Vec<u8>, VaultError> {
        let undecryptable = || VaultError::Undecryptable(secret.with_version(version).to_string());
        if stored.key_id != self.key_id {
            return Err(undecryptable());
        }
        let nonce = Nonce::try_assume_unique_for_key(&stored.nonce).map_err(|_| undecryptable())?;
        let aad = associated_data(secret, version, &self.key_id);
        let mut buffer = stored.ciphertext;
        let plaintext_len =
            self.key.open_in_place(nonce, Aad::from(aad), &mut buffer).map_err(|_| undecryptable())?.len();
        buffer.truncate(plaintext_len);
        Ok(buffer)
    }
}

/// Length-prefixed, so no two rows share associated data.
fn associated_data(secret: &SecretRef, version: u32, key_id: &str) -> Vec<u8> {
    let mut aad = Vec::new();
    for field in
        [AAD_SCHEME, secret.vault.as_bytes(), secret.name.as_bytes(), &version.to_be_bytes(), key_id.as_bytes()]
    {
        aad.extend_from_slice(&(field.len() as u64).to_be_bytes());
        aad.extend_from_slice(field);
    }
    aad
}

struct StoredVersion {
    key_id: String,
    nonce: Vec<u8>,
    ciphertext: Vec<u8>,
}

/// The version a label is on, if any.
fn labelled(conn: &Connection, secret: &SecretRef, stage: Stage) -> rusqlite::Result<Option<u32>> {
    cached_row(
        conn,
        "SELECT version FROM secret_labels WHERE vault = ?1 AND name = ?2 AND label = ?3",
        params![secret.vault, secret.name, stage.as_str()],
        |row| row.get(0),
    )
    .optional()
}

/// The secret's current version, 0 when it has none.
fn current_version(conn: &Connection, secret: &SecretRef) -> rusqlite::Result<u32> {
    Ok(labelled(conn, secret, Stage::Current)?.unwrap_or(0))
}

/// The highest version number, 0 when the secret has none: the next version is one more.
fn latest_version(conn: &Connection, secret: &SecretRef) -> rusqlite::Result<u32> {
    cached_row(
        conn,
        "SELECT COALESCE(MAX(version), 0) FROM secret_versions WHERE vault = ?1 AND name = ?2",
        params![secret.vault, secret.name],
        |row| row.get(0),
    )
}

fn set_label(conn: &Connection, secret: &SecretRef, stage: Stage, version: u32, at: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO secret_labels (vault, name, label, version, moved_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (vault, name, label) DO UPDATE SET version = excluded.version, moved_at = excluded.moved_at",
        params![secret.vault, secret.name, stage.as_str(), version, at],
    )?;
    Ok(())
}

fn drop_label(conn: &Connection, secret: &SecretRef, stage: Stage) -> rusqlite::Result<()> {
    conn.execute(
        "DELETE FROM secret_labels WHERE vault = ?1 AND name = ?2 AND label = ?3",
        params![secret.vault, secret.name, stage.as_str()],
    )?;
    Ok(())
}

fn parse_time(secret: &SecretRef, text: &str) -> Result<chrono::DateTime<Utc>, VaultError> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| VaultError::Backend(format!("{secret}: bad timestamp {text}: {e}")))
}

/// Seals `value` as the next version of `secret` inside `tx`; returns its number.
fn insert_version(
    tx: &Connection,
    cipher: &VaultCipher,
    secret: &SecretRef,
    value: &[u8],
    at: &str,
) -> Result<u32, VaultError> {
    let version = latest_version(tx, secret)
        .map_err(VaultError::from)?
        .checked_add(1)
        .ok_or_else(|| VaultError::Backend(format!("{secret} has no version number left")))?;
    let (nonce, ciphertext) = cipher.seal(secret, version, value)?;
    tx.execute(
        "INSERT INTO secret_versions (vault, name, version, key_id, nonce, ciphertext, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![secret.vault, secret.name, version, cipher.key_id, nonce, ciphertext, at],
    )
    .map_err(VaultError::from)?;
    Ok(version)
}

fn read_version(conn: &Connection, secret: &SecretRef, version: u32) -> Result<Option<StoredVersion>, VaultError> {
    cached_row(
        conn,
        "SELECT key_id, nonce, ciphertext FROM secret_versions WHERE vault = ?1 AND name = ?2 AND version = ?3",
        params![secret.vault, secret.name, version],
        |row| Ok(StoredVersion { key_id: row.get(0)?, nonce: row.get(1)?, ciphertext: row.get(2)? }),
    )
    .optional()
    .map_err(VaultError::from)
}

fn metadata_of(conn: &Connection, secret: SecretRef) -> Result<Option<SecretMetadata>, VaultError> {
    let versions: u32 = cached_row(
        conn,
        "SELECT COUNT(*) FROM secret_versions WHERE vault = ?1 AND name = ?2",
        params![secret.vault, secret.name],
        |row| row.get(0),
    )
    .map_err(VaultError::from)?;
    if versions == 0 {
        return Ok(None);
    }
    Ok(Some(SecretMetadata {
        current_version: current_version(conn, &secret).map_err(VaultError::from)?,
        pending_version: labelled(conn, &secret, Stage::Pending).map_err(VaultError::from)?,
        previous_version: labelled(conn, &secret, Stage::Previous).map_err(VaultError::from)?,
        versions,
        secret,
    }))
}

#[async_trait]
impl SecretStore for SqliteVault {
    async fn put(&self, secret: &SecretRef, value: &[u8], expected_current: Option<u32>) -> Result<u32, VaultError> {
        let (secret, value) = (secret.unversioned(), value.to_vec());
        let at = timestamp(self.clock.now());
        self.with_connection(move |conn, cipher| {
            // IMMEDIATE takes the write lock before reading the current version, so two writers
            // cannot both pass the check-and-set with the same version.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(VaultError::from)?;
            let current = current_version(&tx, &secret).map_err(VaultError::from)?;
            if let Some(expected) = expected_current
                && expected != current
            {
                return Err(VaultError::VersionConflict { secret: secret.to_string(), expected, actual: current });
            }
            let version = insert_version(&tx, cipher, &secret, &value, &at)?;
            if current > 0 {
                set_label(&tx, &secret, Stage::Previous, current, &at).map_err(VaultError::from)?;
            }
            set_label(&tx, &secret, Stage::Current, version, &at).map_err(VaultError::from)?;
            drop_label(&tx, &secret, Stage::Pending).map_err(VaultError::from)?;
            tx.commit().map_err(VaultError::from)?;
            Ok(version)
        })
        .await
    }

    async fn stage_pending(
        &self,
        secret: &SecretRef,
        value: &[u8],
        expected_pending: Option<u32>,
    ) -> Result<u32, VaultError> {
        let (secret, value) = (secret.unversioned(), value.to_vec());
        let at = timestamp(self.clock.now());
        self.with_connection(move |conn, cipher| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(VaultError::from)?;
            let pending = labelled(&tx, &secret, Stage::Pending).map_err(VaultError::from)?.unwrap_or(0);
            if let Some(expected) = expected_pending
                && expected != pending
            {
                return Err(VaultError::VersionConflict { secret: secret.to_string(), expected, actual: pending });
            }
            let version = insert_version(&tx, cipher, &secret, &value, &at)?;
            set_label(&tx, &secret, Stage::Pending, version, &at).map_err(VaultError::from)?;
            tx.commit().map_err(VaultError::from)?;
            Ok(version)
        })
        .await
    }

    async fn promote(&self, secret: &SecretRef, version: u32, expected_current: Option<u32>) -> Result<(), VaultError> {
        let secret = secret.unversioned();
        let at = timestamp(self.clock.now());
        self.with_connection(move |conn, _| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(VaultError::from)?;
            let current = current_version(&tx, &secret).map_err(VaultError::from)?;
            if current == version {
                return Ok(());
            }
            if let Some(expected) = expected_current
                && expected != current
            {
                return Err(VaultError::VersionConflict { secret: secret.to_string(), expected, actual: current });
            }
            // A version older than current was staged before the current one was written (a
            // `put` during its rotation): promoting it would roll the secret back.
            if version < current {
                return Err(VaultError::VersionConflict {
                    secret: secret.to_string(),
                    expected: version,
                    actual: current,
                });
            }
            if read_version(&tx, &secret, version)?.is_none() {
                return Err(VaultError::NotFound(secret.with_version(version).to_string()));
            }
            if current > 0 {
                set_label(&tx, &secret, Stage::Previous, current, &at).map_err(VaultError::from)?;
            }
            set_label(&tx, &secret, Stage::Current, version, &at).map_err(VaultError::from)?;
            if labelled(&tx, &secret, Stage::Pending).map_err(VaultError::from)?.is_some_and(|p| p <= version) {
                drop_label(&tx, &secret, Stage::Pending).map_err(VaultError::from)?;
            }
            tx.commit().map_err(VaultError::from)
        })
        .await
    }

    async fn retire_previous(&self, secret: &SecretRef, version: u32) -> Result<bool, VaultError> {
        self.drop_label_on(secret, Stage::Previous, version).await
    }

    async fn discard_pending(&self, secret: &SecretRef, version: u32) -> Result<bool, VaultError> {
        self.drop_label_on(secret, Stage::Pending, version).await
    }

    async fn versions(&self, secret: &SecretRef) -> Result<Vec<VersionMetadata>, VaultError> {
        let secret = secret.unversioned();
        self.with_connection(move |conn, _| {
            let mut query = conn
                .prepare(
                    "SELECT v.version, v.key_id, v.created_at, group_concat(l.label)
                     FROM secret_versions v LEFT JOIN secret_labels l
                       ON l.vault = v.vault AND l.name = v.name AND l.version = v.version
                     WHERE v.vault = ?1 AND v.name = ?2 GROUP BY v.version ORDER BY v.version",
                )
                .map_err(VaultError::from)?;
            let rows = query
                .query_map(params![secret.vault, secret.name], |row| {
                    Ok((
                        row.get::<_, u32>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, Option<String>>(3)?,
                    ))
                })
                .map_err(VaultError::from)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(VaultError::from)?;
            rows.into_iter()
                .map(|(version, key_id, created_at, labels)| {
                    let mut stages: Vec<Stage> = labels
                        .unwrap_or_default()
                        .split(',')
                        .filter_map(|l| match l {
                            "current" => Some(Stage::Current),
                            "pending" => Some(Stage::Pending),
                            "previous" => Some(Stage::Previous),
                            _ => None,
                        })
                        .collect();
                    stages.sort();
                    Ok(VersionMetadata { version, key_id, created_at: parse_time(&secret, &created_at)?, stages })
                })
                .collect()
        })
        .await
    }

    async fn get(&self, secret: &SecretRef) -> Result<SecretValue, VaultError> {
        let secret = secret.clone();
        self.read_point(move |conn, cipher| {
            let version = match secret.version {
                Some(version) => version,
                None => current_version(conn, &secret).map_err(VaultError::from)?,
            };
            let stored =
                read_version(conn, &secret, version)?.ok_or_else(|| VaultError::NotFound(secret.to_string()))?;
            let value = cipher.open(&secret, version, stored)?;
            Ok(SecretValue { version, value })
        })
        .await
    }

    async fn metadata(&self, secret: &SecretRef) -> Result<Option<SecretMetadata>, VaultError> {
        let secret = secret.unversioned();
        self.read_point(move |conn, _| metadata_of(conn, secret)).await
    }

    /// The version labelled previous, since the moment the label moved to it.
    async fn previous(&self, secret: &SecretRef) -> Result<Option<PreviousSecret>, VaultError> {
        if secret.version.is_some() {
            return Ok(None);
        }
        let secret = secret.clone();
        self.read_point(move |conn, cipher| {
            let labelled: Option<(u32, String)> = conn
                .query_row(
                    "SELECT version, moved_at FROM secret_labels WHERE vault = ?1 AND name = ?2 AND label = 'previous'",
                    params![secret.vault, secret.name],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()
                .map_err(VaultError::from)?;
            let Some((version, moved_at)) = labelled else { return Ok(None) };
            let superseded_at = parse_time(&secret, &moved_at)?;
            let stored = read_version(conn, &secret, version)?
                .ok_or_else(|| VaultError::NotFound(secret.with_version(version).to_string()))?;
            let value = cipher.open(&secret, version, stored)?;
            Ok(Some(PreviousSecret { value: SecretValue { version, value }, superseded_at }))
        })
        .await
    }

    async fn owner(&self, vault: &str) -> Result<Option<VaultOwner>, VaultError> {
        let vault = vault.to_string();
        self.read_point(move |conn, _| {
            let owner: Option<String> =
                cached_row(conn, "SELECT tenant_id FROM vault_owners WHERE vault = ?1", params![vault], |row| {
                    row.get(0)
                })
                .optional()?;
            Ok(owner.map(|owner| owner_of_column(&owner)))
        })
        .await
    }

    async fn claim(&self, vault: &str, owner: &VaultOwner) -> Result<(), VaultError> {
        let (vault, wanted) = (vault.to_string(), owner_column(owner).to_string());
        self.with_connection(move |conn, _| {
            conn.execute(
                "INSERT INTO vault_owners (vault, tenant_id) VALUES (?1, ?2) ON CONFLICT (vault) DO NOTHING",
                params![vault, wanted],
            )?;
            let owner: String =
                conn.query_row("SELECT tenant_id FROM vault_owners WHERE vault = ?1", params![vault], |row| {
                    row.get(0)
                })?;
            if owner == wanted { Ok(()) } else { Err(VaultError::ClaimedByAnother(vault)) }
        })
        .await
    }

    async fn list(&self) -> Result<Vec<SecretMetadata>, VaultError> {
        self.with_connection(|conn, _| {
            let names = conn
                .prepare("SELECT DISTINCT vault, name FROM secret_versions ORDER BY vault, name")
                .map_err(VaultError::from)?
                .query_map([], |row| Ok(SecretRef { vault: row.get(0)?, name: row.get(1)?, version: None }))
                .map_err(VaultError::from)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(VaultError::from)?;
            let mut listed = Vec::with_capacity(names.len());
            for secret in names {
                listed.extend(metadata_of(conn, secret)?);
            }
            Ok(listed)
        })
        .await
    }
}

/// How `vault_owners.tenant_id` holds an owner: the tenant's id, or [`SHARED`], which no
/// tenant id can be (tenant ids have no `*`).
fn owner_column(owner: &VaultOwner) -> &str {
    match owner {
        VaultOwner::Tenant(tenant_id) => tenant_id,
        VaultOwner::Shared => SHARED,
    }
}

fn owner_of_column(column: &str) -> VaultOwner {
    if column == SHARED { VaultOwner::Shared } else { VaultOwner::Tenant(column.to_string()) }
}

/// The owner column of a shared vault.
const SHARED: &str = "*";

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn versions_are_stamped_by_the_vaults_clock() {
        let dir = tempfile::tempdir().unwrap();
        let at = chrono::DateTime::parse_from_rfc3339("2020-02-03T04:05:06.789Z").unwrap().with_timezone(&Utc);
        let vault = SqliteVault::open(&dir.path().join("vault.db"), MasterKey::from_hex(KEY_HEX).unwrap())
            .unwrap()
            .with_clock(Arc::new(domain::clock::FixedClock(at)));
        let secret = SecretRef::parse("kv://v/s").unwrap();
        vault.put(&secret, b"one", None).await.unwrap();
        assert_eq!(vault.versions(&secret).await.unwrap()[0].created_at, at);
    }

    const KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn the_key_id_is_the_start_of_the_keys_sha256() {
        let key = MasterKey::from_hex(KEY_HEX).unwrap();
        let digest = digest::digest(&digest::SHA256, &hex::decode(KEY_HEX).unwrap());
        assert_eq!(key.id(), &hex::encode(digest.as_ref())[..16]);
    }

    #[test]
    fn from_hex_rejects_other_lengths_and_non_hex_without_echoing_them() {
        for bad in ["", "00", &KEY_HEX[..62], &format!("{KEY_HEX}00"), &KEY_HEX.replace('0', "g")] {
            let message = MasterKey::from_hex(bad).unwrap_err().to_string();
            assert!(bad.is_empty() || !message.contains(bad), "{message}");
        }
        assert!(MasterKey::from_hex(&format!("  {KEY_HEX}\n")).is_ok());
    }

    #[test]
    fn debug_does_not_print_the_key() {
        let printed = format!("{:?}", MasterKey::from_hex(KEY_HEX).unwrap());
        assert!(!printed.contains(KEY_HEX) && !printed.contains("0a0b0c"), "{printed}");
    }

    #[test]
    fn the_environment_wins_over_the_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::load_or_create_from(Some(KEY_HEX), dir.path()).unwrap();
        assert_eq!(key.bytes, MasterKey::from_hex(KEY_HEX).unwrap().bytes);
        assert!(!dir.path().join(MasterKey::FILE_NAME).exists(), "no file is created when the env var is set");
        assert!(MasterKey::load_or_create_from(Some("not-a-key"), dir.path()).is_err());
    }

    #[test]
    fn a_missing_key_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let first = MasterKey::load_or_create_from(None, &data_dir).unwrap();
        let again = MasterKey::load_or_create_from(Some("  "), &data_dir).unwrap();
        assert_eq!(first.bytes, again.bytes);
        let file = data_dir.join(MasterKey::FILE_NAME);
        assert_eq!(fs::read_to_string(&file).unwrap().trim(), hex::encode(first.bytes));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let leftovers: Vec<_> = fs::read_dir(&data_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers, [MasterKey::FILE_NAME], "the temporary file is removed");
    }

    #[test]
    fn a_corrupt_key_file_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(MasterKey::FILE_NAME), "garbage").unwrap();
        assert!(MasterKey::load_or_create_from(None, dir.path()).is_err());
        assert_eq!(fs::read_to_string(dir.path().join(MasterKey::FILE_NAME)).unwrap(), "garbage");
    }

    #[tokio::test]
    async fn the_previous_version_is_the_one_before_current_with_when_it_was_superseded() {
        let dir = tempfile::tempdir().unwrap();
        let vault = SqliteVault::open(&dir.path().join("v.db"), MasterKey::from_bytes([7; 32])).unwrap();
        let s = SecretRef::parse("kv://v/hook").unwrap();
        assert_eq!(vault.previous(&s).await.unwrap(), None, "no secret");
        vault.put(&s, b"one", None).await.unwrap();
        assert_eq!(vault.previous(&s).await.unwrap(), None, "a single version has no previous");
        let before = Utc::now();
        vault.put(&s, b"two", None).await.unwrap();
        let previous = vault.previous(&s).await.unwrap().unwrap();
        assert_eq!((previous.value.version, previous.value.value.as_slice()), (1, &b"one"[..]));
        assert!(
            previous.superseded_at >= before - chrono::Duration::seconds(1) && previous.superseded_at <= Utc::now()
        );
        vault.put(&s, b"three", None).await.unwrap();
        assert_eq!(vault.previous(&s).await.unwrap().unwrap().value.value, b"two");
        assert_eq!(vault.previous(&s.with_version(3)).await.unwrap(), None, "pinned refs do not rotate");
        assert!(!format!("{previous:?}").contains("one"), "Debug redacts the value");
    }

    #[test]
    fn associated_data_differs_per_row() {
        let a = SecretRef::parse("kv://v/ab").unwrap();
        let b = SecretRef::parse("kv://va/b").unwrap();
        assert_ne!(associated_data(&a, 1, "k"), associated_data(&b, 1, "k"));
        assert_ne!(associated_data(&a, 1, "k"), associated_data(&a, 2, "k"));
    }
}
