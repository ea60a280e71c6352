//! The Cassandra / ScyllaDB store, on the `scylla` driver (protocol v4,
//! token-aware routing). One prepared statement per table; every read is
//! idempotent, bounded by a request timeout, retried with backoff on transient
//! errors, and optionally sped up by speculative execution. Blob cells arrive as
//! `Bytes` slices of the response frame and are copied once, into the arena.
//!
//! The driver session is created lazily in each process (never carried across
//! `fork()`, whose child has neither the runtime nor the connections).

use crate::batch::{ArenaPool, Batch, BatchJob, Labels};
use crate::error::{Result, StoreError};
use crate::{LabelType, LabelValue, MetadataRow, SampleRow, SampleStore, TableReader, TableSpec};
use bytes::Bytes;
use crs4_cassandra_core::ProcessOwned;
use futures::future::{BoxFuture, FutureExt};
use futures::stream::FuturesOrdered;
use futures::{StreamExt, TryStreamExt};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::client::PoolSize;
use scylla::errors::{DbError, ExecutionError, NewSessionError, PrepareError, RequestAttemptError};
use scylla::frame::response::result::{ColumnType, NativeType};
use scylla::policies::retry::FallthroughRetryPolicy;
use scylla::policies::speculative_execution::SimpleSpeculativeExecutionPolicy;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::Consistency;
use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, Semaphore};
use uuid::Uuid;

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
                        "unknown Cassandra option {key:?}; known options: {}",
                        OPTION_NAMES.join(", ")
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

    fn hosts_str(&self) -> String {
        self.hosts.join(",")
    }
}

fn read_pem_certs(path: &PathBuf) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>> {
    use rustls_pki_types::pem::PemObject;
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| {
            StoreError::Tls(format!(
                "cannot read certificates from {}: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(StoreError::Tls(format!(
            "no PEM certificate in {}",
            path.display()
        )));
    }
    Ok(certs)
}

/// Accepts any server certificate: only for `ssl_verify=False`.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_config(o: &CassandraOptions) -> Result<Arc<rustls::ClientConfig>> {
    // An explicit provider: the process default is ambiguous when several are compiled in.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Tls(e.to_string()))?;
    let builder = if o.ssl_verify {
        let mut roots = rustls::RootCertStore::empty();
        let path = o.ssl_certificate.as_ref().ok_or_else(|| {
            StoreError::Tls(
                "use_ssl needs ssl_certificate (the server's CA or certificate, PEM) to verify the server; \
                 ssl_verify=False skips verification (insecure)"
                    .into(),
            )
        })?;
        for cert in read_pem_certs(path)? {
            roots.add(cert).map_err(|e| {
                StoreError::Tls(format!("bad certificate in {}: {e}", path.display()))
            })?;
        }
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    };
    let config = match (&o.ssl_own_certificate, &o.ssl_own_key) {
        (Some(cert), Some(key)) => {
            if o.ssl_own_key_pass.is_some() {
                return Err(StoreError::Tls(format!(
                    "encrypted client keys are not supported: decrypt {} (e.g. `openssl pkey -in KEY -out KEY.plain`)",
                    key.display()
                )));
            }
            use rustls_pki_types::pem::PemObject;
            let key_der = rustls_pki_types::PrivateKeyDer::from_pem_file(key).map_err(|e| {
                StoreError::Tls(format!("cannot read private key {}: {e}", key.display()))
            })?;
            builder
                .with_client_auth_cert(read_pem_certs(cert)?, key_der)
                .map_err(|e| {
                    StoreError::Tls(format!("client certificate {}: {e}", cert.display()))
                })?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(StoreError::Tls(
                "ssl_own_certificate and ssl_own_key go together".into(),
            ))
        }
    };
    Ok(Arc::new(config))
}

fn db_error(e: &ExecutionError) -> Option<&DbError> {
    match e {
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(db, _)) => Some(db),
        _ => None,
    }
}

