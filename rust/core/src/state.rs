//! Resumption: where an epoch stands ([`Progress`]), the saved form of it
//! ([`LoaderState`], the JSON every layer writes and reads), and the pure
//! functions between the two. Python's `state_dict()`, the DALI reader and
//! the tch loader all go through here, so a state saved by one resumes in
//! another.
//!
//! A state holds `consumed_samples`, a prefix of the epoch's global order that
//! every rank has consumed (independent of the world size, so it resumes on
//! any number of ranks), and `consumed_positions`, this rank's batches
//! consumed beyond that prefix out of order (`ordered=False` delivery, or one
//! DataLoader worker's share), counted from the prefix. A state with
//! `consumed_positions` resumes only on the rank and world size that saved it.

use crate::plan::{PlanError, PlanSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use thiserror::Error;

/// Version written by [`LoaderState::to_json`].
pub const STATE_VERSION: u32 = 2;
/// Versions [`LoaderState::from_json`] reads: 1 had no `rank` and no
/// `consumed_positions`.
pub const READABLE_STATE_VERSIONS: [u32; 2] = [1, 2];

#[derive(Debug, Error, PartialEq, Eq)]
pub enum StateError {
    #[error("invalid state: {0}")]
    Invalid(String),
    #[error("unsupported state version {found} (this version reads {STATE_VERSION} and older: {READABLE_STATE_VERSIONS:?})")]
    Version { found: String },
    #[error("state was saved with {key}={saved} but this reader has {key}={current}: it belongs to another run")]
    OtherRun {
        key: &'static str,
        saved: String,
        current: String,
    },
    #[error("consumed_samples={consumed} is out of range 0..={n}")]
    ConsumedOutOfRange { consumed: usize, n: usize },
    #[error("consumed_positions are out of range 0..{steps} or repeated: {positions:?}")]
    PositionsOutOfRange { positions: Vec<usize>, steps: usize },
    #[error(
        "state has batches consumed out of order on rank {saved_rank} of {saved_world_size}: it resumes \
         only there, not on rank {rank} of {world_size} (save states with ordered=True to change world size)"
    )]
    WrongRank {
        saved_rank: String,
        saved_world_size: usize,
        rank: usize,
        world_size: usize,
    },
    #[error("batches_consumed={count} is outside 0..={left} for this epoch")]
    CountOutOfRange { count: usize, left: usize },
    #[error("consumed position {position} is outside 0..{planned} for this epoch")]
    PositionOutOfRange { position: usize, planned: usize },
    #[error(transparent)]
    Plan(#[from] PlanError),
}

/// What identifies a run: a state saved by another run is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunIdentity {
    pub seed: u64,
    pub shuffle: bool,
    pub drop_last: bool,
    pub batch_size: usize,
    pub num_samples: usize,
    /// [`uuids_fingerprint`] of the uuid list.
    pub uuids_fingerprint: String,
    pub table: String,
}

/// Where an epoch stands for one rank: the epoch, the consumed prefix of its
/// global order, and this rank's positions consumed beyond it (sorted, counted
/// from the prefix).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Progress {
    pub epoch: u64,
    pub consumed_samples: usize,
    pub consumed_positions: Vec<usize>,
}

impl Progress {
    /// The start of `epoch`.
    pub fn fresh(epoch: u64) -> Self {
        Self {
            epoch,
            ..Self::default()
        }
    }

    /// Batches a rank still serves in the epoch of `spec` (its `start` is ignored).
    pub fn batches_left(&self, spec: &PlanSpec) -> Result<usize, PlanError> {
        let planned = self.shape(spec).batches_per_rank()?;
        Ok(planned.saturating_sub(self.consumed_positions.len()))
    }

    /// `spec` from this progress's resume point.
    pub fn shape(&self, spec: &PlanSpec) -> PlanSpec {
        PlanSpec {
            epoch: self.epoch,
            start: self.consumed_samples,
            ..spec.clone()
        }
    }

