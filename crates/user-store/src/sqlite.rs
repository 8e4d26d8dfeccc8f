use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use broker_auth_contract::{Credentials, User, UserCreation};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};
use uuid::Uuid;

use crate::records::{Pruned, RequestRecords};
use crate::repository::{RecordedCreation, creation_result};
use crate::{CreationOutcome, Result, UserRepository};

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
        let row: Option<(Uuid, String, String, String)> =
            sqlx::query_as("SELECT id, email, name, password_hash FROM users WHERE email = ?1")
                .bind(email)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(id, email, name, password_hash)| Credentials {
            user: User { id, email, name },
            password_hash,
        }))
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
        Ok(CreationOutcome::Handled(result))
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
        Ok(Pruned {
            creation_requests,
            sent_mail,
        })
    }
}