/// Transient failures worth another try.
fn retriable(e: &ExecutionError) -> bool {
    match e {
        ExecutionError::RequestTimeout(_)
        | ExecutionError::ConnectionPoolError(_)
        | ExecutionError::EmptyPlan => true,
        ExecutionError::LastAttemptError(a) => match a {
            RequestAttemptError::BrokenConnectionError(_)
            | RequestAttemptError::UnableToAllocStreamId => true,
            RequestAttemptError::DbError(db, _) => matches!(
                db,
                DbError::Overloaded
                    | DbError::ReadTimeout { .. }
                    | DbError::Unavailable { .. }
                    | DbError::ServerError
                    | DbError::IsBootstrapping
                    | DbError::ReadFailure { .. }
                    | DbError::TruncateError
                    | DbError::WriteTimeout { .. }
            ),
            _ => false,
        },
        _ => false,
    }
}

/// Failures of the connection rather than of the request: a node restarting
/// or unreachable. The driver reconnects in the background, so these are
/// retried until `retry_time_limit`, whatever `retries` says.
fn connection_level(e: &ExecutionError) -> bool {
    matches!(
        e,
        ExecutionError::ConnectionPoolError(_)
            | ExecutionError::EmptyPlan
            | ExecutionError::LastAttemptError(RequestAttemptError::BrokenConnectionError(_))
    )
}

fn is_auth_message(msg: &str) -> bool {
    let m = msg.to_ascii_lowercase();
    m.contains("authenticat") || m.contains("bad credentials") || m.contains("password")
}

pub struct CassandraStore {
    opts: Arc<CassandraOptions>,
    session: Mutex<Option<ProcessOwned<Arc<Session>>>>,
    in_flight: Arc<Semaphore>,
    prepared: Mutex<HashMap<String, PreparedStatement>>,
}

impl fmt::Debug for CassandraStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CassandraStore({})", self.opts.url())
    }
}

impl CassandraStore {
    /// Does not connect: the session is made on first use, in the using process.
    pub fn new(opts: CassandraOptions) -> Result<Arc<Self>> {
        if opts.use_ssl {
            tls_config(&opts)?; // fail fast on a bad certificate path
        }
        Ok(Arc::new(Self {
            in_flight: Arc::new(Semaphore::new(opts.max_in_flight.max(1))),
            opts: Arc::new(opts),
            session: Mutex::new(None),
            prepared: Mutex::new(HashMap::new()),
        }))
    }

    pub fn options(&self) -> &CassandraOptions {
        &self.opts
    }

