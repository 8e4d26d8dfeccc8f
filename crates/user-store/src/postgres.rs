use std::time::Duration;

use async_trait::async_trait;
use broker_auth_contract::{Credentials, PasswordUpdate, PasswordUpdateResult, User, UserCreation};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::records::{Pruned, RequestRecords};
use crate::repository::{
    OUTCOME_UNKNOWN_USER, OUTCOME_UPDATED, RecordedCreation, RecordedUpdate, creation_result,
};
use crate::{
    CreationOutcome, PasswordUpdateOutcome, RecordedOutcome, Result, StoreError, UserRepository,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// How often a creation is retried when it lost a race on its request id (two deliveries of one
/// request in flight at once); the retry reads the winner's recorded outcome.
const CREATION_RACE_RETRIES: usize = 3;

/// The users in Postgres: the distributed deployment's directory.
#[derive(Debug, Clone)]
pub struct PostgresUserRepository {
    pool: PgPool,
}

impl PostgresUserRepository {
    /// Connects a pool of at most `max_connections` to `url` (a `postgres://` URL).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn try_create_user(
        &self,
        request_id: Uuid,
        user: &UserCreation,
    ) -> Result<CreationOutcome> {
        let mut tx = self.pool.begin().await?;
        if let Some(recorded) = recorded_creation(&mut tx, request_id).await? {
            return recorded.into_outcome(user);
        }
        // ON CONFLICT waits for a concurrent insert of the same email to finish and then does
        // nothing: of concurrent creations of one email exactly one gets a row back.
        let inserted: Option<(Uuid, String, String)> = sqlx::query_as(
            "INSERT INTO users (id, email, name, password_hash) VALUES ($1, $2, $3, $4) \
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
             (request_id, email, outcome, user_id, request_digest) VALUES ($1, $2, $3, $4, $5)",
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

/// A `timestamptz` as Unix milliseconds, in SQL.
const MILLIS: &str = "(extract(epoch from {}) * 1000)::bigint";

fn millis(column: &str) -> String {
    MILLIS.replace("{}", column)
}

impl PostgresUserRepository {
    async fn try_update_password(
        &self,
        request_id: Uuid,
        update: &PasswordUpdate,
    ) -> Result<PasswordUpdateOutcome> {
        let mut tx = self.pool.begin().await?;
        if let Some(recorded) = recorded_update(&mut tx, request_id).await? {
            return recorded.into_outcome(update);
        }
        let updated: Option<(Uuid, String, String, i64)> = sqlx::query_as(&format!(
            "UPDATE users SET password_hash = $2, password_changed_at = now() WHERE email = $1 \
             RETURNING id, email, name, {}",
            millis("password_changed_at")
        ))
        .bind(&update.email)
        .bind(&update.password_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let (outcome, user_id, result) = match updated {
            Some((id, email, name, changed_at)) => (
                OUTCOME_UPDATED,
                Some(id),
                PasswordUpdateResult::Updated {
                    user: User { id, email, name },
                    password_changed_at_ms: changed_at,
                },
            ),
            None => (
                OUTCOME_UNKNOWN_USER,
                None,
                PasswordUpdateResult::UnknownUser,
            ),
        };
        // The user row's own timestamp, so a redelivery answers exactly what this one did.
        sqlx::query(
            "INSERT INTO user_password_updates \
             (request_id, email, request_digest, outcome, user_id, password_changed_at) \
             VALUES ($1, $2, $3, $4, $5, (SELECT password_changed_at FROM users WHERE id = $5))",
        )
        .bind(request_id)
        .bind(&update.email)
        .bind(&update.request_digest)
        .bind(outcome)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(RecordedOutcome::Handled(result))
    }
}

async fn recorded_update(
    tx: &mut Transaction<'_, Postgres>,
    request_id: Uuid,
) -> Result<Option<RecordedUpdate>, sqlx::Error> {
    sqlx::query_as::<_, RecordedUpdate>(&format!(
        "SELECT r.email, r.request_digest, r.outcome, {} AS changed_at_ms, \
         u.id AS user_id, u.email AS user_email, u.name AS user_name \
         FROM user_password_updates r LEFT JOIN users u ON u.id = r.user_id \
         WHERE r.request_id = $1",
        millis("r.password_changed_at")
    ))
    .bind(request_id)
    .fetch_optional(&mut **tx)
    .await
}

async fn recorded_creation(
    tx: &mut Transaction<'_, Postgres>,
    request_id: Uuid,
) -> Result<Option<RecordedCreation>, sqlx::Error> {
    sqlx::query_as::<_, RecordedCreation>(
        "SELECT r.email, r.request_digest, r.outcome, u.id AS user_id, u.email AS user_email, u.name AS user_name \
         FROM user_creation_requests r LEFT JOIN users u ON u.id = r.user_id \
         WHERE r.request_id = $1",
    )
    .bind(request_id)
    .fetch_optional(&mut **tx)
    .await
}

fn is_request_id_race(error: &StoreError, table: &str) -> bool {
    matches!(error, StoreError::Query(sqlx::Error::Database(e))
        if e.is_unique_violation() && e.constraint() == Some(&format!("{table}_pkey")))
}

#[async_trait]
impl UserRepository for PostgresUserRepository {
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
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE email = $1)")
                .bind(email)
                .fetch_one(&self.pool)
                .await?;
        Ok(exists)
    }

    async fn find_credentials(&self, email: &str) -> Result<Option<Credentials>> {
        let row: Option<(Uuid, String, String, String, Option<i64>)> = sqlx::query_as(&format!(
            "SELECT id, email, name, password_hash, {} FROM users WHERE email = $1",
            millis("password_changed_at")
        ))
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
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_update_password(request_id, update).await {
                Err(error)
                    if is_request_id_race(&error, "user_password_updates")
                        && attempt < CREATION_RACE_RETRIES =>
                {
                    tracing::debug!(%request_id, "lost a race on a password update request id; reading the recorded outcome");
                }
                outcome => return outcome,
            }
        }
    }

    async fn create_user(&self, request_id: Uuid, user: &UserCreation) -> Result<CreationOutcome> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_create_user(request_id, user).await {
                Err(error)
                    if is_request_id_race(&error, "user_creation_requests")
                        && attempt < CREATION_RACE_RETRIES =>
                {
                    tracing::debug!(%request_id, "lost a race on a creation request id; reading the recorded outcome");
                }
                outcome => return outcome,
            }
        }
    }
}

