//! The embedded local store: one LMDB environment (a directory), one named
//! database per table, keyed by the 16 uuid bytes. Reads copy each sample once,
//! from the memory map straight into the batch arena.
//!
//! Data table value: `u32` label length (`u32::MAX` for a null label), the
//! label bytes (an `int` label is 4 bytes, little endian), then the data bytes.
//! Metadata table value: the row as JSON. A registry database records each
//! table's kind and label type.

use crate::batch::{ArenaPool, Batch, BatchJob, Labels};
use crate::error::{Result, StoreError};
use crate::lmdb::{Dbi, Env};
use crate::{LabelType, LabelValue, MetadataRow, SampleRow, SampleStore, TableReader, TableSpec};
use futures::future::{self, BoxFuture, FutureExt};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use uuid::Uuid;

const REGISTRY: &str = "__crs4_cassandra_tables__";
/// Array metadata (name -> JSON) and chunks (16 id bytes + 8 big-endian index bytes -> value).
const ARRAYS: &str = "__crs4_cassandra_arrays__";
const CHUNKS: &str = "__crs4_cassandra_array_chunks__";
const NULL_LABEL: u32 = u32::MAX;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
enum TableKind {
    Data,
    Metadata,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TableInfo {
    kind: TableKind,
    #[serde(default)]
    label_type: Option<LabelType>,
}

#[derive(Debug, Clone)]
pub struct LocalStore {
    path: PathBuf,
}

impl LocalStore {
    /// A store at `path`. Opening checks that the path is a store unless `create`.
    pub fn open(path: &Path, create: bool) -> Result<Self> {
        let store = Self {
            path: path.to_path_buf(),
        };
        let env = Env::open(path, create)?;
        if create {
            env.dbi(REGISTRY, true)?;
        } else if env.dbi(REGISTRY, false)?.is_none() {
            return Err(StoreError::NotAStore {
                path: path.to_path_buf(),
                reason: "it is an LMDB environment without a table registry".into(),
            });
        }
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    // Opened per call, not held: a handle kept in this struct would cross fork()
    // into DataLoader workers. `Env::open` returns this process's cached handle.
    fn env(&self) -> Result<Arc<Env>> {
        Env::open(&self.path, false)
    }

    fn tables(&self, env: &Env) -> Result<Vec<(String, TableInfo)>> {
        let registry = env
            .dbi(REGISTRY, false)?
            .ok_or_else(|| StoreError::NotAStore {
                path: self.path.clone(),
                reason: "missing table registry".into(),
            })?;
        env.read(|txn| {
            let mut out = Vec::new();
            txn.for_each(registry, |k, v| {
                let info: TableInfo =
                    serde_json::from_slice(v).map_err(|e| StoreError::NotAStore {
                        path: self.path.clone(),
                        reason: format!("corrupt table registry entry: {e}"),
                    })?;
                out.push((String::from_utf8_lossy(k).into_owned(), info));
                Ok(true)
            })?;
            Ok(out)
        })
    }

    fn table(&self, env: &Env, name: &str, kind: TableKind) -> Result<(Dbi, TableInfo)> {
        let tables = self.tables(env)?;
        let found = tables
            .iter()
            .find(|(n, info)| n == name && info.kind == kind)
            .map(|(_, info)| info.clone());
        let not_found = || StoreError::TableNotFound {
            store: self.url(),
            table: name.to_string(),
            available: tables
                .iter()
                .filter(|(_, i)| i.kind == kind)
                .map(|(n, _)| n.clone())
                .collect(),
        };
        let info = found.ok_or_else(not_found)?;
        let dbi = env.dbi(name, false)?.ok_or_else(not_found)?;
        Ok((dbi, info))
    }

    pub fn create_tables_sync(
        &self,
        spec: &TableSpec,
        metadata_table: &str,
        overwrite: bool,
    ) -> Result<()> {
        let env = self.env()?;
        let existing = self.tables(&env)?;
        for name in [spec.table.as_str(), metadata_table] {
            if !overwrite && existing.iter().any(|(n, _)| n == name) {
                return Err(StoreError::TableExists {
                    store: self.url(),
                    table: name.to_string(),
                });
            }
        }
        let registry = env.dbi(REGISTRY, true)?.expect("created");
        let data = env.dbi(&spec.table, true)?.expect("created");
        let meta = env.dbi(metadata_table, true)?.expect("created");
        env.write(|txn| {
            txn.clear(data)?;
            txn.clear(meta)?;
            let info = |kind, label_type| {
                serde_json::to_vec(&TableInfo { kind, label_type }).expect("serializable")
            };
            txn.put(
                registry,
                spec.table.as_bytes(),
                &info(TableKind::Data, Some(spec.label_type)),
            )?;
            txn.put(
                registry,
                metadata_table.as_bytes(),
                &info(TableKind::Metadata, None),
            )
        })
    }

    pub fn put_samples_sync(&self, table: &str, rows: &[SampleRow]) -> Result<()> {
        let env = self.env()?;
        let (dbi, info) = self.table(&env, table, TableKind::Data)?;
        let label_type = info.label_type.unwrap_or(LabelType::None);
        let mut value = Vec::new();
        env.write(|txn| {
            for row in rows {
                value.clear();
                match (&row.label, label_type) {
                    (LabelValue::Int(v), LabelType::Int) => {
                        value.extend_from_slice(&4u32.to_le_bytes());
                        value.extend_from_slice(&v.to_le_bytes());
                    }
                    (LabelValue::Blob(b), LabelType::Blob) => {
                        value.extend_from_slice(&(b.len() as u32).to_le_bytes());
                        value.extend_from_slice(b);
                    }
                    (LabelValue::None, LabelType::None) => value.extend_from_slice(&0u32.to_le_bytes()),
                    (LabelValue::None, _) => value.extend_from_slice(&NULL_LABEL.to_le_bytes()),
                    (other, expected) => {
                        return Err(StoreError::InvalidArgument(format!(
                            "sample {}: label {other:?} does not match table {table:?} of label type {:?}",
                            row.id,
                            expected.as_str()
                        )))
                    }
                }
                value.extend_from_slice(&row.data);
                txn.put(dbi, row.id.as_bytes(), &value)?;
            }
            Ok(())
        })
    }

    pub fn put_metadata_sync(&self, table: &str, rows: &[MetadataRow]) -> Result<()> {
        let env = self.env()?;
        let (dbi, _) = self.table(&env, table, TableKind::Metadata)?;
        env.write(|txn| {
            for row in rows {
                let json = serde_json::to_vec(row).expect("serializable");
                txn.put(dbi, row.id.as_bytes(), &json)?;
            }
            Ok(())
        })
    }

    pub fn scan_metadata_sync(&self, table: &str) -> Result<Vec<MetadataRow>> {
        let env = self.env()?;
        let (dbi, _) = self.table(&env, table, TableKind::Metadata)?;
        env.read(|txn| {
            let mut rows = Vec::with_capacity(txn.count(dbi)?);
            txn.for_each(dbi, |k, v| {
                let row: MetadataRow =
                    serde_json::from_slice(v).map_err(|e| StoreError::BadValue {
                        table: table.to_string(),
                        uuid: Uuid::from_slice(k).unwrap_or_default(),
                        column: "metadata".into(),
                        reason: e.to_string(),
                    })?;
                rows.push(row);
                Ok(true)
            })?;
            Ok(rows)
        })
    }

    pub fn open_table_sync(&self, spec: &TableSpec) -> Result<Arc<LocalTable>> {
        let env = self.env()?;
        let (dbi, info) = self.table(&env, &spec.table, TableKind::Data)?;
        let actual = info.label_type.unwrap_or(LabelType::None);
        // A table with labels can be read without them; not the other way round.
        if actual != spec.label_type && spec.label_type != LabelType::None {
            return Err(StoreError::LabelTypeMismatch {
                table: spec.table.clone(),
                actual: actual.as_str().into(),
                requested: spec.label_type.as_str().into(),
            });
        }
        Ok(Arc::new(LocalTable {
            env,
            dbi,
            spec: spec.clone(),
        }))
    }
}

fn chunk_key(array: Uuid, index: u64) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..16].copy_from_slice(array.as_bytes());
    key[16..].copy_from_slice(&index.to_be_bytes());
    key
}