    fn connection_error(&self, e: NewSessionError) -> StoreError {
        let message = e.to_string();
        if is_auth_message(&message) {
            StoreError::Authentication {
                hosts: self.opts.hosts_str(),
                message,
            }
        } else {
            StoreError::Connection {
                hosts: self.opts.hosts_str(),
                message,
            }
        }
    }

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
                })
            }
        };
        // Replacing an inherited session leaks it: its connections and tasks
        // belong to the parent process.
        *guard = Some(ProcessOwned::new(session.clone()));
        Ok(session)
    }

    fn qualify(&self, table: &str) -> Result<String> {
        if table.contains('.') {
            return Ok(table.to_string());
        }
        match &self.opts.keyspace {
            Some(ks) => Ok(format!("{ks}.{table}")),
            None => Err(StoreError::InvalidArgument(format!(
                "table {table:?} has no keyspace: write keyspace.table or put the keyspace in the URL"
            ))),
        }
    }

    fn map_error(&self, table: &str, e: ExecutionError, started: Instant) -> StoreError {
        let hosts = self.opts.hosts_str();
        let message = e.to_string();
        match &e {
            ExecutionError::RequestTimeout(_) => StoreError::Timeout {
                hosts,
                seconds: started.elapsed().as_secs_f64(),
                context: format!(" reading table {table:?}"),
            },
            ExecutionError::ConnectionPoolError(_) | ExecutionError::EmptyPlan => {
                StoreError::Connection { hosts, message }
            }
            ExecutionError::LastAttemptError(RequestAttemptError::BrokenConnectionError(_)) => {
                StoreError::Connection { hosts, message }
            }
            _ if matches!(
                db_error(&e),
                Some(DbError::AuthenticationError | DbError::Unauthorized)
            ) =>
            {
                StoreError::Authentication { hosts, message }
            }
            _ if matches!(db_error(&e), Some(DbError::ReadTimeout { .. })) => StoreError::Timeout {
                hosts,
                seconds: started.elapsed().as_secs_f64(),
                context: format!(" reading table {table:?} (server-side read timeout)"),
            },
            _ => StoreError::Query {
                hosts,
                table: table.to_string(),
                message,
            },
        }
    }

    /// Runs a request with retries and exponential backoff on transient errors:
    /// server-side failures (overloaded, timeouts) at most `retries` times, lost
    /// connections until `retry_time_limit` (a node restarting takes a while);
    /// never past `retry_time_limit`.
    async fn retrying<T, F, Fut>(&self, table: &str, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, ExecutionError>>,
    {
        let started = Instant::now();
        let deadline = started + self.opts.retry_time_limit;
        let mut delay = Duration::from_millis(20);
        let mut tries = 0u32;
        loop {
            let e = match attempt().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let again = retriable(&e)
                && !left.is_zero()
                && (connection_level(&e) || tries < self.opts.retries);
            if !again {
                let gave_up = tries > 0 && connection_level(&e);
                let mut err = self.map_error(table, e, started);
                if let (true, StoreError::Connection { message, .. }) = (gave_up, &mut err) {
                    message.push_str(&format!(
                        " (still failing after {:.1} s of retries; retry_time_limit={:.1} s)",
                        started.elapsed().as_secs_f64(),
                        self.opts.retry_time_limit.as_secs_f64()
                    ));
                }
                return Err(err);
            }
            tries += 1;
            // Jitter spreads the retries of a whole window of requests.
            let jitter = f64::from(started.elapsed().subsec_nanos() % 1000) / 1000.0;
            tokio::time::sleep(delay.mul_f64(0.5 + jitter).min(left)).await;
            let cap = if connection_level(&e) { 500 } else { 2000 };
            delay = (delay * 2).min(Duration::from_millis(cap));
        }
    }

    fn prepare_error(&self, table: &str, e: PrepareError) -> StoreError {
        let message = e.to_string();
        let hosts = self.opts.hosts_str();
        if message.contains("unconfigured table") || message.contains("does not exist") {
            StoreError::TableNotFound {
                store: self.opts.url(),
                table: table.to_string(),
                available: vec![],
            }
        } else if message.contains("Undefined column") {
            StoreError::Query {
                hosts,
                table: table.to_string(),
                message,
            }
        } else if is_auth_message(&message) {
            StoreError::Authentication { hosts, message }
        } else if message.contains("connection") || message.contains("pool") {
            StoreError::Connection { hosts, message }
        } else {
            StoreError::Query {
                hosts,
                table: table.to_string(),
                message,
            }
        }
    }

    async fn prepare(&self, table: &str, cql: String) -> Result<PreparedStatement> {
        if let Some(p) = self.prepared.lock().await.get(&cql) {
            return Ok(p.clone());
        }
        let session = self.session().await?;
        let mut p = session
            .prepare(cql.clone())
            .await
            .map_err(|e| self.prepare_error(table, e))?;
        p.set_is_idempotent(true);
        self.prepared.lock().await.insert(cql, p.clone());
        Ok(p)
    }

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
        let statement = self.prepare(&table, cql).await?;
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

    async fn execute_ddl(&self, table: &str, cql: String) -> Result<()> {
        let session = self.session().await?;
        self.retrying(table, || session.query_unpaged(cql.clone(), ()))
            .await
            .map(drop)
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
}

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
}

impl SampleStore for Arc<CassandraStore> {
    fn url(&self) -> String {
        self.opts.url()
    }

