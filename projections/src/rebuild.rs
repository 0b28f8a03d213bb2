//! Rebuilding read models without downtime: a new generation of each table is built from the
//! store beside the live one, while the API keeps reading (and the live runner keeps writing)
//! the old, then one write transaction puts it in the old one's place.
//!
//! The live runner is usually in another process (`serve`) writing the same file, so everything
//! here goes through SQLite, whose lock serializes write transactions across processes:
//!
//! - The live table always has the projection's name (`connections`). Neither the queries nor
//!   the live runner know about generations: after the switch the same SQL reaches the new table
//!   (SQLite re-prepares statements whose schema changed), in every process, without a restart.
//! - The new generation (`connections_g2`, created with the live table's DDL and indexes) is
//!   written over a connection of its own. The projectors' document cache is told that
//!   `connections` is `connections_g2` ([`Tables`]) and writes it directly. As a guard, a TEMP
//!   view named `connections` with INSTEAD OF triggers stands for `main.connections_g2` on that
//!   connection: TEMP objects are private to their connection and shadow `main`, so any SQL
//!   there that names `connections` still writes the new generation and cannot touch the live
//!   table. (Writing through the view is the slow path: a trigger runs for every row, and an
//!   `UPDATE` through a view first copies the rows it matches.)
//! - A rebuild's position is in `rebuilds` (with its generation and a heartbeat), written in the
//!   transaction of each batch it applies, like the live checkpoints: a batch is applied once.
//! - The switch is one IMMEDIATE transaction. It applies to the new generation the events the
//!   live runner has applied and the rebuild has not (read from the store while holding the
//!   lock, so the live runner cannot move meanwhile), renames the live table away and the new
//!   one into its place, and sets the live checkpoint to the new generation's position. Readers
//!   see the old table or the new one, never a mix, and the new one holds every event the old
//!   one held: what a POST waited for (read-your-writes) stays visible, no GET goes back.
//!   The live runner's next batch reads the moved checkpoint and goes on in the new table.
//! - The retired table is dropped afterwards, in a transaction of its own.
//!
//! A projector must read and write only its own table (they all do): a projection rebuilt alone
//! sees the other projections' live tables, which are ahead of it.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use store::sqlite_checkpointer::{BACKSTOP_PAGES, Checkpointer};
use store::{EventStore, StoreError};
use tokio::runtime::Handle;

use crate::documents::Tables;
use crate::projectors::{ALL, Projection};
use crate::read_models::{open_writer, read_checkpoints, write_checkpoint};
use crate::runner::{BATCH, Decoded, apply_events, decode_all, drop_aside, read_ahead};
use crate::{ProjectionError, ReadModels};

/// A rebuild whose heartbeat is older than this is taken for dead (killed, or its machine
/// gone): the next rebuild of the projection drops its table and starts over. Every batch beats,
/// and a batch takes milliseconds.
pub const STALE_AFTER: Duration = Duration::from_secs(60);

/// Events applied to the new tables in one transaction. The live runner waits for each (one
/// database, one writer), so it stays a matter of milliseconds; larger than the live runner's
/// [`BATCH`], since each transaction writes the hot pages of the tables and their indexes
/// once, however many events it holds.
const REBUILD_BATCH: usize = 4 * BATCH;

/// Once the new generation is this close to the store's head, the rebuild switches: the rest
/// is applied inside the switch's transaction, which holds the live runner back meanwhile, so
/// it must stay short.
const SWITCH_WITHIN: u64 = BATCH as u64;

/// The projections called `names`, in the runner's order; an unknown name is an error that
/// lists the known ones.
pub fn select(names: &[String]) -> Result<Vec<Projection>, ProjectionError> {
    if let Some(unknown) = names.iter().find(|name| !ALL.iter().any(|p| p.name == name.as_str())) {
        let known = ALL.iter().map(|p| p.name).collect::<Vec<_>>().join(", ");
        return Err(ProjectionError::UnknownProjection { name: unknown.clone(), known });
    }
    Ok(ALL.iter().filter(|p| names.iter().any(|name| name == p.name)).copied().collect())
}

