//! Arrays on Cassandra: two tables of the keyspace, made on first use.
//! `crs4_arrays` maps a name to its metadata (JSON); `crs4_array_chunks` has
//! one row per chunk, partitioned by (array id, chunk index) so that an
//! array's chunks spread over the ring's nodes, and stored without Cassandra's
//! own compression (chunks are compressed already).

use super::CassandraStore;
use crate::error::{Result, StoreError};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use std::sync::Arc;
use uuid::Uuid;

const META_TABLE: &str = "crs4_arrays";
const CHUNK_TABLE: &str = "crs4_array_chunks";
/// Concurrent chunk writes.
const WRITE_WINDOW: usize = 32;
/// Cassandra refuses a mutation over half its commit log segment (16 MiB of
/// the default 32): a chunk value stays below.
pub const MAX_CHUNK_BYTES: usize = 15 << 20;

fn missing_table(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::TableNotFound { .. } | StoreError::KeyspaceNotFound { .. }
    )
}

impl CassandraStore {
    /// Creates the keyspace (if missing) and both array tables (if missing).
    async fn array_tables(&self) -> Result<(String, String)> {
        let meta = self.qualify(META_TABLE)?;
        let chunks = self.qualify(CHUNK_TABLE)?;
        let keyspace = meta.split('.').next().expect("qualified").to_string();
        self.execute_ddl(
            &meta,
            format!(
                "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {}",
                self.opts.replication
            ),
        )
        .await?;
        self.execute_ddl(
            &meta,
            format!("CREATE TABLE IF NOT EXISTS {meta} (name text PRIMARY KEY, meta text)"),
        )
        .await?;
        self.execute_ddl(
            &chunks,
            format!(
                "CREATE TABLE IF NOT EXISTS {chunks} (array uuid, chunk bigint, data blob, \
                 PRIMARY KEY ((array, chunk))) WITH compression = {{'enabled': 'false'}}"
            ),
        )
        .await?;
        Ok((meta, chunks))
    }

    pub(super) async fn array_meta_async(self: Arc<Self>, name: String) -> Result<Option<String>> {
        let table = self.qualify(META_TABLE)?;
        let cql = format!("SELECT meta FROM {table} WHERE name = ?");
        let statement = match self.prepare(&table, cql).await {
            Ok(s) => s,
            Err(e) if missing_table(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let session = self.session().await?;
        let result = self
            .retrying(&table, || session.execute_unpaged(&statement, (&name,)))
            .await?;
        let bad = |e: String| StoreError::Query {
            hosts: self.opts.hosts_str(),
            table: table.clone(),
            message: format!("array {name:?}: {e}"),
            source: None,
        };
        let rows = result.into_rows_result().map_err(|e| bad(e.to_string()))?;
        let row = rows
            .maybe_first_row::<(Option<String>,)>()
            .map_err(|e| bad(e.to_string()))?;
        Ok(row.and_then(|(m,)| m))
    }

    pub(super) async fn put_array_meta_async(
        self: Arc<Self>,
        name: String,
        meta: Option<String>,
    ) -> Result<()> {
        let (table, _) = self.array_tables().await?;
        let session = self.session().await?;
        let cql = match meta {
            Some(_) => format!("INSERT INTO {table} (name, meta) VALUES (?, ?)"),
            None => format!("DELETE FROM {table} WHERE name = ?"),
        };
        let statement = self.prepare(&table, cql).await?;
        match &meta {
            Some(json) => {
                self.retrying(&table, || {
                    session.execute_unpaged(&statement, (&name, json))
                })
                .await?
            }
            None => {
                self.retrying(&table, || session.execute_unpaged(&statement, (&name,)))
                    .await?
            }
        };
        Ok(())
    }

    pub(super) async fn list_arrays_async(self: Arc<Self>) -> Result<Vec<String>> {
        let table = self.qualify(META_TABLE)?;
        let statement = match self
            .prepare(&table, format!("SELECT name FROM {table}"))
            .await
        {
            Ok(s) => s,
            Err(e) if missing_table(&e) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let session = self.session().await?;
        let failed = |e: String| StoreError::Query {
            hosts: self.opts.hosts_str(),
            table: table.clone(),
            message: e,
            source: None,
        };
        let pager = session
            .execute_iter(statement, ())
            .await
            .map_err(|e| failed(e.to_string()))?;
        pager
            .rows_stream::<(String,)>()
            .map_err(|e| failed(e.to_string()))?
            .map_ok(|(n,)| n)
            .try_collect()
            .await
            .map_err(|e| failed(e.to_string()))
    }

    pub(super) async fn get_chunk_async(
        self: Arc<Self>,
        array: Uuid,
        index: u64,
    ) -> Result<Option<Bytes>> {
        let table = self.qualify(CHUNK_TABLE)?;
        let cql = format!("SELECT data FROM {table} WHERE array = ? AND chunk = ?");
        let statement = self.prepare(&table, cql).await?;
        let session = self.session().await?;
        let _permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        let result = self
            .retrying(&table, || {
                session.execute_unpaged(&statement, (array, index as i64))
            })
            .await?;
        let bad = |e: String| StoreError::Query {
            hosts: self.opts.hosts_str(),
            table: table.clone(),
            message: format!("chunk {index} of array {array}: {e}"),
            source: None,
        };
        let rows = result.into_rows_result().map_err(|e| bad(e.to_string()))?;
        let row = rows
            .maybe_first_row::<(Option<Bytes>,)>()
            .map_err(|e| bad(e.to_string()))?;
        Ok(row.and_then(|(d,)| d))
    }

    pub(super) async fn put_chunks_async(
        self: Arc<Self>,
        array: Uuid,
        chunks: Vec<(u64, Option<Vec<u8>>)>,
    ) -> Result<()> {
        let table = self.qualify(CHUNK_TABLE)?;
        let session = self.session().await?;
        let insert = self
            .prepare(
                &table,
                format!("INSERT INTO {table} (array, chunk, data) VALUES (?, ?, ?)"),
            )
            .await?;
        let delete = self
            .prepare(
                &table,
                format!("DELETE FROM {table} WHERE array = ? AND chunk = ?"),
            )
            .await?;
        let (this, session, table) = (&self, &session, &table);
        let (insert, delete) = (&insert, &delete);
        futures::stream::iter(chunks)
            .map(|(index, value)| async move {
                let index = index as i64;
                match &value {
                    Some(v) => {
                        this.retrying(table, || session.execute_unpaged(insert, (array, index, v)))
                            .await
                    }
                    None => {
                        this.retrying(table, || session.execute_unpaged(delete, (array, index)))
                            .await
                    }
                }
                .map(drop)
            })
            .buffer_unordered(WRITE_WINDOW)
            .try_collect::<Vec<()>>()
            .await
            .map(drop)
    }
}
