//! Pure logic of crs4_cassandra: the epoch plan and the split-file format.

pub mod plan;
pub mod rng;
pub mod split;

pub use plan::{EpochPlan, PlanError, PlanSpec, PlannedBatch, Resume};
pub use split::{LabelType, SplitError, SplitFile, SplitHeader};