/// How far a rebuild is, reported after every batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildProgress {
    /// The global position the new generation has reached.
    pub position: u64,
    /// The store's head when last read (it moves while the API takes writes).
    pub head: u64,
}

/// What a finished rebuild did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildReport {
    /// Each rebuilt projection with its generation, now live.
    pub generations: Vec<(&'static str, u64)>,
    /// Events read from the store and applied to the new generation.
    pub events: u64,
    /// The checkpoint of the rebuilt projections right after the switch.
    pub switched_at: u64,
}

/// Rebuilds `projections` in the read-model database at `path` from the whole of `store` while
/// the database stays in use, and switches to the new tables once they have caught up (see the
/// module documentation). `progress` hears of every batch.
///
/// When `stop` completes before the new tables have caught up, the rebuild drops them and
/// returns [`ProjectionError::RebuildStopped`]; the live tables are untouched. On any error
/// the new tables are dropped too (a crash leaves them to the next rebuild, after
/// [`STALE_AFTER`]).
pub async fn rebuild(
    store: Arc<dyn EventStore>,
    path: &Path,
    projections: Vec<Projection>,
    mut progress: impl FnMut(RebuildProgress) + Send,
    stop: impl Future<Output = ()> + Send,
) -> Result<RebuildReport, ProjectionError> {
    let path = path.to_path_buf();
    let (conn, checkpointer) = tokio::task::spawn_blocking(move || -> Result<_, ProjectionError> {
        // Creates the schema of a database no server has opened yet.
        drop(ReadModels::open(&path)?);
        let conn = open_writer(&path)?;
        // The WAL is copied back on a thread of its own, not inside the batches' commits.
        conn.pragma_update(None, "wal_autocheckpoint", BACKSTOP_PAGES)?;
        let checkpointer = Checkpointer::start(&path, "rebuild").map_err(|e| {
            StoreError::Backend(format!("starting the rebuild's checkpointer for {}: {e}", path.display()))
        })?;
        Ok((conn, checkpointer))
    })
    .await??;
    let conn = Arc::new(Mutex::new(conn));
    let claims: Arc<[Claim]> = blocking(&conn, move |conn| claim(conn, &projections)).await?.into();

    let mut events = 0;
    let caught_up = tokio::select! {
        caught_up = catch_up(&store, &conn, &checkpointer, &claims, &mut progress, &mut events) => caught_up,
        () = stop => Err(ProjectionError::RebuildStopped),
    };
    // The switch is not cancellable: once it runs, it commits or rolls back whole.
    let switched = match caught_up {
        Ok(_) => {
            let (store, claims, handle) = (store.clone(), claims.clone(), Handle::current());
            blocking(&conn, move |conn| switch(conn, &claims, &store, &handle)).await
        }
        Err(e) => Err(e),
    };
    let outcome = match switched {
        Ok((switched_at, applied)) => {
            let retired = claims.clone();
            if let Err(error) = blocking(&conn, move |conn| drop_retired(conn, &retired)).await {
                tracing::warn!(%error, "the retired tables stay until the next rebuild drops them");
            }
            let generations = claims.iter().map(|c| (c.projection.name, c.generation)).collect();
            Ok(RebuildReport { generations, events: events + applied, switched_at })
        }
        Err(error) => {
            let abandoned = claims.clone();
            if let Err(cleanup) = blocking(&conn, move |conn| abandon(conn, &abandoned)).await {
                tracing::warn!(error = %cleanup, "could not drop the unfinished tables; the next rebuild will");
            }
            Err(error)
        }
    };
    // Its last checkpoint, off the async threads.
    let _ = tokio::task::spawn_blocking(move || drop(checkpointer)).await;
    outcome
}

/// One projection's new generation, claimed by this rebuild.
struct Claim {
    projection: Projection,
    generation: u64,
    /// The new generation's table, e.g. `connections_g2`.
    table: String,
}

impl Claim {
    /// The name the live table is renamed to by the switch, before it is dropped.
    fn retired(&self) -> String {
        format!("{}{RETIRED}{}", self.projection.name, self.generation)
    }
}

