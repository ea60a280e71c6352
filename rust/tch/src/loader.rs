//! The loader: a store, a table, a list of uuids and the plan options; each
//! epoch iterates this rank's batches as tensors.

use crate::blob::tensor_of;
use crate::error::{Error, Result};
use crs4_cassandra_core::{
    Consumed, EpochPlan, LabelType, LoaderState, PlanSpec, Progress, RunIdentity, SplitFile,
};
use crs4_cassandra_store::batch::Images as DecodedImages;
use crs4_cassandra_store::cassandra::OptionValue;
use crs4_cassandra_store::engine::Next;
use crs4_cassandra_store::runtime::runtime;
use crs4_cassandra_store::stats::{EpochStats, ReaderStats};
use crs4_cassandra_store::{
    check_unique_ids, open_store, Batch, Labels, OnError, Reader, ReaderConfig, Share, TableReader,
    TableSpec,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tch::{Kind, Tensor};
use uuid::Uuid;

/// ImageNet's per-channel mean, for [`Images::Normalized`].
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet's per-channel standard deviation, for [`Images::Normalized`].
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// How (and whether) the loader decodes the encoded images.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Images {
    /// No decoding: only `data` and `offsets` (the encoded bytes).
    Encoded,
    /// `images` is a uint8 tensor `[B, H, W, 3]` (RGB).
    U8Nhwc,
    /// `images` is a float tensor `[B, 3, H, W]`: `(pixel / 255 - mean) / std`.
    Normalized { mean: [f32; 3], std: [f32; 3] },
}

/// Builds a [`Loader`]; see [`Loader::builder`].
#[derive(Debug, Clone)]
pub struct LoaderBuilder {
    store: String,
    store_options: Vec<(String, OptionValue)>,
    table: String,
    split: Option<(PathBuf, String)>,
    uuids: Option<Vec<Uuid>>,
    label_type: Option<LabelType>,
    columns: Option<(String, String, String)>,
    batch_size: Option<usize>,
    rank: usize,
    world_size: usize,
    seed: u64,
    epoch: u64,
    shuffle: bool,
    drop_last: bool,
    ordered: bool,
    window: Option<usize>,
    images: Images,
    resize: Option<(u32, u32)>,
    skip_errors: bool,
    prefetch: usize,
    allow_repeats: bool,
}

impl LoaderBuilder {
    /// Let the uuid list name a sample more than once (deliberate
    /// oversampling: each entry is served once per epoch); by default a
    /// repeated uuid is refused, naming it.
    pub fn allow_repeats(mut self, allow: bool) -> Self {
        self.allow_repeats = allow;
        self
    }

    /// A connection option of the store (e.g. `username`, `use_ssl`,
    /// `request_timeout`: the names the Python `open_store` takes).
    pub fn store_option(mut self, name: &str, value: OptionValue) -> Self {
        self.store_options.push((name.to_string(), value));
        self
    }

    /// Reads the uuids of split `name` of a split file, and its label type and
    /// column names (unless set explicitly).
    pub fn split_file(mut self, path: impl AsRef<Path>, name: &str) -> Self {
        self.split = Some((path.as_ref().to_path_buf(), name.to_string()));
        self
    }

    /// Reads these uuids (instead of a split file).
    pub fn uuids(mut self, ids: Vec<Uuid>) -> Self {
        self.uuids = Some(ids);
        self
    }

    /// The table's label type; default: the split file's, or `int`.
    pub fn label_type(mut self, label_type: LabelType) -> Self {
        self.label_type = Some(label_type);
        self
    }

    /// Column names; default: the split file's, or `id`, `label`, `data`.
    pub fn columns(mut self, id: &str, label: &str, data: &str) -> Self {
        self.columns = Some((id.into(), label.into(), data.into()));
        self
    }