    /// The progress after this rank has also consumed the `taken` positions
    /// (rank-local, counted from this progress's prefix, like
    /// `Batch.position`). `dealing_workers` is the number of DataLoader
    /// workers the positions are dealt to (1 without workers): the prefix
    /// grows only by whole rounds of them, so that each worker's share stays
    /// the same after the resume.
    pub fn after(
        &self,
        spec: &PlanSpec,
        taken: impl IntoIterator<Item = usize>,
        dealing_workers: usize,
    ) -> Result<Progress, StateError> {
        let shape = self.shape(spec);
        let planned = shape.batches_per_rank()?;
        let mut all: BTreeSet<usize> = self.consumed_positions.iter().copied().collect();
        for q in taken {
            if q >= planned {
                return Err(StateError::PositionOutOfRange {
                    position: q,
                    planned,
                });
            }
            all.insert(q);
        }
        let mut prefix = 0;
        while all.contains(&prefix) {
            prefix += 1;
        }
        let workers = dealing_workers.max(1);
        prefix -= prefix % workers;
        Ok(Progress {
            epoch: self.epoch,
            consumed_samples: shape.resume_after(prefix)?.consumed_samples,
            consumed_positions: all.range(prefix..).map(|q| q - prefix).collect(),
        })
    }

    /// The first `count` positions this progress has not consumed: what a
    /// loop that received `count` batches in plan order has consumed.
    pub fn first_unconsumed(
        &self,
        spec: &PlanSpec,
        count: usize,
    ) -> Result<Vec<usize>, StateError> {
        let planned = self.shape(spec).batches_per_rank()?;
        let left = planned.saturating_sub(self.consumed_positions.len());
        if count > left {
            return Err(StateError::CountOutOfRange { count, left });
        }
        let done: BTreeSet<usize> = self.consumed_positions.iter().copied().collect();
        Ok((0..planned)
            .filter(|q| !done.contains(q))
            .take(count)
            .collect())
    }
}

/// What a loop says it consumed of an epoch since the last [`Progress`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Consumed {
    /// The positions (`Batch.position`) of the batches it received, in any order.
    Positions(Vec<usize>),
    /// The number of batches it received, in plan order.
    FirstBatches(usize),
}

impl Consumed {
    /// What a caller said, by precedence: the positions it names, else the
    /// count of batches it gives, else `yielded` (what the reader itself
    /// handed out in this process).
    pub fn from_caller(
        positions: Option<Vec<usize>>,
        count: Option<usize>,
        yielded: Vec<usize>,
    ) -> Self {
        match (positions, count) {
            (Some(p), _) => Self::Positions(p),
            (None, Some(n)) => Self::FirstBatches(n),
            (None, None) => Self::Positions(yielded),
        }
    }
}

impl Progress {
    /// [`Progress::after`] for what a loop says it consumed.
    pub fn after_consumed(
        &self,
        spec: &PlanSpec,
        consumed: Consumed,
        dealing_workers: usize,
    ) -> Result<Progress, StateError> {
        let taken = match consumed {
            Consumed::Positions(p) => p,
            Consumed::FirstBatches(n) => self.first_unconsumed(spec, n)?,
        };
        self.after(spec, taken, dealing_workers)
    }
}

/// The saved state of a reader: a [`Progress`] and the [`RunIdentity`] it
/// belongs to, as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    pub version: u32,
    pub epoch: u64,
    pub seed: u64,
    pub shuffle: bool,
    pub drop_last: bool,
    pub batch_size: usize,
    pub num_samples: usize,
    pub uuids_fingerprint: String,
    pub table: String,
    pub world_size: usize,
    /// Version 2 on; absent in version 1.
    #[serde(default)]
    pub rank: Option<usize>,
    pub consumed_samples: usize,
    /// Version 2 on; absent (empty) in version 1.
    #[serde(default)]
    pub consumed_positions: Vec<usize>,
}

impl LoaderState {
    pub fn new(run: &RunIdentity, rank: usize, world_size: usize, progress: &Progress) -> Self {
        Self {
            version: STATE_VERSION,
            epoch: progress.epoch,
            seed: run.seed,
            shuffle: run.shuffle,
            drop_last: run.drop_last,
            batch_size: run.batch_size,
            num_samples: run.num_samples,
            uuids_fingerprint: run.uuids_fingerprint.clone(),
            table: run.table.clone(),
            world_size,
            rank: Some(rank),
            consumed_samples: progress.consumed_samples,
            consumed_positions: progress.consumed_positions.clone(),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a state serializes")
    }

    /// Reads a state of any version ever written.
    pub fn from_json(json: &str) -> Result<Self, StateError> {
        let value: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| StateError::Invalid(format!("not JSON: {e}")))?;
        let version = value.get("version");
        let known = version
            .and_then(serde_json::Value::as_u64)
            .is_some_and(|v| READABLE_STATE_VERSIONS.iter().any(|&r| u64::from(r) == v));
        if !known {
            return Err(StateError::Version {
                found: version.map_or("none".into(), |v| v.to_string()),
            });
        }
        serde_json::from_value(value).map_err(|e| StateError::Invalid(e.to_string()))
    }