const RETIRED: &str = "_retired_g";

fn generation_table(projection: &str, generation: u64) -> String {
    format!("{projection}_g{generation}")
}

/// Runs `work` with the rebuild's connection on the blocking pool.
async fn blocking<T, F>(conn: &Arc<Mutex<Connection>>, work: F) -> Result<T, ProjectionError>
where
    T: Send + 'static,
    F: FnOnce(&mut Connection) -> Result<T, ProjectionError> + Send + 'static,
{
    let conn = conn.clone();
    tokio::task::spawn_blocking(move || {
        // A panic inside a transaction rolls it back: the connection behind a poisoned lock is clean.
        let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
        work(&mut conn)
    })
    .await?
}

/// Applies the store to the new generation until it is within [`SWITCH_WITHIN`] of the head.
async fn catch_up(
    store: &Arc<dyn EventStore>,
    conn: &Arc<Mutex<Connection>>,
    checkpointer: &Checkpointer,
    claims: &Arc<[Claim]>,
    progress: &mut (impl FnMut(RebuildProgress) + Send),
    events: &mut u64,
) -> Result<u64, ProjectionError> {
    let mut position = 0;
    loop {
        let head = store.head_position().await?;
        progress(RebuildProgress { position, head });
        if head <= position + SWITCH_WITHIN {
            return Ok(position);
        }
        // Each pass stops at the head it started from; what was appended meanwhile is the next
        // pass's, or the switch's when it is little.
        let mut pages = read_ahead(store.clone(), position, head, REBUILD_BATCH);
        while let Some(page) = pages.recv().await {
            let page = page?;
            *events += page.len() as u64;
            let claims = claims.clone();
            let (applied, page) =
                blocking(conn, move |conn| Ok((apply_rebuild_batch(conn, &claims, &page), page))).await?;
            drop_aside(page);
            position = applied?;
            checkpointer.nudge();
            progress(RebuildProgress { position, head: head.max(position) });
        }
        if position < head {
            // Nothing after `position` after all: the switch reads what the live runner has.
            return Ok(position);
        }
    }
}

/// Claims a new generation of each projection: creates its table shaped like the live one and
/// its `rebuilds` row, in one transaction, then points the connection's TEMP views at them.
fn claim(conn: &mut Connection, projections: &[Projection]) -> Result<Vec<Claim>, ProjectionError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let now = now_ms();
    let mut claims = Vec::with_capacity(projections.len());
    for projection in projections {
        let name = projection.name;
        let mut generation = live_generation(&tx, name)?;
        if let Some(previous) = rebuild_row(&tx, name)? {
            if now.saturating_sub(previous.heartbeat_at_ms) < STALE_AFTER.as_millis() as u64 {
                return Err(ProjectionError::RebuildInProgress {
                    projection: name,
                    generation: previous.generation,
                    position: previous.position,
                    stale_after_seconds: STALE_AFTER.as_secs(),
                });
            }
            tracing::warn!(
                projection = name,
                generation = previous.generation,
                "dropping the table of a rebuild that stopped without finishing"
            );
            tx.execute_batch(&format!(
                "DROP TABLE IF EXISTS main.\"{}\";",
                generation_table(name, previous.generation)
            ))?;
            generation = generation.max(previous.generation);
        }
        // Left by a switch whose process died before dropping them.
        for retired in tables_named_like(&tx, &format!("{name}{RETIRED}"))? {
            tx.execute_batch(&format!("DROP TABLE IF EXISTS main.\"{retired}\";"))?;
        }
        let generation = generation + 1;
        let table = generation_table(name, generation);
        for statement in copy_table_ddl(&tx, name, &table)? {
            tx.execute_batch(&statement)?;
        }
        tx.execute(
            "INSERT INTO rebuilds (projection, generation, position, started_at_ms, heartbeat_at_ms) \
             VALUES (?1, ?2, 0, ?3, ?3) ON CONFLICT (projection) DO UPDATE SET generation = excluded.generation, \
             position = 0, started_at_ms = excluded.started_at_ms, heartbeat_at_ms = excluded.heartbeat_at_ms",
            params![name, generation, now],
        )?;
        claims.push(Claim { projection: *projection, generation, table });
    }
    tx.commit()?;
    if let Err(error) = redirect(conn, &claims) {
        // Claimed but unusable: release the claims now rather than after STALE_AFTER.
        if let Err(cleanup) = abandon(conn, &claims) {
            tracing::warn!(error = %cleanup, "could not drop the unfinished tables; the next rebuild will");
        }
        return Err(error);
    }
    Ok(claims)
}

