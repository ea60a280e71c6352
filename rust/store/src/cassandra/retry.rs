//! Retries: which driver errors are transient ([`retriable`]), which of those
//! are the connection's rather than the request's ([`connection_level`]), and
//! the backoff loop that runs a request until it succeeds or may not retry.

use super::CassandraStore;
use crate::error::{Result, StoreError};
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use std::time::{Duration, Instant};

/// Transient failures worth another try.
pub(super) fn retriable(e: &ExecutionError) -> bool {
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

/// Timeouts: the client's, or a server's read or write timeout.
pub(super) fn timeout(e: &ExecutionError) -> bool {
    matches!(
        e,
        ExecutionError::RequestTimeout(_)
            | ExecutionError::LastAttemptError(RequestAttemptError::DbError(
                DbError::ReadTimeout { .. } | DbError::WriteTimeout { .. },
                _
            ))
    )
}

/// Failures of the connection rather than of the request: a node restarting
/// or unreachable. The driver reconnects in the background, so these are
/// retried until `retry_time_limit`, whatever `retries` says.
pub(super) fn connection_level(e: &ExecutionError) -> bool {
    matches!(
        e,
        ExecutionError::ConnectionPoolError(_)
            | ExecutionError::EmptyPlan
            | ExecutionError::LastAttemptError(RequestAttemptError::BrokenConnectionError(_))
    )
}

/// Exponential backoff with jitter: from 20 ms, doubling, capped at 500 ms
/// for lost connections (to be back soon after a node is) and 2 s otherwise.
struct Backoff {
    delay: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self {
            delay: Duration::from_millis(20),
        }
    }

    /// The pause before the next try, at most `left`; `jitter` in [0, 1)
    /// spreads the retries of a whole window of requests.
    fn pause(&mut self, jitter: f64, left: Duration, connection: bool) -> Duration {
        let pause = self.delay.mul_f64(0.5 + jitter).min(left);
        let cap = if connection { 500 } else { 2000 };
        self.delay = (self.delay * 2).min(Duration::from_millis(cap));
        pause
    }
}

impl CassandraStore {
    /// Runs a request with retries and exponential backoff on transient errors:
    /// server-side failures (overloaded, timeouts) at most `retries` times, lost
    /// connections until `retry_time_limit` (a node restarting takes a while);
    /// never past `retry_time_limit`.
    pub(super) async fn retrying<T, F, Fut>(&self, table: &str, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, ExecutionError>>,
    {
        let started = Instant::now();
        let deadline = started + self.opts.retry_time_limit;
        let mut backoff = Backoff::new();
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
                self.hedging.timed_out(timeout(&e));
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
            self.hedging.retried(timeout(&e));
            let jitter = f64::from(started.elapsed().subsec_nanos() % 1000) / 1000.0;
            tokio::time::sleep(backoff.pause(jitter, left, connection_level(&e))).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scylla::errors::{BrokenConnectionErrorKind, ConnectionPoolError};

    fn db(e: DbError) -> ExecutionError {
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(e, String::new()))
    }

    #[test]
    fn transient_errors_are_retried_and_lost_connections_without_a_count() {
        let broken = ExecutionError::LastAttemptError(RequestAttemptError::BrokenConnectionError(
            BrokenConnectionErrorKind::ChannelError.into(),
        ));
        let pool = ExecutionError::ConnectionPoolError(ConnectionPoolError::Initializing);
        for e in [&broken, &pool, &ExecutionError::EmptyPlan] {
            assert!(retriable(e) && connection_level(e), "{e:?}");
        }
        let timeout = ExecutionError::RequestTimeout(Duration::from_secs(1));
        for e in [
            &timeout,
            &db(DbError::Overloaded),
            &db(DbError::ServerError),
        ] {
            assert!(retriable(e) && !connection_level(e), "{e:?}");
        }
        for e in [
            db(DbError::Invalid),
            db(DbError::SyntaxError),
            db(DbError::Unauthorized),
            db(DbError::AuthenticationError),
        ] {
            assert!(!retriable(&e) && !connection_level(&e), "{e:?}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_never_past_the_deadline() {
        let long = Duration::from_secs(60);
        let mut b = Backoff::new();
        let pauses: Vec<u128> = (0..8)
            .map(|_| b.pause(0.5, long, true).as_millis())
            .collect();
        assert_eq!(pauses, [20, 40, 80, 160, 320, 500, 500, 500]);
        let mut b = Backoff::new();
        let last = (0..10).map(|_| b.pause(0.0, long, false)).last().unwrap();
        assert_eq!(last, Duration::from_millis(1000), "half of the 2 s cap");
        let left = Duration::from_millis(7);
        assert_eq!(Backoff::new().pause(0.9, left, false), left);
    }
}