    /// The progress to resume from on `rank` of `world_size`, after checking
    /// that the state belongs to `run`.
    pub fn resume(
        &self,
        run: &RunIdentity,
        rank: usize,
        world_size: usize,
    ) -> Result<Progress, StateError> {
        let fields: [(&'static str, String, String); 7] = [
            ("seed", self.seed.to_string(), run.seed.to_string()),
            ("shuffle", self.shuffle.to_string(), run.shuffle.to_string()),
            (
                "drop_last",
                self.drop_last.to_string(),
                run.drop_last.to_string(),
            ),
            (
                "batch_size",
                self.batch_size.to_string(),
                run.batch_size.to_string(),
            ),
            (
                "num_samples",
                self.num_samples.to_string(),
                run.num_samples.to_string(),
            ),
            (
                "uuids_fingerprint",
                format!("{:?}", self.uuids_fingerprint),
                format!("{:?}", run.uuids_fingerprint),
            ),
            (
                "table",
                format!("{:?}", self.table),
                format!("{:?}", run.table),
            ),
        ];
        for (key, saved, current) in fields {
            if saved != current {
                return Err(StateError::OtherRun {
                    key,
                    saved,
                    current,
                });
            }
        }
        if self.consumed_samples > self.num_samples {
            return Err(StateError::ConsumedOutOfRange {
                consumed: self.consumed_samples,
                n: self.num_samples,
            });
        }
        let mut positions = self.consumed_positions.clone();
        if !positions.is_empty() {
            if self.rank != Some(rank) || self.world_size != world_size {
                return Err(StateError::WrongRank {
                    saved_rank: self.rank.map_or("?".into(), |r| r.to_string()),
                    saved_world_size: self.world_size,
                    rank,
                    world_size,
                });
            }
            let steps = PlanSpec {
                n: run.num_samples,
                batch_size: run.batch_size,
                world_size,
                drop_last: run.drop_last,
                shuffle: false,
                seed: 0,
                epoch: 0,
                start: self.consumed_samples,
            }
            .batches_per_rank()?;
            positions.sort_unstable();
            let repeated = positions.windows(2).any(|w| w[0] == w[1]);
            if repeated || positions.last().is_some_and(|&q| q >= steps) {
                return Err(StateError::PositionsOutOfRange {
                    positions: self.consumed_positions.clone(),
                    steps,
                });
            }
        }
        Ok(Progress {
            epoch: self.epoch,
            consumed_samples: self.consumed_samples,
            consumed_positions: positions,
        })
    }
}

/// BLAKE2b with an 8-byte digest of the uuid bytes, in hex: what identifies
/// the uuid list in a state.
pub fn uuids_fingerprint(uuid_bytes: &[u8]) -> String {
    use blake2::digest::{Update, VariableOutput};
    let mut h = blake2::Blake2bVar::new(8).expect("8 is a valid BLAKE2b length");
    h.update(uuid_bytes);
    let mut out = [0u8; 8];
    h.finalize_variable(&mut out).expect("8-byte buffer");
    out.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{EpochPlan, PlannedBatch};
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn run(spec: &PlanSpec) -> RunIdentity {
        RunIdentity {
            seed: spec.seed,
            shuffle: spec.shuffle,
            drop_last: spec.drop_last,
            batch_size: spec.batch_size,
            num_samples: spec.n,
            uuids_fingerprint: "0011223344556677".into(),
            table: "t".into(),
        }
    }

    /// The batches one rank's `workers` DataLoader workers serve after
    /// `progress`, all together.
    fn served(
        spec: &PlanSpec,
        progress: &Progress,
        rank: usize,
        workers: usize,
    ) -> Vec<PlannedBatch> {
        let plan = EpochPlan::new(progress.shape(spec)).unwrap();
        (0..workers)
            .flat_map(|w| {
                plan.reader_batches_after(rank, workers, w, &progress.consumed_positions)
                    .unwrap()
            })
            .collect()
    }

    fn real(batches: &[PlannedBatch]) -> Vec<u32> {
        batches
            .iter()
            .flat_map(|b| {
                b.indices
                    .iter()
                    .zip(&b.is_pad)
                    .filter(|(_, p)| !**p)
                    .map(|(i, _)| *i)
            })
            .collect()
    }

    fn spec_strategy() -> impl Strategy<Value = PlanSpec> {
        (
            0usize..300,
            1usize..9,
            1usize..5,
            any::<bool>(),
            any::<bool>(),
            any::<u64>(),
            0u64..4,
        )
            .prop_map(
                |(n, batch_size, world_size, drop_last, shuffle, seed, epoch)| PlanSpec {
                    n,
                    batch_size,
                    world_size,
                    drop_last,
                    shuffle,
                    seed,
                    epoch,
                    start: 0,
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Any set of positions consumed on each rank, saved (through JSON)
        /// and resumed there, with or without DataLoader workers: every rank
        /// then serves exactly its batches not consumed, so the epoch is served
        /// exactly once overall.
        #[test]
        fn resume_after_any_consumed_positions_serves_the_rest_once(
            spec in spec_strategy(),
            picks in proptest::collection::vec(any::<u64>(), 1..5),
            workers in 1usize..4,
            rounds in 1usize..3,
        ) {
            let whole = EpochPlan::new(spec.clone()).unwrap();
            let steps = whole.batches_per_rank();
            let mut all_real = Vec::new();
            for rank in 0..spec.world_size {
                let pick = picks[rank % picks.len()];
                let mut progress = Progress::fresh(spec.epoch);
                let mut consumed: Vec<PlannedBatch> = Vec::new();
                // Several save/resume rounds, each consuming a pseudo-random subset.
                for round in 0..rounds {
                    let rest = served(&spec, &progress, rank, workers);
                    let taken: Vec<&PlannedBatch> = rest
                        .iter()
                        .filter(|b| (pick >> ((b.position + 7 * round) % 61)) & 1 == 1)
                        .collect();
                    consumed.extend(taken.iter().map(|b| (*b).clone()));
                    let next = progress.after(&spec, taken.iter().map(|b| b.position), workers).unwrap();
                    let json = LoaderState::new(&run(&spec), rank, spec.world_size, &next).to_json();
                    progress = LoaderState::from_json(&json).unwrap()
                        .resume(&run(&spec), rank, spec.world_size).unwrap();
                    prop_assert_eq!(progress.batches_left(&spec).unwrap() + consumed.len(), steps);
                }
                let rest = served(&spec, &progress, rank, workers);
                prop_assert_eq!(rest.len() + consumed.len(), steps);
                let mut mine: Vec<(Vec<u32>, Vec<bool>)> = consumed.iter().chain(&rest)
                    .map(|b| (b.indices.clone(), b.is_pad.clone())).collect();
                let mut want: Vec<(Vec<u32>, Vec<bool>)> = (0..steps)
                    .map(|j| whole.batch(rank, j)).map(|b| (b.indices, b.is_pad)).collect();
                mine.sort();
                want.sort();
                prop_assert_eq!(mine, want);
                all_real.extend(real(&consumed));
                all_real.extend(real(&rest));
            }
            let unique: HashSet<u32> = all_real.iter().copied().collect();
            prop_assert_eq!(unique.len(), all_real.len(), "a sample served twice");
            prop_assert_eq!(unique.len(), whole.real_samples());
        }

        /// A state saved after every rank consumed the same prefix (DDP
        /// lockstep) resumes on any world size: the new ranks serve the rest,
        /// each sample once, with equal batch counts.
        #[test]
        fn a_prefix_state_resumes_on_another_world_size(
            spec in spec_strategy(),
            k in 0usize..30,
            new_world in 1usize..6,
        ) {
            let whole = EpochPlan::new(spec.clone()).unwrap();
            let k = k.min(whole.batches_per_rank());
            let mut taken = Vec::new();
            for rank in 0..spec.world_size {
                taken.extend(real(&(0..k).map(|j| whole.batch(rank, j)).collect::<Vec<_>>()));
            }
            let progress = Progress::fresh(spec.epoch).after(&spec, 0..k, 1).unwrap();
            prop_assert!(progress.consumed_positions.is_empty());
            let state = LoaderState::new(&run(&spec), 0, spec.world_size, &progress);
            let moved = PlanSpec { world_size: new_world, ..spec.clone() };
            let mut counts = HashSet::new();
            for rank in 0..new_world {
                let p = LoaderState::from_json(&state.to_json()).unwrap()
                    .resume(&run(&spec), rank, new_world).unwrap();
                let rest = served(&moved, &p, rank, 1);
                counts.insert(rest.len());
                prop_assert_eq!(rest.len(), p.batches_left(&moved).unwrap());
                taken.extend(real(&rest));
            }
            prop_assert!(counts.len() <= 1, "unequal batch counts {:?}", counts);
            let unique: HashSet<u32> = taken.iter().copied().collect();
            prop_assert_eq!(unique.len(), taken.len(), "a sample served twice");
            if !spec.drop_last {
                prop_assert_eq!(unique.len(), spec.n);
            }
        }
    }

    fn spec() -> PlanSpec {
        PlanSpec {
            n: 100,
            batch_size: 4,
            world_size: 1,
            drop_last: false,
            shuffle: true,
            seed: 1,
            epoch: 0,
            start: 0,
        }
    }

    #[test]
    fn out_of_order_positions_beyond_the_prefix_are_kept() {
        let p = Progress::fresh(0)
            .after(&spec(), [0, 1, 3, 4, 6], 1)
            .unwrap();
        assert_eq!(p.consumed_samples, 8);
        assert_eq!(p.consumed_positions, vec![1, 2, 4]);
        // With two workers, the prefix grows by whole rounds only.
        let p = Progress::fresh(0).after(&spec(), [0, 1, 2, 4], 2).unwrap();
        assert_eq!(
            (p.consumed_samples, p.consumed_positions.clone()),
            (8, vec![0, 2])
        );
        assert!(matches!(
            Progress::fresh(0).after(&spec(), [25], 1),
            Err(StateError::PositionOutOfRange {
                position: 25,
                planned: 25
            })
        ));
        assert_eq!(p.first_unconsumed(&spec(), 3).unwrap(), vec![1, 3, 4]);
        assert!(p.first_unconsumed(&spec(), 22).is_err());
    }

    #[test]
    fn reads_every_version_and_refuses_other_runs() {
        let v1 = r#"{"version": 1, "epoch": 3, "seed": 1, "shuffle": true, "drop_last": false,
            "batch_size": 4, "num_samples": 100, "uuids_fingerprint": "0011223344556677",
            "table": "t", "world_size": 4, "consumed_samples": 64}"#;
        let s = LoaderState::from_json(v1).unwrap();
        assert_eq!((s.epoch, s.rank, s.consumed_positions.len()), (3, None, 0));
        let r = run(&spec());
        let p = s.resume(&r, 1, 2).unwrap();
        assert_eq!((p.epoch, p.consumed_samples), (3, 64));
        let other = RunIdentity {
            batch_size: 8,
            ..r.clone()
        };
        let err = s.resume(&other, 0, 1).unwrap_err().to_string();
        assert!(
            err.contains("batch_size=4") && err.contains("batch_size=8"),
            "{err}"
        );
        assert!(err.contains("belongs to another run"), "{err}");
        let v3 = v1.replace("\"version\": 1", "\"version\": 3");
        assert!(matches!(
            LoaderState::from_json(&v3),
            Err(StateError::Version { .. })
        ));
        assert!(LoaderState::from_json("{}").is_err());
        let mut s2 = LoaderState::new(
            &r,
            0,
            1,
            &Progress {
                epoch: 0,
                consumed_samples: 8,
                consumed_positions: vec![3],
            },
        );
        assert_eq!(LoaderState::from_json(&s2.to_json()).unwrap(), s2);
        assert!(matches!(
            s2.resume(&r, 0, 2),
            Err(StateError::WrongRank { .. })
        ));
        s2.consumed_positions = vec![10_000];
        assert!(matches!(
            s2.resume(&r, 0, 1),
            Err(StateError::PositionsOutOfRange { .. })
        ));
        s2.consumed_positions.clear();
        s2.consumed_samples = 101;
        assert!(matches!(
            s2.resume(&r, 0, 1),
            Err(StateError::ConsumedOutOfRange { .. })
        ));
    }

    #[test]
    fn fingerprint_matches_python_hashlib() {
        // hashlib.blake2b(bytes(range(32)), digest_size=8).hexdigest()
        let bytes: Vec<u8> = (0..32).collect();
        assert_eq!(uuids_fingerprint(&bytes), "40f68f4ad24e575b");
        assert_eq!(uuids_fingerprint(&[]), "e4a6a0577479b2b4");
    }
}
