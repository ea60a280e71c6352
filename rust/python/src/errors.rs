//! Rust errors to the Python exception tree of `crs4_cassandra.errors`.
//!
//! The tree is declared in Python so that each class can also derive from the
//! matching builtin (KeyError, ValueError, ConnectionError...), which
//! `create_exception!` cannot express. Its classes are looked up once, when
//! the module is imported ([`init`]): a class renamed on the Python side fails
//! the import, instead of turning every later error into a RuntimeError.
//! The Rust error's `source()` chain becomes the exception's `__cause__` chain.

use crs4_cassandra_core::{PlanError, SplitError, StateError};
use crs4_cassandra_store::StoreError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

/// The classes of `crs4_cassandra.errors` this module raises.
#[derive(Clone, Copy, Debug)]
pub enum Class {
    LoaderError,
    InvalidArgumentError,
    StoreNotFoundError,
    StoreIOError,
    TableNotFoundError,
    TableExistsError,
    SchemaError,
    SampleNotFoundError,
    CorruptSampleError,
    SplitFileError,
    SplitFileNotFoundError,
    SplitNotFoundError,
    StoreConnectionError,
    AuthenticationError,
    StoreTimeoutError,
    QueryError,
    TLSConfigError,
    StateDictError,
    InsecureTLSWarning,
    ArrayNotFoundError,
    ArrayExistsError,
    CorruptChunkError,
    CacheWarning,
}

const CLASSES: [Class; 23] = [
    Class::LoaderError,
    Class::InvalidArgumentError,
    Class::StoreNotFoundError,
    Class::StoreIOError,
    Class::TableNotFoundError,
    Class::TableExistsError,
    Class::SchemaError,
    Class::SampleNotFoundError,
    Class::CorruptSampleError,
    Class::SplitFileError,
    Class::SplitFileNotFoundError,
    Class::SplitNotFoundError,
    Class::StoreConnectionError,
    Class::AuthenticationError,
    Class::StoreTimeoutError,
    Class::QueryError,
    Class::TLSConfigError,
    Class::StateDictError,
    Class::InsecureTLSWarning,
    Class::ArrayNotFoundError,
    Class::ArrayExistsError,
    Class::CorruptChunkError,
    Class::CacheWarning,
];

static RESOLVED: PyOnceLock<Vec<Py<PyType>>> = PyOnceLock::new();

/// Resolves every class of [`Class`] in `crs4_cassandra.errors`; the module
/// import fails if one is missing.
pub fn init(py: Python<'_>) -> PyResult<()> {
    RESOLVED
        .get_or_try_init(py, || {
            let module = py.import("crs4_cassandra.errors")?;
            CLASSES
                .iter()
                .enumerate()
                .map(|(i, class)| {
                    debug_assert_eq!(*class as usize, i);
                    let name = format!("{class:?}");
                    Ok(module
                        .getattr(name.as_str())?
                        .cast_into::<PyType>()?
                        .unbind())
                })
                .collect::<PyResult<Vec<_>>>()
        })
        .map(drop)
}

/// The Python class of `class`.
pub fn class<'py>(py: Python<'py>, class: Class) -> Bound<'py, PyType> {
    RESOLVED
        .get(py)
        .expect("the exception classes are resolved when the module is imported")[class as usize]
        .bind(py)
        .clone()
}

/// `class(message)`, with attributes naming the culprit, and `source`'s
/// chain as its `__cause__` chain.
fn build(
    class: Class,
    message: String,
    attrs: &[(&str, String)],
    source: Option<&dyn std::error::Error>,
) -> PyErr {
    Python::attach(|py| {
        let made = (|| -> PyResult<PyErr> {
            let exc = self::class(py, class).call1((message.clone(),))?;
            for (k, v) in attrs {
                exc.setattr(*k, v)?;
            }
            let err = PyErr::from_value(exc);
            // Innermost first: each cause is the __cause__ of the one it explains.
            let mut chain = Vec::new();
            let mut next = source;
            while let Some(e) = next {
                chain.push(e.to_string());
                next = e.source();
            }
            let mut cause: Option<PyErr> = None;
            for text in chain.into_iter().rev() {
                let e = PyErr::from_value(self::class(py, Class::LoaderError).call1((text,))?);
                e.set_cause(py, cause.take());
                cause = Some(e);
            }
            err.set_cause(py, cause);
            Ok(err)
        })();
        made.unwrap_or_else(|e| e)
    })
}

