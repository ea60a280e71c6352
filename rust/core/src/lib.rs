//! Pure logic of crs4_cassandra: the epoch plan, resumption state, the
//! split-file format, and the mark of values that must not cross `fork()`.

pub mod fork;
pub mod ids;
pub mod plan;
pub mod rng;
pub mod split;
pub mod state;

pub use fork::{Owner, ProcessOwned};
pub use ids::{sample_uuid, ID_NAMESPACE};
pub use plan::{
    guess_next_epoch, order_positions, EpochPlan, PlanError, PlanSpec, PlannedBatch, Resume,
};
pub use split::{find_duplicate, LabelType, SplitError, SplitFile, SplitHeader};
pub use state::{
    uuids_fingerprint, Consumed, LoaderState, Progress, RunIdentity, StateError,
    READABLE_STATE_VERSIONS, STATE_VERSION,
};
