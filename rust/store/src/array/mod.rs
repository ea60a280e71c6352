//! N-dimensional arrays cut into chunks over a store: an array is its
//! metadata ([`ArrayMeta`]: shape, dtype, chunk shape, codec, fill value) and
//! one stored value per chunk, keyed by the array's id and the chunk's index
//! in the chunk grid (C order). A selection reads or writes only the chunks it
//! touches, many at once; chunks are decoded on the blocking pool (no GIL, no
//! runtime thread held) and copied straight into the caller's buffer.
//!
//! Chunks keep the full chunk shape at the array's edges (padded with the fill
//! value), so every chunk has the same size. A chunk never written reads as
//! the fill value. Writers of different chunks never interfere (each chunk is
//! one value); a write of part of a chunk reads, modifies and writes the whole
//! chunk, so two writers of the same chunk at once may lose one's update.
//!
//! - `select`: which chunks a selection touches, and the copies;
//! - `codec`: a chunk's stored form (header, zstd, checksum);
//! - `patch`: patches of arrays as samples of the fetch engine.

pub mod codec;
pub mod patch;
pub mod select;

pub use codec::Compression;
pub use select::DimSel;

use crate::error::{Result, StoreError};
use crate::{ChunkSource, SampleStore};
use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use select::ChunkPart;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use uuid::Uuid;

/// Chunk reads (or read-modify-writes) in flight per selection.
const CHUNK_WINDOW: usize = 64;
/// Chunks written per group of a write (bounds the memory of a large write).
const WRITE_GROUP: usize = 64;
const FORMAT_VERSION: u32 = 1;

/// What an array is: everything but its chunks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArrayMeta {
    pub version: u32,
    pub name: String,
    /// Chunks are stored under this id, new at each creation: an array made
    /// again under the same name never sees the old one's chunks.
    pub id: Uuid,
    pub shape: Vec<u64>,
    pub chunks: Vec<u64>,
    /// numpy's `dtype.str` (e.g. `"<f4"`, `"|u1"`): the store only needs `itemsize`.
    pub dtype: String,
    pub itemsize: usize,
    pub compression: Compression,
    /// One element's bytes: what a chunk never written reads as.
    pub fill: Vec<u8>,
}

fn invalid(message: String) -> StoreError {
    StoreError::InvalidArgument(message)
}

impl ArrayMeta {
    /// A new array's metadata, checked (a fresh id).
    pub fn new(
        name: &str,
        shape: Vec<u64>,
        chunks: Vec<u64>,
        dtype: &str,
        itemsize: usize,
        compression: Compression,
        fill: Vec<u8>,
    ) -> Result<Self> {
        if name.is_empty() {
            return Err(invalid("an array needs a non-empty name".into()));
        }
        if shape.is_empty() {
            return Err(invalid(format!(
                "array {name:?}: a shape needs at least one dimension"
            )));
        }
        if chunks.len() != shape.len() {
            return Err(invalid(format!(
                "array {name:?}: chunks {chunks:?} must have one entry per dimension of shape {shape:?}"
            )));
        }
        if chunks.contains(&0) {
            return Err(invalid(format!(
                "array {name:?}: chunk sizes must be > 0, got {chunks:?}"
            )));
        }
        if itemsize == 0 || fill.len() != itemsize {
            return Err(invalid(format!(
                "array {name:?}: the fill value must be one element ({itemsize} bytes of {dtype}), got {} bytes",
                fill.len()
            )));
        }
        let meta = Self {
            version: FORMAT_VERSION,
            name: name.to_string(),
            id: Uuid::new_v4(),
            shape,
            chunks,
            dtype: dtype.to_string(),
            itemsize,
            compression,
            fill,
        };
        meta.chunk_len_checked()?;
        Ok(meta)
    }

    fn chunk_len_checked(&self) -> Result<usize> {
        self.chunks
            .iter()
            .try_fold(self.itemsize as u64, |acc, &c| acc.checked_mul(c))
            .filter(|&n| n <= isize::MAX as u64)
            .map(|n| n as usize)
            .ok_or_else(|| {
                invalid(format!(
                    "array {:?}: chunks {:?} are too large",
                    self.name, self.chunks
                ))
            })
    }

    /// Bytes of one (decoded) chunk.
    pub fn chunk_len(&self) -> usize {
        self.chunks.iter().product::<u64>() as usize * self.itemsize
    }

    /// Chunks along each dimension.
    pub fn grid(&self) -> Vec<u64> {
        self.shape
            .iter()
            .zip(&self.chunks)
            .map(|(&n, &c)| n.div_ceil(c))
            .collect()
    }

    pub fn num_chunks(&self) -> u64 {
        self.grid().iter().product()
    }

    pub fn nbytes(&self) -> u64 {
        self.shape.iter().product::<u64>() * self.itemsize as u64
    }

    /// The index under which the chunk at grid `coords` is stored (C order).
    pub fn chunk_index(&self, coords: &[u64]) -> u64 {
        coords
            .iter()
            .zip(self.grid())
            .fold(0, |acc, (&c, g)| acc * g + c)
    }