impl LocalStore {
    pub fn array_meta_sync(&self, name: &str) -> Result<Option<String>> {
        let env = self.env()?;
        let Some(dbi) = env.dbi(ARRAYS, false)? else {
            return Ok(None);
        };
        env.read(|txn| {
            Ok(txn
                .get(dbi, name.as_bytes())?
                .map(|v| String::from_utf8_lossy(v).into_owned()))
        })
    }

    pub fn put_array_meta_sync(&self, name: &str, meta: Option<&str>) -> Result<()> {
        let env = self.env()?;
        let dbi = env.dbi(ARRAYS, true)?.expect("created");
        env.write(|txn| match meta {
            Some(json) => txn.put(dbi, name.as_bytes(), json.as_bytes()),
            None => txn.del(dbi, name.as_bytes()),
        })
    }

    pub fn list_arrays_sync(&self) -> Result<Vec<String>> {
        let env = self.env()?;
        let Some(dbi) = env.dbi(ARRAYS, false)? else {
            return Ok(Vec::new());
        };
        env.read(|txn| {
            let mut names = Vec::new();
            txn.for_each(dbi, |k, _| {
                names.push(String::from_utf8_lossy(k).into_owned());
                Ok(true)
            })?;
            Ok(names)
        })
    }

    /// Every chunk of the call in one transaction (one commit).
    pub fn put_chunks_sync(&self, array: Uuid, chunks: &[(u64, Option<Vec<u8>>)]) -> Result<()> {
        let env = self.env()?;
        let dbi = env.dbi(CHUNKS, true)?.expect("created");
        env.write(|txn| {
            for (index, value) in chunks {
                let key = chunk_key(array, *index);
                match value {
                    Some(v) => txn.put(dbi, &key, v)?,
                    None => txn.del(dbi, &key)?,
                }
            }
            Ok(())
        })
    }
}

