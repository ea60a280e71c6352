//! Driver errors to [`StoreError`], decided by the driver's error types, never
//! by their text; the driver's error is kept as the `source`.
//!
//! Cassandra reports a missing keyspace, table or column alike, as an
//! `Invalid` request: which one it is comes from the schema tables
//! (`system_schema`), which also give the tables that do exist.

use super::CassandraStore;
use crate::error::StoreError;
use scylla::client::session::Session;
use scylla::errors::{
    ConnectionError, ConnectionPoolError, ConnectionSetupRequestErrorKind, DbError, ExecutionError,
    MetadataError, MetadataFetchErrorKind, NewSessionError, NextPageError, NextRowError,
    PagerExecutionError, PrepareError, RequestAttemptError, RequestError, UseKeyspaceError,
};
use std::error::Error;
use std::time::Instant;

/// What a driver error means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// No usable connection: the node is unreachable, or its connection broke.
    Connection,
    /// Bad or missing credentials, or a role without the permission.
    Authentication,
    /// The client-side request timeout ran out.
    Timeout,
    /// The server gave up waiting for its replicas.
    ReadTimeout,
    /// The request does not fit the schema: a missing keyspace, table or column.
    Invalid,
    /// A keyspace or table to create exists already.
    AlreadyExists,
    /// Anything else the server or the driver refused.
    Query,
}

fn db_kind(db: &DbError) -> Kind {
    match db {
        DbError::AuthenticationError | DbError::Unauthorized => Kind::Authentication,
        DbError::ReadTimeout { .. } => Kind::ReadTimeout,
        DbError::Invalid => Kind::Invalid,
        DbError::AlreadyExists { .. } => Kind::AlreadyExists,
        _ => Kind::Query,
    }
}

pub(super) fn attempt_kind(e: &RequestAttemptError) -> Kind {
    match e {
        RequestAttemptError::BrokenConnectionError(_) => Kind::Connection,
        RequestAttemptError::DbError(db, _) => db_kind(db),
        _ => Kind::Query,
    }
}

pub(super) fn execution_kind(e: &ExecutionError) -> Kind {
    match e {
        ExecutionError::RequestTimeout(_) => Kind::Timeout,
        ExecutionError::ConnectionPoolError(_) | ExecutionError::EmptyPlan => Kind::Connection,
        ExecutionError::LastAttemptError(a) => attempt_kind(a),
        ExecutionError::PrepareError(p) => prepare_kind(p),
        _ => Kind::Query,
    }
}

pub(super) fn prepare_kind(e: &PrepareError) -> Kind {
    match e {
        PrepareError::ConnectionPoolError(_) => Kind::Connection,
        PrepareError::AllAttemptsFailed { first_attempt } => attempt_kind(first_attempt),
        _ => Kind::Query,
    }
}

fn request_kind(e: &RequestError) -> Kind {
    match e {
        RequestError::EmptyPlan | RequestError::ConnectionPoolError(_) => Kind::Connection,
        RequestError::RequestTimeout(_) => Kind::Timeout,
        RequestError::LastAttemptError(a) => attempt_kind(a),
        _ => Kind::Query,
    }
}

fn next_page_kind(e: &NextPageError) -> Kind {
    match e {
        NextPageError::RequestFailure(r) => request_kind(r),
        _ => Kind::Query,
    }
}

pub(super) fn pager_kind(e: &PagerExecutionError) -> Kind {
    match e {
        PagerExecutionError::PrepareError(p) => prepare_kind(p),
        PagerExecutionError::NextPageError(n) => next_page_kind(n),
        _ => Kind::Query,
    }
}

/// While connecting, everything but an authentication failure is a failure to connect.
fn connecting(kind: Kind) -> Kind {
    match kind {
        Kind::Authentication => Kind::Authentication,
        _ => Kind::Connection,
    }
}

fn use_keyspace_kind(e: &UseKeyspaceError) -> Kind {
    match e {
        UseKeyspaceError::RequestError(a) => connecting(attempt_kind(a)),
        _ => Kind::Connection,
    }
}

/// A connection that could not be opened: the server refusing the
/// credentials (or asking for some when none are given) is an authentication
/// failure, anything else a failure to connect.
pub(super) fn connection_kind(e: &ConnectionError) -> Kind {
    use ConnectionSetupRequestErrorKind as Setup;
    match e {
        ConnectionError::ConnectionSetupRequestError(setup) => match setup.get_error() {
            Setup::DbError(db, _) => connecting(db_kind(db)),
            Setup::MissingAuthentication
            | Setup::StartAuthSessionError(_)
            | Setup::AuthChallengeEvaluationError(_)
            | Setup::AuthFinishError(_) => Kind::Authentication,
            _ => Kind::Connection,
        },
        ConnectionError::UseKeyspaceError(u) => use_keyspace_kind(u),
        _ => Kind::Connection,
    }
}

