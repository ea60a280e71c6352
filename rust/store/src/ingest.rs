//! The ingest writer: rows in, rows written, the same for every engine (the
//! command line, a Ray or Spark task writing its partition).
//!
//! Rows are grouped into chunks. Each chunk is validated and transformed on
//! the decoding pool (see [`crs4_cassandra_decode::transform`]), then its data
//! rows are written, then its metadata rows: a metadata row is there only if
//! its sample is, which is what resuming an interrupted ingest relies on. At
//! most `window` chunks are in flight; [`IngestWriter::write`] waits for room
//! (backpressure). A chunk that fails with a transient store error (timeout,
//! lost connection) is written again, whole, after a backoff, a bounded
//! number of times: ids are given or derived from the source key
//! ([`crs4_cassandra_core::sample_uuid`]), so writing a chunk twice writes the
//! same rows, and re-running a failed partition leaves no duplicates.
//!
//! A row whose data does not decode (with `validate`) or whose transform fails
//! is rejected, named by its key and the reason, and the rest go on.

use crate::error::{Result, StoreError};
use crate::{LabelType, LabelValue, MetadataRow, SampleRow, SampleStore};
use crs4_cassandra_decode::transform::{apply_cow, check_image, rejection, TransformSpec};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use uuid::Uuid;

/// How a writer writes.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    pub table: String,
    /// Where metadata rows go; None: no metadata rows.
    pub metadata_table: Option<String>,
    pub label_type: LabelType,
    /// Chunks written at once, at most.
    pub window: usize,
    /// Rows a chunk.
    pub chunk: usize,
    pub transform: TransformSpec,
    /// Reject rows whose data is not a decodable image.
    pub validate: bool,
    /// Times a chunk is written again after a transient error.
    pub retries: u32,
    /// The first pause before writing a chunk again; doubled each time.
    pub backoff: Duration,
}

/// Chunks in flight by default: enough to overlap a chunk's transform with
/// the round trips of the others (each chunk's rows are themselves inserted
/// concurrently by the store).
pub const DEFAULT_WINDOW: usize = 4;

impl WriterConfig {
    pub fn new(table: &str, label_type: LabelType) -> Self {
        Self {
            table: table.to_string(),
            metadata_table: Some(format!("{table}_metadata")),
            label_type,
            window: DEFAULT_WINDOW,
            chunk: 64,
            transform: TransformSpec::default(),
            validate: true,
            retries: 3,
            backoff: Duration::from_millis(200),
        }
    }

    pub fn check(&self) -> Result<()> {
        if self.window == 0 || self.chunk == 0 {
            return Err(StoreError::InvalidArgument(format!(
                "window and chunk must be 1 or more, got window={} chunk={}",
                self.window, self.chunk
            )));
        }
        self.transform
            .check()
            .map_err(|e| StoreError::InvalidArgument(e.to_string()))
    }
}

/// The metadata columns of a row, beside its id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowMetadata {
    pub label: Option<i32>,
    pub label_name: Option<String>,
    pub path: Option<String>,
    pub split: Option<String>,
}

/// A row to write.
#[derive(Debug, Clone)]
pub struct IngestRow {
    pub id: Uuid,
    /// What names the row in a rejection (its path, its source key); None: its id.
    pub key: Option<String>,
    pub label: LabelValue,
    pub data: Vec<u8>,
    pub metadata: RowMetadata,
    /// Already known to be an image (checked by the caller, for formats this
    /// crate does not decode): not validated again.
    pub checked: bool,
    /// Rejected by the caller already, with this reason: not written, reported.
    pub rejected: Option<String>,
}

impl IngestRow {
    fn name(&self) -> String {
        self.key.clone().unwrap_or_else(|| self.id.to_string())
    }
}

/// What a writer wrote.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriteSummary {
    pub rows_written: u64,
    /// Bytes of the data column written (after transforms).
    pub bytes_written: u64,
    /// (key or id, reason), in input order.
    pub rejected: Vec<(String, String)>,
    /// Ids written, in input order.
    pub ids: Vec<Uuid>,
    /// The most chunks that were being written at once.
    pub max_in_flight: usize,
    /// Chunk writes repeated after transient errors.
    pub retries: u64,
}

