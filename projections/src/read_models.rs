//! The read-model database: one SQLite file of JSON documents, one table per projection, and
//! the checkpoints that say how far each projection has read the store.
//!
//! The live table of a projection always has the projection's name. A rebuild (see
//! [`crate::rebuild`]) writes a new generation beside it (`connections_g2`) and renames it into
//! place; `generations` records which generation is live and `rebuilds` the rebuilds under way.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use store::StoreError;
use store::sqlite_checkpointer::Checkpointer;
use store::sqlite_readers::Readers;

use crate::ProjectionError;
use crate::views::{ConnectionView, CredentialView, DeliveryView, ProviderView, RunView, SubscriptionView};

pub(crate) const CONNECTIONS: &str = "connections";
pub(crate) const PROVIDERS: &str = "providers";
pub(crate) const SUBSCRIPTIONS: &str = "subscriptions";
pub(crate) const DELIVERIES: &str = "deliveries";
pub(crate) const RUNS: &str = "runs";
pub(crate) const CREDENTIALS: &str = "credentials";

/// Every document table. Each projection owns the table named after it. These names are the
/// only strings ever formatted into SQL here; ids and tenants are always bound parameters.
pub(crate) const TABLES: [&str; 6] = [CONNECTIONS, PROVIDERS, SUBSCRIPTIONS, DELIVERIES, RUNS, CREDENTIALS];

/// Queries may run this many at once; each holds one reader connection.
const READERS: usize = 4;

/// How long a connection waits for SQLite's lock before reporting `SQLITE_BUSY`.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The read-model database. Cloning is cheap and shares the connections.
///
/// Reads go through a few read-only connections (WAL lets them proceed while the projector
/// writes): a point read runs on the calling task when one is idle, anything else on the blocking
/// pool. All writes go through the one writer connection the runner uses.
#[derive(Clone)]
pub struct ReadModels {
    inner: Arc<Inner>,
}

struct Inner {
    path: std::path::PathBuf,
    writer: Arc<Mutex<Connection>>,
    readers: Arc<Readers>,
    /// Copies the writer's WAL back into the file, off the projections' path.
    checkpointer: Checkpointer,
}

