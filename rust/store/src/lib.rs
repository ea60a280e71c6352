//! Sample stores and the fetch engine of crs4_cassandra.
//!
//! A [`SampleStore`] (the embedded [`local::LocalStore`], or Cassandra/ScyllaDB)
//! opens [`TableReader`]s; the [`engine`] keeps a bounded window of batch reads
//! in flight on the process's tokio runtime and delivers finished [`Batch`]es.

pub mod array;
pub mod batch;
pub mod cache;
pub mod cassandra;
pub mod decode;
pub mod engine;
pub mod error;
pub mod ingest;
pub mod lmdb;
pub mod local;
pub mod open;
pub mod reader;
pub mod reorder;
pub mod runtime;
pub mod stats;
pub mod tuner;

use bytes::Bytes;
use futures::future::BoxFuture;
use std::sync::Arc;
use uuid::Uuid;

pub use batch::{ArenaPool, Batch, BatchJob, Images, Labels, PooledBuf};
pub use crs4_cassandra_core::LabelType;
pub use decode::DecodeOptions;
pub use engine::{BatchStream, EngineOptions, FetchEngine};
pub use error::{Cause, Result, StoreError};
pub use ingest::{IngestRow, IngestWriter, RowMetadata, WriteSummary, WriterConfig};
pub use open::{open_store, Opened};
pub use reader::{
    check_unique_ids, read_sample, reader_ids, Layout, OnError, Reader, ReaderConfig, Share,
};

/// Which table and columns to read, and how to interpret the label.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableSpec {
    pub table: String,
    pub id_col: String,
    pub label_col: String,
    pub data_col: String,
    pub label_type: LabelType,
}

impl TableSpec {
    pub fn new(table: &str, label_type: LabelType) -> Self {
        Self {
            table: table.to_string(),
            id_col: "id".into(),
            label_col: "label".into(),
            data_col: "data".into(),
            label_type,
        }
    }
}

/// Counts of a store's sample reads in this process: `reads` requests sent,
/// `hedged` of them sent again to another replica because the first answer
/// was late, `hedges_won` of those answered by the second copy first,
/// `retries` after transient errors and `timeouts` among those errors,
/// `slow_nodes`, the nodes found slow and put at the end of query plans now,
/// `cache_hits` and `cache_misses` (samples served by the local sample cache,
/// [`cache`], and samples it had to read from the store), and per node (address) a histogram of its reads'
/// latencies. Stores without these (the local store) count nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadStats {
    pub reads: u64,
    pub hedged: u64,
    pub hedges_won: u64,
    pub retries: u64,
    pub timeouts: u64,
    pub slow_nodes: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub nodes: Vec<(String, stats::Counts)>,
}

/// A label as written by ingest.
#[derive(Debug, Clone, PartialEq)]
pub enum LabelValue {
    Int(i32),
    Blob(Vec<u8>),
    None,
}

/// One row of a data table.
#[derive(Debug, Clone)]
pub struct SampleRow {
    pub id: Uuid,
    pub label: LabelValue,
    pub data: Vec<u8>,
}

/// One row of a metadata table: what split files are built from.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MetadataRow {
    pub id: Uuid,
    pub label: Option<i32>,
    pub label_name: Option<String>,
    pub path: Option<String>,
    /// The split the sample came from in the original dataset (e.g. "train", "val").
    #[serde(default)]
    pub split: Option<String>,
}

/// Reads batches of one table.
pub trait TableReader: Send + Sync + 'static {
    /// Fills a batch: every sample of the job, in job order, into one pooled buffer.
    fn read_batch(
        self: Arc<Self>,
        job: BatchJob,
        pool: Arc<ArenaPool>,
    ) -> BoxFuture<'static, Result<Batch>>;

    fn spec(&self) -> &TableSpec;

    /// The clock of the run about to read: when each entry of its uuid list
    /// is read in every epoch. A cache evicts by it (see [`cache`]); other
    /// readers ignore it.
    fn plan_known(&self, _clock: Arc<cache::UseClock>) {}

    /// Waits until what the reads so far left to do in the background is
    /// done (a cache's admissions), so that other processes see it. A reader
    /// whose plan other processes share calls it at the end of each epoch it
    /// delivers.
    fn settle(&self) {}

    /// Counts of the store's sample reads so far, in this process (see
    /// [`SampleStore::read_stats`]).
    fn read_stats(&self) -> ReadStats {
        ReadStats::default()
    }
}

/// Reads stored chunks of arrays (see [`SampleStore::chunk_source`]).
pub trait ChunkSource: Send + Sync + 'static {
    /// The stored value of a chunk, None if it was never written.
    fn get_chunk(&self, array: Uuid, index: u64) -> BoxFuture<'static, Result<Option<Bytes>>>;
}

/// A place where samples live.
pub trait SampleStore: Send + Sync + 'static {
    /// The store's URL, never with a password in it.
    fn url(&self) -> String;

    /// Opens a data table for reading; fails if the table or its columns are missing.
    fn open_table(&self, spec: &TableSpec) -> BoxFuture<'static, Result<Arc<dyn TableReader>>>;

    /// Creates a data table and its metadata table. Refuses existing tables unless `overwrite`.
    fn create_tables(
        &self,
        spec: &TableSpec,
        metadata_table: &str,
        overwrite: bool,
    ) -> BoxFuture<'static, Result<()>>;

    fn put_samples(&self, table: &str, rows: Vec<SampleRow>) -> BoxFuture<'static, Result<()>>;

    fn put_metadata(&self, table: &str, rows: Vec<MetadataRow>) -> BoxFuture<'static, Result<()>>;

    /// Every row of a metadata table.
    fn scan_metadata(&self, table: &str) -> BoxFuture<'static, Result<Vec<MetadataRow>>>;

    // Arrays (see [`array`]): metadata by name, chunks by array id and index.

    /// The metadata of array `name` (JSON), None if there is none.
    fn array_meta(&self, name: &str) -> BoxFuture<'static, Result<Option<String>>>;

    /// Records (Some) or removes (None) the metadata of array `name`.
    fn put_array_meta(&self, name: &str, meta: Option<String>) -> BoxFuture<'static, Result<()>>;

    /// Names of the arrays in the store.
    fn list_arrays(&self) -> BoxFuture<'static, Result<Vec<String>>>;

    /// What reads chunks of this store's arrays, opened in this process:
    /// readers hold it (background reads take no process-wide lock, which a
    /// `fork()` could leave locked in a DataLoader worker).
    fn chunk_source(&self) -> Result<Arc<dyn ChunkSource>>;

    /// Stores (Some) or deletes (None) chunks.
    fn put_chunks(
        &self,
        array: Uuid,
        chunks: Vec<(u64, Option<Vec<u8>>)>,
    ) -> BoxFuture<'static, Result<()>>;

    /// The largest value the store keeps in one cell, if it has a limit.
    fn max_chunk_bytes(&self) -> Option<usize> {
        None
    }

    /// Counts of this store's sample reads so far, in this process.
    fn read_stats(&self) -> ReadStats {
        ReadStats::default()
    }
}