#[async_trait]
impl RequestRecords for PostgresUserRepository {
    async fn mail_was_sent(&self, request_id: Uuid) -> Result<bool> {
        let sent: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM sent_mail WHERE request_id = $1)")
                .bind(request_id)
                .fetch_one(&self.pool)
                .await?;
        Ok(sent)
    }

    async fn record_mail_sent(&self, request_id: Uuid) -> Result<()> {
        sqlx::query("INSERT INTO sent_mail (request_id) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(request_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn prune_batch(&self, max_age: Duration, batch: u32) -> Result<Pruned> {
        let seconds = max_age.as_secs_f64();
        // SKIP LOCKED: replicas pruning at the same time take different rows instead of waiting.
        let creation_requests = sqlx::query(
            "DELETE FROM user_creation_requests WHERE request_id IN (\
               SELECT request_id FROM user_creation_requests \
               WHERE handled_at < now() - make_interval(secs => $1) \
               ORDER BY handled_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
        )
        .bind(seconds)
        .bind(i64::from(batch))
        .execute(&self.pool)
        .await?
        .rows_affected();
        let sent_mail = sqlx::query(
            "DELETE FROM sent_mail WHERE request_id IN (\
               SELECT request_id FROM sent_mail \
               WHERE sent_at < now() - make_interval(secs => $1) \
               ORDER BY sent_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
        )
        .bind(seconds)
        .bind(i64::from(batch))
        .execute(&self.pool)
        .await?
        .rows_affected();
        let password_updates = sqlx::query(
            "DELETE FROM user_password_updates WHERE request_id IN (\
               SELECT request_id FROM user_password_updates \
               WHERE handled_at < now() - make_interval(secs => $1) \
               ORDER BY handled_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
        )
        .bind(seconds)
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
