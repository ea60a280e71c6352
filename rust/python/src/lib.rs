//! `crs4_cassandra._native`: conversion only. Logic lives in the core and store crates.

mod errors;
mod memory;

// Batch buffers are allocated on runtime threads and freed on Python's thread
// (when the last tensor goes): glibc's per-thread arenas fragment under that
// pattern, and the process's memory creeps up over an epoch. mimalloc returns
// cross-thread frees to their owner and keeps the footprint flat.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
mod tensor;

use crs4_cassandra_core::{EpochPlan, LabelType, PlanSpec, PlannedBatch, SplitFile};
use crs4_cassandra_store::cassandra::{CassandraOptions, CassandraStore, OptionValue};
use crs4_cassandra_store::engine::Next;
use crs4_cassandra_store::local::LocalStore;
use crs4_cassandra_store::runtime::runtime;
use crs4_cassandra_store::{
    Batch, BatchStream, DecodeOptions, EngineOptions, FetchEngine, LabelValue, Labels, MetadataRow,
    SampleRow, SampleStore, TableSpec,
};
use dlpark::ffi::DLDataType;
use errors::{invalid, plan_err, split_err, store_err};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyDict};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tensor::ArenaTensor;
use uuid::Uuid;

/// How often a blocked call wakes to check for Ctrl-C.
const SIGNAL_POLL: Duration = Duration::from_millis(100);

fn label_type(s: &str) -> PyResult<LabelType> {
    LabelType::parse(s).ok_or_else(|| {
        invalid(format!(
            "label_type must be \"int\", \"blob\" or \"none\", got {s:?}"
        ))
    })
}

