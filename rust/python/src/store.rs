//! `Store` and `open_store`: converting arguments and rows; the store crate
//! opens, checks and writes.

use crate::block;
use crate::errors::{class, invalid, Class};
use crs4_cassandra_store::cassandra::OptionValue;
use crs4_cassandra_store::reader::label_type;
use crs4_cassandra_store::{
    read_sample, LabelValue, MetadataRow, SampleRow, SampleStore, TableSpec,
};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBool, PyBytes, PyDict};
use std::sync::Arc;
use uuid::Uuid;

/// A metadata row as Python sees it: (uuid bytes, label, label_name, path, split).
type PyMetadataRow<B> = (
    B,
    Option<i32>,
    Option<String>,
    Option<String>,
    Option<String>,
);

pub fn uuids_from_bytes(bytes: &[u8]) -> PyResult<Vec<Uuid>> {
    // Rows to write may repeat an id (the store keeps the last): no uniqueness check.
    crs4_cassandra_store::reader_ids(bytes, true).map_err(crate::errors::store_err)
}

/// Python option values, as the store crate takes them (None: not given).
fn option_values(options: Option<&Bound<'_, PyDict>>) -> PyResult<Vec<(String, OptionValue)>> {
    let mut values = Vec::new();
    for (k, v) in options.into_iter().flat_map(|o| o.iter()) {
        let key: String = k.extract()?;
        let value = if v.is_none() {
            continue;
        } else if let Ok(b) = v.cast::<PyBool>() {
            OptionValue::Bool(b.is_true())
        } else if let Ok(x) = v.extract::<f64>() {
            OptionValue::Number(x)
        } else {
            OptionValue::Text(v.str()?.to_string())
        };
        values.push((key, value));
    }
    Ok(values)
}

#[pyclass(module = "crs4_cassandra._native", frozen)]
pub struct Store {
    pub inner: Arc<dyn SampleStore>,
    /// Connection options, kept so the store can be reopened in spawned workers.
    options: Option<Py<PyDict>>,
}

#[pymethods]
impl Store {
    #[getter]
    fn url(&self) -> String {
        self.inner.url()
    }

    fn __repr__(&self) -> String {
        format!("Store({:?})", self.inner.url())
    }