/// On this connection only, makes each claimed projection's name stand for its new generation:
/// a TEMP view with INSTEAD OF triggers for INSERT, UPDATE and DELETE (by primary key).
fn redirect(conn: &Connection, claims: &[Claim]) -> Result<(), ProjectionError> {
    for claim in claims {
        let (name, table) = (claim.projection.name, &claim.table);
        let columns = table_columns(conn, table)?;
        let keys: Vec<&str> = columns.iter().filter(|c| c.key).map(|c| c.name.as_str()).collect();
        if keys.is_empty() {
            return Err(ProjectionError::NotRebuildable {
                table: name.to_owned(),
                reason: "it has no primary key to route updates and deletes by".into(),
            });
        }
        let list =
            |f: &dyn Fn(&str) -> String, sep: &str| columns.iter().map(|c| f(&c.name)).collect::<Vec<_>>().join(sep);
        let all = list(&|c| format!("\"{c}\""), ", ");
        let new_values = list(&|c| format!("NEW.\"{c}\""), ", ");
        let assignments = list(&|c| format!("\"{c}\" = NEW.\"{c}\""), ", ");
        let by_old_key = keys.iter().map(|k| format!("\"{k}\" = OLD.\"{k}\"")).collect::<Vec<_>>().join(" AND ");
        // Statements in a trigger body cannot name a schema; `"{table}"` resolves to main, as no
        // TEMP object has that name.
        conn.execute_batch(&format!(
            "CREATE TEMP VIEW \"{name}\" AS SELECT {all} FROM main.\"{table}\";\n\
             CREATE TEMP TRIGGER \"{name}_insert\" INSTEAD OF INSERT ON \"{name}\" \
             BEGIN INSERT INTO \"{table}\" ({all}) VALUES ({new_values}); END;\n\
             CREATE TEMP TRIGGER \"{name}_update\" INSTEAD OF UPDATE ON \"{name}\" \
             BEGIN UPDATE \"{table}\" SET {assignments} WHERE {by_old_key}; END;\n\
             CREATE TEMP TRIGGER \"{name}_delete\" INSTEAD OF DELETE ON \"{name}\" \
             BEGIN DELETE FROM \"{table}\" WHERE {by_old_key}; END;\n"
        ))?;
    }
    Ok(())
}

/// Drops the TEMP views (and with them their triggers): the names mean the live tables again.
fn unredirect(conn: &Connection, claims: &[Claim]) -> Result<(), ProjectionError> {
    for claim in claims {
        conn.execute_batch(&format!("DROP VIEW IF EXISTS temp.\"{}\";", claim.projection.name))?;
    }
    Ok(())
}

/// Where the projectors write while `claims` are rebuilt: each claimed projection's new table.
fn generations(claims: &[Claim]) -> Tables {
    Tables::renamed(claims.iter().map(|c| (c.projection.name, c.table.clone())).collect())
}

/// Applies `events` to the new generations, and moves their positions and heartbeats, in one
/// transaction. Returns the lowest position afterwards.
fn apply_rebuild_batch(conn: &mut Connection, claims: &[Claim], events: &[Decoded]) -> Result<u64, ProjectionError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut positions = claimed_positions(&tx, claims)?;
    let projections: Vec<Projection> = claims.iter().map(|c| c.projection).collect();
    apply_events(&tx, &generations(claims), &projections, &mut positions, events)?;
    let now = now_ms();
    for (claim, position) in claims.iter().zip(&positions) {
        tx.execute(
            "UPDATE rebuilds SET position = ?2, heartbeat_at_ms = ?3 WHERE projection = ?1",
            params![claim.projection.name, position, now],
        )?;
    }
    tx.commit()?;
    Ok(positions.into_iter().min().unwrap_or(0))
}

