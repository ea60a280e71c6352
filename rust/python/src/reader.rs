//! `ReaderConfig`, `Progress` and `Reader`: Python arguments converted to the
//! store crate's reader configuration (validated there), resume state as JSON
//! through the core crate, and the running reader's iteration.

use crate::batch::NativeBatch;
use crate::block::{self, SIGNAL_POLL};
use crate::errors::{invalid, plan_err, state_err, store_err};
use crate::memory;
use crate::store::Store;
use crs4_cassandra_core::{Consumed, LoaderState, Owner, Progress as CoreProgress, RunIdentity};
use crs4_cassandra_store::array::patch::PatchSpec;
use crs4_cassandra_store::engine::Next;
use crs4_cassandra_store::reader::{decode_mode, label_type};
use crs4_cassandra_store::stats::{EpochStats, ReaderStats};
use crs4_cassandra_store::{
    reader_ids, Layout, OnError, Reader as CoreReader, ReaderConfig as Config, Share, TableSpec,
};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyDict, PyTuple};
use std::sync::Arc;
use uuid::Uuid;

/// A non-negative Python int as a count, or an error naming the argument.
fn count(name: &str, value: i64, positive: bool) -> PyResult<usize> {
    match usize::try_from(value) {
        Ok(v) if v > 0 || !positive => Ok(v),
        _ => Err(invalid(format!(
            "{name} must be a {} int, got {value}",
            if positive { "positive" } else { "non-negative" }
        ))),
    }
}

/// What a reader reads and how (everything but its share and resume point).
#[pyclass(module = "crs4_cassandra._native", frozen)]
pub struct ReaderConfig {
    pub config: Arc<Config>,
    pub ids: Arc<[Uuid]>,
    run: RunIdentity,
}