pub fn store_err(e: StoreError) -> PyErr {
    use Class::*;
    let msg = e.to_string();
    let source = std::error::Error::source(&e);
    let (class, attrs): (Class, Vec<(&str, String)>) = match &e {
        StoreError::InvalidArgument(_) => (InvalidArgumentError, vec![]),
        StoreError::NotAStore { path, .. } => (
            StoreNotFoundError,
            vec![("path", path.display().to_string())],
        ),
        StoreError::TableNotFound { table, .. } | StoreError::KeyspaceNotFound { table, .. } => {
            (TableNotFoundError, vec![("table", table.clone())])
        }
        StoreError::TableExists { table, .. } => (TableExistsError, vec![("table", table.clone())]),
        StoreError::LabelTypeMismatch { table, .. } => {
            (SchemaError, vec![("table", table.clone())])
        }
        StoreError::MissingSample { table, uuid } => (
            SampleNotFoundError,
            vec![("table", table.clone()), ("uuid", uuid.to_string())],
        ),
        StoreError::EmptyValue {
            table,
            uuid,
            column,
        }
        | StoreError::BadValue {
            table,
            uuid,
            column,
            ..
        } => (
            CorruptSampleError,
            vec![
                ("table", table.clone()),
                ("uuid", uuid.to_string()),
                ("column", column.clone()),
            ],
        ),
        StoreError::Io { path, .. }
        | StoreError::Lmdb { path, .. }
        | StoreError::ReadOnly { path, .. } => {
            (StoreIOError, vec![("path", path.display().to_string())])
        }
        StoreError::Connection { hosts, .. } => {
            (StoreConnectionError, vec![("hosts", hosts.clone())])
        }
        StoreError::Authentication { hosts, .. } => {
            (AuthenticationError, vec![("hosts", hosts.clone())])
        }
        StoreError::Timeout { hosts, .. } => (StoreTimeoutError, vec![("hosts", hosts.clone())]),
        StoreError::Query { hosts, table, .. } => (
            QueryError,
            vec![("hosts", hosts.clone()), ("table", table.clone())],
        ),
        StoreError::Tls(_) => (TLSConfigError, vec![]),
        StoreError::ArrayNotFound { name, .. } => {
            (ArrayNotFoundError, vec![("array", name.clone())])
        }
        StoreError::ArrayExists { name, .. } => (ArrayExistsError, vec![("array", name.clone())]),
        StoreError::CorruptChunk { array, chunk, .. } => (
            CorruptChunkError,
            vec![("array", array.clone()), ("chunk", format!("{chunk:?}"))],
        ),
        StoreError::Internal(_) => (LoaderError, vec![]),
    };
    build(class, msg, &attrs, source)
}

pub fn split_err(e: SplitError) -> PyErr {
    let msg = e.to_string();
    match &e {
        SplitError::Io { source, path } if source.kind() == std::io::ErrorKind::NotFound => build(
            Class::SplitFileNotFoundError,
            msg,
            &[("path", path.display().to_string())],
            None,
        ),
        SplitError::NoSuchSplit { name, .. } => build(
            Class::SplitNotFoundError,
            msg,
            &[("split", name.clone())],
            None,
        ),
        SplitError::UuidBytes { .. }
        | SplitError::DuplicateName(_)
        | SplitError::DuplicateUuid { .. } => build(Class::InvalidArgumentError, msg, &[], None),
        _ => build(
            Class::SplitFileError,
            msg,
            &[],
            std::error::Error::source(&e),
        ),
    }
}

pub fn plan_err(e: PlanError) -> PyErr {
    build(Class::InvalidArgumentError, e.to_string(), &[], None)
}

pub fn state_err(e: StateError) -> PyErr {
    match e {
        StateError::CountOutOfRange { .. } | StateError::PositionOutOfRange { .. } => {
            build(Class::InvalidArgumentError, e.to_string(), &[], None)
        }
        StateError::Plan(p) => plan_err(p),
        _ => build(Class::StateDictError, e.to_string(), &[], None),
    }
}

pub fn invalid(msg: impl Into<String>) -> PyErr {
    build(Class::InvalidArgumentError, msg.into(), &[], None)
}