impl SampleStore for LocalStore {
    fn url(&self) -> String {
        format!("local:{}", self.path.display())
    }

    fn open_table(&self, spec: &TableSpec) -> BoxFuture<'static, Result<Arc<dyn TableReader>>> {
        future::ready(
            self.open_table_sync(spec)
                .map(|t| t as Arc<dyn TableReader>),
        )
        .boxed()
    }

    fn create_tables(
        &self,
        spec: &TableSpec,
        metadata_table: &str,
        overwrite: bool,
    ) -> BoxFuture<'static, Result<()>> {
        future::ready(self.create_tables_sync(spec, metadata_table, overwrite)).boxed()
    }

    fn put_samples(&self, table: &str, rows: Vec<SampleRow>) -> BoxFuture<'static, Result<()>> {
        let (this, table) = (self.clone(), table.to_string());
        async move {
            tokio::task::spawn_blocking(move || this.put_samples_sync(&table, &rows))
                .await
                .map_err(|e| StoreError::Internal(e.to_string()))?
        }
        .boxed()
    }

    fn put_metadata(&self, table: &str, rows: Vec<MetadataRow>) -> BoxFuture<'static, Result<()>> {
        future::ready(self.put_metadata_sync(table, &rows)).boxed()
    }

    fn scan_metadata(&self, table: &str) -> BoxFuture<'static, Result<Vec<MetadataRow>>> {
        future::ready(self.scan_metadata_sync(table)).boxed()
    }

    fn array_meta(&self, name: &str) -> BoxFuture<'static, Result<Option<String>>> {
        future::ready(self.array_meta_sync(name)).boxed()
    }

    fn put_array_meta(&self, name: &str, meta: Option<String>) -> BoxFuture<'static, Result<()>> {
        future::ready(self.put_array_meta_sync(name, meta.as_deref())).boxed()
    }

    fn list_arrays(&self) -> BoxFuture<'static, Result<Vec<String>>> {
        future::ready(self.list_arrays_sync()).boxed()
    }

    fn chunk_source(&self) -> Result<Arc<dyn crate::ChunkSource>> {
        Ok(Arc::new(LocalChunks { env: self.env()? }))
    }

    fn put_chunks(
        &self,
        array: Uuid,
        chunks: Vec<(u64, Option<Vec<u8>>)>,
    ) -> BoxFuture<'static, Result<()>> {
        let this = self.clone();
        async move {
            tokio::task::spawn_blocking(move || this.put_chunks_sync(array, &chunks))
                .await
                .map_err(|e| StoreError::Internal(e.to_string()))?
        }
        .boxed()
    }
}