    /// Samples per batch (required).
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = Some(batch_size);
        self
    }

    /// This process's rank among `world_size` data-parallel ranks (default 0 of 1).
    pub fn rank(mut self, rank: usize, world_size: usize) -> Self {
        self.rank = rank;
        self.world_size = world_size;
        self
    }

    /// Seed of the shuffle (default 0); the same on every rank.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The first epoch (default 0); see [`Loader::set_epoch`].
    pub fn epoch(mut self, epoch: u64) -> Self {
        self.epoch = epoch;
        self
    }

    /// Shuffle each epoch (default true).
    pub fn shuffle(mut self, shuffle: bool) -> Self {
        self.shuffle = shuffle;
        self
    }

    /// Drop the last incomplete global batch instead of padding it (default false).
    pub fn drop_last(mut self, drop_last: bool) -> Self {
        self.drop_last = drop_last;
        self
    }

    /// Deliver batches in plan order (default true) or as they complete.
    pub fn ordered(mut self, ordered: bool) -> Self {
        self.ordered = ordered;
        self
    }

    /// A fixed number of batch reads kept in flight, for experts; by default
    /// the window tunes itself within the memory budget.
    pub fn window(mut self, window: usize) -> Self {
        self.window = Some(window);
        self
    }

    /// Decode the images (default [`Images::Encoded`]: no decoding).
    pub fn images(mut self, images: Images) -> Self {
        self.images = images;
        self
    }

    /// Resize decoded images to `height` x `width`; without it, the images of a
    /// batch must all have one size.
    pub fn resize(mut self, height: u32, width: u32) -> Self {
        self.resize = Some((height, width));
        self
    }

    /// Drop samples whose image cannot be decoded (listed in
    /// [`TchBatch::skipped`]) instead of failing the epoch (default false).
    pub fn skip_errors(mut self, skip: bool) -> Self {
        self.skip_errors = skip;
        self
    }

    /// Finished batches queued ahead of the training loop (default 2).
    pub fn prefetch(mut self, batches: usize) -> Self {
        self.prefetch = batches;
        self
    }

    /// Opens the store and the table, and checks every option: errors surface
    /// here rather than in the middle of an epoch.
    pub fn build(self) -> Result<Loader> {
        let batch_size = self
            .batch_size
            .ok_or_else(|| Error::InvalidArgument("batch_size is required".into()))?;
        if let Images::Normalized { std, .. } = self.images {
            if std.iter().any(|&s| s == 0.0 || !s.is_finite()) {
                return Err(Error::InvalidArgument(format!(
                    "normalisation std must be finite and non-zero, got {std:?}"
                )));
            }
        }
        let (ids, header) = match (self.uuids, &self.split) {
            (Some(_), Some(_)) => {
                return Err(Error::InvalidArgument(
                    "give either uuids or a split file, not both".into(),
                ))
            }
            (None, None) => {
                return Err(Error::InvalidArgument(
                    "no samples: give a split file or uuids".into(),
                ))
            }
            (Some(ids), None) => (ids, None),
            (None, Some((path, name))) => {
                let file = SplitFile::load(path)?;
                let ids = file
                    .uuids(name)?
                    .chunks_exact(16)
                    .map(|c| Uuid::from_bytes(c.try_into().expect("16 bytes")))
                    .collect();
                (ids, Some(file.header))
            }
        };
        if !self.allow_repeats {
            check_unique_ids(&ids)?;
        }
        if let Some(h) = &header {
            if h.table != self.table {
                return Err(Error::InvalidArgument(format!(
                    "the split file lists samples of table {:?}, not {:?}",
                    h.table, self.table
                )));
            }
        }
        let label_type = self
            .label_type
            .or(header.as_ref().map(|h| h.label_type))
            .unwrap_or(LabelType::Int);
        let (id_col, label_col, data_col) = self.columns.unwrap_or_else(|| match &header {
            Some(h) => (h.id_col.clone(), h.label_col.clone(), h.data_col.clone()),
            None => ("id".into(), "label".into(), "data".into()),
        });
        let config = ReaderConfig {
            shuffle: self.shuffle,
            seed: self.seed,
            drop_last: self.drop_last,
            ordered: self.ordered,
            window: self.window,
            decode: self.images != Images::Encoded,
            size: self.resize,
            on_error: if self.skip_errors {
                OnError::Skip
            } else {
                OnError::Raise
            },
            ready: Some(self.prefetch),
            allow_repeats: self.allow_repeats,
            rank: Some(self.rank),
            world_size: Some(self.world_size),
            ..ReaderConfig::new(
                TableSpec {
                    table: self.table.clone(),
                    id_col,
                    label_col,
                    data_col,
                    label_type,
                },
                batch_size,
            )
        };
        config.validate()?;
        let share = Share::new(self.rank, self.world_size, 1, 0)?;
        // A bare path is a local store, as this loader has always taken it.
        let url = if self.store.contains("://") || self.store.starts_with("local:") {
            self.store.clone()
        } else {
            format!("local:{}", self.store)
        };
        let store = open_store(&url, self.store_options)?.store;
        let reader = runtime().block_on(config.open_table(&store))?;
        let uuid_bytes: Vec<u8> = ids.iter().flat_map(|u| *u.as_bytes()).collect();
        // Validates the plan options once, with the sizes of this split.
        EpochPlan::new(config.plan_spec(ids.len(), self.world_size, self.epoch))?;
        Ok(Loader {
            reader,
            run: config.run_identity(&uuid_bytes),
            config: Arc::new(config),
            ids: ids.into(),
            share,
            progress: Progress::fresh(self.epoch),
            images: self.images,
            last_stats: std::sync::Mutex::new(None),
        })
    }
}

