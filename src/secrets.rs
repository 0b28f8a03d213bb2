use std::io::Read;

use anyhow::{Context, bail};
use clap::Subcommand;
use domain::secret_ref::SecretRef;
use store::SecretStore;
use store::sqlite_vault::{MasterKey, SqliteVault};
use store::vault::{Stage, VaultError, VaultOwner};

use crate::data_dir::DataDir;

use crate::data_dir::VAULT_DB;

#[derive(Subcommand)]
pub enum SecretsCommand {
    /// Store a new version of a secret; the value is read from stdin (one trailing newline dropped).
    Put {
        #[command(flatten)]
        data: DataDir,
        /// kv://VAULT/NAME
        secret: String,
        #[command(flatten)]
        owner: OwnerArgs,
        /// `current` makes the new version current at once (the old one becomes previous);
        /// `pending` stages it for the next rotation, which verifies it before promoting it.
        #[arg(long, default_value = "current", value_parser = ["current", "pending"])]
        stage: String,
        /// Check-and-set: store only if the version now labelled `--stage` is this one (0: none).
        #[arg(long)]
        expected_version: Option<u32>,
    },
    /// Give vaults to their owner, before any secret is put in them or when they were written
    /// before vaults had owners (no tenant can use an unclaimed vault's secrets).
    Claim {
        #[command(flatten)]
        data: DataDir,
        /// The vaults: the VAULT of kv://VAULT/NAME.
        #[arg(required = true)]
        vaults: Vec<String>,
        #[command(flatten)]
        owner: OwnerArgs,
    },
    /// List secrets with their versions (never values).
    List {
        #[command(flatten)]
        data: DataDir,
    },
    /// Re-encrypt every version under a new master key (master key rotation). See
    /// docs/credentials.md.
    Rekey {
        #[command(flatten)]
        data: DataDir,
        /// The new key (64 hex characters) in a file; without it a new random key is generated.
        /// Required when the current key comes from IE_MASTER_KEY (you set the variable to the
        /// new key afterwards); otherwise DATA_DIR/master.key is replaced by the new key.
        #[arg(long)]
        new_key_file: Option<std::path::PathBuf>,
    },
    /// Show a secret's metadata and versions (labels, key ids); its value only with --reveal.
    Show {
        #[command(flatten)]
        data: DataDir,
        /// kv://VAULT/NAME[?version=N]
        secret: String,
        /// Print the value too.
        #[arg(long)]
        reveal: bool,
    },
}

/// Whose vault a secret goes in: every vault belongs to one tenant, or is shared.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
pub struct OwnerArgs {
    /// The tenant the vault belongs to: claimed on first use, refused when it is another's.
    /// Only that tenant's connections, subscriptions and runs can use its secrets.
    #[arg(long)]
    tenant: Option<String>,
    /// A vault of the operator's: every tenant may verify inbound deliveries with its secrets,
    /// and none can have them sent anywhere (no credentialRef, signingSecretRef or key issuer).
    #[arg(long)]
    shared: bool,
}

impl OwnerArgs {
    fn owner(&self) -> anyhow::Result<VaultOwner> {
        match &self.tenant {
            Some(tenant) if domain::ids::is_tenant_id(tenant) => Ok(VaultOwner::Tenant(tenant.clone())),
            Some(tenant) => bail!("{tenant} is not a tenant id"),
            None => Ok(VaultOwner::Shared),
        }
    }
}

/// Gives `vault` to `owner`, saying who has it when it is someone else's.
async fn claim(store: &SqliteVault, vault: &str, owner: &VaultOwner) -> anyhow::Result<()> {
    match store.claim(vault, owner).await {
        Err(VaultError::ClaimedByAnother(_)) => {
            let holder = store.owner(vault).await?.map_or_else(|| "no one".into(), |owner| describe(&owner));
            bail!("vault {vault} belongs to {holder}, not {}", describe(owner))
        }
        claimed => Ok(claimed?),
    }
}

fn describe(owner: &VaultOwner) -> String {
    match owner {
        VaultOwner::Tenant(tenant) => format!("tenant {tenant}"),
        VaultOwner::Shared => "the shared vaults".into(),
    }
}

/// The data dir's vault, under the master key from `IE_MASTER_KEY` or `DATA_DIR/master.key`.
pub fn open_vault(data: &DataDir) -> anyhow::Result<SqliteVault> {
    std::fs::create_dir_all(&data.data_dir).with_context(|| format!("creating {}", data.data_dir.display()))?;
    let key = MasterKey::load_or_create(&data.data_dir)?;
    Ok(SqliteVault::open(&data.data_dir.join(VAULT_DB), key)?)
}

fn parse_ref(text: &str) -> anyhow::Result<SecretRef> {
    SecretRef::parse(text).map_err(|e| anyhow::anyhow!("{text}: {e}"))
}

