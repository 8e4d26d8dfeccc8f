//! The idempotency records (sent mail, handled creation requests) and their pruning, against a
//! fresh Postgres database and SQLite alike.

// Helpers here are test code too; clippy only recognises #[test] functions as such.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use broker_auth_contract::UserCreation;
use broker_auth_testkit::postgres::TestDatabase;
use broker_auth_user_store::records::PRUNE_BATCH;
use broker_auth_user_store::{
    PostgresUserRepository, RequestRecords, SqliteUserRepository, UserRepository, prune_expired,
};
use uuid::Uuid;

const HASH: &str = "$2b$04$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW";
const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

fn user(n: usize) -> UserCreation {
    UserCreation {
        email: format!("user-{n}@example.com"),
        name: "Record Keeper".into(),
        password_hash: HASH.into(),
        request_digest: None,
    }
}

/// Runs the same checks on a repository; `age` makes the given ids' records 8 days old.
async fn records_are_kept_until_they_expire<R, F, Fut>(repository: &R, age: F)
where
    R: RequestRecords + UserRepository,
    F: Fn(&'static str, Vec<Uuid>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    repository.migrate().await.unwrap();

    let mail = Uuid::new_v4();
    assert!(!repository.mail_was_sent(mail).await.unwrap());
    repository.record_mail_sent(mail).await.unwrap();
    repository.record_mail_sent(mail).await.unwrap();
    assert!(repository.mail_was_sent(mail).await.unwrap());

    // More old mail records than one batch holds, so pruning takes several statements.
    let old_mail: Vec<Uuid> = (0..PRUNE_BATCH as usize * 2 + 7)
        .map(|_| Uuid::new_v4())
        .collect();
    for id in &old_mail {
        repository.record_mail_sent(*id).await.unwrap();
    }
    age("sent_mail", old_mail.clone()).await;

    let mut creations = Vec::new();
    for n in 0..3 {
        let request_id = Uuid::new_v4();
        repository.create_user(request_id, &user(n)).await.unwrap();
        creations.push(request_id);
    }
    age("user_creation_requests", creations[..2].to_vec()).await;

    let pruned = prune_expired(repository, WEEK).await.unwrap();
    assert_eq!(pruned.sent_mail, old_mail.len() as u64);
    assert_eq!(pruned.creation_requests, 2);

    assert!(
        repository.mail_was_sent(mail).await.unwrap(),
        "a fresh record was pruned"
    );
    assert!(!repository.mail_was_sent(old_mail[0]).await.unwrap());
    // The users stay; only the records of their creation requests go.
    for n in 0..3 {
        assert!(repository.email_exists(&user(n).email).await.unwrap());
    }
    assert_eq!(prune_expired(repository, WEEK).await.unwrap().total(), 0);
}

#[tokio::test]
async fn postgres_records_are_kept_until_they_expire() {
    let database = TestDatabase::create().await;
    let repository = PostgresUserRepository::connect(database.url(), 4)
        .await
        .unwrap();
    let pool = repository.pool().clone();
    records_are_kept_until_they_expire(&repository, |table, ids| {
        let pool = pool.clone();
        async move {
            let column = if table == "sent_mail" {
                "sent_at"
            } else {
                "handled_at"
            };
            sqlx::query(&format!(
                "UPDATE {table} SET {column} = now() - interval '8 days' WHERE request_id = ANY($1)"
            ))
            .bind(ids)
            .execute(&pool)
            .await
            .unwrap();
        }
    })
    .await;
}

#[tokio::test]
async fn sqlite_records_are_kept_until_they_expire() {
    let repository = SqliteUserRepository::connect("sqlite::memory:")
        .await
        .unwrap();
    let pool = repository.pool().clone();
    records_are_kept_until_they_expire(&repository, |table, ids| {
        let pool = pool.clone();
        async move {
            let column = if table == "sent_mail" { "sent_at" } else { "handled_at" };
            for id in ids {
                sqlx::query(&format!(
                    "UPDATE {table} SET {column} = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-8 days') \
                     WHERE request_id = ?1"
                ))
                .bind(id)
                .execute(&pool)
                .await
                .unwrap();
            }
        }
    })
    .await;
}
