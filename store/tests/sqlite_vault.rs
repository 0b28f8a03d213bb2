//! The encrypted SQLite vault: versions, check-and-set, the master key, and what reaches disk.

use std::path::Path;

use domain::secret_ref::SecretRef;
use store::{MasterKey, SecretMetadata, SecretStore, SecretUse, SqliteVault, Stage, VaultError, VaultOwner, Vaults};

const KEY: &str = "8f1c2a3b4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";
const OTHER_KEY: &str = "0000000000000000000000000000000000000000000000000000000000000001";

fn open(path: &Path, key_hex: &str) -> SqliteVault {
    SqliteVault::open(path, MasterKey::from_hex(key_hex).unwrap()).unwrap()
}

fn secret(text: &str) -> SecretRef {
    SecretRef::parse(text).unwrap()
}

#[tokio::test]
async fn a_stored_secret_reads_back_with_its_version() {
    let dir = tempfile::tempdir().unwrap();
    let vault = open(&dir.path().join("vault.db"), KEY);
    let github = secret("kv://factory-integration/github-booking");
    assert_eq!(vault.put(&github, b"ghp_first", None).await.unwrap(), 1);
    let value = vault.get(&github).await.unwrap();
    assert_eq!((value.version, value.value.as_slice()), (1, b"ghp_first".as_slice()));
    assert!(!format!("{value:?}").contains("ghp_first"), "Debug shows the value");
}

#[tokio::test]
async fn each_put_adds_a_version_and_old_versions_stay_readable() {
    let dir = tempfile::tempdir().unwrap();
    let vault = open(&dir.path().join("vault.db"), KEY);
    let s = secret("kv://v/token");
    vault.put(&s, b"one", None).await.unwrap();
    // The version of the ref passed to put is ignored: a put always adds the next version.
    assert_eq!(vault.put(&s.with_version(1), b"two", None).await.unwrap(), 2);
    assert_eq!(vault.get(&s).await.unwrap().value, b"two");
    assert_eq!(vault.get(&s.with_version(1)).await.unwrap().value, b"one");
    assert_eq!(vault.get(&s.with_version(2)).await.unwrap().version, 2);
}