/// Reads chunks of the local store's arrays through one environment handle.
pub struct LocalChunks {
    env: Arc<Env>,
}

impl LocalChunks {
    pub fn get_chunk_sync(&self, array: Uuid, index: u64) -> Result<Option<bytes::Bytes>> {
        // Looked up each time: another process may create the database later.
        let Some(dbi) = self.env.dbi(CHUNKS, false)? else {
            return Ok(None);
        };
        self.env.read(|txn| {
            Ok(txn
                .get(dbi, &chunk_key(array, index))?
                .map(bytes::Bytes::copy_from_slice))
        })
    }
}

impl crate::ChunkSource for LocalChunks {
    fn get_chunk(
        &self,
        array: Uuid,
        index: u64,
    ) -> BoxFuture<'static, Result<Option<bytes::Bytes>>> {
        future::ready(self.get_chunk_sync(array, index)).boxed()
    }
}

/// A data table of the local store, open for reading.
pub struct LocalTable {
    env: Arc<Env>,
    dbi: Dbi,
    spec: TableSpec,
}

fn split_record<'a>(
    spec: &TableSpec,
    id: Uuid,
    value: &'a [u8],
) -> Result<(Option<&'a [u8]>, &'a [u8])> {
    let bad = |reason: &str| StoreError::BadValue {
        table: spec.table.clone(),
        uuid: id,
        column: spec.data_col.clone(),
        reason: reason.to_string(),
    };
    if value.len() < 4 {
        return Err(bad("record shorter than its header"));
    }
    let label_len = u32::from_le_bytes(value[..4].try_into().expect("4 bytes"));
    let rest = &value[4..];
    let (label, data) = if label_len == NULL_LABEL {
        (None, rest)
    } else {
        let n = label_len as usize;
        if n > rest.len() {
            return Err(bad("label length runs past the record"));
        }
        (Some(&rest[..n]), &rest[n..])
    };
    if data.is_empty() {
        return Err(StoreError::EmptyValue {
            table: spec.table.clone(),
            uuid: id,
            column: spec.data_col.clone(),
        });
    }
    Ok((label, data))
}

