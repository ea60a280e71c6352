//! A local sample cache in front of a remote store, whose eviction knows the
//! future.
//!
//! `open_store("cassandra://...", cache="local:/nvme/cache", cache_size="200GB")`
//! wraps the store in a [`CachedStore`]: every sample read from Cassandra is
//! written into an LMDB environment on a local disk as it arrives, and a later
//! read of a cached sample is served from there. The cache never changes what
//! is served: a batch is the same bytes, labels and order with or without it;
//! a sample the store cannot serve fails (or is skipped) exactly as it would
//! without the cache, because failed reads are never cached and a batch is
//! cached only once its read succeeded.
//!
//! Why plan-aware eviction: the order of every epoch is a pure function of
//! the seed, the epoch and the uuid list ([`crs4_cassandra_core::order_positions`]).
//! When a sample is read in epoch `e` its next use is known: its position in
//! epoch `e + 1`. Keeping the samples whose next use comes soonest is
//! Belady's optimal policy; least-recently-used, the usual choice, keeps
//! exactly the wrong samples on reshuffled full scans (those just read, due
//! again on average an epoch later). The time of a use is its global
//! position, `epoch * n + position in the epoch's order`, the same clock for
//! every rank and DataLoader worker of a run, so processes sharing a cache
//! agree on which samples are due first. The reader hands that clock
//! ([`UseClock`]) to its table through [`crate::TableReader::plan_known`].
//!
//! Admissions leave the read path: a batch is handed on as soon as it is
//! read, and its samples go to a queue that a writer thread of the process
//! commits, as many queued batches as there are in one write transaction
//! ([`WriteQueue`]). Until then a lookup finds them in the queue. The queue
//! is bounded (a reader waits for room past [`QUEUE_BYTES`]). A reader whose
//! plan other processes share (DataLoader workers, ranks) waits for it to
//! drain at the end of each epoch it delivers, so that they find every
//! sample of an epoch once that epoch is over; a reader alone does not (its
//! lookups find the queue), and its process drains the queue when it exits.
//!
//! Layout (one LMDB environment, shared by every process of a host: LMDB
//! serializes write transactions across processes):
//! - `samples`: namespace (8) ++ uuid (16) -> u32 label length (`u32::MAX`
//!   for none), label bytes, data bytes;
//! - `keys`: namespace ++ uuid -> use key (8, big endian) ++ record size (8);
//! - `index`: use key (8, big endian) ++ namespace ++ uuid -> nothing, in
//!   key order: under the plan policy the key is the next use (evict the
//!   largest, after the stale ones whose next use has passed), under LRU the
//!   last use (evict the smallest);
//! - `meta`: the format, the bytes of samples held, and the namespaces
//!   (hash -> store URL, table, columns), so that a hash collision is found
//!   rather than served.
//!
//! Where the cache cannot work (a directory that cannot be written, a full
//! disk), reads go to the store, with a warning: the cache speeds reads up,
//! it is never a reason for a read to fail. A damaged environment (a file cut
//! short by a crash) is found when the cache opens and rebuilt empty.

use crate::batch::{ArenaPool, Batch, BatchJob, Labels};
use crate::cassandra::OptionValue;
use crate::error::{Result, StoreError};
use crate::lmdb::{Dbi, Env, RoTxn, RwTxn};
use crate::{
    ChunkSource, LabelType, MetadataRow, ReadStats, SampleRow, SampleStore, TableReader, TableSpec,
};
use crs4_cassandra_core::ProcessOwned;
use futures::future::{BoxFuture, FutureExt};
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// A file beside `data.mdb` that marks the directory as a sample cache: only
/// a marked directory is ever rebuilt (emptied), so a mistyped path to a
/// local store is refused, never wiped.
pub const MARKER: &str = "crs4_cassandra_cache";
const FORMAT: &[u8] = b"crs4_cassandra sample cache 1";
const SAMPLES: &str = "samples";
const KEYS: &str = "keys";
const INDEX: &str = "index";
const META: &str = "meta";
const META_FORMAT: &[u8] = b"format";
const META_BYTES: &[u8] = b"bytes";
const NO_LABEL: u32 = u32::MAX;

/// Which cached sample makes room for a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CachePolicy {
    /// Belady's policy over the epoch plans: evict the sample used again
    /// last (stale entries first), and admit a new sample only if it is used
    /// again sooner than that.
    Plan,
    /// Least recently used: evict the sample read longest ago.
    Lru,
}

impl CachePolicy {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "plan" => Ok(Self::Plan),
            "lru" => Ok(Self::Lru),
            other => Err(StoreError::InvalidArgument(format!(
                "cache_policy must be \"plan\" or \"lru\", got {other:?}"
            ))),
        }
    }
}

/// The cache options of `open_store`.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheOptions {
    pub path: PathBuf,
    /// Bytes of cached samples (labels and data) at most.
    pub size: u64,
    pub policy: CachePolicy,
}

/// The option names [`CacheOptions::take`] consumes.
pub const CACHE_OPTION_NAMES: &[&str] = &["cache", "cache_size", "cache_policy"];

impl CacheOptions {
    /// Takes the cache options out of `options` (leaving the others), None if
    /// there are none; `cache_size` and `cache_policy` need `cache`, and
    /// `cache` needs `cache_size`.
    pub fn take(options: &mut Vec<(String, OptionValue)>) -> Result<Option<Self>> {
        let mut take = |name: &str| {
            let i = options.iter().position(|(k, _)| k == name)?;
            Some(options.remove(i).1)
        };
        let (cache, size, policy) = (take("cache"), take("cache_size"), take("cache_policy"));
        let invalid = |m: String| StoreError::InvalidArgument(m);
        let Some(cache) = cache else {
            return match (size, policy) {
                (None, None) => Ok(None),
                _ => Err(invalid(
                    "cache_size and cache_policy need cache=\"local:PATH\"".into(),
                )),
            };
        };
        let path = match &cache {
            OptionValue::Text(t) => t.strip_prefix("local:").map(PathBuf::from),
            _ => None,
        }
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(|| {
            invalid(format!(
                "cache must be \"local:PATH\" (a directory on a local disk), got {cache:?}"
            ))
        })?;
        let size = size.ok_or_else(|| {
            invalid(format!(
                "cache={cache:?} needs cache_size (bytes, or a string such as \"200GB\" or \"512MiB\")"
            ))
        })?;
        let size = parse_size(&size)?;
        let policy = match policy {
            None => CachePolicy::Plan,
            Some(OptionValue::Text(t)) => CachePolicy::parse(&t)?,
            Some(other) => CachePolicy::parse(&format!("{other:?}"))?,
        };
        Ok(Some(Self { path, size, policy }))
    }
}

