//! Pure logic of crs4_cassandra: the epoch plan and the split-file format,
//! and the mark of values that must not cross `fork()`.

pub mod fork;
pub mod plan;
pub mod rng;
pub mod split;

pub use fork::{Owner, ProcessOwned};
pub use plan::{EpochPlan, PlanError, PlanSpec, PlannedBatch, Resume};
pub use split::{LabelType, SplitError, SplitFile, SplitHeader};
