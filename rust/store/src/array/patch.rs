//! Patches of arrays as the samples of a reader: a [`PatchTable`] is a
//! [`TableReader`] whose sample `i` of an epoch is a patch (and, with label
//! arrays, the same patch of its label array), so patch datasets get the
//! fetch engine, the epoch plan, sharding over ranks and workers, and resume
//! state unchanged. A patch's "uuid" is its slot number (`Uuid::from_u128`).
//!
//! - Grid: slot `i` is the `i`-th patch of a regular grid over the arrays (in
//!   array order, then C order), at a stride (the patch shape by default);
//!   the same every epoch, shuffled by the plan like any samples.
//! - Random: `per_epoch` slots, slot `i` of epoch `e` at a position drawn from
//!   (seed, e, i): uniform over every valid position of every array, so an
//!   array is picked in proportion to its number of positions.
//!
//! A patch covers the leading dimensions given by its shape; the remaining
//! (trailing) dimensions are taken whole, and must match over the arrays.

use super::{ArrayMeta, DimSel};
use crate::batch::{ArenaPool, Batch, BatchJob, Labels};
use crate::error::{Result, StoreError};
use crate::{ChunkSource, LabelType, SampleStore, TableReader, TableSpec};
use crs4_cassandra_core::uuids_fingerprint;
use futures::future::{BoxFuture, FutureExt};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use uuid::Uuid;

/// Where patches come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum PatchMode {
    Random { per_epoch: u64 },
    Grid { stride: Option<Vec<u64>> },
}

/// What a patch reader reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchSpec {
    pub arrays: Vec<String>,
    /// One label array per array (same leading shape), read for the same patch.
    pub labels: Option<Vec<String>>,
    pub patch_shape: Vec<u64>,
    pub mode: PatchMode,
}

fn invalid(message: String) -> StoreError {
    StoreError::InvalidArgument(message)
}

impl PatchSpec {
    /// The table name a reader of these patches reports (and its resume state
    /// records): the spec's fingerprint.
    pub fn table_name(&self) -> String {
        let json = serde_json::to_vec(self).expect("serializable");
        format!("patches:{}", uuids_fingerprint(&json))
    }

    pub fn label_type(&self) -> LabelType {
        if self.labels.is_some() {
            LabelType::Blob
        } else {
            LabelType::None
        }
    }
}

/// The slot ids of `n` patches: what a patch reader's plan shuffles.
pub fn slot_ids(n: u64) -> Vec<Uuid> {
    (0..n).map(|i| Uuid::from_u128(i as u128)).collect()
}

/// The patches of a [`PatchSpec`] over opened arrays: positions and reads.
pub struct PatchTable {
    chunks: Arc<dyn ChunkSource>,
    spec: PatchSpec,
    table: TableSpec,
    seed: u64,
    arrays: Vec<ArrayMeta>,
    labels: Option<Vec<ArrayMeta>>,
    /// Per array: valid positions along each patch dimension.
    positions: Vec<Vec<u64>>,
    /// Cumulative positions over the arrays (`cumulative[i]`: before array i).
    cumulative: Vec<u64>,
    stride: Vec<u64>,
    patch_bytes: usize,
    label_bytes: usize,
    /// Decoded chunks held at once by all of this reader's batches (permits
    /// of one chunk): what a batch's reads hold beyond the batch itself.
    decoded: tokio::sync::Semaphore,
}

/// Bytes of decoded chunks a patch reader holds at most at once (besides its
/// batches, which the engine's memory budget bounds).
const DECODED_CHUNK_BUDGET: usize = 256 << 20;

/// splitmix64: the position of a random slot from (seed, epoch, slot).
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Bytes of a patch of `meta`, and its trailing (whole) dimensions.
fn patch_geometry(meta: &ArrayMeta, patch: &[u64], role: &str) -> Result<(usize, Vec<u64>)> {
    if patch.len() > meta.shape.len() {
        return Err(invalid(format!(
            "{role} array {:?} has {} dimensions, fewer than the patch shape {patch:?}",
            meta.name,
            meta.shape.len()
        )));
    }
    for (d, (&p, &n)) in patch.iter().zip(&meta.shape).enumerate() {
        if p == 0 || p > n {
            return Err(invalid(format!(
                "{role} array {:?} of shape {:?} is smaller than the patch {patch:?} along dimension {d}",
                meta.name, meta.shape
            )));
        }
    }
    let trailing = meta.shape[patch.len()..].to_vec();
    let elems: u64 = patch.iter().chain(&trailing).product();
    Ok((elems as usize * meta.itemsize, trailing))
}

async fn open_all(store: &Arc<dyn SampleStore>, names: &[String]) -> Result<Vec<ArrayMeta>> {
    futures::stream::iter(names.iter().cloned())
        .map(|name| async move { super::open(store.as_ref(), &name).await })
        .buffered(64)
        .try_collect()
        .await
}

