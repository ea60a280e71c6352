//! Split files: read and written by the core crate, off the GIL.

use crate::block;
use crate::errors::{invalid, split_err};
use crs4_cassandra_core::SplitFile;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::PyBytes;
use std::path::PathBuf;

/// A split file as Python sees it: (header JSON, [(name, uuid bytes)]).
type SplitContents = (String, Vec<(String, Py<PyBytes>)>);

/// Reads a split file.
#[pyfunction]
pub fn read_split_file(py: Python<'_>, path: PathBuf) -> PyResult<SplitContents> {
    let file = block::run_blocking(py, move || SplitFile::load(&path), split_err)?;
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
pub fn write_split_file(
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
    block::run_blocking(py, move || file.save(&path), split_err)
}