fn uuids_from_bytes(bytes: &[u8]) -> PyResult<Vec<Uuid>> {
    if !bytes.len().is_multiple_of(16) {
        return Err(invalid(format!(
            "uuid bytes length {} is not a multiple of 16",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(16)
        .map(|c| Uuid::from_bytes(c.try_into().expect("16 bytes")))
        .collect())
}

/// Runs a store future on the runtime with the GIL released.
fn block<T: Send>(
    py: Python<'_>,
    fut: impl std::future::Future<Output = crs4_cassandra_store::Result<T>> + Send,
) -> PyResult<T> {
    py.detach(|| runtime().block_on(fut)).map_err(store_err)
}

#[pyclass(module = "crs4_cassandra._native", frozen)]
struct Store {
    inner: Arc<dyn SampleStore>,
    /// Connection options, kept so the store can be reopened in spawned workers.
    options: Option<Py<PyDict>>,
}

/// Python values of connection options, interpreted by the store crate.
fn cassandra_options(url: &str, options: Option<&Bound<'_, PyDict>>) -> PyResult<CassandraOptions> {
    let mut o = CassandraOptions::from_url(url).map_err(store_err)?;
    let mut values = Vec::new();
    if let Some(options) = options {
        for (k, v) in options.iter() {
            let key: String = k.extract()?;
            let value = if v.is_none() {
                continue;
            } else if let Ok(b) = v.cast::<pyo3::types::PyBool>() {
                OptionValue::Bool(b.is_true())
            } else if let Ok(x) = v.extract::<f64>() {
                OptionValue::Number(x)
            } else {
                OptionValue::Text(v.str()?.to_string())
            };
            values.push((key, value));
        }
    }
    o.apply(values).map_err(store_err)?;
    Ok(o)
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
        let spec = table_spec(table, label_type, id_col, label_col, data_col)?;
        block(py, self.inner.open_table(&spec)).map(drop)
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
        let spec = TableSpec::new(table, self::label_type(label_type)?);
        block(
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
            let label = match label {
                None => LabelValue::None,
                Some(l) => {
                    if let Ok(b) = l.cast::<PyBytes>() {
                        LabelValue::Blob(b.as_bytes().to_vec())
                    } else {
                        LabelValue::Int(l.extract::<i32>().map_err(|_| {
                            invalid(format!("sample {id}: label must be an int (32-bit), bytes or None, got {l}"))
                        })?)
                    }
                }
            };
            rows.push(SampleRow {
                id,
                label,
                data: bytes.to_vec(),
            });
        }
        block(py, self.inner.put_samples(table, rows))
    }

    /// Writes metadata rows: (uuid bytes, label, label_name, path, split).
    #[allow(clippy::type_complexity)]
    fn put_metadata(
        &self,
        py: Python<'_>,
        table: &str,
        rows: Vec<(
            PyBackedBytes,
            Option<i32>,
            Option<String>,
            Option<String>,
            Option<String>,
        )>,
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
        block(py, self.inner.put_metadata(table, rows))
    }

    #[allow(clippy::type_complexity)]
    fn scan_metadata<'py>(
        &self,
        py: Python<'py>,
        table: &str,
    ) -> PyResult<
        Vec<(
            Bound<'py, PyBytes>,
            Option<i32>,
            Option<String>,
            Option<String>,
            Option<String>,
        )>,
    > {
        let rows = block(py, self.inner.scan_metadata(table))?;
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

fn table_spec(
    table: &str,
    label_type: &str,
    id_col: &str,
    label_col: &str,
    data_col: &str,
) -> PyResult<TableSpec> {
    Ok(TableSpec {
        table: table.into(),
        id_col: id_col.into(),
        label_col: label_col.into(),
        data_col: data_col.into(),
        label_type: self::label_type(label_type)?,
    })
}

/// Opens a store by URL: `local:PATH`, or `cassandra://host1,host2:9042/keyspace`
/// with connection options (`username`, `password`, `use_ssl`, ...).
#[pyfunction]
#[pyo3(signature = (url, create=false, options=None))]
fn open_store(
    py: Python<'_>,
    url: &str,
    create: bool,
    options: Option<Bound<'_, PyDict>>,
) -> PyResult<Store> {
    if let Some(path) = url.strip_prefix("local:") {
        if options.as_ref().is_some_and(|o| !o.is_empty()) {
            return Err(invalid(format!(
                "the local store {url:?} takes no connection options"
            )));
        }
        let path = PathBuf::from(path);
        let store = py
            .detach(|| LocalStore::open(&path, create))
            .map_err(store_err)?;
        return Ok(Store {
            inner: Arc::new(store),
            options: None,
        });
    }
    if url.starts_with("cassandra://") || url.starts_with("scylla://") {
        let opts = cassandra_options(url, options.as_ref())?;
        if opts.use_ssl && !opts.ssl_verify {
            // Loud on purpose: an unverified TLS peer can be anyone.
            let category = py
                .import("crs4_cassandra.errors")?
                .getattr("InsecureTLSWarning")?;
            let message = format!(
                "ssl_verify=False: the certificate of the Cassandra server at {} is NOT verified; \
                 anyone on the network path can impersonate it. Pass ssl_certificate= instead.",
                opts.hosts.join(",")
            );
            PyErr::warn(
                py,
                &category,
                &std::ffi::CString::new(message).expect("no NUL"),
                1,
            )?;
        }
        let store = CassandraStore::new(opts).map_err(store_err)?;
        return Ok(Store {
            inner: Arc::new(store),
            options: options.map(|o| o.unbind()),
        });
    }
    Err(invalid(format!(
        "unsupported store URL {url:?}: expected \"local:PATH\" or \"cassandra://host1,host2:9042/keyspace\""
    )))
}

/// The parts of a plan that fix its shape (no shuffle needed to count batches).
fn shape_spec(
    n: usize,
    batch_size: usize,
    world_size: usize,
    drop_last: bool,
    start: usize,
) -> PlanSpec {
    PlanSpec {
        n,
        batch_size,
        world_size,
        drop_last,
        shuffle: false,
        seed: 0,
        epoch: 0,
        start,
    }
}

/// Batches a rank serves in an epoch.
#[pyfunction]
#[pyo3(signature = (n, batch_size, world_size, drop_last, start=0))]
fn batches_per_rank(
    n: usize,
    batch_size: usize,
    world_size: usize,
    drop_last: bool,
    start: usize,
) -> PyResult<usize> {
    shape_spec(n, batch_size, world_size, drop_last, start)
        .batches_per_rank()
        .map_err(plan_err)
}

/// Samples of the global order consumed once every rank has taken `batches` batches.
#[pyfunction]
#[pyo3(signature = (n, batch_size, world_size, drop_last, start, batches))]
fn consumed_after(
    n: usize,
    batch_size: usize,
    world_size: usize,
    drop_last: bool,
    start: usize,
    batches: usize,
) -> PyResult<usize> {
    shape_spec(n, batch_size, world_size, drop_last, start)
        .resume_after(batches)
        .map(|r| r.consumed_samples)
        .map_err(plan_err)
}

fn decode_options(
    decode: Option<&str>,
    size: Option<(u32, u32)>,
    on_error: &str,
) -> PyResult<Option<DecodeOptions>> {
    let skip_errors = match on_error {
        "raise" => false,
        "skip" => true,
        other => {
            return Err(invalid(format!(
                "on_error must be \"raise\" or \"skip\", got {other:?}"
            )))
        }
    };
    match decode {
        None if size.is_some() => Err(invalid("size needs decode=\"rgb\"")),
        None => Ok(None),
        Some("rgb") => {
            if let Some((h, w)) = size {
                if h == 0 || w == 0 {
                    return Err(invalid(format!("size must be positive, got ({h}, {w})")));
                }
            }
            Ok(Some(DecodeOptions { size, skip_errors }))
        }
        Some(other) => Err(invalid(format!(
            "decode must be \"rgb\" or None, got {other:?}"
        ))),
    }
}

/// One reader's share of an epoch plan: a rank's, or a DataLoader worker's of a rank.
#[derive(Clone)]
struct Share {
    plan: PlanSpec,
    rank: usize,
    num_workers: usize,
    worker_id: usize,
}

impl Share {
    fn batches(&self) -> PyResult<Vec<PlannedBatch>> {
        EpochPlan::new(self.plan.clone())
            .and_then(|plan| plan.reader_batches(self.rank, self.num_workers, self.worker_id))
            .map_err(plan_err)
    }
}

/// Iterates the batches of one reader (a rank, or a DataLoader worker of a rank).
#[pyclass(module = "crs4_cassandra._native")]
struct Reader {
    stream: Option<Open>,
    label_type: LabelType,
    window: usize,
    share: Share,
}

/// A reader's stream, with the hold on freed memory it keeps while open
/// (released after the stream, whose reads free the most).
struct Open {
    stream: BatchStream,
    _hold: memory::Hold,
}

impl std::ops::Deref for Open {
    type Target = BatchStream;
    fn deref(&self) -> &BatchStream {
        &self.stream
    }
}

impl std::ops::DerefMut for Open {
    fn deref_mut(&mut self) -> &mut BatchStream {
        &mut self.stream
    }
}

#[pymethods]
impl Reader {
    #[new]
    #[pyo3(signature = (
        store, table, uuids, batch_size, *, label_type="int", id_col="id", label_col="label", data_col="data",
        world_size=1, rank=0, num_workers=1, worker_id=0, shuffle=true, seed=0, epoch=0, drop_last=false,
        start=0, ordered=true, window=None, decode=None, size=None, on_error="raise",
        memory_budget=None, skip=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        store: &Store,
        table: &str,
        uuids: PyBackedBytes,
        batch_size: usize,
        label_type: &str,
        id_col: &str,
        label_col: &str,
        data_col: &str,
        world_size: usize,
        rank: usize,
        num_workers: usize,
        worker_id: usize,
        shuffle: bool,
        seed: u64,
        epoch: u64,
        drop_last: bool,
        start: usize,
        ordered: bool,
        window: Option<usize>,
        decode: Option<&str>,
        size: Option<(u32, u32)>,
        on_error: &str,
        memory_budget: Option<usize>,
        skip: Option<Vec<usize>>,
    ) -> PyResult<Self> {
        let spec = table_spec(table, label_type, id_col, label_col, data_col)?;
        let decode = decode_options(decode, size, on_error)?;
        let ids: Arc<[Uuid]> = uuids_from_bytes(&uuids)?.into();
        let share = Share {
            plan: PlanSpec {
                n: ids.len(),
                batch_size,
                world_size,
                drop_last,
                shuffle,
                seed,
                epoch,
                start,
            },
            rank,
            num_workers,
            worker_id,
        };
        let mut batches = share.batches()?;
        // Positions consumed out of order before a resume (ordered=False).
        if let Some(skip) = skip.filter(|s| !s.is_empty()) {
            let skip: std::collections::HashSet<usize> = skip.into_iter().collect();
            batches.retain(|b| !skip.contains(&b.position));
        }
        let reader = block(py, store.inner.open_table(&spec))?;
        let mut options = EngineOptions {
            ordered,
            decode,
            skip_bad_samples: on_error == "skip",
            ..EngineOptions::default()
        };
        if let Some(w) = window {
            options.fixed_window(w);
        }
        // Each DataLoader worker prefetches on its own: they share the budget.
        let budget = memory_budget.unwrap_or(options.memory_budget);
        options.memory_budget = (budget / num_workers.max(1)).max(1);
        let stream = py.detach(|| {
            let _guard = runtime().enter();
            FetchEngine::start(reader, ids, batches, options)
        });
        Ok(Self {
            window: stream.window(),
            stream: Some(Open {
                stream,
                _hold: memory::Hold::new(),
            }),
            label_type: spec.label_type,
            share,
        })
    }

    /// Reads `epoch` (from its beginning) after the epochs already planned,
    /// as soon as their last reads are issued, so that the window of reads
    /// stays full across the boundary.
    fn read_next(&mut self, epoch: u64) -> PyResult<()> {
        let mut share = self.share.clone();
        (share.plan.epoch, share.plan.start) = (epoch, 0);
        let batches = share.batches()?;
        if let Some(stream) = self.stream.as_mut() {
            stream.read_next(batches);
        }
        Ok(())
    }

    /// Whether the reader is reading a next epoch (see `read_next`) after this one.
    #[getter]
    fn has_next_epoch(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.has_next_epoch())
    }

    /// Once this epoch is fully delivered, moves on to the next one given to
    /// `read_next`, whose reads are already under way; false (and the reader
    /// is closed) if there is none.
    fn next_epoch(&mut self) -> bool {
        let moved = self.stream.as_mut().is_some_and(|s| s.next_epoch());
        if !moved {
            self.stream = None;
        }
        moved
    }

    /// Batch reads the prefetcher allows in flight now (the last value once
    /// the epoch is over): the tuner's choice, or the fixed window.
    #[getter]
    fn window(&self) -> usize {
        self.stream.as_ref().map_or(self.window, |s| s.window())
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&mut self, py: Python<'_>) -> PyResult<Option<NativeBatch>> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(None);
        };
        loop {
            match py.detach(|| stream.next_blocking(SIGNAL_POLL)) {
                Ok(Next::Batch(batch)) => {
                    self.window = stream.window();
                    return Ok(Some(NativeBatch {
                        batch: Arc::new(batch),
                        label_type: self.label_type,
                    }));
                }
                Ok(Next::End) => {
                    if !stream.has_next_epoch() {
                        self.stream = None;
                    }
                    return Ok(None);
                }
                Ok(Next::Pending) => {
                    if let Err(e) = py.check_signals() {
                        self.stream = None; // stops the background reads
                        return Err(e);
                    }
                }
                Err(e) => {
                    self.stream = None;
                    return Err(store_err(e));
                }
            }
        }
    }

    /// Stops background reads now (also done when the reader is garbage collected).
    fn close(&mut self) {
        self.stream = None;
    }

    fn __len__(&self) -> usize {
        self.stream.as_ref().map_or(0, |s| s.remaining())
    }
}