impl PatchTable {
    /// Opens every array of `spec` and checks that their patches agree.
    pub async fn open(store: Arc<dyn SampleStore>, spec: &PatchSpec, seed: u64) -> Result<Self> {
        if spec.arrays.is_empty() {
            return Err(invalid("a patch dataset needs at least one array".into()));
        }
        if spec.patch_shape.is_empty() {
            return Err(invalid(
                "the patch shape needs at least one dimension".into(),
            ));
        }
        if let Some(labels) = &spec.labels {
            if labels.len() != spec.arrays.len() {
                return Err(invalid(format!(
                    "{} label arrays given for {} arrays: give one per array",
                    labels.len(),
                    spec.arrays.len()
                )));
            }
        }
        let p = &spec.patch_shape;
        let stride = match &spec.mode {
            PatchMode::Grid { stride: Some(s) } => {
                if s.len() != p.len() || s.contains(&0) {
                    return Err(invalid(format!(
                        "the grid stride {s:?} must have one positive entry per patch dimension {p:?}"
                    )));
                }
                s.clone()
            }
            _ => p.clone(),
        };
        if let PatchMode::Random { per_epoch: 0 } = spec.mode {
            return Err(invalid("per_epoch must be positive".into()));
        }
        let arrays = open_all(&store, &spec.arrays).await?;
        let labels = match &spec.labels {
            Some(names) => Some(open_all(&store, names).await?),
            None => None,
        };
        let check_same = |metas: &[ArrayMeta], role: &str| -> Result<usize> {
            let (bytes, trailing) = patch_geometry(&metas[0], p, role)?;
            for m in &metas[1..] {
                let (_, t) = patch_geometry(m, p, role)?;
                if t != trailing || m.dtype != metas[0].dtype {
                    return Err(invalid(format!(
                        "{role} array {:?} ({}, trailing dimensions {t:?}) does not match {:?} ({}, {trailing:?}): \
                         patches of one dataset must have one shape and dtype",
                        m.name, m.dtype, metas[0].name, metas[0].dtype
                    )));
                }
            }
            Ok(bytes)
        };
        let patch_bytes = check_same(&arrays, "image")?;
        let label_bytes = match &labels {
            Some(l) => {
                for (a, m) in arrays.iter().zip(l) {
                    if m.shape[..p.len()] != a.shape[..p.len()] {
                        return Err(invalid(format!(
                            "label array {:?} of shape {:?} does not cover array {:?} of shape {:?}",
                            m.name, m.shape, a.name, a.shape
                        )));
                    }
                }
                check_same(l, "label")?
            }
            None => 0,
        };
        let positions: Vec<Vec<u64>> = arrays
            .iter()
            .map(|a| {
                p.iter()
                    .zip(&a.shape)
                    .zip(&stride)
                    .map(|((&p, &n), &s)| match spec.mode {
                        PatchMode::Random { .. } => n - p + 1,
                        PatchMode::Grid { .. } => (n - p) / s + 1,
                    })
                    .collect()
            })
            .collect();
        let mut cumulative = Vec::with_capacity(arrays.len() + 1);
        let mut total = 0u64;
        for pos in &positions {
            cumulative.push(total);
            total = total
                .checked_add(pos.iter().product())
                .ok_or_else(|| invalid("too many patch positions".into()))?;
        }
        cumulative.push(total);
        let table = TableSpec::new(&spec.table_name(), spec.label_type());
        let decoded = tokio::sync::Semaphore::new(decoded_permits(&arrays, labels.as_deref()));
        Ok(Self {
            chunks: store.chunk_source()?,
            spec: spec.clone(),
            table,
            seed,
            arrays,
            labels,
            positions,
            cumulative,
            stride,
            patch_bytes,
            label_bytes,
            decoded,
        })
    }