#[pymethods]
impl ReaderConfig {
    #[new]
    #[pyo3(signature = (
        table, uuids, batch_size, *, label_type="int", id_col="id", label_col="label", data_col="data",
        shuffle=true, seed=0, drop_last=false, ordered=true, rank=None, world_size=None, window=None,
        memory_budget=None, decode=None, size=None, layout="NHWC", on_error="raise",
        allow_repeats=false, patches=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        table: &str,
        uuids: PyBackedBytes,
        batch_size: i64,
        label_type: &str,
        id_col: &str,
        label_col: &str,
        data_col: &str,
        shuffle: bool,
        seed: u64,
        drop_last: bool,
        ordered: bool,
        rank: Option<i64>,
        world_size: Option<i64>,
        window: Option<i64>,
        memory_budget: Option<i64>,
        decode: Option<&str>,
        size: Option<(i64, i64)>,
        layout: &str,
        on_error: &str,
        allow_repeats: bool,
        patches: Option<&str>,
    ) -> PyResult<Self> {
        let decode = decode_mode(decode).map_err(store_err)?;
        let patches = patches
            .map(|json| {
                serde_json::from_str::<PatchSpec>(json)
                    .map_err(|e| invalid(format!("bad patch spec: {e}")))
            })
            .transpose()?;
        let size = match size {
            Some((h, w)) => Some((
                u32::try_from(h).map_err(|_| {
                    invalid(format!("size must be (height, width) > 0, got ({h}, {w})"))
                })?,
                u32::try_from(w).map_err(|_| {
                    invalid(format!("size must be (height, width) > 0, got ({h}, {w})"))
                })?,
            )),
            None => None,
        };
        let config = Config {
            table: TableSpec {
                table: table.into(),
                id_col: id_col.into(),
                label_col: label_col.into(),
                data_col: data_col.into(),
                label_type: label_type_of(label_type)?,
            },
            batch_size: count("batch_size", batch_size, true)?,
            shuffle,
            seed,
            drop_last,
            ordered,
            window: window.map(|w| count("window", w, true)).transpose()?,
            memory_budget: memory_budget
                .map(|b| count("memory_budget", b, true))
                .transpose()?,
            decode,
            size,
            layout: Layout::parse(layout).map_err(store_err)?,
            allow_repeats,
            on_error: OnError::parse(on_error).map_err(store_err)?,
            ready: None,
            rank: rank.map(|r| count("rank", r, false)).transpose()?,
            world_size: world_size
                .map(|w| count("world_size", w, true))
                .transpose()?,
            patches,
        };
        config.validate().map_err(store_err)?;
        let run = config.run_identity(&uuids);
        Ok(Self {
            ids: reader_ids(&uuids, config.allow_repeats)
                .map_err(store_err)?
                .into(),
            run,
            config: Arc::new(config),
        })
    }

    /// The arguments this configuration was made from (for `replace` and pickling).
    fn kwargs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = &self.config;
        let t = &c.table;
        let d = PyDict::new(py);
        d.set_item("table", &t.table)?;
        let bytes: Vec<u8> = self.ids.iter().flat_map(|u| *u.as_bytes()).collect();
        d.set_item("uuids", PyBytes::new(py, &bytes))?;
        d.set_item("batch_size", c.batch_size)?;
        d.set_item("label_type", t.label_type.as_str())?;
        d.set_item("id_col", &t.id_col)?;
        d.set_item("label_col", &t.label_col)?;
        d.set_item("data_col", &t.data_col)?;
        d.set_item("shuffle", c.shuffle)?;
        d.set_item("seed", c.seed)?;
        d.set_item("drop_last", c.drop_last)?;
        d.set_item("ordered", c.ordered)?;
        d.set_item("rank", c.rank)?;
        d.set_item("world_size", c.world_size)?;
        d.set_item("window", c.window)?;
        d.set_item("memory_budget", c.memory_budget)?;
        d.set_item("decode", c.decode.then_some("rgb"))?;
        d.set_item("size", c.size)?;
        d.set_item("layout", c.layout.as_str())?;
        d.set_item("allow_repeats", c.allow_repeats)?;
        d.set_item("on_error", c.on_error.as_str())?;
        let patches = c
            .patches
            .as_ref()
            .map(|p| serde_json::to_string(p).expect("serializable"));
        d.set_item("patches", patches)?;
        Ok(d)
    }

    /// A copy with some arguments changed (validated like the original).
    #[pyo3(signature = (**changes))]
    fn replace(&self, py: Python<'_>, changes: Option<&Bound<'_, PyDict>>) -> PyResult<Py<Self>> {
        let kwargs = self.kwargs(py)?;
        if let Some(changes) = changes {
            kwargs.update(changes.as_mapping())?;
        }
        let made = py
            .get_type::<Self>()
            .call((), Some(&kwargs))?
            .cast_into::<Self>()?;
        Ok(made.unbind())
    }

    fn __getnewargs_ex__<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(Bound<'py, PyTuple>, Bound<'py, PyDict>)> {
        Ok((PyTuple::empty(py), self.kwargs(py)?))
    }

    #[getter]
    fn table(&self) -> &str {
        &self.config.table.table
    }
    #[getter]
    fn batch_size(&self) -> usize {
        self.config.batch_size
    }
    #[getter]
    fn shuffle(&self) -> bool {
        self.config.shuffle
    }
    #[getter]
    fn seed(&self) -> u64 {
        self.config.seed
    }
    #[getter]
    fn drop_last(&self) -> bool {
        self.config.drop_last
    }
    #[getter]
    fn ordered(&self) -> bool {
        self.config.ordered
    }
    #[getter]
    fn label_type(&self) -> &'static str {
        self.config.table.label_type.as_str()
    }
    /// (id_col, label_col, data_col).
    #[getter]
    fn columns(&self) -> (String, String, String) {
        let t = &self.config.table;
        (t.id_col.clone(), t.label_col.clone(), t.data_col.clone())
    }
    #[getter]
    fn window(&self) -> Option<usize> {
        self.config.window
    }
    #[getter]
    fn memory_budget(&self) -> Option<usize> {
        self.config.memory_budget
    }
    #[getter]
    fn decode(&self) -> Option<&'static str> {
        self.config.decode.then_some("rgb")
    }
    #[getter]
    fn size(&self) -> Option<(u32, u32)> {
        self.config.size
    }
    #[getter]
    fn allow_repeats(&self) -> bool {
        self.config.allow_repeats
    }
    #[getter]
    fn layout(&self) -> &'static str {
        self.config.layout.as_str()
    }
    #[getter]
    fn on_error(&self) -> &'static str {
        self.config.on_error.as_str()
    }
    #[getter]
    fn rank(&self) -> Option<usize> {
        self.config.rank
    }
    #[getter]
    fn world_size(&self) -> Option<usize> {
        self.config.world_size
    }
    #[getter]
    fn num_samples(&self) -> usize {
        self.ids.len()
    }
    #[getter]
    fn uuids_fingerprint(&self) -> &str {
        &self.run.uuids_fingerprint
    }

    /// Batches a rank of `world_size` still serves in the epoch of `progress`.
    fn batches_left(&self, world_size: usize, progress: &Progress) -> PyResult<usize> {
        let spec = self
            .config
            .plan_spec(self.ids.len(), world_size, progress.0.epoch);
        progress.0.batches_left(&spec).map_err(plan_err)
    }

    /// (real samples, batches holding at least one) of `rank` in a whole epoch.
    fn rank_counts(&self, rank: usize, world_size: usize) -> PyResult<(usize, usize)> {
        self.config
            .plan_spec(self.ids.len(), world_size, 0)
            .rank_counts(rank)
            .map_err(plan_err)
    }

    /// The state (JSON) of `rank` after `progress` and what was consumed
    /// since: `consumed_positions` if given, else the first
    /// `batches_consumed` batches not yet consumed, else `yielded`.
    /// `dealing_workers`: the DataLoader workers the batches are dealt to.
    #[pyo3(signature = (rank, world_size, progress, *, consumed_positions=None, batches_consumed=None, yielded=Vec::new(), dealing_workers=1))]
    #[allow(clippy::too_many_arguments)]
    fn state(
        &self,
        rank: usize,
        world_size: usize,
        progress: &Progress,
        consumed_positions: Option<Vec<i64>>,
        batches_consumed: Option<i64>,
        yielded: Vec<usize>,
        dealing_workers: usize,
    ) -> PyResult<String> {
        let spec = self
            .config
            .plan_spec(self.ids.len(), world_size, progress.0.epoch);
        let positions = consumed_positions
            .map(|p| {
                p.into_iter()
                    .map(|q| count("consumed position", q, false))
                    .collect::<PyResult<Vec<_>>>()
            })
            .transpose()?;
        let batches = batches_consumed
            .map(|n| count("batches_consumed", n, false))
            .transpose()?;
        let after = progress
            .0
            .after_consumed(
                &spec,
                Consumed::from_caller(positions, batches, yielded),
                dealing_workers,
            )
            .map_err(state_err)?;
        Ok(LoaderState::new(&self.run, rank, world_size, &after).to_json())
    }

    /// The progress to resume from a saved state (JSON) on `rank` of `world_size`.
    fn resume(&self, state: &str, rank: usize, world_size: usize) -> PyResult<Progress> {
        LoaderState::from_json(state)
            .and_then(|s| s.resume(&self.run, rank, world_size))
            .map(Progress)
            .map_err(state_err)
    }

    fn __repr__(&self) -> String {
        format!(
            "ReaderConfig(table={:?}, samples={}, batch_size={})",
            self.config.table.table,
            self.ids.len(),
            self.config.batch_size
        )
    }
}

