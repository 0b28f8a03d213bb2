//! A batch's documents: the projectors read and change documents through this cache, and it
//! writes each changed document once when the batch ends.
//!
//! A connection's health checks or a run's attempts come in runs of events on one document.
//! Without the cache each event loaded, parsed, serialized and wrote the whole document again;
//! with it a batch (up to [`crate::runner::BATCH`] events) pays that once per document.

use std::any::Any;
use std::collections::HashMap;
use std::collections::hash_map::Entry;

use rusqlite::Connection;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ProjectionError;
use crate::read_models::{Row, load_doc, store_doc};

/// Which document: its table, tenant and id.
type Key = (&'static str, String, String);

/// Writes a cached document of the type it was cached as.
type Write = fn(&Connection, &str, &str, &str, &dyn Any, Row) -> Result<(), ProjectionError>;

struct Cached {
    /// `None`: the table has no such document (yet).
    doc: Option<Box<dyn Any>>,
    changed: bool,
    /// Whether the table has its row, as far as this batch has looked.
    row: Row,
    write: Write,
}

/// Where the projectors' documents are kept. By default each table under its own name (the live
/// tables); while a rebuild applies events, the tables of the projections it rebuilds are their
/// new generations (`connections` is `connections_g2`), written directly: the TEMP views that
/// stand for them too ([`crate::rebuild`]) cost a trigger per row written, and an `UPDATE`
/// through a view first copies the rows it matches.
#[derive(Debug)]
pub(crate) struct Tables {
    renamed: Vec<(&'static str, String)>,
}

impl Tables {
    /// Every table under its own name.
    pub(crate) const LIVE: &'static Tables = &Tables { renamed: Vec::new() };

    /// `(table, where its documents are kept instead)` pairs; other tables keep their names.
    pub(crate) fn renamed(renamed: Vec<(&'static str, String)>) -> Self {
        Self { renamed }
    }

    fn of<'t>(&'t self, table: &'t str) -> &'t str {
        self.renamed.iter().find(|(name, _)| *name == table).map_or(table, |(_, kept)| kept.as_str())
    }
}

/// The documents of one batch, over the transaction that applies it. Every projector reads and
/// writes through it; [`Documents::flush`] writes what changed, before the batch's checkpoints.
pub struct Documents<'c> {
    conn: &'c Connection,
    tables: &'c Tables,
    cached: HashMap<Key, Cached>,
}

impl<'c> Documents<'c> {
    pub(crate) fn new(conn: &'c Connection, tables: &'c Tables) -> Self {
        Self { conn, tables, cached: HashMap::new() }
    }

    /// Whether the document exists.
    pub fn exists<T: Serialize + DeserializeOwned + 'static>(
        &mut self,
        table: &'static str,
        tenant_id: &str,
        id: &str,
    ) -> Result<bool, ProjectionError> {
        Ok(self.cached::<T>(table, tenant_id, id)?.doc.is_some())
    }

    /// Puts `doc` in place of whatever the document was.
    pub fn put<T: Serialize + DeserializeOwned + 'static>(
        &mut self,
        table: &'static str,
        tenant_id: &str,
        id: &str,
        doc: T,
    ) {
        let doc = Some(Box::new(doc) as Box<dyn Any>);
        match self.cached.entry((table, tenant_id.to_owned(), id.to_owned())) {
            Entry::Occupied(entry) => {
                let cached = entry.into_mut();
                cached.doc = doc;
                cached.changed = true;
            }
            Entry::Vacant(entry) => {
                entry.insert(Cached { doc, changed: true, row: Row::Unknown, write: write::<T> });
            }
        }
    }

    /// Changes the document with `change`; `false` (and nothing changed) when there is none.
    pub fn update<T: Serialize + DeserializeOwned + 'static>(
        &mut self,
        table: &'static str,
        tenant_id: &str,
        id: &str,
        change: impl FnOnce(&mut T),
    ) -> Result<bool, ProjectionError> {
        let cached = self.cached::<T>(table, tenant_id, id)?;
        let Some(doc) = cached.doc.as_mut() else { return Ok(false) };
        change(doc.downcast_mut::<T>().expect("a table's documents are all of one type"));
        cached.changed = true;
        Ok(true)
    }

    /// Writes every changed document. Changes not flushed are lost with the cache.
    pub(crate) fn flush(self) -> Result<(), ProjectionError> {
        for ((table, tenant_id, id), cached) in self.cached {
            if let (true, Some(doc)) = (cached.changed, cached.doc) {
                (cached.write)(self.conn, self.tables.of(table), &tenant_id, &id, doc.as_ref(), cached.row)?;
            }
        }
        Ok(())
    }

    /// The cache entry of the document, loaded from the table the first time it is asked for.
    fn cached<T: Serialize + DeserializeOwned + 'static>(
        &mut self,
        table: &'static str,
        tenant_id: &str,
        id: &str,
    ) -> Result<&mut Cached, ProjectionError> {
        match self.cached.entry((table, tenant_id.to_owned(), id.to_owned())) {
            Entry::Occupied(entry) => Ok(entry.into_mut()),
            Entry::Vacant(entry) => {
                let doc = load_doc::<T>(self.conn, self.tables.of(table), tenant_id, id)?;
                let row = if doc.is_some() { Row::Present } else { Row::Absent };
                let doc = doc.map(|doc| Box::new(doc) as Box<dyn Any>);
                Ok(entry.insert(Cached { doc, changed: false, row, write: write::<T> }))
            }
        }
    }
}