impl ReadModels {
    /// Opens (creating if needed) the read-model database at `path`. Blocking: call it at start.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ProjectionError> {
        let path = path.as_ref().to_path_buf();
        let mut writer = open_writer(&path)?;
        create_schema(&mut writer)?;
        writer.pragma_update(None, "wal_autocheckpoint", store::sqlite_checkpointer::BACKSTOP_PAGES)?;
        let checkpointer = Checkpointer::start(&path, "read-models").map_err(|e| {
            StoreError::Backend(format!("starting the read models' checkpointer for {}: {e}", path.display()))
        })?;
        Ok(Self {
            inner: Arc::new(Inner {
                readers: Readers::new(&path, READERS),
                path,
                writer: Arc::new(Mutex::new(writer)),
                checkpointer,
            }),
        })
    }

    /// The file this database lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The connection every projector write goes through.
    pub(crate) fn writer(&self) -> Arc<Mutex<Connection>> {
        self.inner.writer.clone()
    }

    /// To be called after each commit of the writer: its WAL has grown.
    pub(crate) fn committed(&self) {
        self.inner.checkpointer.nudge();
    }

    pub async fn connection(&self, tenant_id: &str, id: &str) -> Result<Option<ConnectionView>, ProjectionError> {
        self.document(CONNECTIONS, tenant_id, id).await
    }

    /// A connection found by id alone, whatever its tenant: inbound webhooks carry no token, so
    /// the connection they name is what tells their tenant. `None` also when the id is taken in
    /// more than one tenant, so a delivery is never routed to a tenant by a guess.
    pub async fn connection_by_id(&self, id: &str) -> Result<Option<ConnectionView>, ProjectionError> {
        let id = id.to_owned();
        self.read_point(move |conn| {
            let mut stmt = conn.prepare_cached("SELECT doc FROM connections WHERE id = ?1 LIMIT 2")?;
            let docs = stmt.query_map([&id], |row| row.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
            match docs.as_slice() {
                [doc] => Ok(Some(serde_json::from_str(doc)?)),
                [] => Ok(None),
                _ => {
                    tracing::warn!(connection_id = %id, "connection id exists in several tenants; refusing to pick one");
                    Ok(None)
                }
            }
        })
        .await
    }

    pub async fn provider(&self, tenant_id: &str, id: &str) -> Result<Option<ProviderView>, ProjectionError> {
        self.document(PROVIDERS, tenant_id, id).await
    }

    pub async fn subscription(&self, tenant_id: &str, id: &str) -> Result<Option<SubscriptionView>, ProjectionError> {
        self.document(SUBSCRIPTIONS, tenant_id, id).await
    }

    pub async fn delivery(&self, tenant_id: &str, id: &str) -> Result<Option<DeliveryView>, ProjectionError> {
        self.document(DELIVERIES, tenant_id, id).await
    }

    pub async fn run(&self, tenant_id: &str, id: &str) -> Result<Option<RunView>, ProjectionError> {
        self.document(RUNS, tenant_id, id).await
    }

    pub async fn credential(&self, tenant_id: &str, id: &str) -> Result<Option<CredentialView>, ProjectionError> {
        self.document(CREDENTIALS, tenant_id, id).await
    }

    /// Each projection's checkpoint (the global position it has applied up to), by name.
    pub async fn checkpoints(&self) -> Result<Vec<(String, u64)>, ProjectionError> {
        self.read(|conn| Ok(read_checkpoints(conn)?.into_iter().collect())).await
    }

    /// Every document of every table, ordered by table, tenant and id: two databases built from
    /// the same events dump equal.
    pub async fn dump(&self) -> Result<BTreeMap<String, Vec<(String, String, Value)>>, ProjectionError> {
        self.read(|conn| {
            let mut dump = BTreeMap::new();
            for table in TABLES {
                let mut stmt =
                    conn.prepare(&format!("SELECT tenant_id, id, doc FROM {table} ORDER BY tenant_id, id"))?;
                let rows = stmt
                    .query_map([], |row| {
                        Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get::<_, String>(2)?))
                    })?
                    .map(|row| {
                        let (tenant, id, doc) = row?;
                        Ok((tenant, id, serde_json::from_str(&doc)?))
                    })
                    .collect::<Result<Vec<_>, ProjectionError>>()?;
                dump.insert(table.to_owned(), rows);
            }
            Ok(dump)
        })
        .await
    }

    async fn document<T>(&self, table: &'static str, tenant_id: &str, id: &str) -> Result<Option<T>, ProjectionError>
    where
        T: DeserializeOwned + Send + 'static,
    {
        let (tenant_id, id) = (tenant_id.to_owned(), id.to_owned());
        self.read_point(move |conn| load_doc(conn, table, &tenant_id, &id)).await
    }

    /// Runs a point read (a row by its key) on the calling task when a reader is idle; see
    /// [`Readers`].
    async fn read_point<T, F>(&self, query: F) -> Result<T, ProjectionError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, ProjectionError> + Send + 'static,
    {
        self.inner.readers.read_point(query).await
    }

    /// Runs `query` on a reader connection on the blocking pool.
    pub(crate) async fn read<T, F>(&self, query: F) -> Result<T, ProjectionError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, ProjectionError> + Send + 'static,
    {
        self.inner.readers.read(query).await
    }
}

/// A connection that writes the read models: the live runner's, or a rebuild's.
pub(crate) fn open_writer(path: &Path) -> Result<Connection, ProjectionError> {
    let writer = Connection::open(path)?;
    writer.busy_timeout(BUSY_TIMEOUT)?;
    writer.pragma_update(None, "journal_mode", "WAL")?;
    // NORMAL may lose the last transactions on power loss (never corrupts). That is fine
    // here and only here: the read models and their checkpoints are committed together, so
    // a lost tail is simply re-projected from the event store, which is the durable truth.
    writer.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(writer)
}