fn label_type_of(s: &str) -> PyResult<crs4_cassandra_core::LabelType> {
    label_type(s).map_err(store_err)
}

/// Where an epoch stands: the epoch, the consumed prefix of its global order,
/// and this rank's batch positions consumed beyond it.
#[pyclass(module = "crs4_cassandra._native", frozen, eq)]
#[derive(Clone, PartialEq)]
pub struct Progress(pub CoreProgress);

#[pymethods]
impl Progress {
    #[new]
    #[pyo3(signature = (epoch=0, consumed_samples=0, consumed_positions=Vec::new()))]
    fn new(epoch: u64, consumed_samples: usize, consumed_positions: Vec<usize>) -> Self {
        Self(CoreProgress {
            epoch,
            consumed_samples,
            consumed_positions,
        })
    }

    #[getter]
    fn epoch(&self) -> u64 {
        self.0.epoch
    }
    #[getter]
    fn consumed_samples(&self) -> usize {
        self.0.consumed_samples
    }
    #[getter]
    fn consumed_positions(&self) -> Vec<usize> {
        self.0.consumed_positions.clone()
    }
    /// Whether this is the start of its epoch.
    #[getter]
    fn fresh(&self) -> bool {
        self.0.consumed_samples == 0 && self.0.consumed_positions.is_empty()
    }

