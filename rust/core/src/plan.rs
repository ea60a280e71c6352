//! The epoch plan: which batches each reader serves, as indices into the uuid list.
//!
//! Scheme: permute the whole list with (seed, epoch), skip the `start` samples
//! already consumed (resumption), cut the rest into global batches of
//! `batch_size`, deal global batch `g` to rank `g % world_size`, and deal each
//! rank's batches to its DataLoader workers round-robin, so that DataLoader's
//! round-robin merge gives back the rank's order. Without `drop_last` the tail
//! is padded (with samples from the start of the remaining order, flagged as
//! pads) so that every rank gets the same number of full batches; an uneven
//! count would hang DDP collectives.

use crate::rng::permutation;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("batch_size must be positive, got {0}")]
    BatchSize(usize),
    #[error("world_size must be positive, got {0}")]
    WorldSize(usize),
    #[error("rank {rank} is out of range for world_size {world_size}")]
    Rank { rank: usize, world_size: usize },
    #[error("num_workers must be positive and worker_id below it, got worker {worker_id} of {num_workers}")]
    Worker {
        worker_id: usize,
        num_workers: usize,
    },
    #[error("resume point {start} is past the end of the {n} samples")]
    Start { start: usize, n: usize },
    #[error("{0} samples is more than this loader supports (2^32 - 1)")]
    TooMany(usize),
}

/// Everything that determines an epoch's batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanSpec {
    /// Number of uuids in the list.
    pub n: usize,
    pub batch_size: usize,
    pub world_size: usize,
    pub drop_last: bool,
    pub shuffle: bool,
    pub seed: u64,
    pub epoch: u64,
    /// Samples of this epoch's global order already consumed (0 for a fresh epoch).
    pub start: usize,
}

/// Where to resume in an epoch: the number of samples of the global order
/// already served to all ranks together. Independent of world size, so a state
/// saved with 4 ranks can be resumed on 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Resume {
    pub consumed_samples: usize,
}

/// One batch as planned: positions in the uuid list, with pads flagged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedBatch {
    /// The epoch the batch belongs to.
    pub epoch: u64,
    /// Rank-local position of the batch in this epoch (0-based, counted from the resume point).
    pub position: usize,
    pub indices: Vec<u32>,
    pub is_pad: Vec<bool>,
}

#[derive(Debug, Clone)]
pub struct EpochPlan {
    spec: PlanSpec,
    order: Vec<u32>,
    steps: usize,
}

impl PlanSpec {
    pub fn validate(&self) -> Result<(), PlanError> {
        if self.batch_size == 0 {
            return Err(PlanError::BatchSize(0));
        }
        if self.world_size == 0 {
            return Err(PlanError::WorldSize(0));
        }
        if self.n > u32::MAX as usize {
            return Err(PlanError::TooMany(self.n));
        }
        if self.start > self.n {
            return Err(PlanError::Start {
                start: self.start,
                n: self.n,
            });
        }
        Ok(())
    }

    /// Batches every rank serves from the resume point (the same for all
    /// ranks), computed without building the permutation.
    pub fn batches_per_rank(&self) -> Result<usize, PlanError> {
        self.validate()?;
        let remaining = self.n - self.start;
        let per_step = self.world_size * self.batch_size;
        Ok(if self.drop_last {
            remaining / per_step
        } else {
            remaining.div_ceil(per_step)
        })
    }

    /// For one rank of a whole epoch (from `start`): the real samples it
    /// serves and the number of its batches holding at least one (the
    /// others hold pads only). Global batches are dealt round-robin and pads
    /// fill the tail, so a rank's real samples always come first in its stream.
    pub fn rank_counts(&self, rank: usize) -> Result<(usize, usize), PlanError> {
        let steps = self.batches_per_rank()?;
        if rank >= self.world_size {
            return Err(PlanError::Rank {
                rank,
                world_size: self.world_size,
            });
        }
        let remaining = self.n - self.start;
        let (mut real, mut batches) = (0, 0);
        for j in 0..steps {
            let first = (j * self.world_size + rank) * self.batch_size;
            let k = remaining.saturating_sub(first).min(self.batch_size);
            real += k;
            batches += usize::from(k > 0);
        }
        Ok((real, batches))
    }

    /// The resume point after every rank has consumed `batches` batches.
    pub fn resume_after(&self, batches: usize) -> Result<Resume, PlanError> {
        let steps = self.batches_per_rank()?;
        let served = batches.min(steps) * self.world_size * self.batch_size;
        Ok(Resume {
            consumed_samples: (self.start + served).min(self.n),
        })
    }
}

