//! Rust errors to the Python exception tree of `crs4_cassandra.errors`.
//!
//! The tree is declared in Python so that each class can also derive from the
//! matching builtin (KeyError, ValueError, ConnectionError...), which
//! `create_exception!` cannot express.

use crs4_cassandra_core::{PlanError, SplitError};
use crs4_cassandra_store::StoreError;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

fn build(
    py: Python<'_>,
    class: &str,
    message: String,
    attrs: &[(&str, String)],
    source: Option<&dyn std::error::Error>,
) -> PyErr {
    let made = (|| -> PyResult<PyErr> {
        let module = py.import("crs4_cassandra.errors")?;
        let cls = module.getattr(class)?;
        let exc = cls.call1((message.clone(),))?;
        for (k, v) in attrs {
            exc.setattr(*k, v)?;
        }
        let err = PyErr::from_value(exc);
        if let Some(source) = source {
            let base = module.getattr("LoaderError")?;
            let cause = PyErr::from_value(base.call1((source.to_string(),))?);
            err.set_cause(py, Some(cause));
        }
        Ok(err)
    })();
    made.unwrap_or_else(|e| PyRuntimeError::new_err(format!("{message} (while raising: {e})")))
}

pub fn store_err(e: StoreError) -> PyErr {
    Python::attach(|py| {
        let msg = e.to_string();
        match &e {
            StoreError::InvalidArgument(_) => build(py, "InvalidArgumentError", msg, &[], None),
            StoreError::NotAStore { path, .. } => build(
                py,
                "StoreNotFoundError",
                msg,
                &[("path", path.display().to_string())],
                None,
            ),
            StoreError::TableNotFound { table, .. } => build(
                py,
                "TableNotFoundError",
                msg,
                &[("table", table.clone())],
                None,
            ),
            StoreError::KeyspaceNotFound { table, .. } => build(
                py,
                "TableNotFoundError",
                msg,
                &[("table", table.clone())],
                None,
            ),
            StoreError::TableExists { table, .. } => build(
                py,
                "TableExistsError",
                msg,
                &[("table", table.clone())],
                None,
            ),
            StoreError::LabelTypeMismatch { table, .. } => {
                build(py, "SchemaError", msg, &[("table", table.clone())], None)
            }
            StoreError::MissingSample { table, uuid } => build(
                py,
                "SampleNotFoundError",
                msg,
                &[("table", table.clone()), ("uuid", uuid.to_string())],
                None,
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
            } => build(
                py,
                "CorruptSampleError",
                msg,
                &[
                    ("table", table.clone()),
                    ("uuid", uuid.to_string()),
                    ("column", column.clone()),
                ],
                None,
            ),
            StoreError::Io { source, path } => build(
                py,
                "StoreIOError",
                msg,
                &[("path", path.display().to_string())],
                Some(source),
            ),
            StoreError::Lmdb { path, .. } => build(
                py,
                "StoreIOError",
                msg,
                &[("path", path.display().to_string())],
                None,
            ),
            StoreError::Connection { hosts, .. } => build(
                py,
                "StoreConnectionError",
                msg,
                &[("hosts", hosts.clone())],
                None,
            ),
            StoreError::Authentication { hosts, .. } => build(
                py,
                "AuthenticationError",
                msg,
                &[("hosts", hosts.clone())],
                None,
            ),
            StoreError::Timeout { hosts, .. } => build(
                py,
                "StoreTimeoutError",
                msg,
                &[("hosts", hosts.clone())],
                None,
            ),
            StoreError::Query { hosts, table, .. } => build(
                py,
                "QueryError",
                msg,
                &[("hosts", hosts.clone()), ("table", table.clone())],
                None,
            ),
            StoreError::Tls(_) => build(py, "TLSConfigError", msg, &[], None),
            StoreError::Internal(_) => build(py, "LoaderError", msg, &[], None),
        }
    })
}

pub fn split_err(e: SplitError) -> PyErr {
    Python::attach(|py| {
        let msg = e.to_string();
        match &e {
            SplitError::Io { source, path } if source.kind() == std::io::ErrorKind::NotFound => {
                build(
                    py,
                    "SplitFileNotFoundError",
                    msg,
                    &[("path", path.display().to_string())],
                    None,
                )
            }
            SplitError::NoSuchSplit { name, .. } => build(
                py,
                "SplitNotFoundError",
                msg,
                &[("split", name.clone())],
                None,
            ),
            SplitError::UuidBytes { .. } | SplitError::DuplicateName(_) => {
                build(py, "InvalidArgumentError", msg, &[], None)
            }
            _ => build(
                py,
                "SplitFileError",
                msg,
                &[],
                std::error::Error::source(&e),
            ),
        }
    })
}

pub fn plan_err(e: PlanError) -> PyErr {
    Python::attach(|py| build(py, "InvalidArgumentError", e.to_string(), &[], None))
}

pub fn invalid(msg: impl Into<String>) -> PyErr {
    Python::attach(|py| build(py, "InvalidArgumentError", msg.into(), &[], None))
}