    /// Counts of this store's sample reads in this process: ``reads``
    /// (requests sent), ``hedged`` (of them sent to a second replica because
    /// the first was late), ``hedges_won`` (hedges answered first),
    /// ``retries`` (after transient errors), ``timeouts`` (of those errors),
    /// ``slow_nodes`` (nodes found slow, put last in query plans now), and
    /// ``cache_hits`` (samples served by the sample cache) and ``cache_misses``
    /// (read from the store). All zero for a local store.
    fn read_stats(&self) -> std::collections::HashMap<&'static str, u64> {
        let s = self.inner.read_stats();
        [
            ("reads", s.reads),
            ("hedged", s.hedged),
            ("hedges_won", s.hedges_won),
            ("retries", s.retries),
            ("timeouts", s.timeouts),
            ("slow_nodes", s.slow_nodes),
            ("cache_hits", s.cache_hits),
            ("cache_misses", s.cache_misses),
        ]
        .into()
    }

    #[pyo3(signature = (table, label_type, id_col="id", label_col="label", data_col="data"))]
    fn check_table(
        &self,
        py: Python<'_>,
        table: &str,
        label_type: &str,
        id_col: &str,
        label_col: &str,
        data_col: &str,
    ) -> PyResult<()> {
        let spec = TableSpec {
            table: table.into(),
            id_col: id_col.into(),
            label_col: label_col.into(),
            data_col: data_col.into(),
            label_type: self::label_type(label_type).map_err(crate::errors::store_err)?,
        };
        block::store(py, self.inner.open_table(&spec)).map(drop)
    }

    /// One sample of `table`, read by itself: (label, data). `uuid` is a
    /// uuid string, a `uuid.UUID` or its 16 bytes; the label is an int, bytes
    /// or None as the label type says.
    #[pyo3(signature = (table, uuid, label_type="int", id_col="id", label_col="label", data_col="data"))]
    #[allow(clippy::too_many_arguments)]
    fn get<'py>(
        &self,
        py: Python<'py>,
        table: &str,
        uuid: &Bound<'py, PyAny>,
        label_type: &str,
        id_col: &str,
        label_col: &str,
        data_col: &str,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyBytes>)> {
        let id = if let Ok(b) = uuid.cast::<PyBytes>() {
            Uuid::from_slice(b.as_bytes()).map_err(|_| {
                invalid(format!(
                    "uuid bytes must be 16 bytes, got {}",
                    b.as_bytes().len()
                ))
            })?
        } else {
            let text = uuid.str()?.to_string();
            Uuid::parse_str(&text).map_err(|_| invalid(format!("{text:?} is not a valid uuid")))?
        };
        let spec = TableSpec {
            table: table.into(),
            id_col: id_col.into(),
            label_col: label_col.into(),
            data_col: data_col.into(),
            label_type: self::label_type(label_type).map_err(crate::errors::store_err)?,
        };
        let store = self.inner.clone();
        let row = block::store(
            py,
            async move { read_sample(store.as_ref(), &spec, id).await },
        )?;
        let label = match row.label {
            LabelValue::Int(l) => l.into_pyobject(py)?.into_any(),
            LabelValue::Blob(b) => PyBytes::new(py, &b).into_any(),
            LabelValue::None => py.None().into_bound(py),
        };
        Ok((label, PyBytes::new(py, &row.data)))
    }

    #[pyo3(signature = (table, metadata_table, label_type, overwrite=false))]
    fn create_tables(
        &self,
        py: Python<'_>,
        table: &str,
        metadata_table: &str,
        label_type: &str,
        overwrite: bool,
    ) -> PyResult<()> {
        let label_type = self::label_type(label_type).map_err(crate::errors::store_err)?;
        let spec = TableSpec::new(table, label_type);
        block::store(
            py,
            self.inner.create_tables(&spec, metadata_table, overwrite),
        )
    }

    /// Writes samples: `ids` is n*16 uuid bytes, `labels` a list of int, bytes or None.
    fn put_samples(
        &self,
        py: Python<'_>,
        table: &str,
        ids: PyBackedBytes,
        labels: Vec<Option<Bound<'_, PyAny>>>,
        data: Vec<PyBackedBytes>,
    ) -> PyResult<()> {
        let ids = uuids_from_bytes(&ids)?;
        if ids.len() != labels.len() || ids.len() != data.len() {
            return Err(invalid(format!(
                "put_samples: {} ids, {} labels and {} data values must match",
                ids.len(),
                labels.len(),
                data.len()
            )));
        }
        let mut rows = Vec::with_capacity(ids.len());
        for ((id, label), bytes) in ids.into_iter().zip(labels).zip(data) {
            let label = label_value(label, || format!("sample {id}"))?;
            rows.push(SampleRow {
                id,
                label,
                data: bytes.to_vec(),
            });
        }
        block::store(py, self.inner.put_samples(table, rows))
    }

    /// Writes metadata rows: (uuid bytes, label, label_name, path, split).
    fn put_metadata(
        &self,
        py: Python<'_>,
        table: &str,
        rows: Vec<PyMetadataRow<PyBackedBytes>>,
    ) -> PyResult<()> {
        let rows = rows
            .into_iter()
            .map(|(id, label, label_name, path, split)| {
                Ok(MetadataRow {
                    id: uuids_from_bytes(&id)?
                        .first()
                        .copied()
                        .ok_or_else(|| invalid("empty uuid"))?,
                    label,
                    label_name,
                    path,
                    split,
                })
            })
            .collect::<PyResult<Vec<_>>>()?;
        block::store(py, self.inner.put_metadata(table, rows))
    }

    fn scan_metadata<'py>(
        &self,
        py: Python<'py>,
        table: &str,
    ) -> PyResult<Vec<PyMetadataRow<Bound<'py, PyBytes>>>> {
        let rows = block::store(py, self.inner.scan_metadata(table))?;
        Ok(rows
            .into_iter()
            .map(|r| {
                (
                    PyBytes::new(py, r.id.as_bytes()),
                    r.label,
                    r.label_name,
                    r.path,
                    r.split,
                )
            })
            .collect())
    }

    #[allow(clippy::type_complexity)]
    fn __reduce__(
        &self,
        py: Python<'_>,
    ) -> PyResult<(Py<PyAny>, (String, bool, Option<Py<PyDict>>))> {
        // Stores travel to DataLoader workers (spawn) by URL and options and are
        // reopened there, with their own connections.
        let open = py.import("crs4_cassandra._native")?.getattr("open_store")?;
        let options = self.options.as_ref().map(|o| o.clone_ref(py));
        Ok((open.unbind(), (self.inner.url(), false, options)))
    }
}

/// Opens a store by URL: `local:PATH` (`create` makes it if missing), or
/// `cassandra://host1,host2:9042/keyspace` with connection options
/// (`username`, `password`, `use_ssl`, ...).
#[pyfunction]
#[pyo3(signature = (url, create=false, options=None))]
pub fn open_store(
    py: Python<'_>,
    url: String,
    create: bool,
    options: Option<Bound<'_, PyDict>>,
) -> PyResult<Store> {
    let mut values = option_values(options.as_ref())?;
    if create {
        values.push(("create".into(), OptionValue::Bool(true)));
    }
    let opened = block::run_blocking(
        py,
        move || crs4_cassandra_store::open_store(&url, values),
        crate::errors::store_err,
    )?;
    if let Some(message) = opened.warning {
        // Loud on purpose: an unverified TLS peer can be anyone.
        let category = class(py, Class::InsecureTLSWarning);
        PyErr::warn(
            py,
            &category,
            &std::ffi::CString::new(message).expect("no NUL"),
            1,
        )?;
    }
    if let Some(message) = opened.cache_warning {
        let category = class(py, Class::CacheWarning);
        PyErr::warn(
            py,
            &category,
            &std::ffi::CString::new(message).expect("no NUL"),
            1,
        )?;
    }
    Ok(Store {
        inner: opened.store,
        options: options.map(|o| o.unbind()),
    })
}

/// A label given from Python (an int, bytes or None) as stored; `whose`
/// names the row in the error.
pub(crate) fn label_value(
    label: Option<Bound<'_, PyAny>>,
    whose: impl FnOnce() -> String,
) -> PyResult<LabelValue> {
    let Some(l) = label else {
        return Ok(LabelValue::None);
    };
    if let Ok(b) = l.cast::<PyBytes>() {
        return Ok(LabelValue::Blob(b.as_bytes().to_vec()));
    }
    l.extract::<i32>().map(LabelValue::Int).map_err(|_| {
        invalid(format!(
            "{}: label must be an int (32-bit), bytes or None, got {l}",
            whose()
        ))
    })
}