impl EpochPlan {
    pub fn new(spec: PlanSpec) -> Result<Self, PlanError> {
        let steps = spec.batches_per_rank()?;
        let order = if spec.shuffle {
            permutation(spec.n, spec.seed, spec.epoch)
        } else {
            (0..spec.n as u32).collect()
        };
        Ok(Self { spec, order, steps })
    }

    pub fn spec(&self) -> &PlanSpec {
        &self.spec
    }

    /// Batches every rank serves in this epoch (the same for all ranks).
    pub fn batches_per_rank(&self) -> usize {
        self.steps
    }

    /// Batches served by one DataLoader worker of a rank.
    pub fn batches_per_worker(&self, num_workers: usize, worker_id: usize) -> usize {
        if worker_id >= self.steps {
            0
        } else {
            (self.steps - worker_id).div_ceil(num_workers)
        }
    }

    /// Samples of the global order that a complete epoch from the resume point serves (pads excluded).
    pub fn real_samples(&self) -> usize {
        let remaining = self.spec.n - self.spec.start;
        remaining.min(self.steps * self.spec.world_size * self.spec.batch_size)
    }

    /// The `position`-th batch of `rank`.
    pub fn batch(&self, rank: usize, position: usize) -> PlannedBatch {
        let bs = self.spec.batch_size;
        let n = self.spec.n;
        let global = position * self.spec.world_size + rank;
        let mut indices = Vec::with_capacity(bs);
        let mut is_pad = Vec::with_capacity(bs);
        // Absolute positions in the epoch's order; pads repeat the order from its
        // beginning, so a resumed plan pads exactly as the uninterrupted one.
        let first = self.spec.start + global * bs;
        for p in first..first + bs {
            if p < n {
                indices.push(self.order[p]);
                is_pad.push(false);
            } else {
                indices.push(self.order[(p - n) % n]);
                is_pad.push(true);
            }
        }
        PlannedBatch {
            epoch: self.spec.epoch,
            position,
            indices,
            is_pad,
        }
    }

    /// The batches one reader serves, in order.
    pub fn reader_batches(
        &self,
        rank: usize,
        num_workers: usize,
        worker_id: usize,
    ) -> Result<Vec<PlannedBatch>, PlanError> {
        if rank >= self.spec.world_size {
            return Err(PlanError::Rank {
                rank,
                world_size: self.spec.world_size,
            });
        }
        if num_workers == 0 || worker_id >= num_workers {
            return Err(PlanError::Worker {
                worker_id,
                num_workers,
            });
        }
        Ok((worker_id..self.steps)
            .step_by(num_workers)
            .map(|j| self.batch(rank, j))
            .collect())
    }

    /// The batches one reader serves after a resume, in order: its share
    /// ([`EpochPlan::reader_batches`]) without the rank-local `consumed`
    /// positions (consumed out of order before the resume).
    pub fn reader_batches_after(
        &self,
        rank: usize,
        num_workers: usize,
        worker_id: usize,
        consumed: &[usize],
    ) -> Result<Vec<PlannedBatch>, PlanError> {
        let mut batches = self.reader_batches(rank, num_workers, worker_id)?;
        if !consumed.is_empty() {
            let consumed: std::collections::HashSet<usize> = consumed.iter().copied().collect();
            batches.retain(|b| !consumed.contains(&b.position));
        }
        Ok(batches)
    }

    /// The resume point after every rank has consumed `batches` batches of this plan.
    pub fn resume_after(&self, batches: usize) -> Resume {
        self.spec
            .resume_after(batches)
            .expect("the spec was validated when the plan was made")
    }
}

/// The epoch a reader will most likely be asked for after iterating
/// `current` with `previous` the epoch iterated before it in the same
/// process: after e-1 and e, e+1 (a loop calling `set_epoch`); after e and e,
/// e again (no `set_epoch`, or persistent workers); otherwise no guess (a
/// first iteration, or a jump: a wrong guess only wastes reads).
pub fn guess_next_epoch(previous: Option<u64>, current: u64) -> Option<u64> {
    match current.checked_sub(previous?) {
        Some(0) => Some(current),
        Some(1) => current.checked_add(1),
        _ => None,
    }
}

