//! Zero-copy export of batch buffers through DLPack.

use crs4_cassandra_store::Batch;
use dlpark::ffi::{DLDataType, DLDevice, DLManagedTensor, DLManagedTensorVersioned};
use dlpark::metadata::Fixed;
use dlpark::python::{export_dlpack, DlpackExporter, ExportRequest};
use dlpark::{DlpackFlags, Managed, ManagedTensorBase};
use pyo3::exceptions::PyBufferError;
use pyo3::prelude::*;
use std::ffi::c_void;
use std::sync::Arc;

/// One buffer of a batch (data, offsets, labels...) seen as a tensor. Each
/// export holds a reference to the whole batch, so the arena stays alive (and
/// is recycled afterwards) until the last consumer lets go.
#[pyclass(module = "crs4_cassandra._native", frozen)]
pub struct ArenaTensor {
    owner: Arc<Batch>,
    ptr: usize,
    shape: Vec<i64>,
    dtype: DLDataType,
}

impl ArenaTensor {
    pub fn new(owner: Arc<Batch>, ptr: *const u8, shape: Vec<i64>, dtype: DLDataType) -> Self {
        Self {
            owner,
            ptr: ptr as usize,
            shape,
            dtype,
        }
    }

    fn managed<M: ManagedTensorBase>(&self) -> PyResult<Managed<M>> {
        let ctx = Box::new(self.owner.clone());
        let fail = |e: dlpark::metadata::Error| PyBufferError::new_err(e.to_string());
        let mut init = match self.shape.as_slice() {
            [n] => Fixed::new([*n], [1i64])
                .prepare_as::<M>()
                .map_err(fail)?
                .initialize(ctx),
            [rows, cols] => {
                let prepared = Fixed::new([*rows, *cols], [*cols, 1i64])
                    .prepare_as::<M>()
                    .map_err(fail)?;
                return Ok(finish(prepared.initialize(ctx), self.ptr, self.dtype));
            }
            other => {
                return Err(PyBufferError::new_err(format!(
                    "unsupported rank {}",
                    other.len()
                )))
            }
        };
        init.set_data(self.ptr as *mut c_void);
        init.set_dtype(self.dtype);
        init.set_device(DLDevice::CPU);
        // Writable (no READ_ONLY flag): DALI's pipeline mode refuses read-only tensors.
        Ok(unsafe { init.finish() })
    }
}

fn finish<M: ManagedTensorBase, S>(
    mut init: dlpark::allocation::Initialized<M, S>,
    ptr: usize,
    dtype: DLDataType,
) -> Managed<M> {
    init.set_data(ptr as *mut c_void);
    init.set_dtype(dtype);
    init.set_device(DLDevice::CPU);
    unsafe { init.finish() }
}

impl DlpackExporter for ArenaTensor {
    fn device(&self) -> DLDevice {
        DLDevice::CPU
    }

    fn flags(&self) -> DlpackFlags {
        DlpackFlags::empty()
    }

    fn prepare_export(&self, _py: Python<'_>, _request: &ExportRequest<'_>) -> PyResult<()> {
        Ok(())
    }

    fn export_legacy(&self, _py: Python<'_>) -> PyResult<Managed<DLManagedTensor>> {
        self.managed()
    }

    fn export_versioned(&self, _py: Python<'_>) -> PyResult<Managed<DLManagedTensorVersioned>> {
        self.managed()
    }
}

#[pymethods]
impl ArenaTensor {
    #[pyo3(signature = (*, stream=None, max_version=None, dl_device=None, copy=None))]
    fn __dlpack__(
        &self,
        py: Python<'_>,
        stream: Option<&Bound<'_, PyAny>>,
        max_version: Option<(u32, u32)>,
        dl_device: Option<(u32, i32)>,
        copy: Option<bool>,
    ) -> PyResult<Py<PyAny>> {
        let request = ExportRequest::parse(stream, max_version, dl_device, copy)?;
        export_dlpack(self, py, request)
    }

    fn __dlpack_device__(&self) -> (i32, i32) {
        (1, 0) // kDLCPU, device 0
    }

    /// A legacy ``dltensor`` capsule, the only kind DALI's pipeline mode accepts.
    pub fn legacy_capsule(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let managed: Managed<DLManagedTensor> = self.managed()?;
        Ok(managed.into_pyobject(py)?.unbind())
    }

    #[getter]
    fn shape(&self) -> Vec<i64> {
        self.shape.clone()
    }
}
