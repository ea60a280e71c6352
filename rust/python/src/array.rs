//! `NativeArray`: an array of a store (see the store crate's `array` module),
//! its selections read into and written from numpy buffers. Python turns
//! numpy indexing into one (start, step, count) per dimension.

use crate::block;
use crate::errors::{invalid, store_err};
use crate::store::Store;
use crs4_cassandra_store::array::patch::{slot_ids, PatchMode, PatchSpec, PatchTable};
use crs4_cassandra_store::array::{self, ArrayMeta, Compression, DimSel};
use crs4_cassandra_store::SampleStore;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::sync::Arc;

#[pyclass(module = "crs4_cassandra._native", frozen)]
pub struct NativeArray {
    store: Arc<dyn SampleStore>,
    meta: Arc<ArrayMeta>,
}

fn selection(sel: Vec<(i64, i64, u64)>) -> Vec<DimSel> {
    sel.into_iter()
        .map(|(start, step, count)| DimSel { start, step, count })
        .collect()
}

/// Checks the length of a caller's buffer (the abi3 build for Python 3.10
/// has no buffer protocol: Python passes numpy's data address and size, and
/// keeps the array alive and C-contiguous for the call).
fn check_buffer(len: usize, want: usize) -> PyResult<()> {
    if len != want {
        return Err(invalid(format!(
            "the selection has {want} bytes, the buffer {len}"
        )));
    }
    Ok(())
}

impl NativeArray {
    /// The selection, if a buffer of `len` bytes fits it and is not empty.
    fn checked(&self, sel: Vec<(i64, i64, u64)>, len: usize) -> PyResult<Option<Vec<DimSel>>> {
        let sel = selection(sel);
        check_buffer(len, self.meta.selection_len(&sel))?;
        Ok((len > 0).then_some(sel))
    }
}

#[pymethods]
impl NativeArray {
    #[getter]
    fn name(&self) -> &str {
        &self.meta.name
    }

    #[getter]
    fn shape(&self) -> Vec<u64> {
        self.meta.shape.clone()
    }

    #[getter]
    fn chunks(&self) -> Vec<u64> {
        self.meta.chunks.clone()
    }

    #[getter]
    fn dtype(&self) -> &str {
        &self.meta.dtype
    }

    #[getter]
    fn compression(&self) -> Option<&'static str> {
        self.meta.compression.name()
    }

    #[getter]
    fn fill(&self) -> Vec<u8> {
        self.meta.fill.clone()
    }

    #[getter]
    fn num_chunks(&self) -> u64 {
        self.meta.num_chunks()
    }

    #[getter]
    fn store_url(&self) -> String {
        self.store.url()
    }

    /// Reads the selection into the `len` writable bytes at address `ptr`
    /// (a C-contiguous numpy array the caller holds for the call).
    fn read(
        &self,
        py: Python<'_>,
        sel: Vec<(i64, i64, u64)>,
        ptr: usize,
        len: usize,
    ) -> PyResult<()> {
        let Some(sel) = self.checked(sel, len)? else {
            return Ok(());
        };
        let (chunks, meta) = (self.store.chunk_source().map_err(store_err)?, &self.meta);
        block::here(py, async move {
            // SAFETY: the caller keeps the array alive and unmoved for this
            // call, and `block::here` drops this future before returning.
            let out = unsafe { std::slice::from_raw_parts_mut(ptr as *mut u8, len) };
            array::read(chunks.as_ref(), meta, &sel, out).await
        })
    }

    /// Writes the `len` bytes at address `ptr` (a C-contiguous numpy array
    /// the caller holds for the call) into the selection.
    fn write(
        &self,
        py: Python<'_>,
        sel: Vec<(i64, i64, u64)>,
        ptr: usize,
        len: usize,
    ) -> PyResult<()> {
        let Some(sel) = self.checked(sel, len)? else {
            return Ok(());
        };
        let (store, meta) = (&self.store, &self.meta);
        block::here(py, async move {
            // SAFETY: as in `read`; only read from.
            let data = unsafe { std::slice::from_raw_parts(ptr as *const u8, len) };
            array::write(store.as_ref(), meta, &sel, data).await
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "NativeArray({:?}, shape={:?}, dtype={:?}, chunks={:?})",
            self.meta.name, self.meta.shape, self.meta.dtype, self.meta.chunks
        )
    }
}

