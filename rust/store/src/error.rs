use std::path::PathBuf;
use thiserror::Error;
use uuid::Uuid;

/// The error of a lower layer (the Cassandra driver's, for instance) that a
/// [`StoreError`] wraps: its [`source`](std::error::Error::source).
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong reading samples. Each variant names the thing
/// at fault (store, table, column, uuid, host) so the message says what to fix.
///
/// Variants that wrap a driver error keep it as their `source`, so that
/// [`std::error::Error::source`] walks down to it; their `message` is its text.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("{path} is not a crs4_cassandra local store: {reason}")]
    NotAStore { path: PathBuf, reason: String },
    #[error("table {table:?} not found in {store}; available tables: {available:?}")]
    TableNotFound {
        store: String,
        table: String,
        available: Vec<String>,
    },
    #[error("keyspace {keyspace:?} of table {table:?} does not exist in {store}")]
    KeyspaceNotFound {
        store: String,
        keyspace: String,
        table: String,
    },
    #[error("table {table:?} already exists in {store}; pass overwrite=True (--overwrite) to replace it")]
    TableExists { store: String, table: String },
    #[error("table {table:?} has label type {actual:?} but {requested:?} was requested")]
    LabelTypeMismatch {
        table: String,
        actual: String,
        requested: String,
    },
    #[error("array {name:?} not found in {store}; available arrays: {available:?}")]
    ArrayNotFound {
        store: String,
        name: String,
        available: Vec<String>,
    },
    #[error(
        "array {name:?} already exists in {store}; pass overwrite=True (--overwrite) to replace it"
    )]
    ArrayExists { store: String, name: String },
    #[error("array {array:?}: chunk {chunk:?} is corrupt: {reason}")]
    CorruptChunk {
        array: String,
        chunk: Vec<u64>,
        reason: String,
    },
    #[error("sample {uuid} not found in table {table:?}")]
    MissingSample { table: String, uuid: Uuid },
    #[error("sample {uuid} in table {table:?} has a null or empty {column:?} column")]
    EmptyValue {
        table: String,
        uuid: Uuid,
        column: String,
    },
    #[error("sample {uuid} in table {table:?}: bad {column:?} value: {reason}")]
    BadValue {
        table: String,
        uuid: Uuid,
        column: String,
        reason: String,
    },
    #[error("LMDB error in {path}: {message}")]
    Lmdb { path: PathBuf, message: String },
    #[error(
        "the local store {path} is read-only here ({reason}): it was opened for reading only \
         and cannot be written; write to a copy on a filesystem this process can write"
    )]
    ReadOnly { path: PathBuf, reason: String },
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to Cassandra at {hosts}: {message}")]
    Connection {
        hosts: String,
        message: String,
        #[source]
        source: Option<Cause>,
    },
    #[error("authentication to Cassandra at {hosts} failed: {message}")]
    Authentication {
        hosts: String,
        message: String,
        #[source]
        source: Option<Cause>,
    },
    #[error("request to Cassandra at {hosts} timed out after {seconds:.1} s{context}")]
    Timeout {
        hosts: String,
        seconds: f64,
        context: String,
        #[source]
        source: Option<Cause>,
    },
    #[error("Cassandra at {hosts} rejected a request on table {table:?}: {message}")]
    Query {
        hosts: String,
        table: String,
        message: String,
        #[source]
        source: Option<Cause>,
    },
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("the loader's background task stopped unexpectedly: {0}")]
    Internal(String),
}

impl StoreError {
    /// The sample at fault, for errors that concern one sample only (missing,
    /// empty, or with an unreadable value): those a skip policy may skip.
    pub fn bad_sample(&self) -> Option<Uuid> {
        match self {
            Self::MissingSample { uuid, .. }
            | Self::EmptyValue { uuid, .. }
            | Self::BadValue { uuid, .. } => Some(*uuid),
            _ => None,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