#[tokio::test]
async fn check_and_set_writes_only_over_the_expected_version() {
    let dir = tempfile::tempdir().unwrap();
    let vault = open(&dir.path().join("vault.db"), KEY);
    let s = secret("kv://v/cas");
    assert_eq!(vault.put(&s, b"one", Some(0)).await.unwrap(), 1, "0 expects a new secret");
    match vault.put(&s, b"again", Some(0)).await {
        Err(VaultError::VersionConflict { secret, expected: 0, actual: 1 }) => assert_eq!(secret, "kv://v/cas"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(vault.put(&s, b"two", Some(1)).await.unwrap(), 2);
    assert!(matches!(
        vault.put(&s, b"stale", Some(1)).await,
        Err(VaultError::VersionConflict { expected: 1, actual: 2, .. })
    ));
    assert_eq!(vault.get(&s).await.unwrap().value, b"two", "a rejected put stores nothing");
}

#[tokio::test]
async fn concurrent_check_and_set_lets_exactly_one_writer_win() {
    let dir = tempfile::tempdir().unwrap();
    let vault = std::sync::Arc::new(open(&dir.path().join("vault.db"), KEY));
    let s = secret("kv://v/race");
    vault.put(&s, b"base", None).await.unwrap();
    let writers: Vec<_> = (0..10)
        .map(|i| {
            let (vault, s) = (vault.clone(), s.clone());
            tokio::spawn(async move { vault.put(&s, format!("writer-{i}").as_bytes(), Some(1)).await })
        })
        .collect();
    let mut won = 0;
    for writer in writers {
        match writer.await.unwrap() {
            Ok(2) => won += 1,
            Err(VaultError::VersionConflict { actual: 2, .. }) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(won, 1);
}

#[tokio::test]
async fn unknown_secrets_and_versions_are_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let vault = open(&dir.path().join("vault.db"), KEY);
    assert!(
        matches!(vault.get(&secret("kv://v/missing")).await, Err(VaultError::NotFound(r)) if r == "kv://v/missing")
    );
    vault.put(&secret("kv://v/one"), b"x", None).await.unwrap();
    assert!(matches!(vault.get(&secret("kv://v/one?version=2")).await, Err(VaultError::NotFound(_))));
    assert!(matches!(vault.get(&secret("kv://other/one")).await, Err(VaultError::NotFound(_))));
    assert_eq!(vault.metadata(&secret("kv://v/missing")).await.unwrap(), None);
}

#[tokio::test]
async fn another_master_key_cannot_decrypt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault.db");
    let s = secret("kv://v/api-key");
    open(&path, KEY).put(&s, b"sk-live-123", None).await.unwrap();
    let wrong = open(&path, OTHER_KEY);
    assert!(matches!(wrong.get(&s).await, Err(VaultError::Undecryptable(r)) if r == "kv://v/api-key?version=1"));
    assert_eq!(open(&path, KEY).get(&s).await.unwrap().value, b"sk-live-123");
}

#[tokio::test]
async fn a_ciphertext_moved_to_another_row_does_not_decrypt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault.db");
    let vault = open(&path, KEY);
    vault.put(&secret("kv://v/admin"), b"admin-password", None).await.unwrap();
    vault.put(&secret("kv://v/guest"), b"guest-password", None).await.unwrap();

    // An attacker with write access to the file swaps guest's row for a copy of admin's.
    let db = rusqlite::Connection::open(&path).unwrap();
    db.execute_batch(
        "DELETE FROM secret_versions WHERE name = 'guest';
         INSERT INTO secret_versions (vault, name, version, key_id, nonce, ciphertext, created_at)
         SELECT vault, 'guest', version, key_id, nonce, ciphertext, created_at
         FROM secret_versions WHERE name = 'admin';",
    )
    .unwrap();
    assert!(matches!(vault.get(&secret("kv://v/guest")).await, Err(VaultError::Undecryptable(_))));
    assert_eq!(vault.get(&secret("kv://v/admin")).await.unwrap().value, b"admin-password");
}

#[tokio::test]
async fn stored_versions_cannot_be_updated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault.db");
    open(&path, KEY).put(&secret("kv://v/fixed"), b"value", None).await.unwrap();
    let db = rusqlite::Connection::open(&path).unwrap();
    let update = db.execute("UPDATE secret_versions SET ciphertext = x'00' WHERE name = 'fixed'", []);
    assert!(update.unwrap_err().to_string().contains("immutable"));
}

#[tokio::test]
async fn the_database_never_holds_a_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault.db");
    let plaintext = b"PLAINTEXT-MARKER-4f2a9c";
    {
        let vault = open(&path, KEY);
        for name in ["a", "b", "c"] {
            vault.put(&secret(&format!("kv://v/{name}")), plaintext, None).await.unwrap();
        }
        // Checked while the vault is open, so the WAL file is looked at too.
        assert_no_file_contains(dir.path(), plaintext);
    }
    assert_no_file_contains(dir.path(), plaintext);
    assert_no_file_contains(dir.path(), KEY.as_bytes());
}

fn assert_no_file_contains(dir: &Path, needle: &[u8]) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        assert!(!bytes.windows(needle.len()).any(|w| w == needle), "{} holds a plaintext", path.display());
    }
}

#[tokio::test]
async fn list_and_metadata_describe_secrets_without_values() {
    let dir = tempfile::tempdir().unwrap();
    let vault = open(&dir.path().join("vault.db"), KEY);
    assert!(vault.list().await.unwrap().is_empty());
    for (text, value) in [("kv://b/z", "1"), ("kv://a/y", "1"), ("kv://b/z", "2"), ("kv://a/x", "1"), ("kv://b/z", "3")]
    {
        vault.put(&secret(text), value.as_bytes(), None).await.unwrap();
    }
    let meta = |text: &str, current_version, versions| SecretMetadata {
        secret: secret(text),
        current_version,
        versions,
        pending_version: None,
        previous_version: (current_version > 1).then(|| current_version - 1),
    };
    assert_eq!(
        vault.list().await.unwrap(),
        [meta("kv://a/x", 1, 1), meta("kv://a/y", 1, 1), meta("kv://b/z", 3, 3)],
        "ordered by vault and name"
    );
    // A pinned ref describes the whole secret, reported unpinned.
    assert_eq!(vault.metadata(&secret("kv://b/z?version=1")).await.unwrap(), Some(meta("kv://b/z", 3, 3)));
}

