//! Batches and the arena pool their bytes live in.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use uuid::Uuid;

/// A pool of byte buffers reused from batch to batch: a buffer whose batch has
/// been released by every consumer goes back here instead of to the allocator,
/// so steady-state iteration neither allocates nor page-faults fresh memory.
#[derive(Debug)]
pub struct ArenaPool {
    free: Mutex<Vec<Vec<u8>>>,
    max_free: AtomicUsize,
}

impl ArenaPool {
    pub fn new(max_free: usize) -> Arc<Self> {
        Arc::new(Self {
            free: Mutex::new(Vec::new()),
            max_free: AtomicUsize::new(max_free),
        })
    }

    /// Keeps up to `max_free` released buffers for reuse. The fetch engine sets
    /// it to the number of batches it may hold at once: buffers cycle between
    /// reads and the consumer without returning to the allocator, whose fresh
    /// pages would otherwise be zeroed by the kernel on first touch (as costly
    /// as the copy that fills them).
    pub fn set_max_free(&self, max_free: usize) {
        self.max_free.store(max_free, Ordering::Relaxed);
        let mut free = self.free.lock().expect("arena pool poisoned");
        free.truncate(max_free);
    }

    /// An empty buffer with room for at least `capacity` bytes: the smallest
    /// free one that fits, else a new one with some headroom (batch sizes vary,
    /// and a buffer that fits the next one avoids a reallocation).
    pub fn take(self: &Arc<Self>, capacity: usize) -> PooledBuf {
        let reused = {
            let mut free = self.free.lock().expect("arena pool poisoned");
            let best = free
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= capacity)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            best.map(|i| free.swap_remove(i))
        };
        let mut buf = reused.unwrap_or_else(|| Vec::with_capacity(capacity + capacity / 8));
        buf.clear();
        PooledBuf {
            buf,
            pool: Arc::downgrade(self),
        }
    }

    fn give_back(&self, buf: Vec<u8>) {
        let mut free = self.free.lock().expect("arena pool poisoned");
        free.push(buf);
        if free.len() > self.max_free.load(Ordering::Relaxed) {
            // Keep the larger buffers: they fit more requests.
            if let Some(i) = (0..free.len()).min_by_key(|&i| free[i].capacity()) {
                free.swap_remove(i);
            }
        }
    }
}

/// A byte buffer that returns to its pool when dropped.
#[derive(Debug, Default)]
pub struct PooledBuf {
    buf: Vec<u8>,
    pool: Weak<ArenaPool>,
}

impl PooledBuf {
    pub fn unpooled(buf: Vec<u8>) -> Self {
        Self {
            buf,
            pool: Weak::new(),
        }
    }
}

impl std::ops::Deref for PooledBuf {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.buf
    }
}

impl std::ops::DerefMut for PooledBuf {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.give_back(std::mem::take(&mut self.buf));
        }
    }
}

/// Labels of a batch, by label type.
#[derive(Debug)]
pub enum Labels {
    Int(Vec<i64>),
    /// Ragged bytes, like the data: sample `i` is `data[offsets[i]..offsets[i+1]]`.
    Blob {
        data: PooledBuf,
        offsets: Vec<i64>,
    },
    None,
}

/// Decoded pixels of a batch: 8-bit RGB, HWC, one image after another.
#[derive(Debug)]
pub struct Images {
    pub pixels: PooledBuf,
    /// (height, width) of each image.
    pub shapes: Vec<(u32, u32)>,
    /// B+1 byte offsets into `pixels`.
    pub offsets: Vec<i64>,
    /// Set when every image was resized to this (height, width): `pixels` is then dense (B, H, W, 3).
    pub size: Option<(u32, u32)>,
}

/// What the fetch engine asks a table reader to fill.
#[derive(Debug, Clone)]
pub struct BatchJob {
    /// The epoch of the batch.
    pub epoch: u64,
    /// Rank-local position of the batch in the epoch.
    pub position: usize,
    pub indices: Vec<u32>,
    pub is_pad: Vec<bool>,
    pub ids: Vec<Uuid>,
}

