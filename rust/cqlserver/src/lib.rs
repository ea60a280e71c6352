//! A CQL native protocol v4 server over in-memory tables.
//!
//! It is a test instrument for the Cassandra code path, never a backend:
//! it answers what the scylla Rust driver, the DataStax Python driver and
//! cqlsh need (system tables, schema metadata, PREPARE/EXECUTE, paging,
//! token-range reads), plus password auth, TLS and fault knobs.

pub mod certs;
pub mod cql;
pub mod error;
pub mod exec;
pub mod persist;
pub mod proto;
pub mod server;
pub mod store;
pub mod system;
pub mod tls;
pub mod types;

pub use error::{CqlError, ErrorKind, ServerError};
pub use server::{Server, ServerBuilder, ServerHandle};