/// Streams this rank's batches of a table as `tch::Tensor`s: every sample once
/// per epoch over all ranks (the last global batch padded, with pads flagged
/// in `is_pad`, unless `drop_last`), the same number of batches on every rank,
/// an order fixed by (seed, epoch), and reads prefetched in the background.
pub struct Loader {
    reader: Arc<dyn TableReader>,
    config: Arc<ReaderConfig>,
    run: RunIdentity,
    ids: Arc<[Uuid]>,
    share: Share,
    /// The epoch and its resume point.
    progress: Progress,
    images: Images,
    /// The figures of the last epoch iterated (see [`Loader::stats`]).
    last_stats: std::sync::Mutex<Option<EpochStats>>,
}

impl Loader {
    /// Starts a builder for `table` of the store at `store`: `local:PATH` (or
    /// a bare path), or `cassandra://host1,host2:9042/keyspace` (see
    /// [`LoaderBuilder::store_option`]).
    pub fn builder(store: &str, table: &str) -> LoaderBuilder {
        LoaderBuilder {
            store: store.to_string(),
            store_options: Vec::new(),
            table: table.to_string(),
            split: None,
            uuids: None,
            label_type: None,
            columns: None,
            batch_size: None,
            rank: 0,
            world_size: 1,
            seed: 0,
            epoch: 0,
            shuffle: true,
            drop_last: false,
            ordered: true,
            window: None,
            images: Images::Encoded,
            resize: None,
            skip_errors: false,
            prefetch: 2,
            allow_repeats: false,
        }
    }

    fn spec(&self) -> PlanSpec {
        self.config
            .plan_spec(self.ids.len(), self.share.world_size, self.progress.epoch)
    }

    /// Selects the epoch (and so the shuffle). A resume point loaded with
    /// [`Loader::load_state`] applies only to its own epoch.
    pub fn set_epoch(&mut self, epoch: u64) {
        if epoch != self.progress.epoch {
            self.progress = Progress::fresh(epoch);
        }
    }

    pub fn epoch(&self) -> u64 {
        self.progress.epoch
    }

    /// Batches this rank serves in the current epoch (from the resume point).
    pub fn len(&self) -> usize {
        self.progress
            .batches_left(&self.spec())
            .expect("options were validated by the builder")
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Samples in the split (all ranks together).
    pub fn num_samples(&self) -> usize {
        self.ids.len()
    }

    pub fn rank(&self) -> usize {
        self.share.rank
    }

    pub fn world_size(&self) -> usize {
        self.share.world_size
    }

    /// Starts reading the current epoch; the iterator yields this rank's batches.
    /// Dropping it early stops the background reads.
    pub fn iter(&self) -> Result<EpochIter<'_>> {
        let reader = Reader::start(
            self.reader.clone(),
            self.config.clone(),
            self.ids.clone(),
            self.share,
            &self.progress,
        )?;
        let total = reader.remaining();
        Ok(EpochIter {
            loader: self,
            reader,
            positions: Vec::new(),
            total,
            failed: false,
        })
    }