/// A size in bytes: a number, or a string with a unit (`"200GB"`, `"512MiB"`,
/// `"1.5T"`; k, M, G, T are powers of 1000, Ki, Mi, Gi, Ti of 1024).
pub fn parse_size(value: &OptionValue) -> Result<u64> {
    let bad = || {
        StoreError::InvalidArgument(format!(
            "cache_size must be a positive number of bytes or a string such as \"200GB\" or \
             \"512MiB\", got {value:?}"
        ))
    };
    let bytes = match value {
        OptionValue::Number(x) => *x,
        OptionValue::Text(t) => {
            let t = t.trim();
            let split = t
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(t.len());
            let (number, unit) = t.split_at(split);
            let number: f64 = number.parse().map_err(|_| bad())?;
            let unit = unit.trim().to_ascii_lowercase();
            let unit = unit.strip_suffix('b').unwrap_or(&unit);
            let scale = match unit {
                "" => 1.0,
                "k" => 1e3,
                "m" => 1e6,
                "g" => 1e9,
                "t" => 1e12,
                "ki" => 1024.0,
                "mi" => 1024.0 * 1024.0,
                "gi" => 1024.0 * 1024.0 * 1024.0,
                "ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
                _ => return Err(bad()),
            };
            number * scale
        }
        OptionValue::Bool(_) => return Err(bad()),
    };
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// When each sample of a run is used: `epoch * n + position` in the
/// epoch's order, the same for every rank and worker. Keeps the positions
/// of the last few epochs asked for (4 bytes a sample each).
pub struct UseClock {
    n: usize,
    shuffle: bool,
    seed: u64,
    positions: Mutex<Vec<(u64, Arc<[u32]>)>>,
}

const EPOCHS_KEPT: usize = 4;

impl UseClock {
    pub fn new(n: usize, shuffle: bool, seed: u64) -> Self {
        Self {
            n,
            shuffle,
            seed,
            positions: Mutex::new(Vec::new()),
        }
    }

    pub fn n(&self) -> usize {
        self.n
    }

    fn positions(&self, epoch: u64) -> Arc<[u32]> {
        let mut kept = self.positions.lock().expect("use clock poisoned");
        if let Some((_, p)) = kept.iter().find(|(e, _)| *e == epoch) {
            return p.clone();
        }
        let p: Arc<[u32]> =
            crs4_cassandra_core::order_positions(self.n, self.shuffle, self.seed, epoch).into();
        if kept.len() == EPOCHS_KEPT {
            kept.remove(0);
        }
        kept.push((epoch, p.clone()));
        p
    }

    /// For the entries `indices` of the uuid list read in `epoch`: when each
    /// is read now and when it is read next (in the next epoch).
    pub fn times(&self, epoch: u64, indices: &[u32]) -> Vec<(u64, u64)> {
        let (now, next) = (self.positions(epoch), self.positions(epoch + 1));
        let n = self.n as u64;
        indices
            .iter()
            .map(|&i| {
                let i = i as usize;
                match (now.get(i), next.get(i)) {
                    (Some(&p), Some(&q)) => (epoch * n + p as u64, (epoch + 1) * n + q as u64),
                    // An index past the list (cannot happen for a plan's
                    // batch): used now, never again.
                    _ => (epoch * n, u64::MAX),
                }
            })
            .collect()
    }
}

/// FNV-1a: a stable 64-bit hash of a namespace (the same in every process
/// and every build, unlike std's hasher).
fn fnv1a(bytes: &[u8]) -> [u8; 8] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.to_be_bytes()
}

/// What identifies a table's samples in a shared cache: the store, the
/// qualified table and the columns read (a table read with its labels and
/// without them are two namespaces).
pub fn namespace(store_url: &str, spec: &TableSpec) -> String {
    format!(
        "{store_url}\n{}\n{}\n{}\n{}\n{}",
        spec.table,
        spec.id_col,
        spec.data_col,
        spec.label_col,
        spec.label_type.as_str()
    )
}

type Ns = [u8; 8];

fn sample_key(ns: &Ns, id: Uuid) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(ns);
    k[8..].copy_from_slice(id.as_bytes());
    k
}

fn index_key(key: u64, sample: &[u8; 24]) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..8].copy_from_slice(&key.to_be_bytes());
    k[8..].copy_from_slice(sample);
    k
}

fn u64_at(bytes: &[u8], at: usize, path: &Path) -> Result<u64> {
    bytes
        .get(at..at + 8)
        .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
        .ok_or_else(|| StoreError::Lmdb {
            path: path.to_path_buf(),
            message: "corrupt sample cache entry (too short)".into(),
        })
}

/// A cached sample, copied out of the map.
#[derive(Debug, Clone, PartialEq)]
pub struct Cached {
    pub label: Option<Vec<u8>>,
    pub data: Vec<u8>,
}

/// The record of a sample: its label's length (or [`NO_LABEL`]), the label,
/// the data; made in place, the one copy of the sample an admission makes.
fn encode(label: Option<&[u8]>, data: &[u8]) -> Arc<[u8]> {
    let header = match label {
        Some(l) => (l.len() as u32).to_le_bytes(),
        None => NO_LABEL.to_le_bytes(),
    };
    let parts = [&header[..], label.unwrap_or_default(), data];
    let mut record = Arc::<[u8]>::new_uninit_slice(parts.iter().map(|p| p.len()).sum());
    let out = Arc::get_mut(&mut record).expect("a new Arc is unique");
    let mut at = 0;
    for part in parts {
        let dst = &mut out[at..at + part.len()];
        // SAFETY: `dst` is `part.len()` bytes of the new record, which
        // cannot overlap `part`.
        unsafe {
            std::ptr::copy_nonoverlapping(part.as_ptr(), dst.as_mut_ptr().cast(), part.len())
        };
        at += part.len();
    }
    // SAFETY: the parts cover the record exactly, so every byte was written.
    unsafe { record.assume_init() }
}

/// A record of `samples`, None if it does not parse (then it is not served).
fn decode(value: &[u8]) -> Option<Cached> {
    let len = u32::from_le_bytes(value.get(..4)?.try_into().ok()?);
    let rest = &value[4..];
    let (label, data) = if len == NO_LABEL {
        (None, rest)
    } else {
        let n = len as usize;
        (Some(rest.get(..n)?.to_vec()), rest.get(n..)?)
    };
    (!data.is_empty()).then(|| Cached {
        label,
        data: data.to_vec(),
    })
}

/// A sample's new key, and its record to admit if it is not cached (None
/// for a sample the batch found cached: only its key moves; if it was
/// evicted meanwhile it stays out).
struct Admission {
    id: Uuid,
    key: u64,
    record: Option<Arc<[u8]>>,
}

/// One batch's admissions, queued for the writer thread.
struct Pending {
    ns: Ns,
    admissions: Vec<Admission>,
    stale_below: u64,
    bytes: usize,
}

/// Queued admissions past which a reader waits for the writer: the memory
/// the queue may hold. A transaction takes what is queued, up to as much.
pub const QUEUE_BYTES: usize = 64 << 20;

/// How long the writer thread waits for work before it ends (the next
/// admission starts another).
const WRITER_IDLE: Duration = Duration::from_secs(2);

/// The longest a reader waits for the queue to drain at an epoch's end; past
/// it the epoch ends anyway (the samples are admitted later).
const SETTLE_LIMIT: Duration = Duration::from_secs(30);

/// A process's queue of admissions and its writer thread (see the module
/// docs).
struct WriteQueue {
    state: Mutex<QueueState>,
    changed: Condvar,
}

#[derive(Default)]
struct QueueState {
    items: VecDeque<Pending>,
    /// Bytes of records queued or being written.
    bytes: usize,
    /// Batches taken by the writer and not yet committed.
    writing: usize,
    /// Whether a writer thread runs.
    running: bool,
    /// The records queued or being written, by sample key: what a lookup
    /// serves before they are committed.
    held: HashMap<[u8; 24], Arc<[u8]>>,
}

impl WriteQueue {
    /// Waits, up to `limit`, until what is queued is committed (or the
    /// writer has stopped).
    fn drain(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        while (!state.items.is_empty() || state.writing > 0) && state.running {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            state = match self.changed.wait_timeout(state, deadline - now) {
                Ok((state, _)) => state,
                Err(_) => return,
            };
        }
    }
}

/// This process's queues, drained when it exits (see [`drain_at_exit`]).
static EXIT_QUEUES: Mutex<Vec<ProcessOwned<std::sync::Weak<WriteQueue>>>> = Mutex::new(Vec::new());