impl LocalTable {
    /// Reads a whole batch in one read transaction: each sample is copied once,
    /// from the map into the arena.
    pub fn read_batch_sync(&self, job: &BatchJob, pool: &Arc<ArenaPool>) -> Result<Batch> {
        let spec = &self.spec;
        self.env.read(|txn| {
            let mut records = Vec::with_capacity(job.ids.len());
            let mut total = 0usize;
            let mut label_total = 0usize;
            for &id in &job.ids {
                let value =
                    txn.get(self.dbi, id.as_bytes())?
                        .ok_or_else(|| StoreError::MissingSample {
                            table: spec.table.clone(),
                            uuid: id,
                        })?;
                let (label, data) = split_record(spec, id, value)?;
                total += data.len();
                label_total += label.map_or(0, |l| l.len());
                records.push((id, label, data));
            }
            let labels = match spec.label_type {
                LabelType::Int => Labels::Int(Vec::with_capacity(records.len())),
                LabelType::Blob => Labels::Blob {
                    data: pool.take(label_total),
                    offsets: vec![0],
                },
                LabelType::None => Labels::None,
            };
            let mut batch = Batch::from_job(job, pool.take(total), labels);
            for (id, label, bytes) in records {
                batch.data.extend_from_slice(bytes);
                batch.offsets.push(batch.data.len() as i64);
                let bad_label = |reason: &str| StoreError::BadValue {
                    table: spec.table.clone(),
                    uuid: id,
                    column: spec.label_col.clone(),
                    reason: reason.to_string(),
                };
                match &mut batch.labels {
                    Labels::Int(v) => {
                        let l = label.ok_or_else(|| bad_label("null label"))?;
                        let l: [u8; 4] = l.try_into().map_err(|_| {
                            bad_label(&format!("expected a 4-byte int, found {} bytes", l.len()))
                        })?;
                        v.push(i32::from_le_bytes(l) as i64);
                    }
                    Labels::Blob { data, offsets } => {
                        let l = label.ok_or_else(|| bad_label("null label"))?;
                        data.extend_from_slice(l);
                        offsets.push(data.len() as i64);
                    }
                    Labels::None => {}
                }
            }
            Ok(batch)
        })
    }
}

impl TableReader for LocalTable {
    fn read_batch(
        self: Arc<Self>,
        job: BatchJob,
        pool: Arc<ArenaPool>,
    ) -> BoxFuture<'static, Result<Batch>> {
        async move {
            tokio::task::spawn_blocking(move || self.read_batch_sync(&job, &pool))
                .await
                .map_err(|e| StoreError::Internal(e.to_string()))?
        }
        .boxed()
    }

    fn spec(&self) -> &TableSpec {
        &self.spec
    }
}

#[cfg(test)]
mod record_properties {
    use super::*;
    use proptest::prelude::*;

    fn record(label: Option<&[u8]>, data: &[u8]) -> Vec<u8> {
        let mut v = match label {
            Some(l) => (l.len() as u32).to_le_bytes().to_vec(),
            None => NULL_LABEL.to_le_bytes().to_vec(),
        };
        v.extend_from_slice(label.unwrap_or(&[]));
        v.extend_from_slice(data);
        v
    }

    fn check(value: &[u8]) {
        let spec = TableSpec::new("t", LabelType::Int);
        let id = Uuid::from_u128(7);
        match split_record(&spec, id, value) {
            // Whatever parses lies inside the record and is never empty data.
            Ok((label, data)) => {
                assert!(!data.is_empty());
                assert!(4 + label.map_or(0, <[u8]>::len) + data.len() == value.len());
            }
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(&id.to_string()) && msg.contains("\"t\""),
                    "{msg}"
                );
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn arbitrary_records_never_panic(value in proptest::collection::vec(any::<u8>(), 0..64)) {
            check(&value);
        }

        #[test]
        fn valid_records_round_trip(
            label in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
            data in proptest::collection::vec(any::<u8>(), 1..32),
        ) {
            let v = record(label.as_deref(), &data);
            let spec = TableSpec::new("t", LabelType::Blob);
            let (l, d) = split_record(&spec, Uuid::nil(), &v).unwrap();
            prop_assert_eq!(l, label.as_deref());
            prop_assert_eq!(d, &data[..]);
        }

        #[test]
        fn mutated_records_fail_cleanly(
            label in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
            data in proptest::collection::vec(any::<u8>(), 0..32),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            bits in 1u8..=255,
            len_field in any::<u32>(),
            which in 0u8..3,
        ) {
            let mut v = record(label.as_deref(), &data);
            match which {
                0 => v.truncate(cut.index(v.len() + 1)),
                1 => { let i = flip.index(v.len()); v[i] ^= bits; }
                _ => v[..4].copy_from_slice(&len_field.to_le_bytes()),
            }
            check(&v);
        }
    }
}