    fn __getnewargs__(&self) -> (u64, usize, Vec<usize>) {
        (
            self.0.epoch,
            self.0.consumed_samples,
            self.0.consumed_positions.clone(),
        )
    }

    fn __repr__(&self) -> String {
        format!(
            "Progress(epoch={}, consumed_samples={}, consumed_positions={:?})",
            self.0.epoch, self.0.consumed_samples, self.0.consumed_positions
        )
    }
}

/// The epoch a reader will most likely read after `current`, `previous`
/// being the one before it (see the core crate's `guess_next_epoch`).
#[pyfunction]
#[pyo3(signature = (previous, current))]
pub fn guess_next_epoch(previous: Option<u64>, current: u64) -> Option<u64> {
    crs4_cassandra_core::guess_next_epoch(previous, current)
}

/// A running reader of one share (a rank, or a DataLoader worker of a rank).
#[pyclass(module = "crs4_cassandra._native")]
pub struct Reader {
    open: Option<Open>,
    config: Arc<Config>,
    window: usize,
    /// The figures when the reader closed.
    closed_stats: ReaderStats,
    /// The process that started it: in a forked child it reads nothing.
    owner: Owner,
}

/// A running reader, with the hold on freed memory it keeps while open
/// (released after the reader, whose reads free the most).
struct Open {
    reader: CoreReader,
    _hold: memory::Hold,
}

