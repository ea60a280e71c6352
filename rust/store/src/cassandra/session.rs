//! The driver session, made lazily in each process that uses the store (a
//! forked child makes its own: the parent's connections and tasks are not
//! its), and the cache of prepared statements that goes with it.

use super::errors::prepare_kind;
use super::hedge::AvoidSlow;
use super::tls::tls_config;
use super::CassandraStore;
use crate::error::{Result, StoreError};
use crs4_cassandra_core::ProcessOwned;
use scylla::client::execution_profile::{ExecutionProfile, ExecutionProfileHandle};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::client::PoolSize;
use scylla::policies::load_balancing::{
    DefaultPolicy, LatencyAwarenessBuilder, LoadBalancingPolicy,
};
use scylla::policies::retry::FallthroughRetryPolicy;
use scylla::policies::speculative_execution::SimpleSpeculativeExecutionPolicy;
use scylla::statement::prepared::PreparedStatement;
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Arc;

/// A session and the execution profile of hedged reads that goes with it
/// (the same as the session's default, with [`super::Hedging`] as speculative
/// execution policy and slow nodes put last in query plans).
pub(super) struct Connected {
    session: Arc<Session>,
    hedged: ExecutionProfileHandle,
}

/// How many replicas of each partition a keyspace with this replication
/// (a row of `system_schema.keyspaces`) has, on a cluster of `nodes` nodes.
pub(super) fn replicas(replication: &HashMap<String, String>, nodes: usize) -> usize {
    // "3", or "3/1" with transient replicas.
    let count = |v: &str| -> usize {
        let digits: String = v.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().unwrap_or(0)
    };
    let class = replication.get("class").map(String::as_str).unwrap_or("");
    let class = class.rsplit('.').next().unwrap_or(class);
    match class {
        "SimpleStrategy" => replication
            .get("replication_factor")
            .map_or(0, |v| count(v)),
        "NetworkTopologyStrategy" => replication
            .iter()
            .filter(|(k, _)| k.as_str() != "class")
            .map(|(_, v)| count(v))
            .sum(),
        "EverywhereStrategy" => nodes,
        _ => 1,
    }
    .min(nodes)
}

impl CassandraStore {
    /// This process's session, connecting on first use.
    pub async fn session(&self) -> Result<Arc<Session>> {
        let mut guard = self.session.lock().await;
        if let Some(c) = guard.as_ref().and_then(ProcessOwned::get) {
            return Ok(c.session.clone());
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
        let mut policy = DefaultPolicy::builder().token_aware(true);
        if o.latency_aware {
            policy = policy.latency_awareness(LatencyAwarenessBuilder::new());
        }
        let policy: Arc<dyn LoadBalancingPolicy> = policy.build();
        profile = profile.load_balancing_policy(policy.clone());
        let hedged = profile
            .clone()
            .speculative_execution_policy(Some(self.hedging.clone()))
            .load_balancing_policy(Arc::new(AvoidSlow {
                inner: policy,
                hedging: self.hedging.clone(),
            }))
            .build()
            .into_handle();
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
        *guard = Some(ProcessOwned::new(Connected {
            session: session.clone(),
            hedged,
        }));
        Ok(session)
    }

    /// The execution profile for reads of keyspace `keyspace`, if they are to
    /// be hedged: `hedged_reads` is on, `speculative_delay` is not given, and
    /// the keyspace has a second replica to send a late read to.
    pub(super) async fn hedged_profile(&self, keyspace: &str) -> Option<ExecutionProfileHandle> {
        if !self.opts.hedged_reads || self.opts.speculative_delay.is_some() {
            return None;
        }
        let session = self.session().await.ok()?;
        let nodes = session.get_cluster_state().get_nodes_info().len();
        if nodes < 2 {
            return None;
        }
        let name = match keyspace.strip_prefix('"').and_then(|k| k.strip_suffix('"')) {
            Some(quoted) => quoted.replace("\"\"", "\""),
            None => keyspace.to_ascii_lowercase(),
        };
        let cql = "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = ?";
        let rows = session
            .query_unpaged(cql, (name,))
            .await
            .ok()?
            .into_rows_result()
            .ok()?;
        let (replication,) = rows
            .maybe_first_row::<(HashMap<String, String>,)>()
            .ok()??;
        if replicas(&replication, nodes) < 2 {
            return None;
        }
        let guard = self.session.lock().await;
        guard
            .as_ref()
            .and_then(ProcessOwned::get)
            .map(|c| c.hedged.clone())
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

#[cfg(test)]
mod tests {
    use super::replicas;
    use std::collections::HashMap;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn replicas_of_a_keyspace_follow_its_strategy_and_the_nodes() {
        let simple = |rf: &str| {
            map(&[
                ("class", "org.apache.cassandra.locator.SimpleStrategy"),
                ("replication_factor", rf),
            ])
        };
        assert_eq!(replicas(&simple("3"), 3), 3);
        assert_eq!(replicas(&simple("3"), 1), 1);
        assert_eq!(replicas(&simple("1"), 3), 1);
        let nts = map(&[
            (
                "class",
                "org.apache.cassandra.locator.NetworkTopologyStrategy",
            ),
            ("dc1", "2"),
            ("dc2", "3/1"),
        ]);
        assert_eq!(replicas(&nts, 9), 5);
        let local = map(&[("class", "org.apache.cassandra.locator.LocalStrategy")]);
        assert_eq!(replicas(&local, 3), 1);
        assert_eq!(replicas(&map(&[("class", "EverywhereStrategy")]), 4), 4);
    }
}
