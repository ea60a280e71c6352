//! Connection options: the URL (`cassandra://host1,host2:9042/keyspace`) and
//! the named options a caller passes (see [`OPTION_NAMES`]).

use crate::error::{Result, StoreError};
use scylla::statement::Consistency;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// A string that never shows in Debug output, logs or errors.
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The option names [`CassandraOptions::apply`] knows.
pub const OPTION_NAMES: &[&str] = &[
    "username",
    "password",
    "password_env",
    "use_ssl",
    "ssl_certificate",
    "ssl_own_certificate",
    "ssl_own_key",
    "ssl_own_key_pass",
    "ssl_verify",
    "connect_timeout",
    "request_timeout",
    "retries",
    "retry_time_limit",
    "speculative_delay",
    "latency_aware",
    "hedged_reads",
    "hedge_percentile",
    "hedge_min_delay",
    "consistency",
    "max_in_flight",
    "replication",
    "connections",
];

/// Environment variable read for the password when none is given.
pub const PASSWORD_ENV: &str = "CRS4_CASSANDRA_PASSWORD";

/// An option value as given by a caller (e.g. from Python keyword arguments).
#[derive(Clone, PartialEq)]
pub enum OptionValue {
    Text(String),
    Bool(bool),
    Number(f64),
}

impl fmt::Debug for OptionValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Text(s) => write!(f, "{s:?}"),
            Self::Bool(b) => write!(f, "{}", if *b { "True" } else { "False" }),
            Self::Number(x) => write!(f, "{x}"),
        }
    }
}

/// Connection options; names follow cassandra-dali-plugin where it has them.
#[derive(Debug, Clone)]
pub struct CassandraOptions {
    /// `host:port` of the contact points.
    pub hosts: Vec<String>,
    pub keyspace: Option<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub use_ssl: bool,
    /// PEM certificate(s) to trust for the server (its CA or its own certificate).
    pub ssl_certificate: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub ssl_own_certificate: Option<PathBuf>,
    pub ssl_own_key: Option<PathBuf>,
    pub ssl_own_key_pass: Option<Secret>,
    /// Verify the server's certificate (default). Turning it off is for tests only.
    pub ssl_verify: bool,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Retries of a failed read (overloaded, timeouts, unavailable, lost connections).
    pub retries: u32,
    /// Give up retrying a read after this long.
    pub retry_time_limit: Duration,
    /// Start a second copy of a read that has not answered after this long.
    pub speculative_delay: Option<Duration>,
    /// Route reads away from nodes much slower than the fastest (the driver's
    /// latency awareness: such a node goes to the end of query plans).
    pub latency_aware: bool,
    /// Hedged reads (see `hedge`): a sample read later than `hedge_percentile`
    /// of recent reads' latencies (at least `hedge_min_delay`) is sent to
    /// another replica too. Only on tables whose keyspace has replicas to
    /// spare, and not with `speculative_delay`, which replaces it.
    pub hedged_reads: bool,
    pub hedge_percentile: f64,
    pub hedge_min_delay: Duration,
    pub consistency: Consistency,
    /// Sample requests in flight at most, over all batches.
    pub max_in_flight: usize,
    /// Replication clause used when ingest creates a keyspace.
    pub replication: String,
    /// Connections per node (per shard on ScyllaDB).
    pub connections: usize,
}

impl CassandraOptions {
    /// Parses `cassandra://host1,host2:9042/keyspace` (a `scylla://` scheme works too).
    pub fn from_url(url: &str) -> Result<Self> {
        let bad = |why: &str| {
            StoreError::InvalidArgument(format!("invalid Cassandra URL {url:?}: {why}"))
        };
        let rest = url
            .strip_prefix("cassandra://")
            .or_else(|| url.strip_prefix("scylla://"))
            .ok_or_else(|| bad("expected cassandra://host1,host2:9042/keyspace"))?;
        if rest.contains('@') {
            return Err(bad(
                "pass credentials as options (username=, password=), not in the URL",
            ));
        }
        let (hostpart, keyspace) = match rest.split_once('/') {
            Some((h, k)) => (h, (!k.is_empty()).then(|| k.to_string())),
            None => (rest, None),
        };
        let mut names: Vec<&str> = hostpart.split(',').map(str::trim).collect();
        if names.iter().any(|h| h.is_empty()) {
            return Err(bad("empty host name"));
        }
        // A port on the last host applies to all hosts without one.
        let mut default_port = 9042u16;
        if let Some(last) = names.last_mut() {
            if let Some((h, p)) = last.rsplit_once(':') {
                if !h.contains(':') || h.starts_with('[') {
                    default_port = p.parse().map_err(|_| bad(&format!("bad port {p:?}")))?;
                    *last = h;
                }
            }
        }
        let hosts = names
            .iter()
            .map(|h| {
                if h.rsplit_once(':').is_some_and(|(a, _)| !a.contains(':')) {
                    h.to_string()
                } else {
                    format!("{h}:{default_port}")
                }
            })
            .collect();
        Ok(Self {
            hosts,
            keyspace,
            username: None,
            password: None,
            use_ssl: false,
            ssl_certificate: None,
            ssl_own_certificate: None,
            ssl_own_key: None,
            ssl_own_key_pass: None,
            ssl_verify: true,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            retries: 5,
            retry_time_limit: Duration::from_secs(60),
            speculative_delay: None,
            latency_aware: false,
            hedged_reads: true,
            hedge_percentile: 99.0,
            hedge_min_delay: Duration::from_millis(5),
            consistency: Consistency::LocalOne,
            max_in_flight: 16384,
            replication: "{'class': 'SimpleStrategy', 'replication_factor': 1}".into(),
            connections: 4,
        })
    }