#[tokio::test]
async fn secrets_survive_reopening_with_the_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault.db");
    let s = secret("kv://v/durable");
    let key = MasterKey::load_or_create(dir.path()).unwrap();
    let key_id = key.id().to_owned();
    SqliteVault::open(&path, key).unwrap().put(&s, b"kept", None).await.unwrap();

    let key = MasterKey::load_or_create(dir.path()).unwrap();
    assert_eq!(key.id(), key_id);
    assert_eq!(SqliteVault::open(&path, key).unwrap().get(&s).await.unwrap().value, b"kept");
}

/// A tenant reaches a secret only in its own vaults, or, to verify deliveries, a shared one;
/// another tenant's vault and a vault no one claimed get the same answer.
#[tokio::test]
async fn a_tenant_uses_only_its_own_vaults_and_verifies_with_shared_ones() {
    let dir = tempfile::tempdir().unwrap();
    let vault = std::sync::Arc::new(open(&dir.path().join("vault.db"), KEY));
    let (owned, shared, unclaimed) = (secret("kv://acme/key"), secret("kv://ops/key"), secret("kv://nobody/key"));
    for s in [&owned, &shared, &unclaimed] {
        vault.put(s, b"value", None).await.unwrap();
    }
    vault.claim("acme", &VaultOwner::Tenant("acme".into())).await.unwrap();
    vault.claim("ops", &VaultOwner::Shared).await.unwrap();
    let vaults = Vaults::new(vault);
    let (acme, globex) = (vaults.of("acme"), vaults.of("globex"));
    let (now, grace) = (chrono::Utc::now(), std::time::Duration::from_secs(60));

    assert_eq!(acme.get(&owned).await.unwrap().value, b"value");
    assert_eq!(acme.signing_values(&owned, now, grace).await.unwrap(), [b"value".to_vec()]);
    assert_eq!(acme.verifying_values(&shared, now, grace).await.unwrap(), [b"value".to_vec()]);
    acme.check(&shared, SecretUse::Verify).await.unwrap();
    let refused = |result: Result<(), VaultError>| match result {
        Err(VaultError::NotTenants(message)) => message,
        other => panic!("expected NotTenants, got {other:?}"),
    };
    // A shared secret is never sent, nor signs what is sent.
    refused(acme.check(&shared, SecretUse::Send).await);
    assert!(matches!(acme.get(&shared).await, Err(VaultError::NotTenants(_))));
    assert!(matches!(acme.signing_values(&shared, now, grace).await, Err(VaultError::NotTenants(_))));
    // Nothing of a vault no one claimed, nor of another tenant's, in the same words.
    refused(acme.check(&unclaimed, SecretUse::Verify).await);
    assert!(matches!(acme.verifying_values(&unclaimed, now, grace).await, Err(VaultError::NotTenants(_))));
    for usage in [SecretUse::Send, SecretUse::Verify] {
        let theirs = refused(globex.check(&owned, usage).await);
        let nobodys = refused(globex.check(&secret("kv://no-such-vault/key"), usage).await);
        assert_eq!(theirs.replace("acme", "X"), nobodys.replace("no-such-vault", "X"));
    }
    for write in [
        globex.stage_pending(&owned, b"x", None).await.map(drop),
        globex.promote(&owned, 1, None).await,
        globex.discard_pending(&owned, 1).await.map(drop),
        globex.retire_previous(&owned, 1).await.map(drop),
        globex.metadata(&owned).await.map(drop),
        globex.versions(&owned).await.map(drop),
    ] {
        refused(write);
    }
}

