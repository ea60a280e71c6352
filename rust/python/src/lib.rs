//! `crs4_cassandra._native`: conversion only. Logic lives in the core and
//! store crates; each module here converts one area's arguments and results:
//! `store` (opening, checking and writing stores), `reader` (reader
//! configuration, resume state, iteration), `batch` (batches as DLPack
//! tensors), `array` (chunked N-d arrays), `split` (split files), `writer` (ingest: rows
//! written, ids, transforms), `errors` (Rust errors to the Python
//! exception tree), `block` (blocking calls without the GIL, interruptible).

mod array;
mod batch;
mod block;
mod errors;
mod memory;
mod reader;
mod split;
mod store;
mod tensor;
mod writer;

// Batch buffers are allocated on runtime threads and freed on Python's thread
// (when the last tensor goes): glibc's per-thread arenas fragment under that
// pattern, and the process's memory creeps up over an epoch. mimalloc returns
// cross-thread frees to their owner and keeps the footprint flat.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use pyo3::prelude::*;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::init(m.py())?;
    memory::init();
    m.add_function(wrap_pyfunction!(store::open_store, m)?)?;
    m.add_function(wrap_pyfunction!(reader::guess_next_epoch, m)?)?;
    m.add_function(wrap_pyfunction!(reader::merge_stats, m)?)?;
    m.add_function(wrap_pyfunction!(split::read_split_file, m)?)?;
    m.add_function(wrap_pyfunction!(split::write_split_file, m)?)?;
    m.add_function(wrap_pyfunction!(array::array_create, m)?)?;
    m.add_function(wrap_pyfunction!(array::array_open, m)?)?;
    m.add_function(wrap_pyfunction!(array::array_delete, m)?)?;
    m.add_function(wrap_pyfunction!(array::array_list, m)?)?;
    m.add_function(wrap_pyfunction!(writer::sample_uuid, m)?)?;
    m.add_function(wrap_pyfunction!(writer::check_image, m)?)?;
    m.add_function(wrap_pyfunction!(writer::transform_image, m)?)?;
    m.add_class::<writer::Writer>()?;
    m.add_class::<store::Store>()?;
    m.add_class::<array::NativeArray>()?;
    m.add_class::<array::PatchSource>()?;
    m.add_class::<reader::ReaderConfig>()?;
    m.add_class::<reader::Progress>()?;
    m.add_class::<reader::Reader>()?;
    m.add_class::<reader::ProcessMark>()?;
    m.add_class::<batch::NativeBatch>()?;
    m.add_class::<tensor::ArenaTensor>()?;
    Ok(())
}
