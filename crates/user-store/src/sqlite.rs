use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use broker_auth_contract::{Credentials, PasswordUpdate, PasswordUpdateResult, User, UserCreation};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};
use uuid::Uuid;

use crate::records::{Pruned, RequestRecords};
use crate::repository::{
    OUTCOME_UNKNOWN_USER, OUTCOME_UPDATED, RecordedCreation, RecordedUpdate, creation_result,
};
use crate::{CreationOutcome, PasswordUpdateOutcome, RecordedOutcome, Result, UserRepository};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The users in a SQLite database: embedded mode's directory.
#[derive(Debug, Clone)]
pub struct SqliteUserRepository {
    pool: SqlitePool,
}

impl SqliteUserRepository {
    /// Opens (creating if missing) the database at `url`: `sqlite://path/to/file.db`,
    /// `sqlite:file.db` or `sqlite::memory:`.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = if is_in_memory(url) {
            // An in-memory database lives as long as a connection to it, and shared-cache
            // connections lock whole tables; one connection that never expires avoids both.
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(options)
                .await?
        } else {
            SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(
                    options
                        .journal_mode(SqliteJournalMode::Wal)
                        .synchronous(SqliteSynchronous::Normal),
                )
                .await?
        };
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

fn is_in_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

async fn recorded_update(
    tx: &mut Transaction<'_, Sqlite>,
    request_id: Uuid,
) -> Result<Option<RecordedUpdate>, sqlx::Error> {
    sqlx::query_as::<_, RecordedUpdate>(
        "SELECT r.email, r.request_digest, r.outcome, r.password_changed_at AS changed_at_ms, \
         u.id AS user_id, u.email AS user_email, u.name AS user_name \
         FROM user_password_updates r LEFT JOIN users u ON u.id = r.user_id \
         WHERE r.request_id = ?1",
    )
    .bind(request_id)
    .fetch_optional(&mut **tx)
    .await
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

async fn recorded_creation(
    tx: &mut Transaction<'_, Sqlite>,
    request_id: Uuid,
) -> Result<Option<RecordedCreation>, sqlx::Error> {
    sqlx::query_as::<_, RecordedCreation>(
        "SELECT r.email, r.request_digest, r.outcome, u.id AS user_id, u.email AS user_email, u.name AS user_name \
         FROM user_creation_requests r LEFT JOIN users u ON u.id = r.user_id \
         WHERE r.request_id = ?1",
    )
    .bind(request_id)
    .fetch_optional(&mut **tx)
    .await
}

#[async_trait]
impl UserRepository for SqliteUserRepository {
    async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn email_exists(&self, email: &str) -> Result<bool> {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE email = ?1)")
                .bind(email)
                .fetch_one(&self.pool)
                .await?;
        Ok(exists)
    }

    async fn find_credentials(&self, email: &str) -> Result<Option<Credentials>> {
        let row: Option<(Uuid, String, String, String, Option<i64>)> = sqlx::query_as(
            "SELECT id, email, name, password_hash, password_changed_at FROM users WHERE email = ?1",
        )
        .bind(email)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(
            |(id, email, name, password_hash, password_changed_at_ms)| Credentials {
                user: User { id, email, name },
                password_hash,
                password_changed_at_ms,
            },
        ))
    }

    async fn update_password(
        &self,
        request_id: Uuid,
        update: &PasswordUpdate,
    ) -> Result<PasswordUpdateOutcome> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        if let Some(recorded) = recorded_update(&mut tx, request_id).await? {
            return recorded.into_outcome(update);
        }
        let updated: Option<(Uuid, String, String, i64)> = sqlx::query_as(
            "UPDATE users SET password_hash = ?2, password_changed_at = ?3 WHERE email = ?1 \
             RETURNING id, email, name, password_changed_at",
        )
        .bind(&update.email)
        .bind(&update.password_hash)
        .bind(now_unix_ms())
        .fetch_optional(&mut *tx)
        .await?;
        let (outcome, user_id, changed_at, result) = match updated {
            Some((id, email, name, changed_at)) => (
                OUTCOME_UPDATED,
                Some(id),
                Some(changed_at),
                PasswordUpdateResult::Updated {
                    user: User { id, email, name },
                    password_changed_at_ms: changed_at,
                },
            ),
            None => (
                OUTCOME_UNKNOWN_USER,
                None,
                None,
                PasswordUpdateResult::UnknownUser,
            ),
        };
        sqlx::query(
            "INSERT INTO user_password_updates \
             (request_id, email, request_digest, outcome, user_id, password_changed_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .bind(request_id)
        .bind(&update.email)
        .bind(&update.request_digest)
        .bind(outcome)
        .bind(user_id)
        .bind(changed_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(RecordedOutcome::Handled(result))
    }

    async fn create_user(&self, request_id: Uuid, user: &UserCreation) -> Result<CreationOutcome> {
        // IMMEDIATE takes SQLite's single write lock before the first read, so concurrent
        // creations run one after the other instead of failing to upgrade a read snapshot.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        if let Some(recorded) = recorded_creation(&mut tx, request_id).await? {
            return recorded.into_outcome(user);
        }
        let inserted: Option<(Uuid, String, String)> = sqlx::query_as(
            "INSERT INTO users (id, email, name, password_hash) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (email) DO NOTHING RETURNING id, email, name",
        )
        .bind(Uuid::new_v4())
        .bind(&user.email)
        .bind(&user.name)
        .bind(&user.password_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let (outcome, user_id, result) = creation_result(inserted);
        sqlx::query(
            "INSERT INTO user_creation_requests \
             (request_id, email, outcome, user_id, request_digest) VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(request_id)
        .bind(&user.email)
        .bind(outcome)
        .bind(user_id)
        .bind(&user.request_digest)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(RecordedOutcome::Handled(result))
    }
}

#[async_trait]
impl RequestRecords for SqliteUserRepository {
    async fn mail_was_sent(&self, request_id: Uuid) -> Result<bool> {
        let sent: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM sent_mail WHERE request_id = ?1)")
                .bind(request_id)
                .fetch_one(&self.pool)
                .await?;
        Ok(sent)
    }

    async fn record_mail_sent(&self, request_id: Uuid) -> Result<()> {
        sqlx::query("INSERT INTO sent_mail (request_id) VALUES (?1) ON CONFLICT DO NOTHING")
            .bind(request_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn prune_batch(&self, max_age: Duration, batch: u32) -> Result<Pruned> {
        // The timestamps are ISO 8601 text in UTC, so text order is time order.
        let age = format!("-{} seconds", max_age.as_secs());
        let creation_requests = sqlx::query(
            "DELETE FROM user_creation_requests WHERE rowid IN (\
               SELECT rowid FROM user_creation_requests \
               WHERE handled_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?1) \
               ORDER BY handled_at LIMIT ?2)",
        )
        .bind(&age)
        .bind(i64::from(batch))
        .execute(&self.pool)
        .await?
        .rows_affected();
        let sent_mail = sqlx::query(
            "DELETE FROM sent_mail WHERE rowid IN (\
               SELECT rowid FROM sent_mail \
               WHERE sent_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?1) \
               ORDER BY sent_at LIMIT ?2)",
        )
        .bind(&age)
        .bind(i64::from(batch))
        .execute(&self.pool)
        .await?
        .rows_affected();
        let password_updates = sqlx::query(
            "DELETE FROM user_password_updates WHERE rowid IN (\
               SELECT rowid FROM user_password_updates \
               WHERE handled_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?1) \
               ORDER BY handled_at LIMIT ?2)",
        )
        .bind(&age)
        .bind(i64::from(batch))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(Pruned {
            creation_requests,
            sent_mail,
            password_updates,
        })
    }
}