/// Creates what is missing. A document table is created with its indexes only when it does not
/// exist: after a rebuild the live table carries its generation's index names
/// (`connections_g2_by_id`), and the same index must not be created twice under two names.
fn create_schema(conn: &mut Connection) -> Result<(), ProjectionError> {
    // IMMEDIATE: two processes opening a new database do not both create a table.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS checkpoints (projection TEXT PRIMARY KEY, position INTEGER NOT NULL);\n\
         CREATE TABLE IF NOT EXISTS generations (projection TEXT PRIMARY KEY, generation INTEGER NOT NULL);\n\
         CREATE TABLE IF NOT EXISTS rebuilds (projection TEXT PRIMARY KEY, generation INTEGER NOT NULL, \
         position INTEGER NOT NULL, started_at_ms INTEGER NOT NULL, heartbeat_at_ms INTEGER NOT NULL);\n",
    )?;
    for table in TABLES {
        if !table_exists(&tx, table)? {
            tx.execute_batch(&document_table_ddl(table))?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// The DDL of a new document table and its indexes. A rebuild copies the live table's DDL
/// (whatever it has become) rather than this, so an index added here reaches rebuilt tables.
fn document_table_ddl(table: &str) -> String {
    // NOT NULL on the key: SQLite would otherwise accept NULLs in a non-integer primary key.
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (tenant_id TEXT NOT NULL, id TEXT NOT NULL, doc TEXT NOT NULL, \
         PRIMARY KEY (tenant_id, id));\n\
         CREATE INDEX IF NOT EXISTS {table}_by_id ON {table} (id);\n"
    )
}

pub(crate) fn table_exists(conn: &Connection, table: &str) -> Result<bool, ProjectionError> {
    let mut stmt = conn.prepare_cached("SELECT 1 FROM main.sqlite_master WHERE type = 'table' AND name = ?1")?;
    Ok(stmt.exists([table])?)
}

/// The document `id` of `tenant_id` in `table`, if there is one.
pub(crate) fn load_doc<T: DeserializeOwned>(
    conn: &Connection,
    table: &str,
    tenant_id: &str,
    id: &str,
) -> Result<Option<T>, ProjectionError> {
    let mut stmt = conn.prepare_cached(&format!("SELECT doc FROM {table} WHERE tenant_id = ?1 AND id = ?2"))?;
    let doc: Option<String> = stmt.query_row(params![tenant_id, id], |row| row.get(0)).optional()?;
    Ok(doc.map(|doc| serde_json::from_str(&doc)).transpose()?)
}

/// What the writer of a document knows of its row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Row {
    /// It was read in this transaction: there is one.
    Present,
    /// It was looked for in this transaction: there is none.
    Absent,
    /// Not looked for.
    Unknown,
}

/// Inserts or replaces the document `id` of `tenant_id` in `table`. Knowing whether its `row`
/// exists saves a statement.
pub(crate) fn store_doc<T: Serialize>(
    conn: &Connection,
    table: &str,
    tenant_id: &str,
    id: &str,
    doc: &T,
    row: Row,
) -> Result<(), ProjectionError> {
    let doc = serde_json::to_string(doc)?;
    // Not an UPSERT: during a rebuild `table` is a view standing for the new generation (see
    // `rebuild`), and SQLite refuses UPSERT on views. An UPDATE through a view reports no
    // changed rows, so the INSERT checks for the row itself.
    if row != Row::Absent {
        let mut update =
            conn.prepare_cached(&format!("UPDATE {table} SET doc = ?3 WHERE tenant_id = ?1 AND id = ?2"))?;
        if update.execute(params![tenant_id, id, doc])? > 0 || row == Row::Present {
            return Ok(());
        }
    }
    let mut insert = conn.prepare_cached(&format!(
        "INSERT INTO {table} (tenant_id, id, doc) SELECT ?1, ?2, ?3 \
         WHERE NOT EXISTS (SELECT 1 FROM {table} WHERE tenant_id = ?1 AND id = ?2)"
    ))?;
    insert.execute(params![tenant_id, id, doc])?;
    Ok(())
}

/// Every stored checkpoint by projection name; a projection without a row has read nothing.
pub(crate) fn read_checkpoints(conn: &Connection) -> Result<BTreeMap<String, u64>, ProjectionError> {
    let mut stmt = conn.prepare_cached("SELECT projection, position FROM checkpoints")?;
    // rusqlite refuses a negative position rather than wrapping it.
    let rows = stmt.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, u64>(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(crate) fn write_checkpoint(conn: &Connection, projection: &str, position: u64) -> Result<(), ProjectionError> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO checkpoints (projection, position) VALUES (?1, ?2) \
         ON CONFLICT (projection) DO UPDATE SET position = excluded.position",
    )?;
    stmt.execute(params![projection, position])?;
    Ok(())
}
