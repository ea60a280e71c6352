//! Opening a store by URL, for every front end (Python, DALI, tch, the CLI).

use crate::cache::{CacheOptions, CachedStore, SampleCache};
use crate::cassandra::{CassandraOptions, CassandraStore, OptionValue};
use crate::error::{Result, StoreError};
use crate::local::LocalStore;
use crate::SampleStore;
use std::path::Path;
use std::sync::Arc;

/// An opened store, and a warning its caller must show (an insecure TLS
/// setting), if any.
pub struct Opened {
    pub store: Arc<dyn SampleStore>,
    pub warning: Option<String>,
    /// Why the sample cache is off, or was rebuilt, if it is: a warning too
    /// (reads work, from the store).
    pub cache_warning: Option<String>,
}

/// Opens `url`:
/// - `local:PATH`: the embedded local store; the only option is `create`
///   (make the store if it does not exist, as ingest does);
/// - `cassandra://host1,host2:9042/keyspace` (or `scylla://`): Cassandra or
///   ScyllaDB with connection options (see
///   [`crate::cassandra::OPTION_NAMES`]); `create` is accepted and changes
///   nothing (ingest creates keyspaces and tables). Does not connect yet.
///   With `cache="local:PATH"` and `cache_size`, and optionally
///   `cache_policy` ("plan" or "lru"), sample reads go through a local
///   sample cache (see [`crate::cache`]).
pub fn open_store(url: &str, options: Vec<(String, OptionValue)>) -> Result<Opened> {
    let mut create = false;
    let mut rest = Vec::with_capacity(options.len());
    for (key, value) in options {
        match (key.as_str(), &value) {
            ("create", OptionValue::Bool(b)) => create = *b,
            ("create", other) => {
                return Err(StoreError::InvalidArgument(format!(
                    "option create must be True or False, got {other:?}"
                )))
            }
            _ => rest.push((key, value)),
        }
    }
    let cache = CacheOptions::take(&mut rest)?;
    if let Some(path) = url.strip_prefix("local:") {
        if cache.is_some() {
            return Err(StoreError::InvalidArgument(format!(
                "the local store {url:?} is already local: a sample cache (cache=) is for \
                 remote stores"
            )));
        }
        if let Some((key, _)) = rest.first() {
            return Err(StoreError::InvalidArgument(format!(
                "the local store {url:?} takes no connection options (got {key})"
            )));
        }
        let store = LocalStore::open(Path::new(path), create)?;
        return Ok(Opened {
            store: Arc::new(store),
            warning: None,
            cache_warning: None,
        });
    }
    if url.starts_with("cassandra://") || url.starts_with("scylla://") {
        let mut opts = CassandraOptions::from_url(url)?;
        opts.apply(rest)?;
        let warning = (opts.use_ssl && !opts.ssl_verify).then(|| {
            format!(
                "ssl_verify=False: the certificate of the Cassandra server at {} is NOT verified; \
                 anyone on the network path can impersonate it. Pass ssl_certificate= instead.",
                opts.hosts.join(",")
            )
        });
        let store: Arc<dyn SampleStore> = Arc::new(CassandraStore::new(opts)?);
        let (store, cache_warning) = match cache {
            None => (store, None),
            Some(options) => match SampleCache::open(&options) {
                (Some(cache), warning) => (
                    Arc::new(CachedStore::new(store, cache)) as Arc<dyn SampleStore>,
                    warning,
                ),
                (None, warning) => (store, warning),
            },
        };
        return Ok(Opened {
            store,
            warning,
            cache_warning,
        });
    }
    Err(StoreError::InvalidArgument(format!(
        "unsupported store URL {url:?}: expected \"local:PATH\" or \"cassandra://host1,host2:9042/keyspace\""
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_options_are_checked_before_anything_opens() {
        let err = |url: &str, options: Vec<(String, OptionValue)>| match open_store(url, options) {
            Ok(_) => panic!("{url} opened"),
            Err(e) => e.to_string(),
        };
        assert!(err("mongodb://x", vec![]).contains("unsupported store URL"));
        let dir = tempfile::tempdir().unwrap();
        let local = format!("local:{}", dir.path().join("s").display());
        let m = err(
            &local,
            vec![("username".into(), OptionValue::Text("u".into()))],
        );
        assert!(m.contains("takes no connection options"), "{m}");
        let m = err(
            &local,
            vec![("create".into(), OptionValue::Text("yes".into()))],
        );
        assert!(m.contains("create"), "{m}");
        assert!(err(&local, vec![]).contains("s"));
        let created = open_store(&local, vec![("create".into(), OptionValue::Bool(true))]).unwrap();
        assert!(created.warning.is_none());
        let m = err(
            "cassandra://h/ks",
            vec![("nope".into(), OptionValue::Bool(true))],
        );
        assert!(m.contains("unknown Cassandra option"), "{m}");
        let opened = open_store(
            "cassandra://h/ks",
            vec![
                ("use_ssl".into(), OptionValue::Bool(true)),
                ("ssl_verify".into(), OptionValue::Bool(false)),
            ],
        )
        .unwrap();
        assert!(opened.warning.unwrap().contains("NOT verified"));
        let cache = |c: &str| {
            vec![
                ("cache".to_string(), OptionValue::Text(c.into())),
                ("cache_size".to_string(), OptionValue::Text("1MB".into())),
            ]
        };
        let m = err(&local, cache("local:/tmp/c"));
        assert!(m.contains("already local"), "{m}");
        let path = dir.path().join("cache");
        let opened = open_store(
            "cassandra://h/ks",
            cache(&format!("local:{}", path.display())),
        )
        .unwrap();
        assert!(opened.cache_warning.is_none());
        assert!(path.join(crate::cache::MARKER).exists());
    }
}