/// Has `q` drained when the process exits normally: a reader whose plan no
/// other process shares does not wait for the writer at an epoch's end (its
/// own lookups find the queued samples), so what the last epoch left queued
/// is committed here, before the writer thread dies with the process.
/// (A forked DataLoader worker, which leaves by `_exit`, shares its plan
/// with the other workers and so waits at each epoch's end.)
fn drain_at_exit(q: &Arc<WriteQueue>) {
    static HOOK: std::sync::Once = std::sync::Once::new();
    extern "C" fn drain_all() {
        let queues: Vec<Arc<WriteQueue>> = match EXIT_QUEUES.lock() {
            Ok(list) => list.iter().filter_map(|q| q.get()?.upgrade()).collect(),
            Err(_) => return,
        };
        for q in queues {
            q.drain(SETTLE_LIMIT);
        }
    }
    if let Ok(mut list) = EXIT_QUEUES.lock() {
        list.retain(|q| q.get().is_some_and(|w| w.strong_count() > 0));
        list.push(ProcessOwned::new(Arc::downgrade(q)));
    }
    HOOK.call_once(|| {
        // SAFETY: `drain_all` is a plain function that only locks and waits.
        unsafe { libc::atexit(drain_all) };
    });
}

/// The cache of one directory in this process. Holds no LMDB handle (one
/// held here would cross `fork()` into DataLoader workers): [`Env::open`]
/// returns this process's.
pub struct SampleCache {
    path: PathBuf,
    capacity: u64,
    policy: CachePolicy,
    /// Cleared after a write fails (a full disk...): this process then stops
    /// writing, and still serves what is cached.
    writes: AtomicBool,
    /// Cleared after a read of the cache fails: reads then go to the store.
    reads: AtomicBool,
    hits: AtomicU64,
    misses: AtomicU64,
    /// This process's admission queue (a forked child makes its own).
    queue: Mutex<Option<ProcessOwned<Arc<WriteQueue>>>>,
}

/// Why a cache could not be opened as it was.
enum OpenError {
    /// The directory cannot be written: the cache is off.
    Off(String),
    /// The environment is damaged: rebuild it.
    Damaged(String),
}

impl SampleCache {
    /// Opens the cache at `options.path`, creating it if missing and
    /// rebuilding it if damaged; None (with the warning to show) when it
    /// cannot be used, and Some warning when it was rebuilt.
    pub fn open(options: &CacheOptions) -> (Option<Arc<Self>>, Option<String>) {
        let path = &options.path;
        let off = |why: String| {
            Some(format!(
                "sample cache {} is off: {why}; samples are read from the store",
                path.display()
            ))
        };
        if let Err(e) = std::fs::create_dir_all(path) {
            return (None, off(format!("cannot create the directory: {e}")));
        }
        if path.join("data.mdb").exists() && !path.join(MARKER).exists() {
            return (
                None,
                off(
                    "the directory holds an LMDB environment that is not a sample cache \
                     (no marker file); it is left alone"
                        .into(),
                ),
            );
        }
        // Processes opening the cache at once (DDP ranks) take turns: only
        // one checks it, and rebuilds it if damaged.
        let _lock = match OpenLock::take(&path.join("open.lock")) {
            Ok(lock) => lock,
            Err(e) => return (None, off(format!("cannot write in the directory: {e}"))),
        };
        if let Err(e) = std::fs::write(path.join(MARKER), b"") {
            return (None, off(format!("cannot write in the directory: {e}")));
        }
        let cache = Arc::new(Self {
            path: path.clone(),
            capacity: options.size,
            policy: options.policy,
            writes: AtomicBool::new(true),
            reads: AtomicBool::new(true),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            queue: Mutex::new(None),
        });
        match cache.check() {
            Ok(()) => (Some(cache), None),
            Err(OpenError::Off(why)) => (None, off(why)),
            Err(OpenError::Damaged(why)) => {
                for file in ["data.mdb", "lock.mdb"] {
                    let _ = std::fs::remove_file(path.join(file));
                }
                match cache.check() {
                    Ok(()) => (
                        Some(cache),
                        Some(format!(
                            "sample cache {} was damaged ({why}): rebuilt empty",
                            path.display()
                        )),
                    ),
                    Err(OpenError::Off(again) | OpenError::Damaged(again)) => (
                        None,
                        off(format!(
                            "it was damaged ({why}) and could not be rebuilt: {again}"
                        )),
                    ),
                }
            }
        }
    }

    /// Opens the environment and checks it: its file holds its pages, its
    /// format is this one, its databases agree.
    fn check(&self) -> std::result::Result<(), OpenError> {
        let env = match self.env() {
            Ok(env) => env,
            Err(StoreError::Lmdb { message, .. }) => return Err(OpenError::Damaged(message)),
            Err(e) => return Err(OpenError::Off(e.to_string())),
        };
        if let Some(reason) = env.read_only_reason() {
            return Err(OpenError::Off(format!("it cannot be written ({reason})")));
        }
        env.check_file_size().map_err(OpenError::Damaged)?;
        let damaged = |e: StoreError| OpenError::Damaged(e.to_string());
        let dbs = self.dbs(&env).map_err(damaged)?;
        env.write(|txn| {
            let bad = |why: &str| StoreError::Internal(why.to_string());
            match txn.get(dbs.meta, META_FORMAT)? {
                Some(f) if f == FORMAT => {}
                Some(_) => return Err(bad("written by another version")),
                None if txn.count(dbs.samples)? > 0 => return Err(bad("no format entry")),
                None => {
                    txn.put(dbs.meta, META_FORMAT, FORMAT)?;
                    txn.put(dbs.meta, META_BYTES, &0u64.to_be_bytes())?;
                }
            }
            let (samples, keys, index) = (
                txn.count(dbs.samples)?,
                txn.count(dbs.keys)?,
                txn.count(dbs.index)?,
            );
            if samples != keys || keys != index {
                return Err(bad(&format!(
                    "{samples} samples, {keys} keys and {index} index entries"
                )));
            }
            match txn.get(dbs.meta, META_BYTES)? {
                Some(b) if b.len() == 8 => Ok(()),
                _ => Err(bad("no byte count")),
            }
        })
        .map_err(|e| match e {
            StoreError::Internal(why) => OpenError::Damaged(why),
            other => damaged(other),
        })
    }

    fn env(&self) -> Result<Arc<Env>> {
        // A cache can be rebuilt: no fsync at each batch's commit (a system
        // crash may lose the last batches, or damage the file, which the
        // next open finds).
        Env::open_flags(&self.path, true, lmdb_master_sys::MDB_NOSYNC)
    }