/// Whether the server asked for credentials and the session gave none: the
/// control connection's setup was refused with the driver's
/// `MissingAuthentication`.
fn missing_credentials(e: &NewSessionError) -> bool {
    use ConnectionSetupRequestErrorKind as Setup;
    matches!(
        e,
        NewSessionError::MetadataError(MetadataError::ConnectionPoolError(
            ConnectionPoolError::Broken {
                last_connection_error: ConnectionError::ConnectionSetupRequestError(setup),
            },
        )) if matches!(setup.get_error(), Setup::MissingAuthentication)
    )
}

/// What to pass when the server wants credentials that were not given, in
/// the option names of `open_store` (the driver's own message names its
/// Rust API instead).
const NO_CREDENTIALS: &str = "the server requires a username and password and none were given: \
     pass username= and password= to open_store (or set the password in the \
     CRS4_CASSANDRA_PASSWORD environment variable, or name another variable with password_env=); \
     on the command line, --username with CRS4_CASSANDRA_PASSWORD or --password-env";

/// Session creation fails in the control connection: opening it (a broken
/// pool naming its last connection's error) or reading the cluster's metadata
/// (a role without permission to read the system tables).
pub(super) fn session_kind(e: &NewSessionError) -> Kind {
    match e {
        NewSessionError::MetadataError(MetadataError::ConnectionPoolError(
            ConnectionPoolError::Broken {
                last_connection_error,
            },
        )) => connection_kind(last_connection_error),
        NewSessionError::MetadataError(MetadataError::FetchError(fetch)) => match &fetch.error {
            MetadataFetchErrorKind::PrepareError(a) => connecting(attempt_kind(a)),
            MetadataFetchErrorKind::NextRowError(NextRowError::NextPageError(n)) => {
                connecting(next_page_kind(n))
            }
            _ => Kind::Connection,
        },
        NewSessionError::UseKeyspaceError(u) => use_keyspace_kind(u),
        _ => Kind::Connection,
    }
}

/// Whether `e` is the driver's refusal to create a keyspace or table that exists.
pub(super) fn already_exists(e: &StoreError) -> bool {
    e.source()
        .and_then(|s| s.downcast_ref::<ExecutionError>())
        .is_some_and(|e| execution_kind(e) == Kind::AlreadyExists)
}

/// How a name is stored in `system_schema`: as written if double-quoted,
/// else lowercased.
fn schema_name(name: &str) -> String {
    match name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
        Some(quoted) => quoted.replace("\"\"", "\""),
        None => name.to_lowercase(),
    }
}

/// The first column of every row of a one-parameter query on `keyspace`.
async fn names(session: &Session, cql: &str, keyspace: &str) -> Option<Vec<String>> {
    let rows = session
        .query_unpaged(cql, (keyspace,))
        .await
        .ok()?
        .into_rows_result()
        .ok()?;
    let names = rows.rows::<(String,)>().ok()?;
    names
        .map(|row| row.map(|(n,)| n))
        .collect::<Result<_, _>>()
        .ok()
}

impl CassandraStore {
    fn hosts(&self) -> String {
        self.opts.hosts_str()
    }

    /// A failed request, read or write, after any retries.
    pub(super) fn map_error(&self, table: &str, e: ExecutionError, started: Instant) -> StoreError {
        let hosts = self.hosts();
        let message = e.to_string();
        let kind = execution_kind(&e);
        let source = Some(e.into());
        match kind {
            Kind::Timeout => StoreError::Timeout {
                hosts,
                seconds: started.elapsed().as_secs_f64(),
                context: format!(" reading table {table:?}"),
                source,
            },
            Kind::ReadTimeout => StoreError::Timeout {
                hosts,
                seconds: started.elapsed().as_secs_f64(),
                context: format!(" reading table {table:?} (server-side read timeout)"),
                source,
            },
            Kind::Connection => StoreError::Connection {
                hosts,
                message,
                source,
            },
            Kind::Authentication => StoreError::Authentication {
                hosts,
                message,
                source,
            },
            Kind::Invalid | Kind::AlreadyExists | Kind::Query => StoreError::Query {
                hosts,
                table: table.to_string(),
                message,
                source,
            },
        }
    }