/// What one chunk gave.
#[derive(Debug, Default)]
struct ChunkOutcome {
    ids: Vec<Uuid>,
    bytes: u64,
    rejected: Vec<(String, String)>,
}

#[derive(Default)]
struct Counters {
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    retries: AtomicU64,
}

/// Writes rows into a data table and its metadata table (see the module's
/// documentation). Its methods are async: run them on the process's runtime.
pub struct IngestWriter {
    store: Arc<dyn SampleStore>,
    config: Arc<WriterConfig>,
    pending: Vec<IngestRow>,
    next_chunk: usize,
    tasks: JoinSet<(usize, Result<ChunkOutcome>)>,
    done: BTreeMap<usize, ChunkOutcome>,
    counters: Arc<Counters>,
    /// Set once a chunk failed for good: the writer writes nothing more.
    failed: Option<String>,
}

impl IngestWriter {
    pub fn new(store: Arc<dyn SampleStore>, config: WriterConfig) -> Result<Self> {
        config.check()?;
        Ok(Self {
            store,
            config: Arc::new(config),
            pending: Vec::new(),
            next_chunk: 0,
            tasks: JoinSet::new(),
            done: BTreeMap::new(),
            counters: Arc::default(),
            failed: None,
        })
    }

    pub fn config(&self) -> &WriterConfig {
        &self.config
    }

    /// Queues rows; returns once every full chunk of them is in flight,
    /// waiting while `window` chunks are. Fails with the first chunk that
    /// failed for good.
    pub async fn write(&mut self, rows: Vec<IngestRow>) -> Result<()> {
        self.check_failed()?;
        for row in &rows {
            check_label(&self.config, row)?;
        }
        self.pending.extend(rows);
        while self.pending.len() >= self.config.chunk {
            let rest = self.pending.split_off(self.config.chunk);
            let chunk = std::mem::replace(&mut self.pending, rest);
            self.submit(chunk).await?;
        }
        Ok(())
    }

    /// Writes what is queued, waits for every chunk, and says what was
    /// written; fails with the first chunk that failed for good.
    pub async fn close(&mut self) -> Result<WriteSummary> {
        self.check_failed()?;
        if !self.pending.is_empty() {
            let chunk = std::mem::take(&mut self.pending);
            self.submit(chunk).await?;
        }
        while !self.tasks.is_empty() {
            self.reap_one().await?;
        }
        let mut summary = WriteSummary {
            max_in_flight: self.counters.max_in_flight.load(Ordering::Relaxed),
            retries: self.counters.retries.load(Ordering::Relaxed),
            ..WriteSummary::default()
        };
        for (_, outcome) in std::mem::take(&mut self.done) {
            summary.rows_written += outcome.ids.len() as u64;
            summary.bytes_written += outcome.bytes;
            summary.ids.extend(outcome.ids);
            summary.rejected.extend(outcome.rejected);
        }
        self.failed = Some("the writer is closed".into());
        Ok(summary)
    }

    /// Waits for the chunks in flight, drops the rows not yet in a chunk
    /// sent, and closes: an interrupted ingest keeps every chunk it started.
    pub async fn drain(&mut self) -> Result<()> {
        self.pending.clear();
        while !self.tasks.is_empty() {
            self.reap_one().await?;
        }
        self.failed
            .get_or_insert_with(|| "the writer was stopped".into());
        Ok(())
    }

    /// Stops the chunks in flight and drops what is queued: what was written
    /// stays written (metadata rows only of whole chunks' samples).
    pub fn abort(&mut self) {
        self.tasks.abort_all();
        self.pending.clear();
        self.failed
            .get_or_insert_with(|| "the writer was aborted".into());
    }

    fn check_failed(&self) -> Result<()> {
        match &self.failed {
            None => Ok(()),
            Some(why) => Err(StoreError::InvalidArgument(format!(
                "writer of table {:?} cannot write: {why}",
                self.config.table
            ))),
        }
    }