    fn dbs(&self, env: &Env) -> Result<Dbs> {
        let db = |name| env.dbi(name, true).map(|d| d.expect("created"));
        Ok(Dbs {
            samples: db(SAMPLES)?,
            keys: db(KEYS)?,
            index: db(INDEX)?,
            meta: db(META)?,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn policy(&self) -> CachePolicy {
        self.policy
    }

    /// The namespace of `name` in this cache: its hash, recorded with the
    /// name so that two names with one hash are found (the second is then
    /// not cached: None).
    pub fn namespace(&self, name: &str) -> Result<Option<Ns>> {
        let ns = fnv1a(name.as_bytes());
        let mut key = b"ns:".to_vec();
        key.extend_from_slice(&ns);
        let env = self.env()?;
        let dbs = self.dbs(&env)?;
        env.write(|txn| match txn.get(dbs.meta, &key)? {
            Some(known) if known == name.as_bytes() => Ok(Some(ns)),
            Some(_) => Ok(None),
            None => {
                txn.put(dbs.meta, &key, name.as_bytes())?;
                Ok(Some(ns))
            }
        })
    }

    /// The cached copies of `ids` (None where a sample is not cached).
    pub fn lookup(&self, ns: &Ns, ids: &[Uuid]) -> Result<Vec<Option<Cached>>> {
        let queued: Vec<Option<Arc<[u8]>>> = match self.current_queue() {
            Some(q) => {
                let state = q.state.lock().expect("cache queue poisoned");
                ids.iter()
                    .map(|&id| state.held.get(&sample_key(ns, id)).cloned())
                    .collect()
            }
            None => vec![None; ids.len()],
        };
        let env = self.env()?;
        let dbs = self.dbs(&env)?;
        env.read(|txn| {
            ids.iter()
                .zip(queued)
                .map(|(&id, queued)| match queued {
                    Some(record) => Ok(decode(&record)),
                    None => Ok(txn.get(dbs.samples, &sample_key(ns, id))?.and_then(decode)),
                })
                .collect()
        })
    }

    /// This process's queue, if it made one.
    fn current_queue(&self) -> Option<Arc<WriteQueue>> {
        let queue = self.queue.lock().expect("cache queue poisoned");
        queue.as_ref().and_then(|q| q.get()).cloned()
    }

    /// This process's queue, made now if missing (or inherited through
    /// `fork()`: the parent's is left to the parent).
    fn process_queue(&self) -> Arc<WriteQueue> {
        let mut queue = self.queue.lock().expect("cache queue poisoned");
        if let Some(q) = queue.as_ref().and_then(|q| q.get()) {
            return q.clone();
        }
        let q = Arc::new(WriteQueue {
            state: Mutex::new(QueueState::default()),
            changed: Condvar::new(),
        });
        *queue = Some(ProcessOwned::new(q.clone()));
        drain_at_exit(&q);
        q
    }

    /// Whether a batch's admissions would wait for room in the queue.
    fn queue_full(&self) -> bool {
        self.current_queue()
            .is_some_and(|q| q.state.lock().expect("cache queue poisoned").bytes >= QUEUE_BYTES)
    }

    /// Queues a batch's admissions for the writer thread (started if none
    /// runs), waiting first while the queue holds [`QUEUE_BYTES`] or more:
    /// call it off the runtime's threads when [`Self::queue_full`].
    fn enqueue(self: &Arc<Self>, pending: Pending) {
        let q = self.process_queue();
        let mut state = q.state.lock().expect("cache queue poisoned");
        while state.bytes >= QUEUE_BYTES && state.running {
            state = q.changed.wait(state).expect("cache queue poisoned");
        }
        for a in &pending.admissions {
            if let Some(record) = &a.record {
                state
                    .held
                    .insert(sample_key(&pending.ns, a.id), record.clone());
            }
        }
        state.bytes += pending.bytes;
        state.items.push_back(pending);
        if !state.running {
            state.running = true;
            let (cache, q) = (self.clone(), q.clone());
            let spawned = std::thread::Builder::new()
                .name("crs4-cache-writer".into())
                .spawn(move || cache.write_queued(&q));
            if let Err(e) = spawned {
                state.running = false;
                state.items.clear();
                state.held.clear();
                state.bytes = 0;
                drop(state);
                self.writes_failed(&StoreError::Internal(format!(
                    "cannot start its writer thread: {e}"
                )));
                return;
            }
        }
        q.changed.notify_all();
    }

    /// The writer thread: commits what is queued, as many batches as are
    /// queued (up to [`QUEUE_BYTES`]) in one write transaction, until the
    /// queue stays empty for [`WRITER_IDLE`].
    fn write_queued(&self, q: &WriteQueue) {
        loop {
            let (taken, bytes) = {
                let mut state = q.state.lock().expect("cache queue poisoned");
                let idle_since = Instant::now();
                while state.items.is_empty() {
                    let waited = idle_since.elapsed();
                    if waited >= WRITER_IDLE {
                        state.running = false;
                        q.changed.notify_all();
                        return;
                    }
                    state = q
                        .changed
                        .wait_timeout(state, WRITER_IDLE - waited)
                        .expect("cache queue poisoned")
                        .0;
                }
                let (mut taken, mut bytes) = (Vec::new(), 0);
                while let Some(p) = state.items.front() {
                    if !taken.is_empty() && bytes + p.bytes > QUEUE_BYTES {
                        break;
                    }
                    bytes += p.bytes;
                    taken.push(state.items.pop_front().expect("an item"));
                }
                state.writing = taken.len();
                (taken, bytes)
            };
            if self.writes_on() {
                if let Err(e) = self.commit(&taken) {
                    // Several batches may fail together where fewer fit (a
                    // disk filling up): then one at a time, up to the first
                    // that fails.
                    let mut failed = Some(e);
                    if taken.len() > 1 {
                        failed = taken
                            .iter()
                            .find_map(|p| self.commit(std::slice::from_ref(p)).err());
                    }
                    if let Some(e) = failed {
                        self.writes_failed(&e);
                    }
                }
            }
            let mut state = q.state.lock().expect("cache queue poisoned");
            for p in &taken {
                for a in &p.admissions {
                    let Some(record) = &a.record else { continue };
                    let key = sample_key(&p.ns, a.id);
                    if state.held.get(&key).is_some_and(|r| Arc::ptr_eq(r, record)) {
                        state.held.remove(&key);
                    }
                }
            }
            state.writing = 0;
            state.bytes -= bytes;
            q.changed.notify_all();
        }
    }

    /// Waits (up to [`SETTLE_LIMIT`]) until this process's queued admissions
    /// are committed, so that other processes see them.
    pub fn settle(&self) {
        if let Some(q) = self.current_queue() {
            q.drain(SETTLE_LIMIT);
        }
    }

    /// Commits queued batches in one write transaction, in their order.
    fn commit(&self, batches: &[Pending]) -> Result<()> {
        let env = self.env()?;
        let dbs = self.dbs(&env)?;
        env.write(|txn| {
            let mut total = match txn.get(dbs.meta, META_BYTES)? {
                Some(b) => u64_at(b, 0, &self.path)?,
                None => 0,
            };
            for p in batches {
                self.admit(txn, &dbs, p, &mut total)?;
            }
            txn.put(dbs.meta, META_BYTES, &total.to_be_bytes())
        })
    }

    fn admit(&self, txn: &RwTxn<'_>, dbs: &Dbs, p: &Pending, total: &mut u64) -> Result<()> {
        let mut new = Vec::new();
        for a in &p.admissions {
            let sample = sample_key(&p.ns, a.id);
            match txn.get(dbs.keys, &sample)? {
                Some(entry) => {
                    let (old, size) =
                        (u64_at(entry, 0, &self.path)?, u64_at(entry, 8, &self.path)?);
                    txn.del(dbs.index, &index_key(old, &sample))?;
                    txn.put(dbs.index, &index_key(a.key, &sample), &[])?;
                    txn.put(dbs.keys, &sample, &key_entry(a.key, size))?;
                }
                None => new.push(a),
            }
        }
        for a in new {
            let Some(record) = &a.record else { continue };
            let size = record.len() as u64;
            if size > self.capacity {
                continue;
            }
            let (victims, admit) = self.victims(txn, dbs, *total, size, a.key, p.stale_below)?;
            for victim in victims {
                *total -= evict(txn, dbs, &victim, &self.path)?;
            }
            if admit {
                let sample = sample_key(&p.ns, a.id);
                txn.put(dbs.samples, &sample, record)?;
                txn.put(dbs.keys, &sample, &key_entry(a.key, size))?;
                txn.put(dbs.index, &index_key(a.key, &sample), &[])?;
                *total += size;
            }
        }
        Ok(())
    }

    /// The entries to evict before a sample of `size` bytes and key `key`
    /// comes in, and whether it comes in. The one eviction decision of both
    /// policies:
    /// - LRU: the oldest entries, as many as make room;
    /// - plan: the stale entries first (key below `stale_below`), then, from
    ///   the one used again last, entries used again later than the new
    ///   sample; if those do not make room, the new sample stays out (and
    ///   only the stale entries go).
    fn victims(
        &self,
        txn: &RoTxn<'_>,
        dbs: &Dbs,
        total: u64,
        size: u64,
        key: u64,
        stale_below: u64,
    ) -> Result<(Vec<[u8; 32]>, bool)> {
        let mut free = self.capacity.saturating_sub(total);
        let mut victims = Vec::new();
        if free >= size {
            return Ok((victims, true));
        }
        let size_of = |k: &[u8]| -> Result<u64> {
            let entry = txn
                .get(dbs.keys, &k[8..32])?
                .ok_or_else(|| StoreError::Lmdb {
                    path: self.path.clone(),
                    message: "sample cache index entry without its sample".into(),
                })?;
            u64_at(entry, 8, &self.path)
        };
        let lowest_first = match self.policy {
            CachePolicy::Lru => u64::MAX,
            CachePolicy::Plan => stale_below,
        };
        txn.for_each(dbs.index, |k, _| {
            if free >= size || u64_at(k, 0, &self.path)? >= lowest_first {
                return Ok(false);
            }
            free += size_of(k)?;
            victims.push(k.try_into().expect("32-byte index key"));
            Ok(true)
        })?;
        if free >= size || self.policy == CachePolicy::Lru {
            return Ok((victims, free >= size));
        }
        let stale = victims.len();
        txn.for_each_rev(dbs.index, |k, _| {
            let k_key = u64_at(k, 0, &self.path)?;
            if free >= size || k_key <= key || k_key < stale_below {
                return Ok(false);
            }
            free += size_of(k)?;
            victims.push(k.try_into().expect("32-byte index key"));
            Ok(true)
        })?;
        if free >= size {
            Ok((victims, true))
        } else {
            victims.truncate(stale);
            Ok((victims, false))
        }
    }

    /// Bytes of samples held, and their number.
    pub fn usage(&self) -> Result<(u64, usize)> {
        let env = self.env()?;
        let dbs = self.dbs(&env)?;
        env.read(|txn| {
            let bytes = match txn.get(dbs.meta, META_BYTES)? {
                Some(b) => u64_at(b, 0, &self.path)?,
                None => 0,
            };
            Ok((bytes, txn.count(dbs.samples)?))
        })
    }

    fn reads_on(&self) -> bool {
        self.reads.load(Ordering::Relaxed)
    }

    fn writes_on(&self) -> bool {
        self.writes.load(Ordering::Relaxed)
    }

    /// Turns reads (and writes) of the cache off in this process after
    /// `error`, saying so once on stderr (a background read has no caller
    /// to warn).
    fn reads_failed(&self, error: &StoreError) {
        self.writes.store(false, Ordering::Relaxed);
        if self.reads.swap(false, Ordering::Relaxed) {
            eprintln!(
                "crs4_cassandra: sample cache {} is off in this process: {error}; samples are \
                 read from the store",
                self.path.display()
            );
        }
    }

    fn writes_failed(&self, error: &StoreError) {
        if self.writes.swap(false, Ordering::Relaxed) {
            eprintln!(
                "crs4_cassandra: sample cache {} takes no more samples in this process: \
                 {error}; what it holds is still served, the rest is read from the store",
                self.path.display()
            );
        }
    }
}

fn key_entry(key: u64, size: u64) -> [u8; 16] {
    let mut e = [0u8; 16];
    e[..8].copy_from_slice(&key.to_be_bytes());
    e[8..].copy_from_slice(&size.to_be_bytes());
    e
}

/// Removes an index entry's sample; its size.
fn evict(txn: &RwTxn<'_>, dbs: &Dbs, index: &[u8; 32], path: &Path) -> Result<u64> {
    let sample = &index[8..32];
    let size = match txn.get(dbs.keys, sample)? {
        Some(entry) => u64_at(entry, 8, path)?,
        None => 0,
    };
    txn.del(dbs.index, index)?;
    txn.del(dbs.keys, sample)?;
    txn.del(dbs.samples, sample)?;
    Ok(size)
}

struct Dbs {
    samples: Dbi,
    keys: Dbi,
    index: Dbi,
    meta: Dbi,
}

/// An exclusive `flock` on a file, released when dropped.
struct OpenLock(std::fs::File);

impl OpenLock {
    fn take(path: &Path) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self(file))
    }
}

impl Drop for OpenLock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// A store whose sample reads go through a [`SampleCache`]; everything else
/// goes to the store.
pub struct CachedStore {
    inner: Arc<dyn SampleStore>,
    cache: Arc<SampleCache>,
}

impl CachedStore {
    pub fn new(inner: Arc<dyn SampleStore>, cache: Arc<SampleCache>) -> Self {
        Self { inner, cache }
    }

