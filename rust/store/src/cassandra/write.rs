//! Writing (ingest): the schema (keyspace, data and metadata tables), rows
//! inserted a window at a time, and the scan of a metadata table.

use super::errors::{already_exists, pager_kind};
use super::CassandraStore;
use crate::error::{Cause, Result, StoreError};
use crate::{LabelType, LabelValue, MetadataRow, SampleRow, TableSpec};
use futures::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::unprepared::Statement;
use std::sync::Arc;
use uuid::Uuid;

/// Concurrent writes during ingest.
const WRITE_WINDOW: usize = 64;

/// A prepared INSERT with what it needs to run (with retries).
#[derive(Clone)]
struct Insert {
    store: Arc<CassandraStore>,
    session: Arc<Session>,
    statement: PreparedStatement,
    table: Arc<str>,
}

impl Insert {
    async fn run(&self, values: impl SerializeRow) -> Result<()> {
        self.store
            .retrying(&self.table, || {
                self.session.execute_unpaged(&self.statement, &values)
            })
            .await
            .map(drop)
    }
}

impl CassandraStore {
    /// Inserts every row into `columns` of `table`, `WRITE_WINDOW` at a time;
    /// `write` binds a row's values. The first error ends it.
    async fn insert_rows<R, F, Fut>(
        self: &Arc<Self>,
        table: &str,
        columns: &str,
        rows: Vec<R>,
        write: F,
    ) -> Result<()>
    where
        F: Fn(R, Insert) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let table = self.qualify(table)?;
        let session = self.session().await?;
        let marks = vec!["?"; columns.split(',').count()].join(", ");
        let cql = format!("INSERT INTO {table} ({columns}) VALUES ({marks})");
        let insert = Insert {
            store: self.clone(),
            statement: self.prepare(&table, cql).await?,
            session,
            table: table.into(),
        };
        futures::stream::iter(rows)
            .map(|row| write(row, insert.clone()))
            .buffer_unordered(WRITE_WINDOW)
            .try_collect::<Vec<()>>()
            .await
            .map(drop)
    }

    /// Runs a schema change (with retries).
    pub(super) async fn execute_ddl(&self, table: &str, cql: String) -> Result<()> {
        let session = self.session().await?;
        self.retrying(table, || session.query_unpaged(cql.clone(), ()))
            .await
            .map(drop)
    }

    /// Creates the keyspace if missing, then the data and metadata tables
    /// (dropped first with `overwrite`); an existing table is refused.
    pub(super) async fn create_tables_async(
        self: Arc<Self>,
        spec: TableSpec,
        metadata_table: String,
        overwrite: bool,
    ) -> Result<()> {
        let data = self.qualify(&spec.table)?;
        let meta = self.qualify(&metadata_table)?;
        let keyspace = data.split('.').next().expect("qualified").to_string();
        self.execute_ddl(
            &data,
            format!(
                "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {}",
                self.opts.replication
            ),
        )
        .await?;
        let label = match spec.label_type {
            LabelType::Int => format!("{} int, ", spec.label_col),
            LabelType::Blob => format!("{} blob, ", spec.label_col),
            LabelType::None => String::new(),
        };
        let tables = [
            (
                data.clone(),
                format!(
                    "CREATE TABLE {data} ({} uuid PRIMARY KEY, {label}{} blob) WITH compression = {{'enabled': 'false'}}",
                    spec.id_col, spec.data_col
                ),
            ),
            (
                meta.clone(),
                format!(
                    "CREATE TABLE {meta} (id uuid PRIMARY KEY, label int, label_name text, path text, split text)"
                ),
            ),
        ];
        for (name, create) in tables {
            if overwrite {
                self.execute_ddl(&name, format!("DROP TABLE IF EXISTS {name}"))
                    .await?;
            }
            match self.execute_ddl(&name, create).await {
                Err(e) if already_exists(&e) => {
                    return Err(StoreError::TableExists {
                        store: self.opts.url(),
                        table: name,
                    })
                }
                other => other?,
            }
        }
        self.prepared.lock().await.clear();
        Ok(())
    }

    pub(super) async fn put_samples_async(
        self: Arc<Self>,
        table: String,
        rows: Vec<SampleRow>,
    ) -> Result<()> {
        let with_label = rows.iter().any(|r| !matches!(r.label, LabelValue::None));
        let columns = if with_label {
            "id, label, data"
        } else {
            "id, data"
        };
        self.insert_rows(&table, columns, rows, |row, insert| async move {
            match &row.label {
                LabelValue::Int(l) => insert.run((row.id, l, &row.data)).await,
                LabelValue::Blob(b) => insert.run((row.id, b, &row.data)).await,
                LabelValue::None if with_label => {
                    insert.run((row.id, None::<i32>, &row.data)).await
                }
                LabelValue::None => insert.run((row.id, &row.data)).await,
            }
        })
        .await
    }

    pub(super) async fn put_metadata_async(
        self: Arc<Self>,
        table: String,
        rows: Vec<MetadataRow>,
    ) -> Result<()> {
        let columns = "id, label, label_name, path, split";
        self.insert_rows(&table, columns, rows, |r, insert| async move {
            insert
                .run((r.id, r.label, &r.label_name, &r.path, &r.split))
                .await
        })
        .await
    }

    /// Every row of a metadata table, a page at a time.
    pub(super) async fn scan_metadata_async(
        self: Arc<Self>,
        table: String,
    ) -> Result<Vec<MetadataRow>> {
        let table = self.qualify(&table)?;
        let session = self.session().await?;
        let mut query = Statement::new(format!(
            "SELECT id, label, label_name, path, split FROM {table}"
        ));
        query.set_page_size(5000);
        let pager = match session.query_iter(query, ()).await {
            Ok(pager) => pager,
            Err(e) => return Err(self.refused(&table, pager_kind(&e), e).await),
        };
        let failed = |e: Cause| StoreError::Query {
            hosts: self.opts.hosts_str(),
            table: table.clone(),
            message: e.to_string(),
            source: Some(e),
        };
        type Row = (
            Uuid,
            Option<i32>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let rows: Vec<Row> = pager
            .rows_stream::<Row>()
            .map_err(|e| failed(e.into()))?
            .try_collect()
            .await
            .map_err(|e| failed(e.into()))?;
        Ok(rows
            .into_iter()
            .map(|(id, label, label_name, path, split)| MetadataRow {
                id,
                label,
                label_name,
                path,
                split,
            })
            .collect())
    }
}