    async fn submit(&mut self, chunk: Vec<IngestRow>) -> Result<()> {
        while self.tasks.len() >= self.config.window {
            self.reap_one().await?;
        }
        let seq = self.next_chunk;
        self.next_chunk += 1;
        let (store, config, counters) = (
            self.store.clone(),
            self.config.clone(),
            self.counters.clone(),
        );
        self.tasks.spawn(async move {
            let result = write_chunk(store, config, counters, chunk).await;
            (seq, result)
        });
        Ok(())
    }

    async fn reap_one(&mut self) -> Result<()> {
        let Some(joined) = self.tasks.join_next().await else {
            return Ok(());
        };
        let failure = match joined {
            Ok((seq, Ok(outcome))) => {
                self.done.insert(seq, outcome);
                return Ok(());
            }
            Ok((_, Err(e))) => e,
            Err(join) => StoreError::Internal(format!("a chunk write stopped: {join}")),
        };
        // The others stop too: the caller re-runs the partition (same ids).
        self.tasks.abort_all();
        self.failed = Some(format!("an earlier chunk failed: {failure}"));
        Err(failure)
    }
}

fn check_label(config: &WriterConfig, row: &IngestRow) -> Result<()> {
    let ok = matches!(
        (&row.label, config.label_type),
        (LabelValue::Int(_), LabelType::Int)
            | (LabelValue::Blob(_), LabelType::Blob)
            | (LabelValue::None, _)
    );
    if ok {
        return Ok(());
    }
    let got = match &row.label {
        LabelValue::Int(_) => "an int",
        LabelValue::Blob(_) => "bytes",
        LabelValue::None => "None",
    };
    Err(StoreError::InvalidArgument(format!(
        "row {}: label is {got}, but table {:?} has label type {:?}",
        row.name(),
        config.table,
        config.label_type.as_str()
    )))
}

/// A chunk's rows after validation and transforms, as the store takes them.
struct Prepared {
    samples: Vec<SampleRow>,
    metadata: Vec<MetadataRow>,
    rejected: Vec<(String, String)>,
    bytes: u64,
}

/// Validates and transforms a chunk's rows on the decoding pool.
fn prepare(rows: Vec<IngestRow>, config: &WriterConfig) -> Prepared {
    use rayon::prelude::*;
    let spec = config.transform;
    let results: Vec<std::result::Result<Option<Vec<u8>>, String>> =
        crs4_cassandra_decode::pool().install(|| {
            rows.par_iter()
                .map(|row| {
                    if let Some(why) = &row.rejected {
                        return Err(why.clone());
                    }
                    // A transform that re-encodes has decoded the image whole.
                    match apply_cow(&row.data, &spec) {
                        Ok(Cow::Owned(out)) => Ok(Some(out)),
                        Ok(Cow::Borrowed(_)) if config.validate && !row.checked => {
                            check_image(&row.data).map(|_| None)
                        }
                        Ok(Cow::Borrowed(_)) => Ok(None),
                        Err(e) if row.data.is_empty() => {
                            Err(check_image(&row.data).err().unwrap_or_else(|| rejection(&e)))
                        }
                        Err(e) => Err(rejection(&e)),
                    }
                })
                .collect()
        });
    let mut out = Prepared {
        samples: Vec::with_capacity(rows.len()),
        metadata: Vec::new(),
        rejected: Vec::new(),
        bytes: 0,
    };
    for (row, result) in rows.into_iter().zip(results) {
        let data = match result {
            Err(why) => {
                out.rejected.push((row.name(), why));
                continue;
            }
            Ok(Some(transformed)) => transformed,
            Ok(None) => row.data,
        };
        out.bytes += data.len() as u64;
        if config.metadata_table.is_some() {
            let m = row.metadata;
            out.metadata.push(MetadataRow {
                id: row.id,
                label: m.label,
                label_name: m.label_name,
                path: m.path,
                split: m.split,
            });
        }
        out.samples.push(SampleRow {
            id: row.id,
            label: row.label,
            data,
        });
    }
    out
}

