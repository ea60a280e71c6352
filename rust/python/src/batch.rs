//! `NativeBatch`: a finished batch, exported as zero-copy DLPack tensors over
//! its buffers (and, for DALI, one legacy capsule per sample).

use crate::tensor::ArenaTensor;
use crs4_cassandra_core::LabelType;
use crs4_cassandra_store::{Batch, Labels};
use dlpark::ffi::DLDataType;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::sync::Arc;

/// A finished batch; each accessor is a zero-copy tensor over the batch's buffers.
#[pyclass(module = "crs4_cassandra._native", frozen)]
pub struct NativeBatch {
    batch: Arc<Batch>,
    label_type: LabelType,
}

impl NativeBatch {
    pub fn new(batch: Batch, label_type: LabelType) -> Self {
        Self {
            batch: Arc::new(batch),
            label_type,
        }
    }
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