    fn open_table(&self, spec: &TableSpec) -> BoxFuture<'static, Result<Arc<dyn TableReader>>> {
        self.clone().open_table_async(spec.clone()).boxed()
    }

    fn create_tables(
        &self,
        spec: &TableSpec,
        metadata_table: &str,
        overwrite: bool,
    ) -> BoxFuture<'static, Result<()>> {
        let (this, spec, metadata_table) = (self.clone(), spec.clone(), metadata_table.to_string());
        async move {
            let data = this.qualify(&spec.table)?;
            let meta = this.qualify(&metadata_table)?;
            let keyspace = data.split('.').next().expect("qualified").to_string();
            this.execute_ddl(
                &data,
                format!(
                    "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {}",
                    this.opts.replication
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
                    this.execute_ddl(&name, format!("DROP TABLE IF EXISTS {name}")).await?;
                }
                match this.execute_ddl(&name, create).await {
                    Err(StoreError::Query { message, .. })
                        if message.contains("already exist") || message.contains("AlreadyExists") =>
                    {
                        return Err(StoreError::TableExists {
                            store: this.url(),
                            table: name,
                        })
                    }
                    other => other?,
                }
            }
            this.prepared.lock().await.clear();
            Ok(())
        }
        .boxed()
    }

    fn put_samples(&self, table: &str, rows: Vec<SampleRow>) -> BoxFuture<'static, Result<()>> {
        let (this, table) = (self.clone(), table.to_string());
        async move {
            let with_label = rows.iter().any(|r| !matches!(r.label, LabelValue::None));
            let columns = if with_label {
                "id, label, data"
            } else {
                "id, data"
            };
            this.insert_rows(&table, columns, rows, |row, insert| async move {
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
        .boxed()
    }

    fn put_metadata(&self, table: &str, rows: Vec<MetadataRow>) -> BoxFuture<'static, Result<()>> {
        let (this, table) = (self.clone(), table.to_string());
        async move {
            let columns = "id, label, label_name, path, split";
            this.insert_rows(&table, columns, rows, |r, insert| async move {
                insert
                    .run((r.id, r.label, &r.label_name, &r.path, &r.split))
                    .await
            })
            .await
        }
        .boxed()
    }

    fn scan_metadata(&self, table: &str) -> BoxFuture<'static, Result<Vec<MetadataRow>>> {
        let (this, table) = (self.clone(), table.to_string());
        async move {
            let table = this.qualify(&table)?;
            let session = this.session().await?;
            let mut query = scylla::statement::unprepared::Statement::new(format!(
                "SELECT id, label, label_name, path, split FROM {table}"
            ));
            query.set_page_size(5000);
            let pager = session.query_iter(query, ()).await.map_err(|e| {
                let message = e.to_string();
                if message.contains("unconfigured table") {
                    StoreError::TableNotFound {
                        store: this.url(),
                        table: table.clone(),
                        available: vec![],
                    }
                } else {
                    StoreError::Query {
                        hosts: this.opts.hosts_str(),
                        table: table.clone(),
                        message,
                    }
                }
            })?;
            type Row = (
                Uuid,
                Option<i32>,
                Option<String>,
                Option<String>,
                Option<String>,
            );
            let rows: Vec<Row> = pager
                .rows_stream::<Row>()
                .map_err(|e| StoreError::Query {
                    hosts: this.opts.hosts_str(),
                    table: table.clone(),
                    message: e.to_string(),
                })?
                .try_collect()
                .await
                .map_err(|e| StoreError::Query {
                    hosts: this.opts.hosts_str(),
                    table: table.clone(),
                    message: e.to_string(),
                })?;
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
        .boxed()
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
    fn secrets_do_not_print() {
        let mut o = CassandraOptions::from_url("cassandra://a/ks").unwrap();
        o.password = Some(Secret::new("hunter2-Zq9"));
        assert!(!format!("{o:?}").contains("hunter2"));
    }
}