    fn fill_chunk(&self) -> Vec<u8> {
        if self.fill.iter().all(|&b| b == 0) {
            return vec![0; self.chunk_len()];
        }
        self.fill.repeat(self.chunk_len() / self.itemsize)
    }

    fn corrupt(&self, coords: &[u64], reason: String) -> StoreError {
        StoreError::CorruptChunk {
            array: self.name.clone(),
            chunk: coords.to_vec(),
            reason,
        }
    }

    /// Bytes of the dense result of `sel`.
    pub fn selection_len(&self, sel: &[DimSel]) -> usize {
        sel.iter().map(|s| s.count).product::<u64>() as usize * self.itemsize
    }
}

/// Creates the array described by `meta`; an existing array of that name is
/// refused, or with `overwrite` deleted first.
pub async fn create(store: &dyn SampleStore, meta: &ArrayMeta, overwrite: bool) -> Result<()> {
    if let Some(limit) = store.max_chunk_bytes() {
        if meta.chunk_len() + 64 > limit {
            return Err(invalid(format!(
                "array {:?}: chunks of {} bytes exceed what {} stores in one value ({limit} bytes); use smaller chunks",
                meta.name,
                meta.chunk_len(),
                store.url()
            )));
        }
    }
    if let Some(old) = store.array_meta(&meta.name).await? {
        if !overwrite {
            return Err(StoreError::ArrayExists {
                store: store.url(),
                name: meta.name.clone(),
            });
        }
        let old = parse_meta(store, &meta.name, &old)?;
        delete_chunks(store, &old).await?;
    }
    let json = serde_json::to_string(meta).expect("serializable");
    store.put_array_meta(&meta.name, Some(json)).await
}

fn parse_meta(store: &dyn SampleStore, name: &str, json: &str) -> Result<ArrayMeta> {
    let meta: ArrayMeta = serde_json::from_str(json).map_err(|e| {
        invalid(format!(
            "array {name:?} in {}: unreadable metadata: {e}",
            store.url()
        ))
    })?;
    if meta.version != FORMAT_VERSION {
        return Err(invalid(format!(
            "array {name:?} in {} has format version {}; this version reads {FORMAT_VERSION}",
            store.url(),
            meta.version
        )));
    }
    Ok(meta)
}

/// The metadata of array `name`; a missing array is named with the ones there are.
pub async fn open(store: &dyn SampleStore, name: &str) -> Result<ArrayMeta> {
    match store.array_meta(name).await? {
        Some(json) => parse_meta(store, name, &json),
        None => Err(StoreError::ArrayNotFound {
            store: store.url(),
            name: name.to_string(),
            available: store.list_arrays().await?,
        }),
    }
}

/// Names of the store's arrays, sorted.
pub async fn list(store: &dyn SampleStore) -> Result<Vec<String>> {
    let mut names = store.list_arrays().await?;
    names.sort();
    Ok(names)
}

/// Deletes array `name`: its metadata first (so no reader sees half an
/// array), then its chunks.
pub async fn delete(store: &dyn SampleStore, name: &str) -> Result<()> {
    let meta = open(store, name).await?;
    store.put_array_meta(name, None).await?;
    delete_chunks(store, &meta).await
}

async fn delete_chunks(store: &dyn SampleStore, meta: &ArrayMeta) -> Result<()> {
    let n = meta.num_chunks();
    let mut start = 0u64;
    while start < n {
        let end = (start + 4096).min(n);
        store
            .put_chunks(meta.id, (start..end).map(|i| (i, None)).collect())
            .await?;
        start = end;
    }
    Ok(())
}

/// A chunk's raw bytes, None if it was never written.
async fn fetch(
    chunks: &dyn ChunkSource,
    meta: &ArrayMeta,
    coords: &[u64],
) -> Result<Option<Bytes>> {
    let stored = chunks.get_chunk(meta.id, meta.chunk_index(coords)).await?;
    let Some(stored) = stored else {
        return Ok(None);
    };
    let expected = meta.chunk_len();
    let raw = tokio::task::spawn_blocking(move || codec::decode(stored, expected))
        .await
        .map_err(|e| StoreError::Internal(format!("chunk decoding panicked: {e}")))?;
    raw.map(Some).map_err(|reason| meta.corrupt(coords, reason))
}

/// Reads `sel` of the array into `out` (the selection's dense C-order bytes,
/// `meta.selection_len(sel)` long) from `chunks` (the store's
/// [`SampleStore::chunk_source`]). Copies happen in this future only: once
/// it is dropped nothing writes to `out`.
pub async fn read(
    chunks: &dyn ChunkSource,
    meta: &ArrayMeta,
    sel: &[DimSel],
    out: &mut [u8],
) -> Result<()> {
    read_many(chunks, vec![(meta, sel.to_vec(), out)], None).await
}

/// A chunk [`read_many`] fetches: the read whose array it belongs to, its
/// coordinates, and its part in each read that touches it.
type ChunkJob = (usize, Vec<u64>, Vec<(usize, ChunkPart)>);