    /// Applies named options (see [`OPTION_NAMES`]); the password falls back to
    /// the environment variable named by `password_env`, else [`PASSWORD_ENV`].
    pub fn apply(&mut self, options: Vec<(String, OptionValue)>) -> Result<()> {
        let mut password_env = None;
        for (key, value) in options {
            let bad = |what: &str| {
                StoreError::InvalidArgument(format!("option {key} must be {what}, got {value:?}"))
            };
            let text = || match &value {
                OptionValue::Text(s) => Ok(s.clone()),
                _ => Err(bad("a string")),
            };
            let flag = || match value {
                OptionValue::Bool(b) => Ok(b),
                _ => Err(bad("True or False")),
            };
            let seconds = || match value {
                OptionValue::Number(x) if x.is_finite() && x > 0.0 => {
                    Ok(Duration::from_secs_f64(x))
                }
                _ => Err(bad("a positive number of seconds")),
            };
            let count = || match value {
                OptionValue::Number(x) if x >= 0.0 && x.fract() == 0.0 => Ok(x as usize),
                _ => Err(bad("a non-negative int")),
            };
            match key.as_str() {
                "username" => self.username = Some(text()?),
                "password" => {
                    self.password = Some(Secret::new(match &value {
                        OptionValue::Text(s) => s.clone(),
                        // Never echo a password back, even a malformed one.
                        _ => {
                            return Err(StoreError::InvalidArgument(
                                "option password must be a string".into(),
                            ))
                        }
                    }))
                }
                "password_env" => password_env = Some(text()?),
                "use_ssl" => self.use_ssl = flag()?,
                "ssl_verify" => self.ssl_verify = flag()?,
                "ssl_certificate" => self.ssl_certificate = Some(text()?.into()),
                "ssl_own_certificate" => self.ssl_own_certificate = Some(text()?.into()),
                "ssl_own_key" => self.ssl_own_key = Some(text()?.into()),
                "ssl_own_key_pass" => {
                    self.ssl_own_key_pass = Some(Secret::new(match &value {
                        OptionValue::Text(s) => s.clone(),
                        _ => {
                            return Err(StoreError::InvalidArgument(
                                "option ssl_own_key_pass must be a string".into(),
                            ))
                        }
                    }))
                }
                "connect_timeout" => self.connect_timeout = seconds()?,
                "request_timeout" => self.request_timeout = seconds()?,
                "retry_time_limit" => self.retry_time_limit = seconds()?,
                "speculative_delay" => self.speculative_delay = Some(seconds()?),
                "latency_aware" => self.latency_aware = flag()?,
                "hedged_reads" => self.hedged_reads = flag()?,
                "hedge_percentile" => {
                    self.hedge_percentile = match value {
                        OptionValue::Number(x) if x > 0.0 && x < 100.0 => x,
                        _ => return Err(bad("a percentile between 0 and 100 (e.g. 99.0)")),
                    }
                }
                "hedge_min_delay" => self.hedge_min_delay = seconds()?,
                "retries" => self.retries = count()? as u32,
                "max_in_flight" => self.max_in_flight = count()?.max(1),
                "consistency" => {
                    self.consistency = match text()?.to_ascii_lowercase().as_str() {
                        "one" => Consistency::One,
                        "local_one" => Consistency::LocalOne,
                        "two" => Consistency::Two,
                        "quorum" => Consistency::Quorum,
                        "local_quorum" => Consistency::LocalQuorum,
                        "all" => Consistency::All,
                        other => {
                            return Err(StoreError::InvalidArgument(format!(
                                "unknown consistency {other:?}"
                            )))
                        }
                    }
                }
                "replication" => self.replication = text()?,
                "connections" => self.connections = count()?.max(1),
                _ => {
                    return Err(StoreError::InvalidArgument(format!(
                        "unknown Cassandra option {key:?}; known options: {}, and the \
                         sample cache's: {}",
                        OPTION_NAMES.join(", "),
                        crate::cache::CACHE_OPTION_NAMES.join(", ")
                    )))
                }
            }
        }
        if self.password.is_none() {
            let var = password_env.as_deref().unwrap_or(PASSWORD_ENV);
            match std::env::var(var) {
                Ok(p) => self.password = Some(Secret::new(p)),
                Err(_) if password_env.is_some() => {
                    return Err(StoreError::InvalidArgument(format!(
                        "password_env: environment variable {var} is not set"
                    )))
                }
                Err(_) => {}
            }
        }
        Ok(())
    }