#[tokio::test]
async fn staging_labels_move_as_in_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let vault = open(&dir.path().join("vault.db"), KEY);
    let s = secret("kv://v/rotated");
    vault.put(&s, b"one", None).await.unwrap();
    // Staged: stored, labelled pending, not used by unversioned reads.
    assert_eq!(vault.stage_pending(&s, b"two", Some(0)).await.unwrap(), 2);
    assert_eq!(vault.get(&s).await.unwrap().value, b"one");
    assert!(matches!(
        vault.stage_pending(&s, b"again", Some(0)).await,
        Err(VaultError::VersionConflict { expected: 0, actual: 2, .. })
    ));
    let m = vault.metadata(&s).await.unwrap().unwrap();
    assert_eq!((m.current_version, m.pending_version, m.previous_version), (1, Some(2), None));
    assert_eq!(vault.previous(&s).await.unwrap(), None, "a pending version is never previous");

    // Promoted: pending -> current, current -> previous; again is a no-op; a stale CAS conflicts.
    assert!(matches!(vault.promote(&s, 2, Some(7)).await, Err(VaultError::VersionConflict { .. })));
    vault.promote(&s, 2, Some(1)).await.unwrap();
    vault.promote(&s, 2, Some(1)).await.unwrap();
    assert_eq!(vault.get(&s).await.unwrap().value, b"two");
    let m = vault.metadata(&s).await.unwrap().unwrap();
    assert_eq!((m.current_version, m.pending_version, m.previous_version), (2, None, Some(1)));
    assert_eq!(vault.previous(&s).await.unwrap().unwrap().value.value, b"one");
    assert!(matches!(vault.promote(&s, 9, None).await, Err(VaultError::NotFound(_))));

    // Retired: no longer previous, still readable pinned (versions are immutable).
    assert!(vault.retire_previous(&s, 1).await.unwrap());
    assert!(!vault.retire_previous(&s, 1).await.unwrap());
    assert_eq!(vault.previous(&s).await.unwrap(), None);
    assert_eq!(vault.get(&s.with_version(1)).await.unwrap().value, b"one");

    // A failed pending version is discarded; the versions list shows labels and key ids.
    vault.stage_pending(&s, b"three", None).await.unwrap();
    assert!(vault.discard_pending(&s, 3).await.unwrap());
    let versions = vault.versions(&s).await.unwrap();
    let labels: Vec<(u32, Vec<Stage>)> = versions.iter().map(|v| (v.version, v.stages.clone())).collect();
    assert_eq!(labels, [(1, vec![]), (2, vec![Stage::Current]), (3, vec![])]);
    let key_id = MasterKey::from_hex(KEY).unwrap().id().to_owned();
    assert!(versions.iter().all(|v| v.key_id == key_id));
}

#[tokio::test]
async fn a_put_during_a_rotation_drops_the_pending_label_and_the_staged_version_is_never_promoted_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let vault = open(&dir.path().join("vault.db"), KEY);
    let s = secret("kv://v/rolled");
    vault.put(&s, b"one", None).await.unwrap();
    assert_eq!(vault.stage_pending(&s, b"two", None).await.unwrap(), 2);
    // An operator writes a newer current while version 2 is being verified.
    assert_eq!(vault.put(&s, b"three", None).await.unwrap(), 3);
    let m = vault.metadata(&s).await.unwrap().unwrap();
    assert_eq!((m.current_version, m.pending_version, m.previous_version), (3, None, Some(1)));

    // Finishing the rotation must not move current back to 2, with or without check-and-set.
    for expected_current in [None, Some(1), Some(3)] {
        assert!(
            matches!(
                vault.promote(&s, 2, expected_current).await,
                Err(VaultError::VersionConflict { expected: 2, actual: 3, .. })
                    | Err(VaultError::VersionConflict { expected: 1, actual: 3, .. })
            ),
            "promoting 2 over 3 with {expected_current:?}"
        );
    }
    assert_eq!(vault.get(&s).await.unwrap().value, b"three");
    let m = vault.metadata(&s).await.unwrap().unwrap();
    assert_eq!((m.current_version, m.pending_version, m.previous_version), (3, None, Some(1)), "labels unchanged");
    // A newer version is still promoted, and promoting the current one again stays a no-op.
    assert_eq!(vault.stage_pending(&s, b"four", Some(0)).await.unwrap(), 4);
    vault.promote(&s, 4, Some(3)).await.unwrap();
    vault.promote(&s, 4, Some(3)).await.unwrap();
    assert_eq!(vault.get(&s).await.unwrap().value, b"four");
}