/// One selection of [`read_many`]: the array, the selection, its output.
pub type ReadRequest<'a> = (&'a ArrayMeta, Vec<DimSel>, &'a mut [u8]);

/// Reads several selections (of one or more arrays) at once: each chunk any
/// of them touches is fetched and decoded once, and copied into every output
/// that needs it (the patches of a batch often share chunks). `budget`, when
/// given, bounds the decoded chunks held at once (one permit a chunk).
pub async fn read_many(
    chunks: &dyn ChunkSource,
    mut reads: Vec<ReadRequest<'_>>,
    budget: Option<&tokio::sync::Semaphore>,
) -> Result<()> {
    // Per chunk (array id, index): its array (a read of it), its coordinates,
    // and the parts of each read it serves.
    let mut wanted: HashMap<(Uuid, u64), ChunkJob> = HashMap::new();
    let mut order = Vec::new();
    let mut out_shapes = Vec::with_capacity(reads.len());
    for (i, (meta, sel, out)) in reads.iter().enumerate() {
        select::check(&meta.shape, sel, &meta.name)?;
        check_len(meta, sel, out.len())?;
        out_shapes.push(sel.iter().map(|s| s.count).collect::<Vec<u64>>());
        for part in select::parts(sel, &meta.chunks) {
            let key = (meta.id, meta.chunk_index(&part.coords));
            let entry = wanted.entry(key).or_insert_with(|| {
                order.push(key);
                (i, part.coords.clone(), Vec::new())
            });
            entry.2.push((i, part));
        }
    }
    let metas: Vec<&ArrayMeta> = reads.iter().map(|r| r.0).collect();
    let mut fills: HashMap<Uuid, Vec<u8>> = HashMap::new();
    let jobs = order
        .into_iter()
        .map(|key| wanted.remove(&key).expect("listed"));
    let mut fetched = stream::iter(jobs)
        .map(|(first, coords, parts)| {
            let meta = metas[first];
            async move {
                let permit = match budget {
                    Some(b) => Some(
                        b.acquire()
                            .await
                            .map_err(|e| StoreError::Internal(e.to_string()))?,
                    ),
                    None => None,
                };
                let raw = fetch(chunks, meta, &coords).await?;
                Ok::<_, StoreError>((meta, raw, parts, permit))
            }
        })
        .buffer_unordered(CHUNK_WINDOW);
    while let Some((meta, raw, parts, _permit)) = fetched.try_next().await? {
        let chunk = match &raw {
            Some(raw) => &raw[..],
            None => &*fills.entry(meta.id).or_insert_with(|| meta.fill_chunk()),
        };
        for (i, part) in parts {
            let out = &mut *reads[i].2;
            select::gather(
                &part,
                chunk,
                &meta.chunks,
                out,
                &out_shapes[i],
                meta.itemsize,
            );
        }
    }
    Ok(())
}

fn check_len(meta: &ArrayMeta, sel: &[DimSel], len: usize) -> Result<()> {
    let want = meta.selection_len(sel);
    if len != want {
        return Err(invalid(format!(
            "array {:?}: the selection has {want} bytes, the buffer {len}",
            meta.name
        )));
    }
    Ok(())
}

/// Writes `data` (the selection's dense C-order bytes) into `sel` of the array.
pub async fn write(
    store: &dyn SampleStore,
    meta: &ArrayMeta,
    sel: &[DimSel],
    data: &[u8],
) -> Result<()> {
    select::check(&meta.shape, sel, &meta.name)?;
    check_len(meta, sel, data.len())?;
    let out_shape: Vec<u64> = sel.iter().map(|s| s.count).collect();
    let parts = select::parts(sel, &meta.chunks);
    let source = store.chunk_source()?;
    let chunks = source.as_ref();
    for group in parts.chunks(WRITE_GROUP) {
        // Chunks only partly written are read first (concurrently).
        let mut base = stream::iter(group.iter().cloned())
            .map(|part| async move {
                let raw = if select::covers_chunk(&part, &meta.chunks, &meta.shape) {
                    None
                } else {
                    fetch(chunks, meta, &part.coords).await?
                };
                Ok::<_, StoreError>((part, raw))
            })
            .buffer_unordered(CHUNK_WINDOW);
        let mut encoding = Vec::with_capacity(group.len());
        while let Some((part, raw)) = base.try_next().await? {
            let mut chunk = raw.map_or_else(|| meta.fill_chunk(), Vec::from);
            select::scatter(
                &part,
                data,
                &mut chunk,
                &meta.chunks,
                &out_shape,
                meta.itemsize,
            );
            let (index, compression) = (meta.chunk_index(&part.coords), meta.compression);
            encoding.push(tokio::task::spawn_blocking(move || {
                (index, Some(codec::encode(&chunk, compression)))
            }));
        }
        let mut encoded = Vec::with_capacity(encoding.len());
        for task in encoding {
            encoded.push(
                task.await
                    .map_err(|e| StoreError::Internal(format!("chunk encoding panicked: {e}")))?,
            );
        }
        store.put_chunks(meta.id, encoded).await?;
    }
    Ok(())
}