/// A finished batch: one flat byte buffer plus offsets, and labels.
#[derive(Debug)]
pub struct Batch {
    pub position: usize,
    pub data: PooledBuf,
    /// B+1 offsets into `data`.
    pub offsets: Vec<i64>,
    pub labels: Labels,
    pub indices: Vec<i64>,
    pub is_pad: Vec<bool>,
    /// B*16 uuid bytes.
    pub ids: Vec<u8>,
    /// Decoded images, when the engine decodes.
    pub images: Option<Images>,
    /// Positions in the uuid list of samples dropped from this batch because
    /// they could not be decoded (pads excluded: they repeat a real sample).
    pub skipped: Vec<i64>,
    /// 16 uuid bytes per entry of `skipped`.
    pub skipped_ids: Vec<u8>,
    /// Every sample came from a local cache: the read's time and bytes say
    /// nothing of the store's round trip or throughput, which the window
    /// tuner must not learn from it.
    pub local: bool,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn sample(&self, i: usize) -> &[u8] {
        &self.data[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    /// Starts a batch from a job; the reader then fills data, offsets and labels.
    pub fn from_job(job: &BatchJob, data: PooledBuf, labels: Labels) -> Self {
        let mut ids = Vec::with_capacity(job.ids.len() * 16);
        for id in &job.ids {
            ids.extend_from_slice(id.as_bytes());
        }
        let mut offsets = Vec::with_capacity(job.ids.len() + 1);
        offsets.push(0);
        Batch {
            position: job.position,
            data,
            offsets,
            labels,
            indices: job.indices.iter().map(|&i| i as i64).collect(),
            is_pad: job.is_pad.clone(),
            ids,
            images: None,
            skipped: Vec::new(),
            skipped_ids: Vec::new(),
            local: false,
        }
    }

    /// Keeps only the samples where `keep` is true, compacting data, labels,
    /// indices, pads and ids in place (images are the caller's business).
    pub fn retain(&mut self, keep: &[bool]) {
        assert_eq!(keep.len(), self.len(), "one keep flag per sample");
        let (_, offsets) = compact_ragged(&mut self.data, &self.offsets, keep);
        self.offsets = offsets;
        if let Labels::Blob { data, offsets } = &mut self.labels {
            let (_, new_offsets) = compact_ragged(data, offsets, keep);
            *offsets = new_offsets;
        }
        if let Labels::Int(v) = &mut self.labels {
            retain_flags(v, keep);
        }
        retain_flags(&mut self.indices, keep);
        retain_flags(&mut self.is_pad, keep);
        let mut ids = Vec::with_capacity(self.ids.len());
        for (id, &k) in self.ids.chunks_exact(16).zip(keep) {
            if k {
                ids.extend_from_slice(id);
            }
        }
        self.ids = ids;
    }
}

fn retain_flags<T>(v: &mut Vec<T>, keep: &[bool]) {
    let mut flags = keep.iter();
    v.retain(|_| *flags.next().unwrap_or(&true));
}

/// Moves the kept pieces of a ragged buffer to its front; returns the new
/// length and offsets.
pub(crate) fn compact_ragged(
    buf: &mut Vec<u8>,
    offsets: &[i64],
    keep: &[bool],
) -> (usize, Vec<i64>) {
    let mut out = Vec::with_capacity(offsets.len());
    out.push(0i64);
    let mut end = 0usize;
    for (i, &k) in keep.iter().enumerate() {
        if !k {
            continue;
        }
        let (a, b) = (offsets[i] as usize, offsets[i + 1] as usize);
        buf.copy_within(a..b, end);
        end += b - a;
        out.push(end as i64);
    }
    buf.truncate(end);
    (end, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_the_smallest_buffer_that_fits() {
        let pool = ArenaPool::new(4);
        let (big, small) = (pool.take(1 << 20), pool.take(1 << 10));
        let (big_ptr, small_ptr) = (big.as_ptr(), small.as_ptr());
        drop((big, small));
        // A small request must not take the big buffer a batch needs next.
        assert_eq!(pool.take(100).as_ptr(), small_ptr);
        assert_eq!(pool.take(1 << 19).as_ptr(), big_ptr);
    }

    #[test]
    fn keeps_at_most_max_free_and_the_largest() {
        let pool = ArenaPool::new(1);
        let (a, b) = (pool.take(10), pool.take(1000));
        let b_ptr = b.as_ptr();
        drop((a, b));
        assert_eq!(pool.free.lock().unwrap().len(), 1);
        assert_eq!(pool.take(1).as_ptr(), b_ptr);
        pool.set_max_free(0);
        assert!(pool.free.lock().unwrap().is_empty());
    }
}