    pub fn cache(&self) -> &Arc<SampleCache> {
        &self.cache
    }
}

impl SampleStore for CachedStore {
    fn url(&self) -> String {
        self.inner.url()
    }

    fn open_table(&self, spec: &TableSpec) -> BoxFuture<'static, Result<Arc<dyn TableReader>>> {
        let (opening, cache, url) = (self.inner.open_table(spec), self.cache.clone(), self.url());
        async move {
            let inner = opening.await?;
            let name = namespace(&url, inner.spec());
            let ns = {
                let cache = cache.clone();
                tokio::task::spawn_blocking(move || cache.namespace(&name))
                    .await
                    .map_err(|e| StoreError::Internal(e.to_string()))?
            };
            let ns = match ns {
                Ok(Some(ns)) => ns,
                // Another table's hash: read this one from the store.
                Ok(None) => return Ok(inner),
                Err(e) => {
                    cache.reads_failed(&e);
                    return Ok(inner);
                }
            };
            Ok(Arc::new(CachedTable {
                inner,
                cache,
                ns,
                clock: Mutex::new(None),
            }) as Arc<dyn TableReader>)
        }
        .boxed()
    }

    fn create_tables(
        &self,
        spec: &TableSpec,
        metadata_table: &str,
        overwrite: bool,
    ) -> BoxFuture<'static, Result<()>> {
        self.inner.create_tables(spec, metadata_table, overwrite)
    }

    fn put_samples(&self, table: &str, rows: Vec<SampleRow>) -> BoxFuture<'static, Result<()>> {
        self.inner.put_samples(table, rows)
    }

    fn put_metadata(&self, table: &str, rows: Vec<MetadataRow>) -> BoxFuture<'static, Result<()>> {
        self.inner.put_metadata(table, rows)
    }

    fn scan_metadata(&self, table: &str) -> BoxFuture<'static, Result<Vec<MetadataRow>>> {
        self.inner.scan_metadata(table)
    }

    fn array_meta(&self, name: &str) -> BoxFuture<'static, Result<Option<String>>> {
        self.inner.array_meta(name)
    }

    fn put_array_meta(&self, name: &str, meta: Option<String>) -> BoxFuture<'static, Result<()>> {
        self.inner.put_array_meta(name, meta)
    }

    fn list_arrays(&self) -> BoxFuture<'static, Result<Vec<String>>> {
        self.inner.list_arrays()
    }

    fn chunk_source(&self) -> Result<Arc<dyn ChunkSource>> {
        self.inner.chunk_source()
    }

    fn put_chunks(
        &self,
        array: Uuid,
        chunks: Vec<(u64, Option<Vec<u8>>)>,
    ) -> BoxFuture<'static, Result<()>> {
        self.inner.put_chunks(array, chunks)
    }

    fn max_chunk_bytes(&self) -> Option<usize> {
        self.inner.max_chunk_bytes()
    }

    fn read_stats(&self) -> ReadStats {
        ReadStats {
            cache_hits: self.cache.hits.load(Ordering::Relaxed),
            cache_misses: self.cache.misses.load(Ordering::Relaxed),
            ..self.inner.read_stats()
        }
    }
}

