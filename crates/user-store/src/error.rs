use sqlx::error::DatabaseError;

/// Why the user store could not answer.
///
/// The split that matters to callers is [`StoreError::is_transient`]: a transient error (the
/// database is unreachable, overloaded, or a transaction lost a race) means "try the same request
/// again later" — dbproc keeps the record uncommitted and retries it. Anything else will fail the
/// same way again.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the user database is unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("a user database query failed: {0}")]
    Query(#[source] sqlx::Error),
    #[error("migrating the user database failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("the user database holds inconsistent data: {0}")]
    Inconsistent(&'static str),
}

impl StoreError {
    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        if is_transient(&error) {
            StoreError::Unavailable(error)
        } else {
            StoreError::Query(error)
        }
    }
}

fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(database_error) => {
            is_transient_database_error(database_error.as_ref())
        }
        _ => false,
    }
}

fn is_transient_database_error(error: &dyn DatabaseError) -> bool {
    if let Some(postgres) = error.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        let sqlstate = postgres.code();
        // 08: connection exception, 40: serialization failure / deadlock, 53: insufficient
        // resources, 57P: operator intervention (shutdown, "cannot connect now").
        return ["08", "40", "53", "57P"]
            .iter()
            .any(|class| sqlstate.starts_with(class));
    }
    if error
        .try_downcast_ref::<sqlx::sqlite::SqliteError>()
        .is_some()
    {
        // SQLITE_BUSY (5) and SQLITE_LOCKED (6), including their extended codes.
        return error
            .code()
            .and_then(|code| code.parse::<i32>().ok())
            .is_some_and(|code| matches!(code & 0xff, 5 | 6));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_failures_are_transient_and_bad_queries_are_not() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(StoreError::from(sqlx::Error::Io(refused)).is_transient());
        assert!(StoreError::from(sqlx::Error::PoolTimedOut).is_transient());
        assert!(!StoreError::from(sqlx::Error::RowNotFound).is_transient());
        assert!(!StoreError::Inconsistent("x").is_transient());
    }
}