/// The switch, in one transaction (see the module documentation). Returns the checkpoint the
/// rebuilt projections have afterwards and how many events it applied to catch up.
fn switch(
    conn: &mut Connection,
    claims: &[Claim],
    store: &Arc<dyn EventStore>,
    handle: &Handle,
) -> Result<(u64, u64), ProjectionError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut positions = claimed_positions(&tx, claims)?;
    let live = read_checkpoints(&tx)?;
    // Every event the live tables reflect must be in the new ones before they are switched in.
    let target = claims.iter().map(|c| live.get(c.projection.name).copied().unwrap_or(0)).max().unwrap_or(0);
    let projections: Vec<Projection> = claims.iter().map(|c| c.projection).collect();
    let tables = generations(claims);
    let mut after = positions.iter().copied().min().unwrap_or(0);
    let mut applied = 0;
    while after < target {
        // Reading the store while holding the read models' lock cannot deadlock: the store is
        // another file, and nothing that writes it waits for the read models.
        let mut page = handle.block_on(store.read_all(after, BATCH))?;
        page.retain(|e| e.global_position <= target);
        let Some(last) = page.last() else {
            return Err(ProjectionError::Inconsistent {
                projection: claims[0].projection.name,
                global_position: target,
                reason: format!("the live checkpoint is at {target}, but the store has nothing after {after}"),
            });
        };
        after = last.global_position;
        applied += page.len() as u64;
        apply_events(&tx, &tables, &projections, &mut positions, &decode_all(page))?;
    }
    unredirect(&tx, claims)?;
    for (claim, &position) in claims.iter().zip(&positions) {
        let name = claim.projection.name;
        tx.execute_batch(&format!(
            "ALTER TABLE main.\"{name}\" RENAME TO \"{retired}\";\n\
             ALTER TABLE main.\"{table}\" RENAME TO \"{name}\";\n",
            retired = claim.retired(),
            table = claim.table,
        ))?;
        write_checkpoint(&tx, name, position)?;
        tx.execute(
            "INSERT INTO generations (projection, generation) VALUES (?1, ?2) \
             ON CONFLICT (projection) DO UPDATE SET generation = excluded.generation",
            params![name, claim.generation],
        )?;
        tx.execute("DELETE FROM rebuilds WHERE projection = ?1", [name])?;
    }
    tx.commit()?;
    Ok((positions.into_iter().max().unwrap_or(0), applied))
}

/// Drops the tables the switch retired, one transaction each (a large drop holds the lock).
fn drop_retired(conn: &mut Connection, claims: &[Claim]) -> Result<(), ProjectionError> {
    for claim in claims {
        conn.execute_batch(&format!("DROP TABLE IF EXISTS main.\"{}\";", claim.retired()))?;
    }
    Ok(())
}