/// A table read through the cache.
pub struct CachedTable {
    inner: Arc<dyn TableReader>,
    cache: Arc<SampleCache>,
    ns: Ns,
    /// The run's clock, from the reader; without it (a sample read by
    /// itself) cached samples are served and nothing is recorded.
    clock: Mutex<Option<Arc<UseClock>>>,
}

impl CachedTable {
    fn clock(&self) -> Option<Arc<UseClock>> {
        self.clock.lock().expect("clock poisoned").clone()
    }

    async fn read(self: Arc<Self>, job: BatchJob, pool: Arc<ArenaPool>) -> Result<Batch> {
        let cache = self.cache.clone();
        let found = if cache.reads_on() {
            let (c, ns, ids) = (cache.clone(), self.ns, job.ids.clone());
            match tokio::task::spawn_blocking(move || c.lookup(&ns, &ids)).await {
                Ok(Ok(found)) => found,
                Ok(Err(e)) => {
                    cache.reads_failed(&e);
                    vec![None; job.ids.len()]
                }
                Err(e) => return Err(StoreError::Internal(e.to_string())),
            }
        } else {
            vec![None; job.ids.len()]
        };
        let misses: Vec<usize> = (0..job.ids.len()).filter(|&i| found[i].is_none()).collect();
        let fetched = if misses.is_empty() {
            None
        } else {
            let sub = BatchJob {
                epoch: job.epoch,
                position: job.position,
                indices: misses.iter().map(|&i| job.indices[i]).collect(),
                is_pad: misses.iter().map(|&i| job.is_pad[i]).collect(),
                ids: misses.iter().map(|&i| job.ids[i]).collect(),
            };
            // A failed read fails (or, skipped, is retried by the engine)
            // before anything is recorded: errors are never cached.
            Some(self.inner.clone().read_batch(sub, pool.clone()).await?)
        };
        let missed = misses.iter().filter(|&&i| !job.is_pad[i]).count() as u64;
        let hit = job.is_pad.iter().filter(|&&pad| !pad).count() as u64 - missed;
        cache.hits.fetch_add(hit, Ordering::Relaxed);
        cache.misses.fetch_add(missed, Ordering::Relaxed);
        let mut batch = match fetched {
            // Nothing was cached (a first epoch): the store's batch is the
            // batch, not copied again.
            Some(b) if misses.len() == job.ids.len() => b,
            fetched => assemble(
                &job,
                self.inner.spec().label_type,
                &found,
                fetched.as_ref(),
                &pool,
            ),
        };
        batch.local = misses.is_empty();
        let Some(clock) = self.clock().filter(|_| cache.writes_on()) else {
            return Ok(batch);
        };
        // The batch goes on now; its samples are admitted by the writer
        // thread (see the module docs).
        let pending = batch_admissions(
            cache.policy,
            cache.capacity,
            &self.ns,
            &clock,
            &job,
            &batch,
            &found,
        );
        if cache.queue_full() {
            tokio::task::spawn_blocking(move || cache.enqueue(pending))
                .await
                .map_err(|e| StoreError::Internal(e.to_string()))?;
        } else {
            cache.enqueue(pending);
        }
        Ok(batch)
    }
}

/// The batch of `job`, from the cached samples (`found`) and those read
/// from the store (`fetched`, the misses in job order).
fn assemble(
    job: &BatchJob,
    label_type: LabelType,
    found: &[Option<Cached>],
    fetched: Option<&Batch>,
    pool: &Arc<ArenaPool>,
) -> Batch {
    let total: usize = found.iter().flatten().map(|c| c.data.len()).sum::<usize>()
        + fetched.map_or(0, |b| b.data.len());
    let labels = match label_type {
        LabelType::Int => Labels::Int(Vec::with_capacity(job.ids.len())),
        LabelType::Blob => Labels::Blob {
            data: pool.take(0),
            offsets: vec![0],
        },
        LabelType::None => Labels::None,
    };
    let mut batch = Batch::from_job(job, pool.take(total), labels);
    let mut next = 0;
    for cached in found {
        let (label, data): (Option<LabelRef<'_>>, &[u8]) = match cached {
            Some(c) => (c.label.as_deref().map(LabelRef::Bytes), &c.data),
            None => {
                let b = fetched.expect("a miss was read");
                let j = next;
                next += 1;
                let label = match &b.labels {
                    Labels::Int(v) => Some(LabelRef::Int(v[j])),
                    Labels::Blob { data, offsets } => Some(LabelRef::Bytes(
                        &data[offsets[j] as usize..offsets[j + 1] as usize],
                    )),
                    Labels::None => None,
                };
                (label, b.sample(j))
            }
        };
        batch.data.extend_from_slice(data);
        batch.offsets.push(batch.data.len() as i64);
        match (&mut batch.labels, label) {
            (Labels::Int(v), Some(LabelRef::Int(l))) => v.push(l),
            (Labels::Int(v), Some(LabelRef::Bytes(b))) => {
                v.push(i32::from_le_bytes(b.try_into().unwrap_or_default()) as i64)
            }
            (Labels::Blob { data, offsets }, Some(LabelRef::Bytes(b))) => {
                data.extend_from_slice(b);
                offsets.push(data.len() as i64);
            }
            _ => {}
        }
    }
    batch
}

enum LabelRef<'a> {
    Int(i64),
    Bytes(&'a [u8]),
}

/// Bytes of sample `i`'s label as a record holds it.
fn label_len(labels: &Labels, i: usize) -> usize {
    match labels {
        Labels::Int(_) => 4,
        Labels::Blob { offsets, .. } => (offsets[i + 1] - offsets[i]) as usize,
        Labels::None => 0,
    }
}

/// The admissions of a finished batch's real samples (pads repeat them),
/// each once, keyed by the policy: the next use (plan) or this use (LRU).
/// A sample the batch found cached (`found`) only moves its key; the others
/// are copied into records.
fn batch_admissions(
    policy: CachePolicy,
    capacity: u64,
    ns: &Ns,
    clock: &UseClock,
    job: &BatchJob,
    batch: &Batch,
    found: &[Option<Cached>],
) -> Pending {
    let times = clock.times(job.epoch, &job.indices);
    let mut seen = HashSet::new();
    let mut admissions = Vec::with_capacity(job.ids.len());
    let mut bytes = 0;
    for (i, &id) in job.ids.iter().enumerate() {
        if job.is_pad[i] || !seen.insert(id) {
            continue;
        }
        // A record larger than the whole cache is never admitted: it is
        // neither copied nor served from the queue.
        let fits =
            |i: usize| (4 + label_len(&batch.labels, i) + batch.sample(i).len()) as u64 <= capacity;
        let record = (found[i].is_none() && fits(i)).then(|| {
            let int;
            let label = match &batch.labels {
                Labels::Int(v) => {
                    int = (v[i] as i32).to_le_bytes();
                    Some(&int[..])
                }
                Labels::Blob { data, offsets } => {
                    Some(&data[offsets[i] as usize..offsets[i + 1] as usize])
                }
                Labels::None => None,
            };
            let record = encode(label, batch.sample(i));
            bytes += record.len();
            record
        });
        let (now, next) = times[i];
        admissions.push(Admission {
            id,
            key: match policy {
                CachePolicy::Plan => next,
                CachePolicy::Lru => now,
            },
            record,
        });
    }
    // Reads of one epoch run ahead of each other by up to a window of
    // batches (workers, ranks): a next use that passed less than this long
    // ago may be a read about to happen, not a stale entry.
    let slack = (clock.n() / 16) as u64;
    let stale_below = times
        .iter()
        .map(|t| t.0)
        .min()
        .unwrap_or(0)
        .saturating_sub(slack);
    Pending {
        ns: *ns,
        admissions,
        stale_below,
        bytes,
    }
}

