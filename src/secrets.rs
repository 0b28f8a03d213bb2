use std::io::Read;

use anyhow::{Context, bail};
use clap::Subcommand;
use domain::secret_ref::SecretRef;
use store::SecretStore;
use store::sqlite_vault::{MasterKey, SqliteVault};

use crate::DataDir;

pub const VAULT_DB: &str = "vault.db";

#[derive(Subcommand)]
pub enum SecretsCommand {
    /// Store a new version of a secret; the value is read from stdin (one trailing newline dropped).
    Put {
        #[command(flatten)]
        data: DataDir,
        /// kv://VAULT/NAME
        secret: String,
        /// The tenant whose vault VAULT is: claimed on first use, refused when another tenant
        /// owns it. Secrets of a vault no tenant claimed are usable by every tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// List secrets with their versions (never values).
    List {
        #[command(flatten)]
        data: DataDir,
    },
    /// Show a secret's metadata; its value only with --reveal.
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
        SecretsCommand::Put { data, secret, tenant } => {
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
            let vault = open_vault(&data)?;
            if let Some(tenant) = &tenant {
                if !domain::ids::is_tenant_id(tenant) {
                    bail!("{tenant} is not a tenant id");
                }
                vault.claim(&secret.vault, tenant).await?;
            }
            let version = vault.put(&secret, &value, None).await?;
            println!("stored {}", secret.with_version(version));
        }
        SecretsCommand::List { data } => {
            let vault = open_vault(&data)?;
            for m in vault.list().await? {
                let owner = vault.owner(&m.secret.vault).await?.unwrap_or_else(|| "-".into());
                println!("{}\tcurrent={}\tversions={}\ttenant={owner}", m.secret, m.current_version, m.versions);
            }
        }
        SecretsCommand::Show { data, secret, reveal } => {
            let secret = parse_ref(&secret)?;
            let vault = open_vault(&data)?;
            let m = vault.metadata(&secret).await?.with_context(|| format!("{secret} not found"))?;
            println!("{}\tcurrent={}\tversions={}", m.secret, m.current_version, m.versions);
            if reveal {
                let value = vault.get(&secret).await?;
                println!("version {}: {}", value.version, String::from_utf8_lossy(&value.value));
            }
        }
    }
    Ok(())
}