    /// Slots per epoch: the grid's patches, or `per_epoch`.
    pub fn len(&self) -> u64 {
        match self.spec.mode {
            PatchMode::Random { per_epoch } => per_epoch,
            PatchMode::Grid { .. } => *self.cumulative.last().expect("non-empty"),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Shape of one patch: the patch dimensions, then the trailing ones.
    pub fn patch_shape(&self) -> Vec<u64> {
        full_shape(&self.spec.patch_shape, &self.arrays[0])
    }

    pub fn label_shape(&self) -> Option<Vec<u64>> {
        self.labels
            .as_ref()
            .map(|l| full_shape(&self.spec.patch_shape, &l[0]))
    }

    pub fn dtype(&self) -> &str {
        &self.arrays[0].dtype
    }

    pub fn label_dtype(&self) -> Option<&str> {
        self.labels.as_ref().map(|l| l[0].dtype.as_str())
    }

    /// The array (index into the spec's arrays) and origin of slot `slot` in `epoch`.
    pub fn locate(&self, epoch: u64, slot: u64) -> Result<(usize, Vec<u64>)> {
        let total = *self.cumulative.last().expect("non-empty");
        let k = match self.spec.mode {
            PatchMode::Grid { .. } if slot < total => slot,
            PatchMode::Random { per_epoch } if slot < per_epoch => {
                let h = mix(mix(mix(self.seed ^ 0x5041_5443_4845_5321) ^ epoch) ^ slot);
                ((h as u128 * total as u128) >> 64) as u64
            }
            _ => {
                return Err(invalid(format!(
                    "patch slot {slot} is out of range ({} per epoch)",
                    self.len()
                )))
            }
        };
        let a = self.cumulative.partition_point(|&c| c <= k) - 1;
        let mut rest = k - self.cumulative[a];
        let pos = &self.positions[a];
        let mut origin = vec![0u64; pos.len()];
        for d in (0..pos.len()).rev() {
            origin[d] = rest % pos[d];
            rest /= pos[d];
        }
        if let PatchMode::Grid { .. } = self.spec.mode {
            for (o, s) in origin.iter_mut().zip(&self.stride) {
                *o *= s;
            }
        }
        Ok((a, origin))
    }

    fn selection(&self, meta: &ArrayMeta, origin: &[u64]) -> Vec<DimSel> {
        let p = &self.spec.patch_shape;
        origin
            .iter()
            .zip(p)
            .map(|(&o, &n)| DimSel {
                start: o as i64,
                step: 1,
                count: n,
            })
            .chain(meta.shape[p.len()..].iter().map(|&n| DimSel::all(n)))
            .collect()
    }

    /// Reads one patch of `metas` per located slot into `out`, `per` bytes
    /// each, every chunk once for the whole batch.
    async fn read_patches(
        &self,
        metas: &[ArrayMeta],
        located: &[(usize, Vec<u64>)],
        out: &mut [u8],
        per: usize,
    ) -> Result<()> {
        let reads = out
            .chunks_exact_mut(per)
            .zip(located)
            .map(|(out, (a, origin))| {
                let meta = &metas[*a];
                (meta, self.selection(meta, origin), out)
            })
            .collect();
        super::read_many(self.chunks.as_ref(), reads, Some(&self.decoded)).await
    }

    async fn read_batch_async(
        self: Arc<Self>,
        job: BatchJob,
        pool: Arc<ArenaPool>,
    ) -> Result<Batch> {
        let located = job
            .ids
            .iter()
            .map(|id| self.locate(job.epoch, id.as_u128() as u64))
            .collect::<Result<Vec<_>>>()?;
        let n = located.len();
        let mut data = pool.take(n * self.patch_bytes);
        data.resize(n * self.patch_bytes, 0);
        let mut label_data = pool.take(n * self.label_bytes);
        label_data.resize(n * self.label_bytes, 0);
        let images = self.read_patches(&self.arrays, &located, &mut data, self.patch_bytes);
        match &self.labels {
            Some(labels) => {
                let masks = self.read_patches(labels, &located, &mut label_data, self.label_bytes);
                futures::try_join!(images, masks)?;
            }
            None => images.await?,
        }
        let offsets = |per: usize| (0..=n).map(|i| (i * per) as i64).collect::<Vec<_>>();
        let labels = match self.labels {
            Some(_) => Labels::Blob {
                data: label_data,
                offsets: offsets(self.label_bytes),
            },
            None => Labels::None,
        };
        let mut batch = Batch::from_job(&job, data, labels);
        batch.offsets = offsets(self.patch_bytes);
        Ok(batch)
    }
}

/// Chunks of the largest kind among `arrays` and `labels` that fit
/// [`DECODED_CHUNK_BUDGET`] (at least 4, so that reads still overlap).
fn decoded_permits(arrays: &[ArrayMeta], labels: Option<&[ArrayMeta]>) -> usize {
    let largest = arrays
        .iter()
        .chain(labels.unwrap_or(&[]))
        .map(ArrayMeta::chunk_len)
        .max()
        .unwrap_or(1)
        .max(1);
    (DECODED_CHUNK_BUDGET / largest).max(4)
}

fn full_shape(patch: &[u64], meta: &ArrayMeta) -> Vec<u64> {
    patch
        .iter()
        .chain(&meta.shape[patch.len()..])
        .copied()
        .collect()
}

impl TableReader for PatchTable {
    fn read_batch(
        self: Arc<Self>,
        job: BatchJob,
        pool: Arc<ArenaPool>,
    ) -> BoxFuture<'static, Result<Batch>> {
        self.read_batch_async(job, pool).boxed()
    }

    fn spec(&self) -> &TableSpec {
        &self.table
    }
}