    /// A session that could not be made.
    pub(super) fn connection_error(&self, e: NewSessionError) -> StoreError {
        let (hosts, message) = (self.hosts(), e.to_string());
        match session_kind(&e) {
            // The driver's error says nothing more than this message, and
            // its advice (a SessionBuilder method) is not for this API: it
            // is left out of the source chain.
            Kind::Authentication if missing_credentials(&e) => StoreError::Authentication {
                hosts,
                message: NO_CREDENTIALS.into(),
                source: None,
            },
            Kind::Authentication
                if self.opts.username.is_some() && self.opts.password.is_none() =>
            {
                StoreError::Authentication {
                    hosts,
                    message: format!(
                        "{message} (a username was given but no password: pass password= \
                         or set CRS4_CASSANDRA_PASSWORD, or name a variable with password_env=)"
                    ),
                    source: Some(e.into()),
                }
            }
            Kind::Authentication => StoreError::Authentication {
                hosts,
                message,
                source: Some(e.into()),
            },
            _ => StoreError::Connection {
                hosts,
                message,
                source: Some(e.into()),
            },
        }
    }

    /// A request on `table` (qualified) that the driver or the server refused
    /// (a prepare, a paged query), of the given kind. An invalid request is
    /// a missing keyspace or table if the schema says so.
    pub(super) async fn refused<E>(&self, table: &str, kind: Kind, e: E) -> StoreError
    where
        E: Error + Send + Sync + 'static,
    {
        let (hosts, message, source) = (self.hosts(), e.to_string(), Some(e.into()));
        match kind {
            Kind::Connection => StoreError::Connection {
                hosts,
                message,
                source,
            },
            Kind::Authentication => StoreError::Authentication {
                hosts,
                message,
                source,
            },
            Kind::Invalid => match self.missing(table).await {
                Some(missing) => missing,
                None => StoreError::Query {
                    hosts,
                    table: table.to_string(),
                    message,
                    source,
                },
            },
            _ => StoreError::Query {
                hosts,
                table: table.to_string(),
                message,
                source,
            },
        }
    }