    pub fn url(&self) -> String {
        format!(
            "cassandra://{}/{}",
            self.hosts.join(","),
            self.keyspace.as_deref().unwrap_or("")
        )
    }

    pub(super) fn hosts_str(&self) -> String {
        self.hosts.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let o = CassandraOptions::from_url("cassandra://a,b:9043/ks").unwrap();
        assert_eq!(o.hosts, vec!["a:9043", "b:9043"]);
        assert_eq!(o.keyspace.as_deref(), Some("ks"));
        let o = CassandraOptions::from_url("cassandra://127.0.0.1").unwrap();
        assert_eq!(o.hosts, vec!["127.0.0.1:9042"]);
        assert_eq!(o.keyspace, None);
        let o = CassandraOptions::from_url("cassandra://a:1,b/ks").unwrap();
        assert_eq!(o.hosts, vec!["a:1", "b:9042"]);
        assert!(CassandraOptions::from_url("cassandra://u:p@a/ks").is_err());
        assert!(CassandraOptions::from_url("http://a").is_err());
        assert!(CassandraOptions::from_url("cassandra://a:xx/ks").is_err());
    }

    #[test]
    fn latency_awareness_is_off_unless_asked() {
        let mut o = CassandraOptions::from_url("cassandra://a/ks").unwrap();
        assert!(!o.latency_aware);
        o.apply(vec![("latency_aware".into(), OptionValue::Bool(true))])
            .unwrap();
        assert!(o.latency_aware);
        let e = o
            .apply(vec![(
                "latency_aware".into(),
                OptionValue::Text("x".into()),
            )])
            .unwrap_err();
        assert!(e.to_string().contains("latency_aware"), "{e}");
    }

    #[test]
    fn hedged_reads_are_on_unless_turned_off_and_bad_values_name_the_option() {
        let mut o = CassandraOptions::from_url("cassandra://a/ks").unwrap();
        assert!(o.hedged_reads);
        assert_eq!(o.hedge_percentile, 99.0);
        assert_eq!(o.hedge_min_delay, Duration::from_millis(5));
        o.apply(vec![
            ("hedged_reads".into(), OptionValue::Bool(false)),
            ("hedge_percentile".into(), OptionValue::Number(95.5)),
            ("hedge_min_delay".into(), OptionValue::Number(0.002)),
        ])
        .unwrap();
        assert!(!o.hedged_reads);
        assert_eq!(o.hedge_percentile, 95.5);
        assert_eq!(o.hedge_min_delay, Duration::from_millis(2));
        for (name, value) in [
            ("hedged_reads", OptionValue::Number(1.0)),
            ("hedge_percentile", OptionValue::Number(100.0)),
            ("hedge_percentile", OptionValue::Number(0.0)),
            ("hedge_percentile", OptionValue::Text("p99".into())),
            ("hedge_min_delay", OptionValue::Number(-1.0)),
            ("hedge_min_delay", OptionValue::Number(f64::NAN)),
        ] {
            let e = o.apply(vec![(name.into(), value.clone())]).unwrap_err();
            assert!(e.to_string().contains(name), "{name}={value:?}: {e}");
        }
    }

    #[test]
    fn secrets_do_not_print() {
        let mut o = CassandraOptions::from_url("cassandra://a/ks").unwrap();
        o.password = Some(Secret::new("hunter2-Zq9"));
        assert!(!format!("{o:?}").contains("hunter2"));
    }
}