#[pyfunction]
#[pyo3(signature = (store, name, shape, chunks, dtype, itemsize, fill, *, compression=None, level=None, overwrite=false))]
#[allow(clippy::too_many_arguments)]
pub fn array_create(
    py: Python<'_>,
    store: &Store,
    name: &str,
    shape: Vec<u64>,
    chunks: Vec<u64>,
    dtype: &str,
    itemsize: usize,
    fill: Vec<u8>,
    compression: Option<&str>,
    level: Option<i32>,
    overwrite: bool,
) -> PyResult<NativeArray> {
    let compression = Compression::parse(compression, level).map_err(invalid)?;
    let meta = ArrayMeta::new(name, shape, chunks, dtype, itemsize, compression, fill)
        .map_err(store_err)?;
    let inner = store.inner.clone();
    let meta = block::store(py, async move {
        array::create(inner.as_ref(), &meta, overwrite).await?;
        Ok(meta)
    })?;
    Ok(NativeArray {
        store: store.inner.clone(),
        meta: Arc::new(meta),
    })
}

#[pyfunction]
pub fn array_open(py: Python<'_>, store: &Store, name: &str) -> PyResult<NativeArray> {
    let (inner, name) = (store.inner.clone(), name.to_string());
    let meta = block::store(py, async move { array::open(inner.as_ref(), &name).await })?;
    Ok(NativeArray {
        store: store.inner.clone(),
        meta: Arc::new(meta),
    })
}

#[pyfunction]
pub fn array_delete(py: Python<'_>, store: &Store, name: &str) -> PyResult<()> {
    let (inner, name) = (store.inner.clone(), name.to_string());
    block::store(
        py,
        async move { array::delete(inner.as_ref(), &name).await },
    )
}

#[pyfunction]
pub fn array_list(py: Python<'_>, store: &Store) -> PyResult<Vec<String>> {
    let inner = store.inner.clone();
    block::store(py, async move { array::list(inner.as_ref()).await })
}

/// The patches of arrays a patch dataset reads: opened and checked once
/// (arrays exist, patches fit, shapes and dtypes agree), with what the
/// dataset needs to configure its reader (`spec_json`, `table`, `uuids`).
#[pyclass(module = "crs4_cassandra._native", frozen)]
pub struct PatchSource {
    table: Arc<PatchTable>,
    spec: PatchSpec,
}

#[pymethods]
impl PatchSource {
    #[new]
    #[pyo3(signature = (store, arrays, patch_shape, *, labels=None, per_epoch=None, grid=false, stride=None, seed=0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        store: &Store,
        arrays: Vec<String>,
        patch_shape: Vec<u64>,
        labels: Option<Vec<String>>,
        per_epoch: Option<u64>,
        grid: bool,
        stride: Option<Vec<u64>>,
        seed: u64,
    ) -> PyResult<Self> {
        let mode = match (per_epoch, grid) {
            (Some(n), false) => {
                if stride.is_some() {
                    return Err(invalid("stride applies to grid=True patches only"));
                }
                PatchMode::Random { per_epoch: n }
            }
            (None, true) => PatchMode::Grid { stride },
            _ => {
                return Err(invalid(
                    "give either per_epoch=N (random patches) or grid=True",
                ))
            }
        };
        let spec = PatchSpec {
            arrays,
            labels,
            patch_shape,
            mode,
        };
        let (inner, s) = (store.inner.clone(), spec.clone());
        let table = block::store(py, async move { PatchTable::open(inner, &s, seed).await })?;
        Ok(Self {
            table: Arc::new(table),
            spec,
        })
    }

    #[getter]
    fn spec_json(&self) -> String {
        serde_json::to_string(&self.spec).expect("serializable")
    }

    #[getter]
    fn table(&self) -> String {
        self.spec.table_name()
    }

    #[getter]
    fn label_type(&self) -> &'static str {
        self.spec.label_type().as_str()
    }

    /// Patches per epoch.
    fn __len__(&self) -> usize {
        self.table.len() as usize
    }

    /// The slot ids a reader's plan deals (16 bytes each).
    fn uuids<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let bytes: Vec<u8> = slot_ids(self.table.len())
            .iter()
            .flat_map(|u| *u.as_bytes())
            .collect();
        PyBytes::new(py, &bytes)
    }

    #[getter]
    fn patch_shape(&self) -> Vec<u64> {
        self.table.patch_shape()
    }

    #[getter]
    fn dtype(&self) -> &str {
        self.table.dtype()
    }

    #[getter]
    fn label_shape(&self) -> Option<Vec<u64>> {
        self.table.label_shape()
    }

    #[getter]
    fn label_dtype(&self) -> Option<&str> {
        self.table.label_dtype()
    }

    /// (array name, origin) of slot `slot` in `epoch`.
    fn locate(&self, epoch: u64, slot: u64) -> PyResult<(String, Vec<u64>)> {
        let (a, origin) = self.table.locate(epoch, slot).map_err(store_err)?;
        Ok((self.spec.arrays[a].clone(), origin))
    }
}