impl TableReader for CachedTable {
    fn read_batch(
        self: Arc<Self>,
        job: BatchJob,
        pool: Arc<ArenaPool>,
    ) -> BoxFuture<'static, Result<Batch>> {
        self.read(job, pool).boxed()
    }

    fn spec(&self) -> &TableSpec {
        self.inner.spec()
    }

    fn plan_known(&self, clock: Arc<UseClock>) {
        *self.clock.lock().expect("clock poisoned") = Some(clock);
    }

    fn settle(&self) {
        self.cache.settle();
    }

    fn read_stats(&self) -> ReadStats {
        ReadStats {
            cache_hits: self.cache.hits.load(Ordering::Relaxed),
            cache_misses: self.cache.misses.load(Ordering::Relaxed),
            ..self.inner.read_stats()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(dir: &Path, size: u64, policy: CachePolicy) -> Arc<SampleCache> {
        let options = CacheOptions {
            path: dir.to_path_buf(),
            size,
            policy,
        };
        let (cache, warning) = SampleCache::open(&options);
        assert!(warning.is_none(), "{warning:?}");
        cache.unwrap()
    }

    fn id(i: u128) -> Uuid {
        Uuid::from_u128(i + 1)
    }

    /// Records samples `(i, key)` of 10 data bytes each (14 with the header).
    fn put(c: &SampleCache, ns: &Ns, samples: &[(u128, u64)], stale_below: u64) {
        put_data(c, ns, samples, &[7u8; 10], stale_below);
    }

    /// Records samples `(i, key)` of `data`, in one write transaction.
    fn put_data(c: &SampleCache, ns: &Ns, samples: &[(u128, u64)], data: &[u8], stale_below: u64) {
        let record = encode(None, data);
        let admissions = samples
            .iter()
            .map(|&(i, key)| Admission {
                id: id(i),
                key,
                record: Some(record.clone()),
            })
            .collect();
        c.commit(&[Pending {
            ns: *ns,
            admissions,
            stale_below,
            bytes: 0,
        }])
        .unwrap();
    }

    fn held(c: &SampleCache, ns: &Ns, n: u128) -> Vec<u128> {
        let ids: Vec<Uuid> = (0..n).map(id).collect();
        let found = c.lookup(ns, &ids).unwrap();
        (0..n).filter(|&i| found[i as usize].is_some()).collect()
    }

    #[test]
    fn plan_policy_keeps_the_samples_used_soonest() {
        let dir = tempfile::tempdir().unwrap();
        // Room for 3 samples of 14 bytes.
        let c = cache(dir.path(), 3 * 14, CachePolicy::Plan);
        let ns = fnv1a(b"t");
        put(&c, &ns, &[(0, 50), (1, 20), (2, 40)], 0);
        assert_eq!(held(&c, &ns, 6), vec![0, 1, 2]);
        // Used again at 30: sooner than 50 (sample 0), which goes.
        put(&c, &ns, &[(3, 30)], 0);
        assert_eq!(held(&c, &ns, 6), vec![1, 2, 3]);
        // Used again at 45, later than all held: not admitted.
        put(&c, &ns, &[(4, 45)], 0);
        assert_eq!(held(&c, &ns, 6), vec![1, 2, 3]);
        // Keys below 25 are stale (their use has passed): sample 1 goes first,
        // even though the newcomer is used later than everything held.
        put(&c, &ns, &[(5, 99)], 25);
        assert_eq!(held(&c, &ns, 6), vec![2, 3, 5]);
        assert_eq!(c.usage().unwrap(), (3 * 14, 3));
        // A hit moves its sample's key: 2 is now used at 100, the latest.
        put(&c, &ns, &[(2, 100)], 0);
        put(&c, &ns, &[(0, 60)], 0);
        assert_eq!(held(&c, &ns, 6), vec![0, 3, 5]);
    }

    #[test]
    fn lru_evicts_the_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path(), 3 * 14, CachePolicy::Lru);
        let ns = fnv1a(b"t");
        put(&c, &ns, &[(0, 1), (1, 2), (2, 3)], 0);
        // 0 is used again: 1 is now the least recent.
        put(&c, &ns, &[(0, 4)], 0);
        put(&c, &ns, &[(3, 5)], 0);
        assert_eq!(held(&c, &ns, 4), vec![0, 2, 3]);
        assert_eq!(c.usage().unwrap(), (3 * 14, 3));
    }

    #[test]
    fn a_sample_larger_than_the_cache_is_not_admitted_and_evicts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        for policy in [CachePolicy::Plan, CachePolicy::Lru] {
            let c = cache(&dir.path().join(format!("{policy:?}")), 20, policy);
            let ns = fnv1a(b"t");
            put(&c, &ns, &[(0, 5)], 0);
            put_data(&c, &ns, &[(1, 1)], &[1u8; 64], 0);
            assert_eq!(held(&c, &ns, 2), vec![0]);
        }
    }

    #[test]
    fn belady_beats_lru_on_reshuffled_epochs() {
        // The policies as the reader drives them: 200 samples, a cache of
        // 100, five shuffled epochs read in order.
        let n = 200usize;
        let mut rates = Vec::new();
        for policy in [CachePolicy::Plan, CachePolicy::Lru] {
            let dir = tempfile::tempdir().unwrap();
            let c = cache(dir.path(), 100 * 14, policy);
            let ns = fnv1a(b"t");
            let clock = UseClock::new(n, true, 9);
            let mut hits = 0;
            for epoch in 0..5u64 {
                let order = {
                    let pos = crs4_cassandra_core::order_positions(n, true, 9, epoch);
                    let mut order = vec![0u32; n];
                    for (i, &p) in pos.iter().enumerate() {
                        order[p as usize] = i as u32;
                    }
                    order
                };
                for batch in order.chunks(10) {
                    let ids: Vec<Uuid> = batch.iter().map(|&i| id(i as u128)).collect();
                    if epoch > 0 {
                        hits += c.lookup(&ns, &ids).unwrap().iter().flatten().count();
                    }
                    let times = clock.times(epoch, batch);
                    let samples: Vec<(u128, u64)> = batch
                        .iter()
                        .zip(&times)
                        .map(|(&i, &(now, next))| {
                            (
                                i as u128,
                                if policy == CachePolicy::Plan {
                                    next
                                } else {
                                    now
                                },
                            )
                        })
                        .collect();
                    let stale = times
                        .iter()
                        .map(|t| t.0)
                        .min()
                        .unwrap()
                        .saturating_sub((n / 16) as u64);
                    put(&c, &ns, &samples, stale);
                }
            }
            rates.push(hits as f64 / (4 * n) as f64);
        }
        // Each sample is read once an epoch, so a sample served from the
        // cache in an epoch was held across its start: no policy serves more
        // than the cache holds (100 of 200), and Belady's serves that.
        let (plan, lru) = (rates[0], rates[1]);
        assert!(plan > 0.49 && plan > lru + 0.2, "plan {plan}, lru {lru}");
    }

    #[test]
    fn namespaces_keep_tables_apart() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path(), 1000, CachePolicy::Plan);
        let a = c.namespace("store\nks.a").unwrap().unwrap();
        let b = c.namespace("store\nks.b").unwrap().unwrap();
        assert_ne!(a, b);
        put(&c, &a, &[(0, 1)], 0);
        assert_eq!(held(&c, &a, 1), vec![0]);
        assert!(held(&c, &b, 1).is_empty());
    }

    #[test]
    fn a_damaged_cache_is_rebuilt_and_a_foreign_directory_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        {
            let c = cache(&path, 1 << 20, CachePolicy::Plan);
            let ns = fnv1a(b"t");
            let samples: Vec<(u128, u64)> = (0..5).map(|i| (i, i as u64)).collect();
            put_data(&c, &ns, &samples, &[3u8; 100_000], 0);
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path.join("data.mdb"))
            .unwrap();
        let len = file.metadata().unwrap().len();
        file.set_len(len / 2).unwrap();
        let options = CacheOptions {
            path: path.clone(),
            size: 1 << 20,
            policy: CachePolicy::Plan,
        };
        let (c, warning) = SampleCache::open(&options);
        let warning = warning.unwrap();
        assert!(
            warning.contains("rebuilt") && warning.contains("cut short"),
            "{warning}"
        );
        assert_eq!(c.unwrap().usage().unwrap(), (0, 0));

        let store = dir.path().join("store");
        crate::local::LocalStore::open(&store, true).unwrap();
        let (c, warning) = SampleCache::open(&CacheOptions {
            path: store.clone(),
            ..options
        });
        assert!(c.is_none());
        assert!(warning.unwrap().contains("not a sample cache"));
        assert!(store.join("data.mdb").exists());
    }

    #[test]
    fn an_unwritable_path_turns_the_cache_off() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let (c, warning) = SampleCache::open(&CacheOptions {
            path: file.join("cache"),
            size: 100,
            policy: CachePolicy::Plan,
        });
        assert!(c.is_none());
        let warning = warning.unwrap();
        assert!(
            warning.contains("is off") && warning.contains("f/cache"),
            "{warning}"
        );
    }

    #[test]
    fn a_cached_table_serves_the_same_batch_and_marks_it_local_once_all_hit() {
        use crate::local::LocalStore;
        use crate::{LabelValue, SampleRow};
        let dir = tempfile::tempdir().unwrap();
        let local = LocalStore::open(&dir.path().join("store"), true).unwrap();
        let spec = TableSpec::new("t", LabelType::Int);
        local.create_tables_sync(&spec, "t_meta", false).unwrap();
        let rows: Vec<SampleRow> = (0..6u128)
            .map(|i| SampleRow {
                id: id(i),
                label: LabelValue::Int(i as i32 * 10),
                data: vec![i as u8 + 1; 5 + i as usize],
            })
            .collect();
        local.put_samples_sync("t", &rows).unwrap();
        let store = CachedStore::new(
            Arc::new(local),
            cache(&dir.path().join("cache"), 1 << 20, CachePolicy::Plan),
        );
        let rt = crate::runtime::runtime();
        let table = rt.block_on(store.open_table(&spec)).unwrap();
        table.plan_known(Arc::new(UseClock::new(6, true, 1)));
        let job = BatchJob {
            epoch: 0,
            position: 0,
            indices: vec![4, 1, 3, 4],
            is_pad: vec![false, false, false, true],
            ids: [4, 1, 3, 4].map(id).to_vec(),
        };
        let pool = ArenaPool::new(0);
        let read = || {
            rt.block_on(table.clone().read_batch(job.clone(), pool.clone()))
                .unwrap()
        };
        let first = read();
        assert!(!first.local);
        let hits = |s: &CachedStore| (s.read_stats().cache_hits, s.read_stats().cache_misses);
        assert_eq!(hits(&store), (0, 3));
        let again = read();
        assert!(again.local);
        assert_eq!(hits(&store), (3, 3));
        for b in [&first, &again] {
            for (slot, &i) in [4u128, 1, 3, 4].iter().enumerate() {
                assert_eq!(b.sample(slot), &rows[i as usize].data[..]);
            }
            match &b.labels {
                Labels::Int(v) => assert_eq!(v, &vec![40, 10, 30, 40]),
                other => panic!("{other:?}"),
            }
        }
        // The reads' admissions are committed by the writer thread; once
        // settled, another cache object of the directory (as another process
        // would) finds them in the environment.
        table.settle();
        let other = cache(&dir.path().join("cache"), 1 << 20, CachePolicy::Plan);
        let ns = other
            .namespace(&namespace(&store.url(), &spec))
            .unwrap()
            .unwrap();
        assert_eq!(held(&other, &ns, 6), vec![1, 3, 4]);
        assert!(other.current_queue().is_none());
        // A sample missing from the store fails the batch, in every read,
        // and is never cached.
        let ghost = BatchJob {
            ids: vec![id(1), Uuid::from_u128(999)],
            indices: vec![1, 5],
            is_pad: vec![false, false],
            ..job.clone()
        };
        for _ in 0..2 {
            let err = rt
                .block_on(table.clone().read_batch(ghost.clone(), pool.clone()))
                .unwrap_err();
            assert_eq!(err.bad_sample(), Some(Uuid::from_u128(999)));
        }
    }

    #[test]
    fn queued_admissions_are_served_before_they_are_committed() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path(), 1 << 20, CachePolicy::Lru);
        let ns = c.namespace("ns").unwrap().unwrap();
        let record = encode(Some(b"L"), b"data");
        // The writer thread is held off: the queue's lock is ours while
        // the batch is queued and looked up.
        let q = c.process_queue();
        {
            let mut state = q.state.lock().unwrap();
            state.running = true;
            state.held.insert(sample_key(&ns, id(7)), record.clone());
        }
        let found = c.lookup(&ns, &[id(7), id(8)]).unwrap();
        assert_eq!(
            found[0],
            Some(Cached {
                label: Some(b"L".to_vec()),
                data: b"data".to_vec()
            })
        );
        assert_eq!(found[1], None);
        q.state.lock().unwrap().running = false;
        q.state.lock().unwrap().held.clear();
        // Through the thread: queued, committed, then found by another
        // cache object of the directory.
        c.enqueue(Pending {
            ns,
            admissions: vec![Admission {
                id: id(7),
                key: 1,
                record: Some(record),
            }],
            stale_below: 0,
            bytes: 10,
        });
        c.settle();
        assert_eq!(q.state.lock().unwrap().bytes, 0);
        assert!(q.state.lock().unwrap().held.is_empty());
        let other = cache(dir.path(), 1 << 20, CachePolicy::Lru);
        assert_eq!(held(&other, &ns, 8), vec![7]);
    }

    #[test]
    fn options_and_sizes_parse_or_name_the_problem() {
        let text = |s: &str| OptionValue::Text(s.into());
        assert_eq!(parse_size(&text("200GB")).unwrap(), 200_000_000_000);
        assert_eq!(parse_size(&text("512MiB")).unwrap(), 512 << 20);
        assert_eq!(parse_size(&text("1.5k")).unwrap(), 1500);
        assert_eq!(parse_size(&OptionValue::Number(4096.0)).unwrap(), 4096);
        for bad in [text("12 parsecs"), text("-1GB"), OptionValue::Number(0.0)] {
            assert!(parse_size(&bad)
                .unwrap_err()
                .to_string()
                .contains("cache_size"));
        }
        let mut options = vec![
            ("cache".to_string(), text("local:/tmp/c")),
            ("cache_size".to_string(), text("1GB")),
            ("retries".to_string(), OptionValue::Number(3.0)),
        ];
        let taken = CacheOptions::take(&mut options).unwrap().unwrap();
        assert_eq!(taken.path, PathBuf::from("/tmp/c"));
        assert_eq!(taken.policy, CachePolicy::Plan);
        assert_eq!(options.len(), 1);
        let err =
            |mut o: Vec<(String, OptionValue)>| CacheOptions::take(&mut o).unwrap_err().to_string();
        assert!(err(vec![("cache".into(), text("local:/c"))]).contains("needs cache_size"));
        assert!(err(vec![
            ("cache".into(), text("/c")),
            ("cache_size".into(), text("1"))
        ])
        .contains("local:PATH"));
        assert!(err(vec![("cache_size".into(), text("1GB"))]).contains("need cache="));
        assert!(err(vec![
            ("cache".into(), text("local:/c")),
            ("cache_size".into(), text("1GB")),
            ("cache_policy".into(), text("mru")),
        ])
        .contains("cache_policy"));
    }
}