/// Drops the new generations this rebuild still owns, and their `rebuilds` rows.
fn abandon(conn: &mut Connection, claims: &[Claim]) -> Result<(), ProjectionError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    unredirect(&tx, claims)?;
    for claim in claims {
        let owned = rebuild_row(&tx, claim.projection.name)?.is_some_and(|row| row.generation == claim.generation);
        if owned {
            tx.execute("DELETE FROM rebuilds WHERE projection = ?1", [claim.projection.name])?;
            tx.execute_batch(&format!("DROP TABLE IF EXISTS main.\"{}\";", claim.table))?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// The positions of this rebuild's generations; an error when another rebuild took one over.
fn claimed_positions(tx: &Transaction<'_>, claims: &[Claim]) -> Result<Vec<u64>, ProjectionError> {
    claims
        .iter()
        .map(|claim| match rebuild_row(tx, claim.projection.name)? {
            Some(row) if row.generation == claim.generation => Ok(row.position),
            _ => Err(ProjectionError::RebuildTakenOver {
                projection: claim.projection.name,
                generation: claim.generation,
            }),
        })
        .collect()
}

struct RebuildRow {
    generation: u64,
    position: u64,
    started_at_ms: u64,
    heartbeat_at_ms: u64,
}

fn rebuild_row(conn: &Connection, projection: &str) -> Result<Option<RebuildRow>, ProjectionError> {
    let mut stmt = conn.prepare_cached(
        "SELECT generation, position, started_at_ms, heartbeat_at_ms FROM rebuilds WHERE projection = ?1",
    )?;
    let row = stmt
        .query_row([projection], |row| {
            Ok(RebuildRow {
                generation: row.get(0)?,
                position: row.get(1)?,
                started_at_ms: row.get(2)?,
                heartbeat_at_ms: row.get(3)?,
            })
        })
        .optional()?;
    Ok(row)
}

/// The live generation of `projection`: 1 until its first rebuild.
fn live_generation(conn: &Connection, projection: &str) -> Result<u64, ProjectionError> {
    let mut stmt = conn.prepare_cached("SELECT generation FROM generations WHERE projection = ?1")?;
    Ok(stmt.query_row([projection], |row| row.get(0)).optional()?.unwrap_or(1))
}

fn tables_named_like(conn: &Connection, prefix: &str) -> Result<Vec<String>, ProjectionError> {
    let mut stmt =
        conn.prepare("SELECT name FROM main.sqlite_master WHERE type = 'table' AND substr(name, 1, length(?1)) = ?1")?;
    let names = stmt.query_map([prefix], |row| row.get(0))?.collect::<Result<_, _>>()?;
    Ok(names)
}

struct Column {
    name: String,
    key: bool,
}

fn table_columns(conn: &Connection, table: &str) -> Result<Vec<Column>, ProjectionError> {
    let mut stmt = conn.prepare(&format!("PRAGMA main.table_info(\"{table}\")"))?;
    let columns = stmt
        .query_map([], |row| Ok(Column { name: row.get("name")?, key: row.get::<_, i64>("pk")? > 0 }))?
        .collect::<Result<_, _>>()?;
    Ok(columns)
}

/// The statements that create `new_table` as the live `table` is: its columns and constraints
/// (from its stored DDL, so columns added since its creation come along) and every index
/// declared on it, renamed for the new generation (`connections_by_id` → `connections_g2_by_id`).
fn copy_table_ddl(conn: &Connection, table: &str, new_table: &str) -> Result<Vec<String>, ProjectionError> {
    let not_copyable = |reason: String| ProjectionError::NotRebuildable { table: table.to_owned(), reason };
    let sql: Option<String> = conn
        .query_row("SELECT sql FROM main.sqlite_master WHERE type = 'table' AND name = ?1", [table], |row| row.get(0))
        .optional()?;
    let sql = sql.ok_or_else(|| not_copyable("it does not exist".into()))?;
    // SQLite stores the DDL without IF NOT EXISTS, and quotes a name ALTER TABLE RENAME wrote.
    let columns = sql
        .strip_prefix("CREATE TABLE ")
        .and_then(|rest| strip_name(rest, table))
        .ok_or_else(|| not_copyable(format!("unexpected DDL {sql:?}")))?;
    let mut ddl = vec![format!("CREATE TABLE \"{new_table}\"{columns};")];
    let mut stmt = conn.prepare(
        "SELECT name, sql FROM main.sqlite_master WHERE type = 'index' AND tbl_name = ?1 AND sql IS NOT NULL \
         ORDER BY name",
    )?;
    let indexes: Vec<(String, String)> =
        stmt.query_map([table], |row| Ok((row.get(0)?, row.get(1)?)))?.collect::<Result<_, _>>()?;
    for (index, sql) in indexes {
        let (unique, rest) = match (sql.strip_prefix("CREATE INDEX "), sql.strip_prefix("CREATE UNIQUE INDEX ")) {
            (Some(rest), _) => ("", rest),
            (None, Some(rest)) => ("UNIQUE ", rest),
            (None, None) => return Err(not_copyable(format!("unexpected index DDL {sql:?}"))),
        };
        let definition = strip_name(rest, &index)
            .and_then(|rest| rest.strip_prefix(" ON "))
            .and_then(|rest| strip_name(rest, table))
            .ok_or_else(|| not_copyable(format!("unexpected index DDL {sql:?}")))?;
        let new_index = generation_index(table, &index, new_table);
        ddl.push(format!("CREATE {unique}INDEX \"{new_index}\" ON \"{new_table}\"{definition};"));
    }
    Ok(ddl)
}

/// `text` after a leading `name` (bare or double-quoted), if it starts with it.
fn strip_name<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    if let Some(rest) = text.strip_prefix('"').and_then(|t| t.strip_prefix(name)).and_then(|t| t.strip_prefix('"')) {
        return Some(rest);
    }
    let rest = text.strip_prefix(name)?;
    let continues = rest.chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    (!continues).then_some(rest)
}

/// The new generation's name for an index of the live table: the part after the table's name
/// (and its generation, if it has one) goes after the new table's name.
fn generation_index(table: &str, index: &str, new_table: &str) -> String {
    let suffix = index.strip_prefix(table).map(strip_generation).filter(|suffix| suffix.starts_with('_'));
    match suffix {
        Some(suffix) => format!("{new_table}{suffix}"),
        None => format!("{new_table}_{index}"),
    }
}

/// `_g12_by_id` → `_by_id`; anything else unchanged.
fn strip_generation(suffix: &str) -> &str {
    let Some(digits_on) = suffix.strip_prefix("_g") else { return suffix };
    let rest = digits_on.trim_start_matches(|c: char| c.is_ascii_digit());
    if rest.len() < digits_on.len() && (rest.is_empty() || rest.starts_with('_')) { rest } else { suffix }
}

/// The machine's wall clock, not a `Clock` port: heartbeats are compared by other processes'
/// rebuilds and `projections status`, which read the same wall clock.
fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Where one projection is: its live generation and checkpoint, and the rebuild under way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionStatus {
    pub name: &'static str,
    /// 1 until the projection's first rebuild.
    pub generation: u64,
    /// The global position the live table reflects.
    pub position: u64,
    pub rebuild: Option<RebuildStatus>,
}

/// A rebuild under way (or one that died: see `stale`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildStatus {
    pub generation: u64,
    pub position: u64,
    pub started_at_ms: u64,
    pub heartbeat_at_ms: u64,
    /// No heartbeat for [`STALE_AFTER`]: the next rebuild will drop it.
    pub stale: bool,
}

