//! In-memory schema and data. User tables are ordered by (token, key) so a
//! full scan comes back in token order and token-range reads are range scans.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use cassandra_protocol::token::Murmur3Token;

use crate::error::CqlError;
use crate::types::ColType;

/// A row's cells, serialized, in the table's column order.
pub type Row = Arc<[Option<Bytes>]>;

#[derive(Clone, Debug)]
pub struct Column {
    pub name: String,
    pub ty: ColType,
}

#[derive(Debug)]
pub struct TableSchema {
    pub keyspace: String,
    pub name: String,
    pub id: uuid::Uuid,
    /// Partition key first, then the other columns in alphabetical order
    /// (the order Cassandra uses for `SELECT *`).
    pub columns: Vec<Column>,
}

impl TableSchema {
    pub fn new(keyspace: &str, name: &str, mut columns: Vec<Column>, pk: &str) -> TableSchema {
        let pos = columns.iter().position(|c| c.name == pk).unwrap_or(0);
        let pk_col = columns.remove(pos);
        columns.sort_by(|a, b| a.name.cmp(&b.name));
        columns.insert(0, pk_col);
        TableSchema {
            keyspace: keyspace.to_string(),
            name: name.to_string(),
            id: uuid::Uuid::new_v4(),
            columns,
        }
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

pub type RowKey = (i64, Bytes);

pub struct Table {
    pub schema: Arc<TableSchema>,
    pub rows: RwLock<BTreeMap<RowKey, Row>>,
}

/// Murmur3Partitioner token; like Cassandra, the minimum token is never
/// assigned to a key.
pub fn token_of(key: &[u8]) -> i64 {
    match Murmur3Token::generate(key).value {
        i64::MIN => i64::MAX,
        t => t,
    }
}

impl Table {
    pub fn new(schema: TableSchema) -> Table {
        Table {
            schema: Arc::new(schema),
            rows: RwLock::new(BTreeMap::new()),
        }
    }

    pub fn get(&self, key: &[u8]) -> Option<Row> {
        let k = (token_of(key), Bytes::copy_from_slice(key));
        self.rows.read().unwrap().get(&k).cloned()
    }

    /// Inserts or merges (an INSERT only overwrites the columns it names;
    /// `None` in `cells` means "not given").
    pub fn upsert(&self, key: Bytes, cells: Vec<Option<Option<Bytes>>>) {
        let k = (token_of(&key), key);
        let mut rows = self.rows.write().unwrap();
        let merged: Row = match rows.get(&k) {
            Some(old) => cells
                .into_iter()
                .zip(old.iter())
                .map(|(new, old)| new.unwrap_or_else(|| old.clone()))
                .collect(),
            None => cells.into_iter().map(|c| c.flatten()).collect(),
        };
        rows.insert(k, merged);
    }

    pub fn insert_row(&self, row: Row) {
        if let Some(Some(key)) = row.first() {
            let k = (token_of(key), key.clone());
            self.rows.write().unwrap().insert(k, row);
        }
    }

    pub fn delete(&self, key: &[u8]) {
        let k = (token_of(key), Bytes::copy_from_slice(key));
        self.rows.write().unwrap().remove(&k);
    }

    pub fn len(&self) -> usize {
        self.rows.read().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Up to `max` rows (after `filter`) with keys in the given bounds, in
    /// (token, key) order; also reports whether a further match exists.
    pub fn scan(
        &self,
        lo: Bound<RowKey>,
        hi: Bound<RowKey>,
        max: usize,
        filter: &dyn Fn(&Row) -> bool,
    ) -> (Vec<(RowKey, Row)>, bool) {
        let rows = self.rows.read().unwrap();
        let mut out = Vec::new();
        if bounds_empty(&lo, &hi) {
            return (out, false);
        }
        for (k, r) in rows.range((lo, hi)) {
            if !filter(r) {
                continue;
            }
            if out.len() == max {
                return (out, true);
            }
            out.push((k.clone(), r.clone()));
        }
        (out, false)
    }
}

fn bounds_empty(lo: &Bound<RowKey>, hi: &Bound<RowKey>) -> bool {
    use Bound::*;
    match (lo, hi) {
        (Included(a), Included(b)) => a > b,
        (Included(a), Excluded(b)) | (Excluded(a), Included(b)) | (Excluded(a), Excluded(b)) => {
            a >= b
        }
        _ => false,
    }
}

pub struct Keyspace {
    pub name: String,
    pub replication: Vec<(String, String)>,
    pub durable_writes: bool,
    pub tables: BTreeMap<String, Arc<Table>>,
}

/// All user keyspaces plus the schema version that DDL bumps.
pub struct Catalog {
    pub keyspaces: RwLock<BTreeMap<String, Keyspace>>,
    pub schema_version: RwLock<uuid::Uuid>,
}

impl Default for Catalog {
    fn default() -> Self {
        Catalog {
            keyspaces: RwLock::new(BTreeMap::new()),
            schema_version: RwLock::new(uuid::Uuid::new_v4()),
        }
    }
}

pub const SYSTEM_KEYSPACES: &[&str] = &[
    "system",
    "system_schema",
    "system_auth",
    "system_distributed",
    "system_traces",
    "system_virtual_schema",
    "system_views",
];

pub fn is_system_keyspace(ks: &str) -> bool {
    SYSTEM_KEYSPACES.contains(&ks)
}

impl Catalog {
    pub fn bump_version(&self) {
        *self.schema_version.write().unwrap() = uuid::Uuid::new_v4();
    }

    pub fn schema_version(&self) -> uuid::Uuid {
        *self.schema_version.read().unwrap()
    }

    pub fn table(&self, ks: &str, name: &str) -> Result<Arc<Table>, CqlError> {
        let kss = self.keyspaces.read().unwrap();
        let k = kss
            .get(ks)
            .ok_or_else(|| CqlError::invalid(format!("Keyspace {ks} does not exist")))?;
        k.tables
            .get(name)
            .cloned()
            .ok_or_else(|| CqlError::invalid(format!("unconfigured table {name}")))
    }

    pub fn has_keyspace(&self, ks: &str) -> bool {
        self.keyspaces.read().unwrap().contains_key(ks)
    }

    /// Returns false when it already existed.
    pub fn create_keyspace(
        &self,
        name: &str,
        replication: Vec<(String, String)>,
        durable_writes: bool,
    ) -> bool {
        let mut kss = self.keyspaces.write().unwrap();
        if kss.contains_key(name) {
            return false;
        }
        kss.insert(
            name.to_string(),
            Keyspace {
                name: name.to_string(),
                replication,
                durable_writes,
                tables: BTreeMap::new(),
            },
        );
        drop(kss);
        self.bump_version();
        true
    }

    pub fn drop_keyspace(&self, name: &str) -> bool {
        let removed = self.keyspaces.write().unwrap().remove(name).is_some();
        if removed {
            self.bump_version();
        }
        removed
    }

    pub fn create_table(&self, schema: TableSchema) -> Result<bool, CqlError> {
        let mut kss = self.keyspaces.write().unwrap();
        let ks = kss.get_mut(&schema.keyspace).ok_or_else(|| {
            CqlError::invalid(format!("Keyspace {} does not exist", schema.keyspace))
        })?;
        if ks.tables.contains_key(&schema.name) {
            return Ok(false);
        }
        ks.tables
            .insert(schema.name.clone(), Arc::new(Table::new(schema)));
        drop(kss);
        self.bump_version();
        Ok(true)
    }

    pub fn drop_table(&self, ks: &str, name: &str) -> Result<bool, CqlError> {
        let mut kss = self.keyspaces.write().unwrap();
        let k = kss
            .get_mut(ks)
            .ok_or_else(|| CqlError::invalid(format!("Keyspace {ks} does not exist")))?;
        let removed = k.tables.remove(name).is_some();
        drop(kss);
        if removed {
            self.bump_version();
        }
        Ok(removed)
    }
}