pub async fn run(command: SecretsCommand) -> anyhow::Result<()> {
    match command {
        SecretsCommand::Put { data, secret, owner, stage, expected_version } => {
            let secret = parse_ref(&secret)?;
            if secret.version.is_some() {
                bail!("versions are assigned by the vault: give kv://VAULT/NAME without ?version");
            }
            let mut value = Vec::new();
            std::io::stdin().read_to_end(&mut value).context("reading the value from stdin")?;
            if value.ends_with(b"\n") {
                value.pop();
                if value.ends_with(b"\r") {
                    value.pop();
                }
            }
            if value.is_empty() {
                bail!("the value on stdin is empty");
            }
            let owner = owner.owner()?;
            let vault = open_vault(&data)?;
            claim(&vault, &secret.vault, &owner).await?;
            let version = if stage == "pending" {
                vault.stage_pending(&secret, &value, expected_version).await?
            } else {
                vault.put(&secret, &value, expected_version).await?
            };
            println!("stored {} ({stage})", secret.with_version(version));
        }
        SecretsCommand::Claim { data, vaults, owner } => {
            if let Some(bad) = vaults.iter().find(|vault| !domain::secret_ref::is_name(vault)) {
                bail!("{bad} is not a vault name (a-z, 0-9, '-', '_', '.')");
            }
            let owner = owner.owner()?;
            let store = open_vault(&data)?;
            for vault in &vaults {
                claim(&store, vault, &owner).await?;
                println!("vault {vault} belongs to {}", describe(&owner));
            }
        }
        SecretsCommand::List { data } => {
            let vault = open_vault(&data)?;
            for m in vault.list().await? {
                let owner = match vault.owner(&m.secret.vault).await? {
                    Some(VaultOwner::Tenant(tenant)) => format!("tenant={tenant}"),
                    Some(VaultOwner::Shared) => "shared".into(),
                    None => "unclaimed".into(),
                };
                println!(
                    "{}\tcurrent={}\tpending={}\tprevious={}\tversions={}\t{owner}",
                    m.secret,
                    m.current_version,
                    label(m.pending_version),
                    label(m.previous_version),
                    m.versions
                );
            }
        }
        SecretsCommand::Show { data, secret, reveal } => {
            let secret = parse_ref(&secret)?;
            let vault = open_vault(&data)?;
            let m = vault.metadata(&secret).await?.with_context(|| format!("{secret} not found"))?;
            println!(
                "{}\tcurrent={}\tpending={}\tprevious={}\tversions={}",
                m.secret,
                m.current_version,
                label(m.pending_version),
                label(m.previous_version),
                m.versions
            );
            for v in vault.versions(&secret).await? {
                let stages: Vec<&str> = v.stages.iter().map(|s: &Stage| s.as_str()).collect();
                println!(
                    "  version {}\tkey={}\tcreated={}\tlabels={}",
                    v.version,
                    v.key_id,
                    v.created_at.to_rfc3339(),
                    if stages.is_empty() { "-".into() } else { stages.join(",") }
                );
            }
            if reveal {
                let value = vault.get(&secret).await?;
                println!("version {}: {}", value.version, String::from_utf8_lossy(&value.value));
            }
        }
        SecretsCommand::Rekey { data, new_key_file } => rekey(&data, new_key_file.as_deref()).await?,
    }
    Ok(())
}

fn label(version: Option<u32>) -> String {
    version.map_or_else(|| "-".into(), |v| v.to_string())
}

/// Re-encrypts the vault under a new key, then installs the key. In file mode the new key is
/// written beside the old one first (`master.key.next`), the vault re-encrypted in one
/// transaction, and the file renamed over `master.key`: a crash leaves either the old state or
/// a vault under the key in `master.key.next` (rename it to finish).
async fn rekey(data: &DataDir, new_key_file: Option<&std::path::Path>) -> anyhow::Result<()> {
    let from_env = std::env::var(MasterKey::ENV_VAR).is_ok_and(|v| !v.trim().is_empty());
    let key_file = data.data_dir.join(MasterKey::FILE_NAME);
    if !from_env && !key_file.exists() {
        bail!("no master key to rotate: neither {} nor {} is set", MasterKey::ENV_VAR, key_file.display());
    }
    let new_key = match new_key_file {
        Some(path) => MasterKey::load_file(path)?,
        None if from_env => bail!(
            "the current key comes from {}: give the new one with --new-key-file, then set {} to it",
            MasterKey::ENV_VAR,
            MasterKey::ENV_VAR
        ),
        None => MasterKey::generate()?,
    };
    let vault = open_vault(data)?;
    let next = data.data_dir.join(format!("{}.next", MasterKey::FILE_NAME));
    if !from_env {
        if next.exists() {
            bail!("{} exists: an earlier rekey did not finish (see docs/credentials.md)", next.display());
        }
        new_key.save_new_file(&next)?;
    }
    let count = vault.rekey(&new_key).await?;
    drop(vault);
    if from_env {
        println!(
            "re-encrypted {count} versions under key {}; now set {} to the new key",
            new_key.id(),
            MasterKey::ENV_VAR
        );
    } else {
        std::fs::rename(&next, &key_file).with_context(|| format!("installing {}", key_file.display()))?;
        if let Ok(dir) = std::fs::File::open(&data.data_dir) {
            let _ = dir.sync_all();
        }
        println!("re-encrypted {count} versions under key {}, now in {}", new_key.id(), key_file.display());
    }
    Ok(())
}