/// A finished batch; each accessor is a zero-copy tensor over the batch's buffers.
#[pyclass(module = "crs4_cassandra._native", frozen)]
struct NativeBatch {
    batch: Arc<Batch>,
    label_type: LabelType,
}

fn tensor_of<T>(owner: &Arc<Batch>, v: &[T], dtype: DLDataType) -> ArenaTensor {
    ArenaTensor::new(
        owner.clone(),
        v.as_ptr() as *const u8,
        vec![v.len() as i64],
        dtype,
    )
}

#[pymethods]
impl NativeBatch {
    #[getter]
    fn position(&self) -> usize {
        self.batch.position
    }

    #[getter]
    fn label_type(&self) -> &'static str {
        self.label_type.as_str()
    }

    fn __len__(&self) -> usize {
        self.batch.len()
    }

    fn data(&self) -> ArenaTensor {
        tensor_of(&self.batch, &self.batch.data, DLDataType::U8)
    }

    fn offsets(&self) -> ArenaTensor {
        tensor_of(&self.batch, &self.batch.offsets, DLDataType::I64)
    }

    fn indices(&self) -> ArenaTensor {
        tensor_of(&self.batch, &self.batch.indices, DLDataType::I64)
    }

    fn is_pad(&self) -> ArenaTensor {
        tensor_of(&self.batch, &self.batch.is_pad, DLDataType::BOOL)
    }

    fn ids(&self) -> ArenaTensor {
        let b = &self.batch;
        ArenaTensor::new(
            b.clone(),
            b.ids.as_ptr(),
            vec![b.len() as i64, 16],
            DLDataType::U8,
        )
    }

    /// Int labels as a tensor; for blob labels, the flat label bytes.
    fn labels(&self) -> Option<ArenaTensor> {
        match &self.batch.labels {
            Labels::Int(v) => Some(tensor_of(&self.batch, v, DLDataType::I64)),
            Labels::Blob { data, .. } => Some(tensor_of(&self.batch, data, DLDataType::U8)),
            Labels::None => None,
        }
    }

    /// Decoded pixels (flat uint8, HWC images one after another), if the reader decodes.
    fn images(&self) -> Option<ArenaTensor> {
        let images = self.batch.images.as_ref()?;
        Some(tensor_of(&self.batch, &images.pixels, DLDataType::U8))
    }

    /// (height, width) of each decoded image.
    fn image_shapes(&self) -> Option<Vec<(u32, u32)>> {
        Some(self.batch.images.as_ref()?.shapes.clone())
    }

    /// Byte offsets (B+1) of each decoded image in `images()`.
    fn image_offsets(&self) -> Option<ArenaTensor> {
        let images = self.batch.images.as_ref()?;
        Some(tensor_of(&self.batch, &images.offsets, DLDataType::I64))
    }

    /// Positions in the uuid list of the samples dropped because they could not be decoded.
    fn skipped(&self) -> Vec<i64> {
        self.batch.skipped.clone()
    }

    /// Uuid bytes (16 each) of the skipped samples.
    fn skipped_ids<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.batch.skipped_ids)
    }

    /// One legacy ``dltensor`` capsule per sample (its bytes), each keeping the
    /// batch alive: what DALI's ``external_source`` takes without copying.
    fn sample_capsules(&self, py: Python<'_>) -> PyResult<Vec<Py<PyAny>>> {
        let b = &self.batch;
        ragged_capsules(py, b, &b.data, &b.offsets)
    }

    /// Like `sample_capsules`, for blob labels.
    fn label_capsules(&self, py: Python<'_>) -> PyResult<Option<Vec<Py<PyAny>>>> {
        match &self.batch.labels {
            Labels::Blob { data, offsets } => {
                ragged_capsules(py, &self.batch, data, offsets).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// Offsets into `labels()` for blob labels.
    fn label_offsets(&self) -> Option<ArenaTensor> {
        match &self.batch.labels {
            Labels::Blob { offsets, .. } => Some(tensor_of(&self.batch, offsets, DLDataType::I64)),
            _ => None,
        }
    }
}

fn ragged_capsules(
    py: Python<'_>,
    owner: &Arc<Batch>,
    data: &[u8],
    offsets: &[i64],
) -> PyResult<Vec<Py<PyAny>>> {
    offsets
        .windows(2)
        .map(|w| {
            let t = ArenaTensor::new(
                owner.clone(),
                data[w[0] as usize..].as_ptr(),
                vec![w[1] - w[0]],
                DLDataType::U8,
            );
            t.legacy_capsule(py)
        })
        .collect()
}

/// A split file as Python sees it: (header JSON, [(name, uuid bytes)]).
type SplitContents = (String, Vec<(String, Py<PyBytes>)>);

/// Reads a split file.
#[pyfunction]
fn read_split_file(py: Python<'_>, path: PathBuf) -> PyResult<SplitContents> {
    let file = py.detach(|| SplitFile::load(&path)).map_err(split_err)?;
    let header = serde_json::to_string(&file.header).expect("serializable header");
    let splits = file
        .splits
        .into_iter()
        .map(|(name, bytes)| (name, PyBytes::new(py, &bytes).unbind()))
        .collect();
    Ok((header, splits))
}

/// Writes a split file from a header JSON and [(name, uuid bytes)].
#[pyfunction]
fn write_split_file(
    py: Python<'_>,
    path: PathBuf,
    header: &str,
    splits: Vec<(String, PyBackedBytes)>,
) -> PyResult<()> {
    let header =
        serde_json::from_str(header).map_err(|e| invalid(format!("invalid split header: {e}")))?;
    let mut file = SplitFile::new(header);
    for (name, bytes) in splits {
        file.add_split(&name, bytes.to_vec()).map_err(split_err)?;
    }
    py.detach(|| file.save(Path::new(&path))).map_err(split_err)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    memory::init();
    m.add_function(wrap_pyfunction!(open_store, m)?)?;
    m.add_function(wrap_pyfunction!(batches_per_rank, m)?)?;
    m.add_function(wrap_pyfunction!(consumed_after, m)?)?;
    m.add_function(wrap_pyfunction!(read_split_file, m)?)?;
    m.add_function(wrap_pyfunction!(write_split_file, m)?)?;
    m.add_class::<Store>()?;
    m.add_class::<Reader>()?;
    m.add_class::<NativeBatch>()?;
    m.add_class::<ArenaTensor>()?;
    Ok(())
}