#[pymethods]
impl Reader {
    #[new]
    #[pyo3(signature = (store, config, *, rank=0, world_size=1, num_workers=1, worker_id=0, progress=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        store: &Store,
        config: &ReaderConfig,
        rank: usize,
        world_size: usize,
        num_workers: usize,
        worker_id: usize,
        progress: Option<&Progress>,
    ) -> PyResult<Self> {
        let share = Share::new(rank, world_size, num_workers, worker_id).map_err(store_err)?;
        let progress = progress.map(|p| p.0.clone()).unwrap_or_default();
        let (cfg, store) = (config.config.clone(), store.inner.clone());
        let table = block::store(py, async move { cfg.open_table(&store).await })?;
        let (cfg, ids) = (config.config.clone(), config.ids.clone());
        let reader = py
            .detach(|| CoreReader::start(table, cfg, ids, share, &progress))
            .map_err(store_err)?;
        Ok(Self {
            window: reader.window(),
            open: Some(Open {
                reader,
                _hold: memory::Hold::new(),
            }),
            config: config.config.clone(),
            closed_stats: ReaderStats::default(),
            owner: Owner::current(),
        })
    }

    /// Reads `epoch` (from its beginning) after the epochs already planned,
    /// as soon as their last reads are issued, so that the window of reads
    /// stays full across the boundary.
    fn read_next(&mut self, epoch: u64) -> PyResult<()> {
        match self.open.as_mut() {
            Some(open) => open.reader.read_next(epoch).map_err(store_err),
            None => Ok(()),
        }
    }

    /// After the current epoch, reads `epoch` and the epochs after it in
    /// steps of `epoch` minus the current one, as far ahead as the window
    /// reaches (several epochs when they are short); asking again for the
    /// epoch that comes next anyway does nothing.
    fn read_ahead(&mut self, epoch: u64) -> PyResult<()> {
        match self.open.as_mut() {
            Some(open) => open.reader.read_ahead(epoch).map_err(store_err),
            None => Ok(()),
        }
    }

    /// The epoch `next_epoch` would move on to, if any.
    #[getter]
    fn upcoming_epoch(&self) -> Option<u64> {
        self.open.as_ref().and_then(|o| o.reader.upcoming_epoch())
    }

    /// Whether the reader is reading a next epoch (see `read_next`) after this one.
    #[getter]
    fn has_next_epoch(&self) -> bool {
        self.open
            .as_ref()
            .is_some_and(|o| o.reader.has_next_epoch())
    }

    /// Whether this reader was started by another process (and inherited
    /// through fork): it reads nothing here.
    #[getter]
    fn inherited(&self) -> bool {
        self.owner.is_inherited()
    }

    /// Once this epoch is fully delivered, moves on to the next one given to
    /// `read_next`, whose reads are already under way; false (and the reader
    /// is closed) if there is none.
    fn next_epoch(&mut self) -> bool {
        let moved = self.open.as_mut().is_some_and(|o| o.reader.next_epoch());
        if !moved {
            self.shut();
        }
        moved
    }

    /// Batch reads the prefetcher allows in flight now (the last value once
    /// the epoch is over): the tuner's choice, or the fixed window.
    #[getter]
    fn window(&self) -> usize {
        self.open
            .as_ref()
            .map_or(self.window, |o| o.reader.window())
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&mut self, py: Python<'_>) -> PyResult<Option<NativeBatch>> {
        let Some(open) = self.open.as_mut() else {
            return Ok(None);
        };
        loop {
            match py.detach(|| open.reader.next_blocking(SIGNAL_POLL)) {
                Ok(Next::Batch(batch)) => {
                    self.window = open.reader.window();
                    return Ok(Some(NativeBatch::new(batch, self.config.table.label_type)));
                }
                Ok(Next::End) => {
                    if !open.reader.has_next_epoch() {
                        self.shut();
                    }
                    return Ok(None);
                }
                Ok(Next::Pending) => {
                    if let Err(e) = py.check_signals() {
                        self.shut(); // stops the background reads
                        return Err(e);
                    }
                }
                Err(e) => {
                    self.shut();
                    return Err(store_err(e));
                }
            }
        }
    }

    /// Stops background reads now (also done when the reader is garbage collected).
    fn close(&mut self) {
        self.shut();
    }

    /// The reader's figures as JSON: ``{"current": ..., "last": ...}``, the
    /// epoch under way (None between epochs) and the last one delivered
    /// (see ``crs4_cassandra.stats``).
    fn stats(&self) -> PyResult<String> {
        let stats = self
            .open
            .as_ref()
            .map_or_else(|| self.closed_stats.clone(), |o| o.reader.stats());
        serde_json::to_string(&stats).map_err(|e| invalid(e.to_string()))
    }

    fn __len__(&self) -> usize {
        self.open.as_ref().map_or(0, |o| o.reader.remaining())
    }
}

impl Reader {
    /// Closes the reader (stopping its background reads), keeping its figures.
    fn shut(&mut self) {
        if let Some(open) = self.open.take() {
            self.closed_stats = open.reader.stats();
        }
    }
}

/// The figures of several readers of one epoch (JSON, as `Reader.stats`
/// gives them: its "current" or "last") merged into one (JSON; None if none
/// given); see `EpochStats::merge`.
#[pyfunction]
pub fn merge_stats(parts: Vec<String>) -> PyResult<Option<String>> {
    let parts = parts
        .iter()
        .map(|p| serde_json::from_str::<EpochStats>(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("bad loader statistics: {e}")))?;
    EpochStats::merge(&parts)
        .map(|m| serde_json::to_string(&m).map_err(|e| invalid(e.to_string())))
        .transpose()
}

/// Made in one process; tells whether it is now in another (a forked child
/// that inherited it).
#[pyclass(module = "crs4_cassandra._native", frozen)]
pub struct ProcessMark(Owner);

#[pymethods]
impl ProcessMark {
    #[new]
    fn new() -> Self {
        Self(Owner::current())
    }

    #[getter]
    fn inherited(&self) -> bool {
        self.0.is_inherited()
    }
}
