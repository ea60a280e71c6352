//! `Writer`, `sample_uuid`, `check_image` and `transform_image`: Python rows
//! converted to the store crate's ingest rows; the writer, the ids and the
//! transforms live in the store, core and decode crates.

use crate::block;
use crate::errors::{invalid, store_err};
use crate::store::{label_value, Store};
use crs4_cassandra_decode::transform::{self, TransformSpec};
use crs4_cassandra_store::reader::label_type;
use crs4_cassandra_store::{IngestRow, IngestWriter, RowMetadata, WriterConfig};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyDict};
use std::sync::Mutex;
use std::time::Duration;
use uuid::Uuid;

/// A row as the Python layer hands it over: (id bytes, key, label, data,
/// metadata label, label_name, path, split, checked, rejected).
type PyRow<'py> = (
    PyBackedBytes,
    Option<String>,
    Option<Bound<'py, PyAny>>,
    PyBackedBytes,
    Option<i32>,
    Option<String>,
    Option<String>,
    Option<String>,
    bool,
    Option<String>,
);

fn spec(
    resize_shorter: Option<u32>,
    center_crop: bool,
    jpeg_quality: Option<u8>,
    to_jpeg: bool,
) -> PyResult<TransformSpec> {
    let spec = TransformSpec {
        resize_shorter,
        center_crop,
        jpeg_quality,
        to_jpeg,
    };
    spec.check().map_err(|e| invalid(e.to_string()))?;
    Ok(spec)
}

fn row(r: PyRow<'_>) -> PyResult<IngestRow> {
    let (id, key, label, data, meta_label, label_name, path, split, checked, rejected) = r;
    let id = Uuid::from_slice(&id)
        .map_err(|_| invalid(format!("row id must be 16 bytes, got {}", id.len())))?;
    let name = || key.clone().unwrap_or_else(|| id.to_string());
    let label = label_value(label, || format!("row {}", name()))?;
    Ok(IngestRow {
        id,
        key,
        label,
        data: data.to_vec(),
        metadata: RowMetadata {
            label: meta_label,
            label_name,
            path,
            split,
        },
        checked,
        rejected,
    })
}

/// Writes rows into a data table and its metadata table: a bounded window of
/// chunks in flight, transforms on the decoding threads, transient errors
/// retried (see the store crate's `ingest` module).
#[pyclass(module = "crs4_cassandra._native", frozen)]
pub struct Writer {
    inner: Mutex<IngestWriter>,
}

impl Writer {
    /// The writer; never waited for with the GIL held (its holder needs the
    /// GIL to come back from its wait).
    fn lock(&self) -> PyResult<std::sync::MutexGuard<'_, IngestWriter>> {
        self.inner
            .try_lock()
            .map_err(|_| invalid("this Writer is in use by another thread"))
    }
}

#[pymethods]
impl Writer {
    #[new]
    #[pyo3(signature = (
        store, table, *, label_type="int", metadata_table=None, window=4, chunk=64,
        resize_shorter=None, center_crop=false, jpeg_quality=None, to_jpeg=false,
        validate=true, retries=3, backoff=0.2
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        store: &Store,
        table: &str,
        label_type: &str,
        metadata_table: Option<String>,
        window: usize,
        chunk: usize,
        resize_shorter: Option<u32>,
        center_crop: bool,
        jpeg_quality: Option<u8>,
        to_jpeg: bool,
        validate: bool,
        retries: u32,
        backoff: f64,
    ) -> PyResult<Self> {
        let mut config = WriterConfig::new(table, self::label_type(label_type).map_err(store_err)?);
        config.metadata_table = metadata_table;
        config.window = window;
        config.chunk = chunk;
        config.transform = spec(resize_shorter, center_crop, jpeg_quality, to_jpeg)?;
        config.validate = validate;
        config.retries = retries;
        config.backoff = Duration::try_from_secs_f64(backoff)
            .map_err(|_| invalid(format!("backoff must be seconds >= 0, got {backoff}")))?;
        let w = IngestWriter::new(store.inner.clone(), config).map_err(store_err)?;
        Ok(Self {
            inner: Mutex::new(w),
        })
    }

    /// Queues rows (see `PyRow`); returns once every full chunk is in flight,
    /// waiting (without the GIL) while `window` chunks are.
    fn write(&self, py: Python<'_>, rows: Vec<PyRow<'_>>) -> PyResult<()> {
        let rows = rows.into_iter().map(row).collect::<PyResult<Vec<_>>>()?;
        let mut w = self.lock()?;
        let result = block::here(py, w.write(rows));
        if result.is_err() {
            // A failed chunk or an interrupt: what was written stays.
            w.abort();
        }
        result
    }

    /// Writes what is queued and waits for every chunk: a dict of
    /// rows_written, bytes_written, rejected [(key, reason)], ids (n*16
    /// bytes, input order), max_in_flight and retries.
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let mut w = self.lock()?;
        let result = block::here(py, w.close());
        if result.is_err() {
            w.abort();
        }
        let s = result?;
        let d = PyDict::new(py);
        d.set_item("rows_written", s.rows_written)?;
        d.set_item("bytes_written", s.bytes_written)?;
        d.set_item("rejected", s.rejected)?;
        let ids: Vec<u8> = s.ids.iter().flat_map(|u| *u.as_bytes()).collect();
        d.set_item("ids", PyBytes::new(py, &ids))?;
        d.set_item("max_in_flight", s.max_in_flight)?;
        d.set_item("retries", s.retries)?;
        Ok(d)
    }

    /// Waits (without the GIL, interruptibly) for the chunks in flight, drops
    /// the rows not yet sent, and closes.
    fn drain(&self, py: Python<'_>) -> PyResult<()> {
        let mut w = self.lock()?;
        let result = block::here(py, w.drain());
        if result.is_err() {
            w.abort();
        }
        result
    }

    /// Stops the chunks in flight and drops what is queued.
    fn abort(&self) -> PyResult<()> {
        self.lock()?.abort();
        Ok(())
    }
}

/// The id ingest gives the sample of `key` in `table` (uuid5; see the core
/// crate's `ids`), as 16 bytes.
#[pyfunction]
#[pyo3(signature = (table, key, occurrence=0))]
pub fn sample_uuid<'py>(
    py: Python<'py>,
    table: &str,
    key: &str,
    occurrence: u64,
) -> Bound<'py, PyBytes> {
    PyBytes::new(
        py,
        crs4_cassandra_core::sample_uuid(table, key, occurrence).as_bytes(),
    )
}

/// None if `data` is a JPEG or PNG that decodes whole, else why not (the
/// reason ingest reports).
#[pyfunction]
pub fn check_image(py: Python<'_>, data: PyBackedBytes) -> Option<String> {
    py.detach(|| transform::check_image(&data).err())
}

/// `data` transformed as ingest transforms it (see the decode crate's
/// `transform`); raises InvalidArgumentError with the reason if it cannot be.
#[pyfunction]
#[pyo3(signature = (data, *, resize_shorter=None, center_crop=false, jpeg_quality=None, to_jpeg=false))]
pub fn transform_image<'py>(
    py: Python<'py>,
    data: PyBackedBytes,
    resize_shorter: Option<u32>,
    center_crop: bool,
    jpeg_quality: Option<u8>,
    to_jpeg: bool,
) -> PyResult<Bound<'py, PyBytes>> {
    let spec = spec(resize_shorter, center_crop, jpeg_quality, to_jpeg)?;
    let out = py
        .detach(|| transform::apply(&data, &spec))
        .map_err(|e| invalid(transform::rejection(&e)))?;
    Ok(PyBytes::new(py, &out))
}