/// Errors worth writing the chunk again for: the store's own retries gave up
/// on a timeout or a lost connection.
fn transient(e: &StoreError) -> bool {
    matches!(e, StoreError::Timeout { .. } | StoreError::Connection { .. })
}

/// Adds which chunk failed, and after how many attempts, to a store error,
/// keeping its kind (the Python exception it becomes).
fn with_context(e: StoreError, context: &str) -> StoreError {
    match e {
        StoreError::Timeout {
            hosts,
            seconds,
            context: c,
            source,
        } => StoreError::Timeout {
            hosts,
            seconds,
            context: format!("{c}; {context}"),
            source,
        },
        StoreError::Connection {
            hosts,
            message,
            source,
        } => StoreError::Connection {
            hosts,
            message: format!("{message}; {context}"),
            source,
        },
        StoreError::Query {
            hosts,
            table,
            message,
            source,
        } => StoreError::Query {
            hosts,
            table,
            message: format!("{message}; {context}"),
            source,
        },
        StoreError::Lmdb { path, message } => StoreError::Lmdb {
            path,
            message: format!("{message}; {context}"),
        },
        StoreError::InvalidArgument(m) => StoreError::InvalidArgument(format!("{m}; {context}")),
        StoreError::Internal(m) => StoreError::Internal(format!("{m}; {context}")),
        other => other,
    }
}

async fn write_chunk(
    store: Arc<dyn SampleStore>,
    config: Arc<WriterConfig>,
    counters: Arc<Counters>,
    rows: Vec<IngestRow>,
) -> Result<ChunkOutcome> {
    let n = rows.len();
    let first = rows.first().map(|r| (r.id, r.key.clone()));
    let cfg = config.clone();
    let prepared = tokio::task::spawn_blocking(move || prepare(rows, &cfg))
        .await
        .map_err(|e| StoreError::Internal(format!("the transforms of a chunk stopped: {e}")))?;
    let outcome = ChunkOutcome {
        ids: prepared.samples.iter().map(|r| r.id).collect(),
        bytes: prepared.bytes,
        rejected: prepared.rejected,
    };
    if prepared.samples.is_empty() {
        return Ok(outcome);
    }
    let now = counters.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    counters.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let result = put_with_retries(
        store.as_ref(),
        &config,
        &counters,
        prepared.samples,
        prepared.metadata,
    )
    .await;
    counters.in_flight.fetch_sub(1, Ordering::SeqCst);
    result.map_err(|(e, table, attempts)| {
        let (id, key) = first.expect("a chunk with samples has a first row");
        let key = key.map(|k| format!(", key {k:?}")).unwrap_or_default();
        with_context(
            e,
            &format!(
                "writing a chunk of {n} rows into table {table:?} (first id {id}{key}) \
                 failed after {attempts} attempt(s); re-running the same rows writes the same ids"
            ),
        )
    })?;
    Ok(outcome)
}

