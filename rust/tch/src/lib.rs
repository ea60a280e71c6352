//! crs4_cassandra batches as `tch::Tensor`s, for Rust training loops.
//!
//! The same sharded, prefetching reader as the Python dataset: an epoch plan
//! shared by every rank (each sample once per epoch, equal batch counts, order
//! fixed by seed and epoch), reads kept in flight in the background, and a
//! resumable state that is the Python `state_dict()`'s (the core crate's
//! `LoaderState`): a state saved on either side resumes on the other.
//!
//! ```no_run
//! use crs4_cassandra_tch::{Images, Loader, IMAGENET_MEAN, IMAGENET_STD};
//! # fn main() -> crs4_cassandra_tch::Result<()> {
//! let mut loader = Loader::builder("local:/data/store", "imagenette_data")
//!     .split_file("imagenette.split", "train")
//!     .batch_size(64)
//!     .rank(0, 1)
//!     .seed(42)
//!     .images(Images::Normalized { mean: IMAGENET_MEAN, std: IMAGENET_STD })
//!     .resize(224, 224)
//!     .build()?;
//! for epoch in 0..10 {
//!     loader.set_epoch(epoch);
//!     for batch in loader.iter()? {
//!         let batch = batch?;
//!         let _x = batch.images.as_ref().unwrap(); // float [B, 3, 224, 224]
//!         let _y = batch.labels.as_ref().unwrap(); // int64 [B]
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Tensors are zero-copy views of the loader's buffers: libtorch keeps a
//! batch's buffer alive until the last tensor over it (views included) is
//! dropped, then the buffer goes back to the loader's pool.

mod blob;
mod error;
mod loader;
pub mod synthetic;

pub use crs4_cassandra_core::LabelType;
pub use crs4_cassandra_core::{uuids_fingerprint, LoaderState, STATE_VERSION};
pub use crs4_cassandra_store::cassandra::OptionValue;
pub use crs4_cassandra_store::open_store;
pub use error::{Error, Result};
pub use loader::{EpochIter, Images, Loader, LoaderBuilder, TchBatch, IMAGENET_MEAN, IMAGENET_STD};