#[tokio::test]
async fn rekey_moves_every_version_to_the_new_key_and_keeps_values_and_labels() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault.db");
    let s = secret("kv://v/rekeyed");
    {
        let vault = open(&path, KEY);
        vault.put(&s, b"one", None).await.unwrap();
        vault.put(&s, b"two", None).await.unwrap();
        vault.stage_pending(&s, b"three", None).await.unwrap();
        assert_eq!(vault.rekey(&MasterKey::from_hex(OTHER_KEY).unwrap()).await.unwrap(), 3);
    }
    assert!(matches!(open(&path, KEY).get(&s).await, Err(VaultError::Undecryptable(_))), "the old key is useless");
    let vault = open(&path, OTHER_KEY);
    assert_eq!(vault.get(&s).await.unwrap().value, b"two");
    assert_eq!(vault.get(&s.with_version(3)).await.unwrap().value, b"three");
    assert_eq!(vault.previous(&s).await.unwrap().unwrap().value.value, b"one");
    let new_id = MasterKey::from_hex(OTHER_KEY).unwrap().id().to_owned();
    assert!(vault.versions(&s).await.unwrap().iter().all(|v| v.key_id == new_id));
    // Run again (say, after an interruption): nothing is left to do; versions stay immutable.
    assert_eq!(vault.rekey(&MasterKey::from_hex(OTHER_KEY).unwrap()).await.unwrap(), 0);
    let db = rusqlite::Connection::open(&path).unwrap();
    let update = db.execute("UPDATE secret_versions SET ciphertext = x'00' WHERE name = 'rekeyed'", []);
    assert!(update.unwrap_err().to_string().contains("immutable"));
}

#[tokio::test]
async fn a_vault_from_before_staging_labels_gets_current_and_previous_from_its_versions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault.db");
    let (a, b) = (secret("kv://v/three"), secret("kv://v/one"));
    {
        let vault = open(&path, KEY);
        for value in ["1", "2", "3"] {
            vault.put(&a, value.as_bytes(), None).await.unwrap();
        }
        vault.put(&b, b"only", None).await.unwrap();
    }
    // Back to the schema before labels: the highest version was current, the one before previous.
    let db = rusqlite::Connection::open(&path).unwrap();
    db.execute_batch(
        "DROP TABLE secret_labels; UPDATE store_schema_versions SET version = 2 WHERE component = 'vault'",
    )
    .unwrap();
    drop(db);
    let vault = open(&path, KEY);
    let m = vault.metadata(&a).await.unwrap().unwrap();
    assert_eq!((m.current_version, m.previous_version, m.pending_version), (3, Some(2), None));
    assert_eq!(vault.get(&a).await.unwrap().value, b"3");
    assert_eq!(vault.previous(&a).await.unwrap().unwrap().value.value, b"2");
    let m = vault.metadata(&b).await.unwrap().unwrap();
    assert_eq!((m.current_version, m.previous_version), (1, None));
}

#[tokio::test]
async fn the_vault_contract_holds_for_the_sqlite_vault_and_its_cache() {
    let dir = tempfile::tempdir().unwrap();
    let vault: std::sync::Arc<dyn SecretStore> = std::sync::Arc::new(open(&dir.path().join("vault.db"), KEY));
    store::contract::run_vault_contract(vault.clone()).await;
    let cached = store::cached_vault::CachedSecretStore::new(vault, std::time::Duration::from_secs(60));
    store::contract::run_vault_contract(std::sync::Arc::new(cached)).await;
}

#[tokio::test]
async fn the_values_verifying_deliveries_are_the_current_then_the_previous_within_the_grace_for_the_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let vault =
        std::sync::Arc::new(SqliteVault::open(&dir.path().join("vault.db"), MasterKey::generate().unwrap()).unwrap());
    let secret = SecretRef::parse("kv://hooks/github").unwrap();
    vault.put(&secret, b"one", None).await.unwrap();
    vault.put(&secret, b"two", Some(1)).await.unwrap();
    vault.claim("hooks", &VaultOwner::Tenant("acme".into())).await.unwrap();
    let vaults = Vaults::new(vault);
    let (now, day) = (chrono::Utc::now(), std::time::Duration::from_secs(86_400));
    let verifying = |tenant, at| {
        let vaults = vaults.clone();
        let secret = secret.clone();
        async move { vaults.of(tenant).verifying_values(&secret, at, day).await }
    };

    assert_eq!(verifying("acme", now).await.unwrap(), [b"two".to_vec(), b"one".to_vec()]);
    assert_eq!(verifying("acme", now + chrono::Duration::days(2)).await.unwrap(), [b"two".to_vec()]);
    assert!(matches!(verifying("another-tenant", now).await, Err(VaultError::NotTenants(_))));
}