    /// The figures of the last epoch iterated (delivered in full or not; see
    /// [`EpochIter::stats`] for the one under way): samples/s, the time the
    /// loop waited for batches (the data stall), batch read times, the window,
    /// and the store's reads, retries and hedges (see
    /// `crs4_cassandra_store::stats`).
    pub fn stats(&self) -> Option<EpochStats> {
        self.last_stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The state after this rank has consumed `batches_consumed` batches of the
    /// current epoch in plan order (every rank consumes the same number in lockstep).
    pub fn state(&self, batches_consumed: usize) -> Result<LoaderState> {
        self.state_of(Consumed::FirstBatches(batches_consumed))
    }

    /// The state after this rank has consumed the batches at `positions`
    /// (their [`TchBatch::position`]s, in any order) of the current epoch.
    pub fn state_after(&self, positions: impl IntoIterator<Item = usize>) -> Result<LoaderState> {
        self.state_of(Consumed::Positions(positions.into_iter().collect()))
    }

    fn state_of(&self, consumed: Consumed) -> Result<LoaderState> {
        let after = self.progress.after_consumed(&self.spec(), consumed, 1)?;
        Ok(LoaderState::new(
            &self.run,
            self.share.rank,
            self.share.world_size,
            &after,
        ))
    }

    /// Resumes from a saved state (Python's `state_dict()` or this loader's;
    /// of any world size unless it has batches consumed out of order): the
    /// next iteration yields exactly the batches that had not been consumed.
    pub fn load_state(&mut self, state: &LoaderState) -> Result<()> {
        self.progress = state.resume(&self.run, self.share.rank, self.share.world_size)?;
        Ok(())
    }
}

/// One batch as tensors. `data` and `offsets` are views of the batch's arena
/// (no copy); the arena returns to the loader's pool when the last tensor over
/// it (including any view or shallow clone) is dropped.
#[derive(Debug)]
pub struct TchBatch {
    /// Rank-local position of the batch in the epoch (counted from the resume point).
    pub position: usize,
    pub epoch: u64,
    /// The encoded samples back to back: uint8 `[total bytes]`.
    pub data: Tensor,
    /// int64 `[B + 1]`: sample `i` is `data[offsets[i]..offsets[i+1]]`.
    pub offsets: Tensor,
    /// int64 `[B]` for int labels; the label bytes back to back (uint8) for blob labels; none for unlabelled tables.
    pub labels: Option<Tensor>,
    /// int64 `[B + 1]` offsets into `labels`, for blob labels.
    pub label_offsets: Option<Tensor>,
    /// Decoded images when the loader decodes (see [`Images`]).
    pub images: Option<Tensor>,
    /// int64 `[B]`: positions of the samples in the split's uuid list.
    pub indices: Tensor,
    /// bool `[B]`: padding samples (repeats) that complete the last global batch.
    pub is_pad: Tensor,
    pub ids: Vec<Uuid>,
    /// Samples dropped from this batch because their image could not be
    /// decoded (with [`LoaderBuilder::skip_errors`]): (position in the split's
    /// uuid list, uuid).
    pub skipped: Vec<(i64, Uuid)>,
}

impl TchBatch {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    fn from_batch(batch: Batch, images: Images, epoch: u64) -> Result<Self> {
        let batch = Arc::new(batch);
        let b = batch.len() as i64;
        let ids = batch
            .ids
            .chunks_exact(16)
            .map(|c| Uuid::from_bytes(c.try_into().expect("16 bytes")))
            .collect();
        let data = tensor_of(
            batch.clone(),
            |x| x.data.as_slice(),
            &[batch.data.len() as i64],
        )?;
        let offsets = tensor_of(batch.clone(), |x| x.offsets.as_slice(), &[b + 1])?;
        let indices = tensor_of(batch.clone(), |x| x.indices.as_slice(), &[b])?;
        let is_pad = tensor_of(batch.clone(), |x| x.is_pad.as_slice(), &[b])?;
        let (labels, label_offsets) = match &batch.labels {
            Labels::Int(_) => (
                Some(tensor_of(batch.clone(), |x| int_labels(x), &[b])?),
                None,
            ),
            Labels::Blob { data: l, offsets } => (
                Some(tensor_of(
                    batch.clone(),
                    |x| blob_labels(x).0,
                    &[l.len() as i64],
                )?),
                Some(tensor_of(
                    batch.clone(),
                    |x| blob_labels(x).1,
                    &[offsets.len() as i64],
                )?),
            ),
            Labels::None => (None, None),
        };
        let images = match (&batch.images, images) {
            (_, Images::Encoded) | (None, _) => None,
            (Some(decoded), format) => {
                let (h, w) = batch_image_size(&batch, decoded)?;
                let dims = [b, h as i64, w as i64, 3];
                let u8_nhwc = tensor_of(batch.clone(), |x| pixels(x), &dims)?;
                Some(match format {
                    Images::Normalized { mean, std } => normalize(&u8_nhwc, mean, std)?,
                    _ => u8_nhwc,
                })
            }
        };
        let skipped = batch
            .skipped
            .iter()
            .zip(batch.skipped_ids.chunks_exact(16))
            .map(|(&i, id)| (i, Uuid::from_bytes(id.try_into().expect("16 bytes"))))
            .collect();
        Ok(TchBatch {
            position: batch.position,
            epoch,
            data,
            offsets,
            labels,
            label_offsets,
            images,
            indices,
            is_pad,
            ids,
            skipped,
        })
    }
}

/// The one (height, width) of a batch's decoded images: a batch is one dense
/// tensor, so without a resize its images must share a size.
fn batch_image_size(batch: &Batch, decoded: &DecodedImages) -> Result<(u32, u32)> {
    if let Some(size) = decoded.size {
        return Ok(size);
    }
    let first = decoded.shapes.first().copied().unwrap_or((0, 0));
    match decoded.shapes.iter().position(|&s| s != first) {
        None => Ok(first),
        Some(i) => {
            let (h, w) = decoded.shapes[i];
            Err(Error::Decode {
                uuid: batch
                    .ids
                    .get(i * 16..i * 16 + 16)
                    .and_then(|b| Uuid::from_slice(b).ok())
                    .unwrap_or_default(),
                position: batch.position,
                reason: format!(
                    "it is {h}x{w} (HxW) but the batch's first image is {}x{}; \
                     set a resize on the loader to batch images of different sizes",
                    first.0, first.1
                ),
            })
        }
    }
}

fn pixels(b: &Batch) -> &[u8] {
    b.images.as_ref().map_or(&[], |i| i.pixels.as_slice())
}

fn int_labels(b: &Batch) -> &[i64] {
    match &b.labels {
        Labels::Int(v) => v,
        _ => &[],
    }
}

fn blob_labels(b: &Batch) -> (&[u8], &[i64]) {
    match &b.labels {
        Labels::Blob { data, offsets } => (data, offsets),
        _ => (&[], &[]),
    }
}

/// uint8 NHWC to float NCHW, `(x / 255 - mean) / std`, in one pass of libtorch ops.
fn normalize(u8_nhwc: &Tensor, mean: [f32; 3], std: [f32; 3]) -> Result<Tensor> {
    let scale: Vec<f32> = std.iter().map(|s| 1.0 / (255.0 * s)).collect();
    let shift: Vec<f32> = mean.iter().zip(&std).map(|(m, s)| -m / s).collect();
    let scale = Tensor::from_slice(&scale).view([1, 3, 1, 1]);
    let shift = Tensor::from_slice(&shift).view([1, 3, 1, 1]);
    let x = u8_nhwc.f_permute([0, 3, 1, 2])?.f_to_kind(Kind::Float)?;
    Ok(x.f_mul(&scale)?.f_add(&shift)?.f_contiguous()?)
}

/// The batches of one epoch of a [`Loader`], for this rank.
pub struct EpochIter<'a> {
    loader: &'a Loader,
    reader: Reader,
    /// Positions of the batches yielded so far.
    positions: Vec<usize>,
    total: usize,
    failed: bool,
}

