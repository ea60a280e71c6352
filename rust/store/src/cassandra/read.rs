//! Reading: a data table opened for reading (its SELECT prepared and its
//! column types checked), and its batch reads, every sample of a batch in
//! flight at once and copied into the batch buffer in slot order.

use super::CassandraStore;
use crate::batch::{ArenaPool, Batch, BatchJob, Labels};
use crate::error::{Result, StoreError};
use crate::{LabelType, TableReader, TableSpec};
use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt};
use futures::stream::FuturesOrdered;
use futures::StreamExt;
use scylla::client::session::Session;
use scylla::frame::response::result::{ColumnType, NativeType};
use scylla::statement::prepared::PreparedStatement;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use uuid::Uuid;

impl CassandraStore {
    pub async fn open_table_async(
        self: Arc<Self>,
        spec: TableSpec,
    ) -> Result<Arc<dyn TableReader>> {
        let table = self.qualify(&spec.table)?;
        let cols = match spec.label_type {
            LabelType::None => spec.data_col.clone(),
            _ => format!("{}, {}", spec.label_col, spec.data_col),
        };
        let cql = format!("SELECT {cols} FROM {table} WHERE {} = ?", spec.id_col);
        let mut statement = self.prepare(&table, cql).await?;
        // Reads are counted (and timed, for the hedge delay) by the store's
        // listener, and hedged where the keyspace has replicas to spare.
        statement.set_history_listener(self.hedging.clone());
        let keyspace = table.split_once('.').map_or("", |(k, _)| k);
        if let Some(profile) = self.hedged_profile(keyspace).await {
            statement.set_execution_profile_handle(Some(profile));
        }
        // Check column types now, not in the middle of an epoch.
        let specs = statement.get_current_result_set_col_specs();
        for col in specs.get().iter() {
            let want: &[NativeType] = if col.name() == spec.data_col {
                &[NativeType::Blob]
            } else if spec.label_type == LabelType::Int {
                &[NativeType::Int]
            } else {
                &[NativeType::Blob]
            };
            let ok = matches!(col.typ(), ColumnType::Native(t) if want.contains(t));
            if !ok {
                return Err(StoreError::LabelTypeMismatch {
                    table: format!("{table} (column {})", col.name()),
                    actual: format!("{:?}", col.typ()),
                    requested: format!("{want:?}"),
                });
            }
        }
        Ok(Arc::new(CassandraTable {
            largest_batch: AtomicUsize::new(0),
            store: self.clone(),
            statement,
            spec: TableSpec { table, ..spec },
        }))
    }
}

/// A data table of a Cassandra store, open for reading.
pub struct CassandraTable {
    store: Arc<CassandraStore>,
    statement: PreparedStatement,
    spec: TableSpec,
    /// Largest batch (data bytes) read so far: the next batch's buffer is
    /// reserved at this size, so that samples can be copied in as they arrive.
    largest_batch: AtomicUsize,
}

type Fetched = (Option<Label>, Bytes);

enum Label {
    Int(i32),
    Blob(Bytes),
}

impl CassandraTable {
    async fn fetch_one(&self, session: &Session, id: Uuid) -> Result<Fetched> {
        let table = &self.spec.table;
        let _permit = self
            .store
            .in_flight
            .acquire()
            .await
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        let result = self
            .store
            .retrying(table, || session.execute_unpaged(&self.statement, (id,)))
            .await?;
        let bad = |column: &str, reason: String| StoreError::BadValue {
            table: table.clone(),
            uuid: id,
            column: column.to_string(),
            reason,
        };
        let rows = result
            .into_rows_result()
            .map_err(|e| bad(&self.spec.data_col, e.to_string()))?;
        let missing = || StoreError::MissingSample {
            table: table.clone(),
            uuid: id,
        };
        let (label, data) = match self.spec.label_type {
            LabelType::None => {
                let (data,) = rows
                    .maybe_first_row::<(Option<Bytes>,)>()
                    .map_err(|e| bad(&self.spec.data_col, e.to_string()))?
                    .ok_or_else(missing)?;
                (None, data)
            }
            LabelType::Int => {
                let (label, data) = rows
                    .maybe_first_row::<(Option<i32>, Option<Bytes>)>()
                    .map_err(|e| bad(&self.spec.label_col, e.to_string()))?
                    .ok_or_else(missing)?;
                let label = label.ok_or_else(|| bad(&self.spec.label_col, "null label".into()))?;
                (Some(Label::Int(label)), data)
            }
            LabelType::Blob => {
                let (label, data) = rows
                    .maybe_first_row::<(Option<Bytes>, Option<Bytes>)>()
                    .map_err(|e| bad(&self.spec.label_col, e.to_string()))?
                    .ok_or_else(missing)?;
                let label = label.ok_or_else(|| bad(&self.spec.label_col, "null label".into()))?;
                (Some(Label::Blob(label)), data)
            }
        };
        match data {
            Some(d) if !d.is_empty() => Ok((label, d)),
            _ => Err(StoreError::EmptyValue {
                table: table.clone(),
                uuid: id,
                column: self.spec.data_col.clone(),
            }),
        }
    }
}

impl TableReader for CassandraTable {
    fn read_batch(
        self: Arc<Self>,
        job: BatchJob,
        pool: Arc<ArenaPool>,
    ) -> BoxFuture<'static, Result<Batch>> {
        async move {
            let session = self.store.session().await?;
            // Every sample of the batch in flight at once (bounded by the store's
            // semaphore). Results come back in slot order: each sample is copied
            // into the batch buffer as soon as every sample before it is in,
            // while its bytes are still in cache, not after the batch's slowest
            // sample arrives (by then a window of batches has gone through the
            // cache and the copy would run from main memory).
            let mut fetches: FuturesOrdered<_> = job
                .ids
                .iter()
                .map(|&id| self.fetch_one(&session, id))
                .collect();
            let reserve = self.largest_batch.load(Ordering::Relaxed);
            let labels = match self.spec.label_type {
                LabelType::Int => Labels::Int(Vec::with_capacity(job.ids.len())),
                LabelType::Blob => Labels::Blob {
                    data: pool.take(0),
                    offsets: vec![0],
                },
                LabelType::None => Labels::None,
            };
            let mut batch = Batch::from_job(&job, pool.take(reserve), labels);
            while let Some(fetched) = fetches.next().await {
                let (label, data) = fetched?;
                batch.data.extend_from_slice(&data);
                batch.offsets.push(batch.data.len() as i64);
                match (&mut batch.labels, label) {
                    (Labels::Int(v), Some(Label::Int(l))) => v.push(l as i64),
                    (Labels::Blob { data, offsets }, Some(Label::Blob(b))) => {
                        data.extend_from_slice(&b);
                        offsets.push(data.len() as i64);
                    }
                    _ => {}
                }
            }
            self.largest_batch
                .fetch_max(batch.data.len(), Ordering::Relaxed);
            Ok(batch)
        }
        .boxed()
    }

    fn spec(&self) -> &TableSpec {
        &self.spec
    }

    fn read_stats(&self) -> crate::ReadStats {
        self.store.read_stats()
    }
}