/// Where each entry of the uuid list comes in the order of an epoch of `n`
/// samples: `order_positions(..)[i]` is the position of index `i` in the
/// permutation [`EpochPlan`] cuts into batches, the same for every rank,
/// worker and resume point. With the epoch, it says when a sample will be
/// read again: what a cache needs to keep the samples used soonest.
pub fn order_positions(n: usize, shuffle: bool, seed: u64, epoch: u64) -> Vec<u32> {
    if !shuffle {
        return (0..n as u32).collect();
    }
    let order = permutation(n, seed, epoch);
    let mut positions = vec![0u32; n];
    for (position, &index) in order.iter().enumerate() {
        positions[index as usize] = position as u32;
    }
    positions
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[test]
    fn order_positions_invert_the_epoch_order() {
        for shuffle in [false, true] {
            let spec = PlanSpec {
                n: 50,
                batch_size: 7,
                world_size: 2,
                drop_last: false,
                shuffle,
                seed: 3,
                epoch: 4,
                start: 0,
            };
            let plan = EpochPlan::new(spec).unwrap();
            let positions = order_positions(50, shuffle, 3, 4);
            for (p, &i) in plan.order.iter().enumerate() {
                assert_eq!(positions[i as usize] as usize, p);
            }
        }
        assert_ne!(
            order_positions(50, true, 3, 4),
            order_positions(50, true, 3, 5)
        );
    }

    fn spec_strategy() -> impl Strategy<Value = PlanSpec> {
        (
            0usize..400,
            1usize..17,
            1usize..6,
            any::<bool>(),
            any::<bool>(),
            any::<u64>(),
            0u64..5,
        )
            .prop_flat_map(|(n, bs, ws, drop_last, shuffle, seed, epoch)| {
                (0..=n).prop_map(move |start| PlanSpec {
                    n,
                    batch_size: bs,
                    world_size: ws,
                    drop_last,
                    shuffle,
                    seed,
                    epoch,
                    start,
                })
            })
    }

    fn all_batches(plan: &EpochPlan, num_workers: usize) -> Vec<Vec<PlannedBatch>> {
        (0..plan.spec().world_size)
            .map(|r| {
                let mut per_worker: Vec<_> = (0..num_workers)
                    .map(|w| plan.reader_batches(r, num_workers, w).unwrap())
                    .collect();
                // DataLoader's round-robin merge of worker streams.
                let mut merged = Vec::new();
                let mut cursors = vec![0usize; num_workers];
                'outer: loop {
                    for w in 0..num_workers {
                        if cursors[w] < per_worker[w].len() {
                            merged.push(std::mem::replace(
                                &mut per_worker[w][cursors[w]],
                                PlannedBatch {
                                    epoch: 0,
                                    position: 0,
                                    indices: vec![],
                                    is_pad: vec![],
                                },
                            ));
                            cursors[w] += 1;
                        } else {
                            break 'outer;
                        }
                    }
                }
                merged
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn every_sample_once_with_bounded_pads(spec in spec_strategy(), nw in 1usize..4) {
            let plan = EpochPlan::new(spec.clone()).unwrap();
            let ranks = all_batches(&plan, nw);
            let remaining: HashSet<u32> = plan.order[spec.start..].iter().copied().collect();
            let mut seen = HashSet::new();
            let mut pads = 0usize;
            for batches in &ranks {
                for b in batches {
                    prop_assert_eq!(b.indices.len(), spec.batch_size);
                    for (&i, &pad) in b.indices.iter().zip(&b.is_pad) {
                        prop_assert!(pad || remaining.contains(&i));
                        if pad { pads += 1 } else { prop_assert!(seen.insert(i), "index {} twice", i) }
                    }
                }
            }
            let per_step = spec.world_size * spec.batch_size;
            if spec.drop_last {
                prop_assert_eq!(pads, 0);
                prop_assert!(remaining.len() - seen.len() < per_step);
            } else {
                prop_assert_eq!(seen.len(), remaining.len());
                prop_assert!(pads < per_step);
            }
            prop_assert_eq!(seen.len(), plan.real_samples());
        }

        #[test]
        fn ranks_have_equal_batch_counts_and_merge_restores_order(spec in spec_strategy(), nw in 1usize..4) {
            let plan = EpochPlan::new(spec.clone()).unwrap();
            for (rank, merged) in all_batches(&plan, nw).iter().enumerate() {
                prop_assert_eq!(merged.len(), plan.batches_per_rank());
                let per_worker: usize = (0..nw).map(|w| plan.batches_per_worker(nw, w)).sum();
                prop_assert_eq!(per_worker, plan.batches_per_rank());
                for (j, b) in merged.iter().enumerate() {
                    prop_assert_eq!(b, &plan.batch(rank, j));
                }
            }
        }

        #[test]
        fn deterministic_from_seed_and_epoch(spec in spec_strategy()) {
            let a = EpochPlan::new(spec.clone()).unwrap();
            let b = EpochPlan::new(spec.clone()).unwrap();
            prop_assert_eq!(all_batches(&a, 1), all_batches(&b, 1));
            if spec.shuffle && spec.n >= 12 {
                let other = EpochPlan::new(PlanSpec { epoch: spec.epoch + 1, ..spec.clone() }).unwrap();
                prop_assert_ne!(&a.order, &other.order);
            }
        }

        #[test]
        fn resuming_yields_exactly_the_rest(spec in spec_strategy(), nw in 1usize..4, k in 0usize..40) {
            let fresh = EpochPlan::new(PlanSpec { start: 0, ..spec.clone() }).unwrap();
            let k = k.min(fresh.batches_per_rank());
            let resume = fresh.resume_after(k);
            let resumed = EpochPlan::new(PlanSpec { start: resume.consumed_samples, ..spec.clone() }).unwrap();
            prop_assert_eq!(resumed.batches_per_rank(), fresh.batches_per_rank() - k);
            let a = all_batches(&fresh, nw);
            let b = all_batches(&resumed, nw);
            for r in 0..spec.world_size {
                let rest: Vec<_> = a[r][k..].iter().map(|x| (&x.indices, &x.is_pad)).collect();
                let got: Vec<_> = b[r].iter().map(|x| (&x.indices, &x.is_pad)).collect();
                prop_assert_eq!(rest, got);
            }
        }

        #[test]
        fn elastic_resume_serves_the_rest_once(spec in spec_strategy(), k in 0usize..20, new_ws in 1usize..6) {
            let fresh = EpochPlan::new(PlanSpec { start: 0, ..spec.clone() }).unwrap();
            let k = k.min(fresh.batches_per_rank());
            let mut served: HashSet<u32> = HashSet::new();
            for r in 0..spec.world_size {
                for j in 0..k {
                    let b = fresh.batch(r, j);
                    served.extend(b.indices.iter().zip(&b.is_pad).filter(|(_, p)| !**p).map(|(i, _)| *i));
                }
            }
            let resume = fresh.resume_after(k);
            let resumed = EpochPlan::new(PlanSpec { world_size: new_ws, start: resume.consumed_samples, ..spec.clone() }).unwrap();
            for batches in all_batches(&resumed, 1) {
                prop_assert_eq!(batches.len(), resumed.batches_per_rank());
                for b in batches {
                    for (i, pad) in b.indices.iter().zip(&b.is_pad) {
                        if !*pad { prop_assert!(served.insert(*i), "index {} served twice", i) }
                    }
                }
            }
            if !spec.drop_last {
                prop_assert_eq!(served.len(), spec.n);
            }
        }
    }

    #[test]
    fn rank_counts_match_the_batches() {
        for (n, bs, ws, drop_last) in [
            (10, 3, 2, false),
            (7, 4, 3, false),
            (100, 8, 3, true),
            (0, 2, 2, false),
        ] {
            let spec = PlanSpec {
                n,
                batch_size: bs,
                world_size: ws,
                drop_last,
                shuffle: false,
                seed: 0,
                epoch: 0,
                start: 0,
            };
            let plan = EpochPlan::new(spec.clone()).unwrap();
            for rank in 0..ws {
                let batches = plan.reader_batches(rank, 1, 0).unwrap();
                let real: Vec<usize> = batches
                    .iter()
                    .map(|b| b.is_pad.iter().filter(|p| !**p).count())
                    .collect();
                let want = (real.iter().sum(), real.iter().filter(|&&k| k > 0).count());
                assert_eq!(
                    spec.rank_counts(rank).unwrap(),
                    want,
                    "{spec:?} rank {rank}"
                );
            }
        }
    }

    #[test]
    fn guesses_the_next_epoch() {
        assert_eq!(guess_next_epoch(None, 0), None);
        assert_eq!(guess_next_epoch(Some(0), 1), Some(2));
        assert_eq!(guess_next_epoch(Some(3), 3), Some(3));
        assert_eq!(guess_next_epoch(Some(3), 7), None);
        assert_eq!(guess_next_epoch(Some(4), 3), None);
    }

    #[test]
    fn rejects_bad_arguments() {
        let spec = PlanSpec {
            n: 10,
            batch_size: 0,
            world_size: 1,
            drop_last: false,
            shuffle: true,
            seed: 0,
            epoch: 0,
            start: 0,
        };
        assert_eq!(
            EpochPlan::new(spec.clone()).unwrap_err(),
            PlanError::BatchSize(0)
        );
        let plan = EpochPlan::new(PlanSpec {
            batch_size: 3,
            ..spec
        })
        .unwrap();
        assert!(plan.reader_batches(1, 1, 0).is_err());
        assert!(plan.reader_batches(0, 2, 2).is_err());
    }
}