impl Drop for EpochIter<'_> {
    fn drop(&mut self) {
        let stats = self.reader.stats();
        *self
            .loader
            .last_stats
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = stats.current.or(stats.last);
    }
}

impl EpochIter<'_> {
    /// The figures of this epoch so far (`current`; `last` once every batch
    /// was delivered).
    pub fn stats(&self) -> ReaderStats {
        self.reader.stats()
    }

    /// Batches yielded so far in this epoch.
    pub fn yielded(&self) -> usize {
        self.positions.len()
    }

    /// The state after the batches yielded so far (in either delivery
    /// order): saving it and resuming from it continues with the rest.
    pub fn state(&self) -> Result<LoaderState> {
        self.loader.state_after(self.positions.iter().copied())
    }

    fn next_raw(&mut self) -> Option<Result<Batch>> {
        loop {
            match self.reader.next_blocking(Duration::from_secs(1)) {
                Ok(Next::Batch(b)) => return Some(Ok(b)),
                Ok(Next::End) => return None,
                Ok(Next::Pending) => continue,
                Err(e) => return Some(Err(e.into())),
            }
        }
    }
}

impl Iterator for EpochIter<'_> {
    type Item = Result<TchBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.positions.len() >= self.total {
            if !self.failed {
                // Every batch is in: the reader ends the epoch's figures.
                let _ = self.next_raw();
            }
            return None;
        }
        let epoch = self.loader.progress.epoch;
        let item = self
            .next_raw()?
            .and_then(|batch| TchBatch::from_batch(batch, self.loader.images, epoch));
        match item {
            Ok(b) => {
                self.positions.push(b.position);
                Some(Ok(b))
            }
            Err(e) => {
                // An error ends the epoch.
                self.total = self.positions.len();
                self.failed = true;
                Some(Err(e))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.total - self.positions.len();
        (0, Some(left))
    }
}
