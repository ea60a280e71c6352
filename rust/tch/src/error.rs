use crs4_cassandra_core::{PlanError, SplitError, StateError};
use crs4_cassandra_store::StoreError;
use thiserror::Error;
use uuid::Uuid;

/// Everything that can go wrong building a loader or reading its batches.
#[derive(Debug, Error)]
pub enum Error {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Split(#[from] SplitError),
    #[error("cannot load the loader state: {0}")]
    State(#[from] StateError),
    #[error("sample {uuid} (batch position {position}) cannot be decoded: {reason}")]
    Decode {
        uuid: Uuid,
        position: usize,
        reason: String,
    },
    #[error("libtorch: {0}")]
    Torch(String),
}

impl From<tch::TchError> for Error {
    fn from(e: tch::TchError) -> Self {
        Error::Torch(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