    /// Whether `table` (qualified) or its keyspace is missing, from the
    /// schema tables; None if both exist or the schema cannot be read.
    async fn missing(&self, table: &str) -> Option<StoreError> {
        let (keyspace, name) = table.split_once('.')?;
        let session = self.session().await.ok()?;
        let schema_keyspace = schema_name(keyspace);
        let keyspaces = names(
            &session,
            "SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = ?",
            &schema_keyspace,
        )
        .await?;
        if keyspaces.is_empty() {
            return Some(StoreError::KeyspaceNotFound {
                store: self.opts.url(),
                keyspace: keyspace.to_string(),
                table: table.to_string(),
            });
        }
        let mut tables = names(
            &session,
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?",
            &schema_keyspace,
        )
        .await?;
        if tables.contains(&schema_name(name)) {
            return None;
        }
        tables.sort();
        Some(StoreError::TableNotFound {
            store: self.opts.url(),
            table: table.to_string(),
            available: tables,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cassandra::CassandraOptions;
    use scylla::errors::BrokenConnectionErrorKind;
    use scylla::statement::Consistency;
    use std::sync::Arc;

    fn db(e: DbError) -> RequestAttemptError {
        RequestAttemptError::DbError(e, "the server's words".into())
    }

    fn broken() -> RequestAttemptError {
        RequestAttemptError::BrokenConnectionError(BrokenConnectionErrorKind::ChannelError.into())
    }

    fn read_timeout() -> DbError {
        DbError::ReadTimeout {
            consistency: Consistency::One,
            received: 0,
            required: 1,
            data_present: false,
        }
    }

    fn store() -> Arc<CassandraStore> {
        CassandraStore::new(CassandraOptions::from_url("cassandra://a,b/ks").unwrap()).unwrap()
    }

    #[test]
    fn server_errors_are_told_apart_by_their_codes() {
        let cases = [
            (DbError::AuthenticationError, Kind::Authentication),
            (DbError::Unauthorized, Kind::Authentication),
            (DbError::Invalid, Kind::Invalid),
            (DbError::SyntaxError, Kind::Query),
            (DbError::Overloaded, Kind::Query),
            (read_timeout(), Kind::ReadTimeout),
            (
                DbError::AlreadyExists {
                    keyspace: "ks".into(),
                    table: "t".into(),
                },
                Kind::AlreadyExists,
            ),
        ];
        for (e, want) in cases {
            let attempt = db(e.clone());
            assert_eq!(attempt_kind(&attempt), want, "{e:?}");
            let run = ExecutionError::LastAttemptError(attempt.clone());
            assert_eq!(execution_kind(&run), want, "{e:?} while running");
            let prepare = PrepareError::AllAttemptsFailed {
                first_attempt: attempt,
            };
            assert_eq!(prepare_kind(&prepare), want, "{e:?} while preparing");
        }
    }

    #[test]
    fn lost_connections_and_client_timeouts() {
        use std::time::Duration;
        assert_eq!(attempt_kind(&broken()), Kind::Connection);
        assert_eq!(
            execution_kind(&ExecutionError::RequestTimeout(Duration::from_secs(1))),
            Kind::Timeout
        );
        assert_eq!(execution_kind(&ExecutionError::EmptyPlan), Kind::Connection);
        let pool = ConnectionPoolError::Broken {
            last_connection_error: ConnectionError::ConnectTimeout,
        };
        assert_eq!(
            execution_kind(&ExecutionError::ConnectionPoolError(pool.clone())),
            Kind::Connection
        );
        assert_eq!(
            prepare_kind(&PrepareError::ConnectionPoolError(pool)),
            Kind::Connection
        );
        assert_eq!(
            prepare_kind(&PrepareError::PreparedStatementIdsMismatch),
            Kind::Query
        );
        let page =
            NextPageError::RequestFailure(RequestError::LastAttemptError(db(DbError::Invalid)));
        assert_eq!(
            pager_kind(&PagerExecutionError::NextPageError(page)),
            Kind::Invalid
        );
    }

    #[test]
    fn a_session_that_cannot_connect_is_a_connection_error() {
        let unreachable = NewSessionError::MetadataError(MetadataError::ConnectionPoolError(
            ConnectionPoolError::Broken {
                last_connection_error: ConnectionError::ConnectTimeout,
            },
        ));
        assert_eq!(session_kind(&unreachable), Kind::Connection);
        let no_host = NewSessionError::FailedToResolveAnyHostname(vec!["nowhere".into()]);
        assert_eq!(session_kind(&no_host), Kind::Connection);
        let denied = ConnectionError::UseKeyspaceError(UseKeyspaceError::RequestError(db(
            DbError::Unauthorized,
        )));
        assert_eq!(connection_kind(&denied), Kind::Authentication);
        let invalid =
            ConnectionError::UseKeyspaceError(UseKeyspaceError::RequestError(db(DbError::Invalid)));
        assert_eq!(connection_kind(&invalid), Kind::Connection);
        let e = store().connection_error(unreachable);
        assert!(matches!(&e, StoreError::Connection { hosts, .. } if hosts == "a:9042,b:9042"));
        assert!(e.source().unwrap().is::<NewSessionError>());
    }

    #[test]
    fn mapped_errors_keep_the_driver_error_as_their_source() {
        let store = store();
        let cases = [
            (db(DbError::Unauthorized), "Authentication"),
            (db(read_timeout()), "Timeout"),
            (broken(), "Connection"),
            (db(DbError::SyntaxError), "Query"),
        ];
        for (attempt, want) in cases {
            let e = store.map_error(
                "ks.t",
                ExecutionError::LastAttemptError(attempt),
                Instant::now(),
            );
            assert!(format!("{e:?}").starts_with(want), "{e:?}");
            let source = e.source().expect("a source");
            assert!(source.downcast_ref::<ExecutionError>().is_some(), "{e:?}");
        }
        let exists = store.map_error(
            "ks.t",
            ExecutionError::LastAttemptError(db(DbError::AlreadyExists {
                keyspace: "ks".into(),
                table: "t".into(),
            })),
            Instant::now(),
        );
        assert!(already_exists(&exists), "{exists:?}");
        let invalid = store.map_error(
            "ks.t",
            ExecutionError::LastAttemptError(db(DbError::Invalid)),
            Instant::now(),
        );
        assert!(!already_exists(&invalid));
        assert!(matches!(invalid, StoreError::Query { .. }));
    }

    #[test]
    fn schema_names_follow_cql_quoting() {
        assert_eq!(schema_name("ImageNet"), "imagenet");
        assert_eq!(schema_name("\"ImageNet\""), "ImageNet");
        assert_eq!(schema_name("\"a\"\"b\""), "a\"b");
    }
}
