//! The driver session, made lazily in each process that uses the store (a
//! forked child makes its own: the parent's connections and tasks are not
//! its), and the cache of prepared statements that goes with it.

use super::errors::prepare_kind;
use super::tls::tls_config;
use super::CassandraStore;
use crate::error::{Result, StoreError};
use crs4_cassandra_core::ProcessOwned;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::client::PoolSize;
use scylla::policies::load_balancing::{DefaultPolicy, LatencyAwarenessBuilder};
use scylla::policies::retry::FallthroughRetryPolicy;
use scylla::policies::speculative_execution::SimpleSpeculativeExecutionPolicy;
use scylla::statement::prepared::PreparedStatement;
use std::num::NonZeroUsize;
use std::sync::Arc;

impl CassandraStore {
    /// This process's session, connecting on first use.
    pub async fn session(&self) -> Result<Arc<Session>> {
        let mut guard = self.session.lock().await;
        if let Some(s) = guard.as_ref().and_then(ProcessOwned::get) {
            return Ok(s.clone());
        }
        self.prepared.lock().await.clear();
        let o = &self.opts;
        let mut profile = ExecutionProfile::builder()
            .request_timeout(Some(o.request_timeout))
            .consistency(o.consistency)
            // Retries are ours (with backoff and a time limit), not the driver's.
            .retry_policy(Arc::new(FallthroughRetryPolicy::new()));
        if let Some(delay) = o.speculative_delay {
            profile = profile.speculative_execution_policy(Some(Arc::new(
                SimpleSpeculativeExecutionPolicy {
                    max_retry_count: 1,
                    retry_interval: delay,
                },
            )));
        }
        if o.latency_aware {
            let policy = DefaultPolicy::builder()
                .token_aware(true)
                .latency_awareness(LatencyAwarenessBuilder::new())
                .build();
            profile = profile.load_balancing_policy(policy);
        }
        let mut builder = SessionBuilder::new()
            .known_nodes(&o.hosts)
            .connection_timeout(o.connect_timeout)
            // Token-aware routing needs each keyspace's replication strategy:
            // fetch that (and partitioners), not the columns of every table.
            .fetch_schema_metadata(true)
            .fetch_full_schema_metadata(false)
            .pool_size(PoolSize::PerShard(
                NonZeroUsize::new(o.connections.max(1)).expect("positive"),
            ))
            .default_execution_profile_handle(profile.build().into_handle());
        if let Some(ks) = &o.keyspace {
            builder = builder.keyspaces_to_fetch([ks.clone()]);
        }
        if let Some(user) = &o.username {
            let password = o
                .password
                .as_ref()
                .map(|p| p.expose().to_string())
                .unwrap_or_default();
            builder = builder.user(user.clone(), password);
        }
        if o.use_ssl {
            builder = builder.tls_context(Some(tls_config(o)?));
        }
        // The driver's own timeouts cover each connection attempt; this bounds the whole.
        let limit = o.connect_timeout * 3;
        let session = match tokio::time::timeout(limit, builder.build()).await {
            Ok(Ok(s)) => Arc::new(s),
            Ok(Err(e)) => return Err(self.connection_error(e)),
            Err(_) => {
                return Err(StoreError::Timeout {
                    hosts: o.hosts_str(),
                    seconds: limit.as_secs_f64(),
                    context: " while connecting".into(),
                    source: None,
                })
            }
        };
        // Replacing an inherited session leaks it: its connections and tasks
        // belong to the parent process.
        *guard = Some(ProcessOwned::new(session.clone()));
        Ok(session)
    }

    /// `cql` prepared (idempotent: every request of the store may be retried),
    /// from the cache if it was already; `table` (qualified) names what failed.
    pub(super) async fn prepare(&self, table: &str, cql: String) -> Result<PreparedStatement> {
        if let Some(p) = self.prepared.lock().await.get(&cql) {
            return Ok(p.clone());
        }
        let session = self.session().await?;
        let mut p = match session.prepare(cql.clone()).await {
            Ok(p) => p,
            Err(e) => return Err(self.refused(table, prepare_kind(&e), e).await),
        };
        p.set_is_idempotent(true);
        self.prepared.lock().await.insert(cql, p.clone());
        Ok(p)
    }
}
