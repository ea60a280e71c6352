//! The Cassandra / ScyllaDB store, on the `scylla` driver (protocol v4,
//! token-aware routing). One prepared statement per table; every read is
//! idempotent, bounded by a request timeout, retried with backoff on transient
//! errors, and optionally sped up by speculative execution. Blob cells arrive as
//! `Bytes` slices of the response frame and are copied once, into the arena.
//!
//! The driver session is created lazily in each process (never carried across
//! `fork()`, whose child has neither the runtime nor the connections).
//!
//! - `options`: [`CassandraOptions`] (URL and named options), [`Secret`];
//! - `tls`: the rustls configuration;
//! - `session`: the per-process session and the prepared-statement cache;
//! - `hedge`: hedged reads ([`Hedging`]) and the read counters;
//! - `retry`: which errors are retried, and the backoff loop;
//! - `errors`: driver errors to [`StoreError`](crate::StoreError), by type;
//! - `read`: [`CassandraTable`], the batch reads;
//! - `write`: the schema, inserts, and the metadata scan;
//! - `array`: the tables of arrays and their chunks.

mod array;
mod errors;
mod hedge;
mod options;
mod read;
mod retry;
mod session;
mod tls;
mod write;

pub use hedge::Hedging;
pub use options::{CassandraOptions, OptionValue, Secret, OPTION_NAMES, PASSWORD_ENV};
pub use read::CassandraTable;

use crate::error::{Result, StoreError};
use crate::{MetadataRow, SampleRow, SampleStore, TableReader, TableSpec};
use bytes::Bytes;
use crs4_cassandra_core::ProcessOwned;
use futures::future::{BoxFuture, FutureExt};
use scylla::statement::prepared::PreparedStatement;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use tokio::sync::{Mutex, Semaphore};
use uuid::Uuid;

pub struct CassandraStore {
    opts: Arc<CassandraOptions>,
    /// This process's session and its profile for hedged reads (see `session`).
    session: Mutex<Option<ProcessOwned<session::Connected>>>,
    /// Read counters and the hedge delay, kept across sessions.
    hedging: Arc<Hedging>,
    /// Sample requests in flight, over all batches (`max_in_flight`).
    in_flight: Arc<Semaphore>,
    /// Prepared statements by CQL text, of the current session.
    prepared: Mutex<HashMap<String, PreparedStatement>>,
}

impl fmt::Debug for CassandraStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CassandraStore({})", self.opts.url())
    }
}

impl CassandraStore {
    /// Does not connect: the session is made on first use, in the using process.
    pub fn new(opts: CassandraOptions) -> Result<Arc<Self>> {
        if opts.use_ssl {
            tls::tls_config(&opts)?; // fail fast on a bad certificate path
        }
        Ok(Arc::new(Self {
            in_flight: Arc::new(Semaphore::new(opts.max_in_flight.max(1))),
            hedging: Arc::new(Hedging::new(opts.hedge_percentile, opts.hedge_min_delay)),
            opts: Arc::new(opts),
            session: Mutex::new(None),
            prepared: Mutex::new(HashMap::new()),
        }))
    }

    pub fn options(&self) -> &CassandraOptions {
        &self.opts
    }

    /// Counts of this store's sample reads (and hedges) in this process.
    pub fn read_stats(&self) -> crate::ReadStats {
        self.hedging.stats()
    }

    /// `keyspace.table`, the keyspace from the URL unless `table` names one.
    fn qualify(&self, table: &str) -> Result<String> {
        if table.contains('.') {
            return Ok(table.to_string());
        }
        match &self.opts.keyspace {
            Some(ks) => Ok(format!("{ks}.{table}")),
            None => Err(StoreError::InvalidArgument(format!(
                "table {table:?} has no keyspace: write keyspace.table or put the keyspace in the URL"
            ))),
        }
    }
}

impl crate::ChunkSource for Arc<CassandraStore> {
    fn get_chunk(&self, array: Uuid, index: u64) -> BoxFuture<'static, Result<Option<Bytes>>> {
        self.clone().get_chunk_async(array, index).boxed()
    }
}

impl SampleStore for Arc<CassandraStore> {
    fn url(&self) -> String {
        self.opts.url()
    }

    fn open_table(&self, spec: &TableSpec) -> BoxFuture<'static, Result<Arc<dyn TableReader>>> {
        self.clone().open_table_async(spec.clone()).boxed()
    }

    fn create_tables(
        &self,
        spec: &TableSpec,
        metadata_table: &str,
        overwrite: bool,
    ) -> BoxFuture<'static, Result<()>> {
        self.clone()
            .create_tables_async(spec.clone(), metadata_table.to_string(), overwrite)
            .boxed()
    }

    fn put_samples(&self, table: &str, rows: Vec<SampleRow>) -> BoxFuture<'static, Result<()>> {
        self.clone()
            .put_samples_async(table.to_string(), rows)
            .boxed()
    }

    fn put_metadata(&self, table: &str, rows: Vec<MetadataRow>) -> BoxFuture<'static, Result<()>> {
        self.clone()
            .put_metadata_async(table.to_string(), rows)
            .boxed()
    }

    fn scan_metadata(&self, table: &str) -> BoxFuture<'static, Result<Vec<MetadataRow>>> {
        self.clone().scan_metadata_async(table.to_string()).boxed()
    }

    fn array_meta(&self, name: &str) -> BoxFuture<'static, Result<Option<String>>> {
        self.clone().array_meta_async(name.to_string()).boxed()
    }

    fn put_array_meta(&self, name: &str, meta: Option<String>) -> BoxFuture<'static, Result<()>> {
        self.clone()
            .put_array_meta_async(name.to_string(), meta)
            .boxed()
    }

    fn list_arrays(&self) -> BoxFuture<'static, Result<Vec<String>>> {
        self.clone().list_arrays_async().boxed()
    }

    fn chunk_source(&self) -> Result<Arc<dyn crate::ChunkSource>> {
        Ok(Arc::new(self.clone()))
    }

    fn put_chunks(
        &self,
        array: Uuid,
        chunks: Vec<(u64, Option<Vec<u8>>)>,
    ) -> BoxFuture<'static, Result<()>> {
        self.clone().put_chunks_async(array, chunks).boxed()
    }

    fn max_chunk_bytes(&self) -> Option<usize> {
        Some(array::MAX_CHUNK_BYTES)
    }

    fn read_stats(&self) -> crate::ReadStats {
        CassandraStore::read_stats(self)
    }
}