/// Writes a chunk's samples, then its metadata, each again after transient
/// errors; the error is returned with the table it concerned and the attempts.
async fn put_with_retries(
    store: &dyn SampleStore,
    config: &WriterConfig,
    counters: &Counters,
    samples: Vec<SampleRow>,
    metadata: Vec<MetadataRow>,
) -> std::result::Result<(), (StoreError, String, u32)> {
    let mut attempts = 0u32;
    let mut pause = config.backoff;
    let mut samples_done = false;
    loop {
        attempts += 1;
        let step = if !samples_done {
            match store.put_samples(&config.table, samples.clone()).await {
                Ok(()) => {
                    samples_done = true;
                    None
                }
                Err(e) => Some((e, config.table.clone())),
            }
        } else {
            None
        };
        let step = match (step, &config.metadata_table) {
            (Some(failed), _) => Some(failed),
            (None, Some(meta)) => match store.put_metadata(meta, metadata.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) => Some((e, meta.clone())),
            },
            (None, None) => return Ok(()),
        };
        let (e, table) = step.expect("an error is left");
        if !transient(&e) || attempts > config.retries {
            return Err((e, table, attempts));
        }
        counters.retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::LocalStore;
    use crate::runtime::runtime;
    use crate::TableSpec;
    use crs4_cassandra_core::sample_uuid;
    use futures::future::BoxFuture;
    use futures::FutureExt;

    /// A 2x1 PNG (stored deflate block), as the decode crate's tests build it.
    fn png() -> Vec<u8> {
        use crs4_cassandra_decode::transform::encode_png;
        use crs4_cassandra_decode::RgbImage;
        encode_png(&RgbImage {
            width: 3,
            height: 2,
            pixels: vec![100; 18],
        })
        .unwrap()
    }

    fn row(table: &str, key: &str, data: Vec<u8>, label: i32) -> IngestRow {
        IngestRow {
            id: sample_uuid(table, key, 0),
            key: Some(key.into()),
            label: LabelValue::Int(label),
            data,
            metadata: RowMetadata {
                label: Some(label),
                path: Some(key.into()),
                ..RowMetadata::default()
            },
            checked: false,
            rejected: None,
        }
    }

    fn local(dir: &std::path::Path) -> Arc<LocalStore> {
        let st = Arc::new(LocalStore::open(&dir.join("s"), true).unwrap());
        st.create_tables_sync(&TableSpec::new("t", LabelType::Int), "t_metadata", false)
            .unwrap();
        st
    }

    #[test]
    fn writes_rejects_and_rewrites_the_same_rows() {
        let dir = tempfile::tempdir().unwrap();
        let st = local(dir.path());
        let rows: Vec<IngestRow> = (0..10)
            .map(|i| {
                let data = if i == 3 { b"junk".to_vec() } else { png() };
                row("t", &format!("k{i}"), data, i)
            })
            .collect();
        let run = |rows: Vec<IngestRow>| {
            let mut config = WriterConfig::new("t", LabelType::Int);
            config.chunk = 3;
            config.window = 2;
            let mut w = IngestWriter::new(st.clone(), config).unwrap();
            runtime().block_on(async move {
                w.write(rows).await.unwrap();
                w.close().await.unwrap()
            })
        };
        let s = run(rows.clone());
        assert_eq!(s.rows_written, 9);
        assert_eq!(s.bytes_written, 9 * png().len() as u64);
        assert_eq!(
            s.rejected,
            [(
                "k3".to_string(),
                "not a JPEG or PNG image (first bytes 6a 75 6e 6b)".to_string()
            )]
        );
        let want: Vec<Uuid> = rows.iter().filter(|r| r.key.as_deref() != Some("k3")).map(|r| r.id).collect();
        assert_eq!(s.ids, want, "input order");
        assert!(s.max_in_flight >= 1 && s.max_in_flight <= 2);
        let again = run(rows);
        assert_eq!(again.ids, s.ids);
        let meta = st.scan_metadata_sync("t_metadata").unwrap();
        assert_eq!(meta.len(), 9, "no duplicates after a second run");
    }

    /// A store whose writes time out a given number of times first.
    struct Flaky {
        inner: Arc<LocalStore>,
        failures: AtomicU64,
    }

    impl SampleStore for Flaky {
        fn url(&self) -> String {
            self.inner.url()
        }
        fn open_table(
            &self,
            spec: &TableSpec,
        ) -> BoxFuture<'static, Result<Arc<dyn crate::TableReader>>> {
            self.inner.open_table(spec)
        }
        fn create_tables(
            &self,
            spec: &TableSpec,
            m: &str,
            o: bool,
        ) -> BoxFuture<'static, Result<()>> {
            self.inner.create_tables(spec, m, o)
        }
        fn put_samples(&self, table: &str, rows: Vec<SampleRow>) -> BoxFuture<'static, Result<()>> {
            let left = self.failures.load(Ordering::SeqCst);
            if left > 0 {
                self.failures.store(left - 1, Ordering::SeqCst);
                return futures::future::ready(Err(StoreError::Timeout {
                    hosts: "127.0.0.9:9042".into(),
                    seconds: 1.0,
                    context: String::new(),
                    source: None,
                }))
                .boxed();
            }
            self.inner.put_samples(table, rows)
        }
        fn put_metadata(
            &self,
            table: &str,
            rows: Vec<MetadataRow>,
        ) -> BoxFuture<'static, Result<()>> {
            self.inner.put_metadata(table, rows)
        }
        fn scan_metadata(&self, table: &str) -> BoxFuture<'static, Result<Vec<MetadataRow>>> {
            self.inner.scan_metadata(table)
        }
        fn array_meta(&self, name: &str) -> BoxFuture<'static, Result<Option<String>>> {
            self.inner.array_meta(name)
        }
        fn put_array_meta(
            &self,
            name: &str,
            meta: Option<String>,
        ) -> BoxFuture<'static, Result<()>> {
            self.inner.put_array_meta(name, meta)
        }
        fn list_arrays(&self) -> BoxFuture<'static, Result<Vec<String>>> {
            self.inner.list_arrays()
        }
        fn chunk_source(&self) -> Result<Arc<dyn crate::ChunkSource>> {
            self.inner.chunk_source()
        }
        fn put_chunks(
            &self,
            array: Uuid,
            chunks: Vec<(u64, Option<Vec<u8>>)>,
        ) -> BoxFuture<'static, Result<()>> {
            self.inner.put_chunks(array, chunks)
        }
    }

    fn flaky_run(failures: u64) -> Result<WriteSummary> {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Flaky {
            inner: local(dir.path()),
            failures: AtomicU64::new(failures),
        });
        let mut config = WriterConfig::new("t", LabelType::Int);
        config.retries = 2;
        config.backoff = Duration::from_millis(1);
        config.window = 1;
        let mut w = IngestWriter::new(store, config)?;
        let rows = (0..5).map(|i| row("t", &format!("k{i}"), png(), i)).collect();
        runtime().block_on(async move {
            w.write(rows).await?;
            w.close().await
        })
    }

    #[test]
    fn transient_errors_are_retried_a_bounded_number_of_times() {
        let s = flaky_run(2).unwrap();
        assert_eq!((s.rows_written, s.retries), (5, 2));
        let e = flaky_run(3).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, StoreError::Timeout { .. }), "{msg}");
        assert!(msg.contains("into table \"t\""), "{msg}");
        assert!(msg.contains(&sample_uuid("t", "k0", 0).to_string()), "{msg}");
        assert!(msg.contains("after 3 attempt(s)"), "{msg}");
    }

    #[test]
    fn transforms_run_in_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let st = local(dir.path());
        let mut config = WriterConfig::new("t", LabelType::Int);
        config.transform.to_jpeg = true;
        let mut w = IngestWriter::new(st.clone(), config).unwrap();
        let s = runtime()
            .block_on(async move {
                w.write(vec![row("t", "a", png(), 1)]).await?;
                w.close().await
            })
            .unwrap();
        assert_eq!(s.rows_written, 1);
        let r = runtime()
            .block_on(crate::read_sample(
                st.as_ref(),
                &TableSpec::new("t", LabelType::Int),
                s.ids[0],
            ))
            .unwrap();
        assert!(r.data.starts_with(&[0xFF, 0xD8]), "stored as JPEG");
        assert_eq!(s.bytes_written, r.data.len() as u64);
    }

    #[test]
    fn a_label_of_the_wrong_type_is_refused_naming_the_row() {
        let dir = tempfile::tempdir().unwrap();
        let mut w =
            IngestWriter::new(local(dir.path()), WriterConfig::new("t", LabelType::Int)).unwrap();
        let mut r = row("t", "a", png(), 1);
        r.label = LabelValue::Blob(vec![1]);
        let e = runtime().block_on(w.write(vec![r])).unwrap_err();
        assert!(e.to_string().contains("row a: label is bytes"), "{e}");
    }
}