fn write<T: Serialize + 'static>(
    conn: &Connection,
    table: &str,
    tenant_id: &str,
    id: &str,
    doc: &dyn Any,
    row: Row,
) -> Result<(), ProjectionError> {
    store_doc(conn, table, tenant_id, id, doc.downcast_ref::<T>().expect("written as the type it was cached as"), row)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read_models::CONNECTIONS;

    fn table() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE connections (tenant_id TEXT NOT NULL, id TEXT NOT NULL, doc TEXT NOT NULL, \
             PRIMARY KEY (tenant_id, id));",
        )
        .unwrap();
        conn
    }

    #[test]
    fn changes_reach_the_table_once_flushed_and_later_reads_see_them_before() {
        let conn = table();
        store_doc(&conn, CONNECTIONS, "t", "a", &vec![1], Row::Unknown).unwrap();
        let mut documents = Documents::new(&conn, Tables::LIVE);
        assert!(documents.update(CONNECTIONS, "t", "a", |doc: &mut Vec<u32>| doc.push(2)).unwrap());
        assert!(documents.update(CONNECTIONS, "t", "a", |doc: &mut Vec<u32>| doc.push(3)).unwrap());
        documents.put(CONNECTIONS, "t", "b", vec![9u32]);
        assert!(documents.exists::<Vec<u32>>(CONNECTIONS, "t", "b").unwrap());
        assert!(!documents.exists::<Vec<u32>>(CONNECTIONS, "t", "c").unwrap());
        assert!(!documents.update(CONNECTIONS, "t", "c", |doc: &mut Vec<u32>| doc.push(1)).unwrap());
        // Nothing written yet: the table still has the document as it was.
        assert_eq!(load_doc::<Vec<u32>>(&conn, CONNECTIONS, "t", "a").unwrap(), Some(vec![1]));

        documents.flush().unwrap();
        assert_eq!(load_doc::<Vec<u32>>(&conn, CONNECTIONS, "t", "a").unwrap(), Some(vec![1, 2, 3]));
        assert_eq!(load_doc::<Vec<u32>>(&conn, CONNECTIONS, "t", "b").unwrap(), Some(vec![9]));
        assert_eq!(load_doc::<Vec<u32>>(&conn, CONNECTIONS, "t", "c").unwrap(), None);
    }

    #[test]
    fn tenants_do_not_share_documents() {
        let conn = table();
        store_doc(&conn, CONNECTIONS, "t1", "a", &1u32, Row::Unknown).unwrap();
        let mut documents = Documents::new(&conn, Tables::LIVE);
        assert!(!documents.exists::<u32>(CONNECTIONS, "t2", "a").unwrap());
        assert!(documents.update(CONNECTIONS, "t1", "a", |doc: &mut u32| *doc += 1).unwrap());
        documents.flush().unwrap();
        assert_eq!(load_doc::<u32>(&conn, CONNECTIONS, "t1", "a").unwrap(), Some(2));
        assert_eq!(load_doc::<u32>(&conn, CONNECTIONS, "t2", "a").unwrap(), None);
    }
}