/// Every projection's status, read in one snapshot.
pub async fn status(read_models: &ReadModels) -> Result<Vec<ProjectionStatus>, ProjectionError> {
    read_models
        .read(|conn| {
            let tx = conn.unchecked_transaction()?;
            let checkpoints = read_checkpoints(&tx)?;
            let now = now_ms();
            let statuses = ALL
                .iter()
                .map(|projection| {
                    let rebuild = rebuild_row(&tx, projection.name)?.map(|row| RebuildStatus {
                        generation: row.generation,
                        position: row.position,
                        started_at_ms: row.started_at_ms,
                        heartbeat_at_ms: row.heartbeat_at_ms,
                        stale: now.saturating_sub(row.heartbeat_at_ms) >= STALE_AFTER.as_millis() as u64,
                    });
                    Ok(ProjectionStatus {
                        name: projection.name,
                        generation: live_generation(&tx, projection.name)?,
                        position: checkpoints.get(projection.name).copied().unwrap_or(0),
                        rebuild,
                    })
                })
                .collect::<Result<Vec<_>, ProjectionError>>()?;
            tx.commit()?;
            Ok(statuses)
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_found_bare_or_quoted_and_never_as_a_prefix() {
        assert_eq!(strip_name("connections (id)", "connections"), Some(" (id)"));
        assert_eq!(strip_name("\"connections\" (id)", "connections"), Some(" (id)"));
        assert_eq!(strip_name("connections_g2 (id)", "connections"), None);
        assert_eq!(strip_name("conn (id)", "connections"), None);
    }

    #[test]
    fn indexes_are_renamed_for_the_new_generation() {
        assert_eq!(generation_index("connections", "connections_by_id", "connections_g2"), "connections_g2_by_id");
        assert_eq!(generation_index("connections", "connections_g2_by_id", "connections_g3"), "connections_g3_by_id");
        assert_eq!(generation_index("connections", "by_project", "connections_g2"), "connections_g2_by_project");
        assert_eq!(generation_index("runs", "runs_gone", "runs_g2"), "runs_g2_gone");
    }

    #[test]
    fn the_copied_ddl_has_the_live_tables_shape_and_indexes() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS runs (tenant_id TEXT NOT NULL, id TEXT NOT NULL, doc TEXT NOT NULL, \
             PRIMARY KEY (tenant_id, id));
             CREATE INDEX IF NOT EXISTS runs_by_id ON runs (id);
             CREATE UNIQUE INDEX runs_g4_by_doc ON runs (doc) WHERE doc <> '';",
        )
        .unwrap();
        let ddl = copy_table_ddl(&conn, "runs", "runs_g5").unwrap();
        assert_eq!(
            ddl,
            [
                "CREATE TABLE \"runs_g5\" (tenant_id TEXT NOT NULL, id TEXT NOT NULL, doc TEXT NOT NULL, \
                 PRIMARY KEY (tenant_id, id));",
                "CREATE INDEX \"runs_g5_by_id\" ON \"runs_g5\" (id);",
                "CREATE UNIQUE INDEX \"runs_g5_by_doc\" ON \"runs_g5\" (doc) WHERE doc <> '';",
            ]
        );
        for statement in &ddl {
            conn.execute_batch(statement).unwrap();
        }
        // The copy of a copy, after a switch renamed it (SQLite then quotes the name).
        conn.execute_batch("DROP TABLE runs; ALTER TABLE runs_g5 RENAME TO runs;").unwrap();
        let again = copy_table_ddl(&conn, "runs", "runs_g6").unwrap();
        assert!(again.iter().any(|s| s == "CREATE INDEX \"runs_g6_by_id\" ON \"runs_g6\" (id);"), "{again:?}");
    }

    #[test]
    fn a_redirected_name_writes_the_new_generation_only() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE connections (tenant_id TEXT NOT NULL, id TEXT NOT NULL, doc TEXT NOT NULL, \
             PRIMARY KEY (tenant_id, id));
             INSERT INTO connections VALUES ('t', 'a', 'live');",
        )
        .unwrap();
        let projection = ALL.iter().find(|p| p.name == "connections").copied().unwrap();
        let claim = Claim { projection, generation: 2, table: "connections_g2".into() };
        for statement in copy_table_ddl(&conn, "connections", &claim.table).unwrap() {
            conn.execute_batch(&statement).unwrap();
        }
        redirect(&conn, std::slice::from_ref(&claim)).unwrap();
        let tx = conn.transaction().unwrap();
        crate::read_models::store_doc(&tx, "connections", "t", "a", &"first", crate::read_models::Row::Unknown)
            .unwrap();
        crate::read_models::store_doc(&tx, "connections", "t", "a", &"second", crate::read_models::Row::Unknown)
            .unwrap();
        crate::read_models::store_doc(&tx, "connections", "t", "b", &"other", crate::read_models::Row::Unknown)
            .unwrap();
        tx.execute("DELETE FROM connections WHERE id = 'b'", []).unwrap();
        assert_eq!(
            crate::read_models::load_doc::<String>(&tx, "connections", "t", "a").unwrap().as_deref(),
            Some("second")
        );
        tx.commit().unwrap();
        unredirect(&conn, std::slice::from_ref(&claim)).unwrap();
        let docs = |table: &str| -> Vec<(String, String)> {
            conn.prepare(&format!("SELECT id, doc FROM {table} ORDER BY id"))
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        assert_eq!(docs("connections"), [("a".to_owned(), "live".to_owned())]);
        assert_eq!(docs("connections_g2"), [("a".to_owned(), "\"second\"".to_owned())]);
    }
}
