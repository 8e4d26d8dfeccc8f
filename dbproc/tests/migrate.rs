//! `broker-auth-dbproc migrate` against a fresh Postgres database.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use broker_auth_contract::{DirectoryRequest, UserCreation, UserCreationResult};
use broker_auth_dbproc::{Cli, Command, migrate};
use broker_auth_testkit::postgres::TestDatabase;
use broker_auth_user_store::{PostgresUserRepository, UserDirectory};
use clap::Parser;
use uuid::Uuid;

const HASH: &str = "$2b$04$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW";

#[tokio::test]
async fn migrate_creates_the_schema_and_running_it_again_changes_nothing() {
    let database = TestDatabase::create().await;
    let Command::Migrate(config) = Cli::try_parse_from([
        "broker-auth-dbproc",
        "migrate",
        &format!("--database-url={}", database.url()),
    ])
    .unwrap()
    .command
    else {
        panic!("expected migrate");
    };
    migrate(&config).await.unwrap();
    migrate(&config).await.unwrap();

    // Both tables exist: a creation writes the user and its request record.
    let repository = Arc::new(
        PostgresUserRepository::connect(database.url(), 1)
            .await
            .unwrap(),
    );
    let directory = UserDirectory::new(repository.clone());
    let creation = DirectoryRequest::UserCreation(UserCreation {
        email: "migrated@example.com".into(),
        name: "Mig".into(),
        password_hash: HASH.into(),
        request_digest: None,
    });
    let reply = directory.handle(Uuid::new_v4(), creation).await.unwrap();
    assert!(
        matches!(
            reply,
            broker_auth_contract::DirectoryReply::UserCreation(broker_auth_contract::Reply::Ok {
                result: UserCreationResult::Created { .. }
            })
        ),
        "{reply:?}"
    );
    repository.pool().close().await;
}
