//! The one directory handler over both repositories: every test here runs against a fresh
//! Postgres database and against SQLite, so the two backends cannot drift apart.

// Helpers here are test code too; clippy only recognises #[test] functions as such.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::Arc;

use broker_auth_contract::{
    AuthenticationLookup, AuthenticationResult, DirectoryReply, DirectoryRequest, ExistenceCheck,
    ExistenceResult, PasswordUpdate, PasswordUpdateResult, Reply, UserCreation, UserCreationResult,
};
use broker_auth_testkit::postgres::TestDatabase;
use broker_auth_user_store::validation::codes;
use broker_auth_user_store::{
    PostgresUserRepository, SqliteUserRepository, UserDirectory, UserRepository,
};
use uuid::Uuid;

const HASH: &str = "$2b$04$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW";

/// A directory over a migrated, empty database, and whatever keeps that database alive.
struct Fixture {
    directory: UserDirectory,
    _database: Option<TestDatabase>,
    _file: Option<TempFile>,
}

/// A SQLite file removed (with its WAL side files) at the end of the test.
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut path = self.0.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

async fn migrated(repository: Arc<dyn UserRepository>) -> UserDirectory {
    repository.migrate().await.unwrap();
    // Migrating twice is a no-op, as at every dbproc start.
    repository.migrate().await.unwrap();
    UserDirectory::new(repository)
}

async fn postgres() -> Fixture {
    let database = TestDatabase::create().await;
    let repository = PostgresUserRepository::connect(database.url(), 16)
        .await
        .unwrap();
    Fixture {
        directory: migrated(Arc::new(repository)).await,
        _database: Some(database),
        _file: None,
    }
}

async fn sqlite_memory() -> Fixture {
    let repository = SqliteUserRepository::connect("sqlite::memory:")
        .await
        .unwrap();
    Fixture {
        directory: migrated(Arc::new(repository)).await,
        _database: None,
        _file: None,
    }
}

async fn sqlite_file() -> Fixture {
    let path = std::env::temp_dir().join(format!("ba_test_{}.db", Uuid::new_v4().simple()));
    let file = TempFile(path.clone());
    let url = format!("sqlite://{}", path.display());
    let repository = SqliteUserRepository::connect(&url).await.unwrap();
    Fixture {
        directory: migrated(Arc::new(repository)).await,
        _database: None,
        _file: Some(file),
    }
}

/// The digest the API would send for the default content of [`creation`].
const DIGEST: &str = "5f0c6f1b4a2e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c";

fn creation(email: &str) -> DirectoryRequest {
    creation_with_digest(email, Some(DIGEST))
}

fn creation_with_digest(email: &str, digest: Option<&str>) -> DirectoryRequest {
    DirectoryRequest::UserCreation(UserCreation {
        email: email.into(),
        name: "Ada Lovelace".into(),
        password_hash: HASH.into(),
        request_digest: digest.map(str::to_owned),
    })
}

fn existence(email: &str) -> DirectoryRequest {
    DirectoryRequest::ExistenceCheck(ExistenceCheck {
        email: email.into(),
    })
}

fn authentication(email: &str) -> DirectoryRequest {
    DirectoryRequest::Authentication(AuthenticationLookup {
        email: email.into(),
    })
}

fn created_user(reply: &DirectoryReply) -> Option<&broker_auth_contract::User> {
    match reply {
        DirectoryReply::UserCreation(Reply::Ok {
            result: UserCreationResult::Created { user },
        }) => Some(user),
        _ => None,
    }
}

fn rejection_code(reply: &DirectoryReply) -> Option<&str> {
    match reply {
        DirectoryReply::ExistenceCheck(Reply::Rejected { code, .. })
        | DirectoryReply::UserCreation(Reply::Rejected { code, .. })
        | DirectoryReply::Authentication(Reply::Rejected { code, .. })
        | DirectoryReply::PasswordUpdate(Reply::Rejected { code, .. }) => Some(code),
        _ => None,
    }
}

const NEW_HASH: &str = "$2b$04$abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0";
const CHANGE_DIGEST: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const OTHER_DIGEST: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

fn password_update(email: &str, hash: &str, digest: &str) -> DirectoryRequest {
    DirectoryRequest::PasswordUpdate(PasswordUpdate {
        email: email.into(),
        password_hash: hash.into(),
        request_digest: digest.into(),
    })
}

/// The credentials of `email`: its hash and the time of its last password change.
async fn credentials_of(directory: &UserDirectory, email: &str) -> (String, Option<i64>) {
    let reply = directory
        .handle(Uuid::new_v4(), authentication(email))
        .await
        .unwrap();
    let DirectoryReply::Authentication(Reply::Ok {
        result: AuthenticationResult {
            account: Some(credentials),
        },
    }) = reply
    else {
        panic!("expected credentials, got {reply:?}");
    };
    (
        credentials.password_hash,
        credentials.password_changed_at_ms,
    )
}

fn updated(reply: &DirectoryReply) -> (broker_auth_contract::User, i64) {
    match reply {
        DirectoryReply::PasswordUpdate(Reply::Ok {
            result:
                PasswordUpdateResult::Updated {
                    user,
                    password_changed_at_ms,
                },
        }) => (user.clone(), *password_changed_at_ms),
        other => panic!("expected an update, got {other:?}"),
    }
}

async fn a_password_update_sets_the_hash_and_the_time_of_the_change(fixture: Fixture) {
    let directory = fixture.directory;
    let reply = directory
        .handle(Uuid::new_v4(), creation("ada@example.com"))
        .await
        .unwrap();
    let user = created_user(&reply).unwrap().clone();
    assert_eq!(
        credentials_of(&directory, "ada@example.com").await,
        (HASH.to_owned(), None)
    );

    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let reply = directory
        .handle(
            Uuid::new_v4(),
            password_update("ada@example.com", NEW_HASH, CHANGE_DIGEST),
        )
        .await
        .unwrap();
    let (updated_user, changed_at) = updated(&reply);
    assert_eq!(updated_user, user);
    // The database's clock, close to this one.
    let skew = (i128::from(changed_at) - i128::try_from(before).unwrap()).abs();
    assert!(skew < 60_000, "changed at {changed_at}, asked at {before}");
    assert_eq!(
        credentials_of(&directory, "ada@example.com").await,
        (NEW_HASH.to_owned(), Some(changed_at))
    );
}

async fn a_redelivered_password_update_is_answered_as_before_and_applied_once(fixture: Fixture) {
    let directory = fixture.directory;
    directory
        .handle(Uuid::new_v4(), creation("ada@example.com"))
        .await
        .unwrap();
    let request_id = Uuid::new_v4();
    let first = directory
        .handle(
            request_id,
            password_update("ada@example.com", NEW_HASH, CHANGE_DIGEST),
        )
        .await
        .unwrap();
    let (_, changed_at) = updated(&first);

    // A later change by another request, then the first one redelivered: it is answered as
    // before and does not put its password back.
    directory
        .handle(
            Uuid::new_v4(),
            password_update("ada@example.com", HASH, OTHER_DIGEST),
        )
        .await
        .unwrap();
    let (_, later) = credentials_of(&directory, "ada@example.com").await;
    let again = directory
        .handle(
            request_id,
            password_update("ada@example.com", NEW_HASH, CHANGE_DIGEST),
        )
        .await
        .unwrap();
    assert_eq!(again, first);
    assert_eq!(
        credentials_of(&directory, "ada@example.com").await,
        (HASH.to_owned(), later)
    );
    assert!(later >= Some(changed_at));
}

async fn a_password_update_retried_with_another_password_is_refused(fixture: Fixture) {
    let directory = fixture.directory;
    directory
        .handle(Uuid::new_v4(), creation("ada@example.com"))
        .await
        .unwrap();
    let request_id = Uuid::new_v4();
    directory
        .handle(
            request_id,
            password_update("ada@example.com", NEW_HASH, CHANGE_DIGEST),
        )
        .await
        .unwrap();
    let reply = directory
        .handle(
            request_id,
            password_update("ada@example.com", HASH, OTHER_DIGEST),
        )
        .await
        .unwrap();
    assert_eq!(rejection_code(&reply), Some(codes::REQUEST_CONFLICT));
    let reply = directory
        .handle(
            request_id,
            password_update("grace@example.com", NEW_HASH, CHANGE_DIGEST),
        )
        .await
        .unwrap();
    assert_eq!(rejection_code(&reply), Some(codes::REQUEST_ID_REUSED));
    assert_eq!(
        credentials_of(&directory, "ada@example.com").await.0,
        NEW_HASH
    );
    // A digest that is not one is refused before anything is stored.
    let reply = directory
        .handle(
            Uuid::new_v4(),
            password_update("ada@example.com", HASH, "not-a-digest"),
        )
        .await
        .unwrap();
    assert_eq!(rejection_code(&reply), Some(codes::INVALID_REQUEST_DIGEST));
}

async fn a_password_update_for_an_unknown_email_changes_nothing(fixture: Fixture) {
    let directory = fixture.directory;
    let request_id = Uuid::new_v4();
    let reply = directory
        .handle(
            request_id,
            password_update("nobody@example.com", NEW_HASH, CHANGE_DIGEST),
        )
        .await
        .unwrap();
    let unknown = DirectoryReply::PasswordUpdate(Reply::Ok {
        result: PasswordUpdateResult::UnknownUser,
    });
    assert_eq!(reply, unknown);
    // Created later, the account is not changed by a redelivery of the earlier request.
    directory
        .handle(Uuid::new_v4(), creation("nobody@example.com"))
        .await
        .unwrap();
    let again = directory
        .handle(
            request_id,
            password_update("nobody@example.com", NEW_HASH, CHANGE_DIGEST),
        )
        .await
        .unwrap();
    assert_eq!(again, unknown);
    assert_eq!(
        credentials_of(&directory, "nobody@example.com").await,
        (HASH.to_owned(), None)
    );
}

async fn an_unknown_email_does_not_exist_and_has_no_credentials(fixture: Fixture) {
    let directory = fixture.directory;
    let reply = directory
        .handle(Uuid::new_v4(), existence("nobody@example.com"))
        .await
        .unwrap();
    assert_eq!(
        reply,
        DirectoryReply::ExistenceCheck(Reply::Ok {
            result: ExistenceResult { exists: false }
        })
    );
    let reply = directory
        .handle(Uuid::new_v4(), authentication("nobody@example.com"))
        .await
        .unwrap();
    assert_eq!(
        reply,
        DirectoryReply::Authentication(Reply::Ok {
            result: AuthenticationResult { account: None }
        })
    );
}

async fn a_created_user_exists_and_can_be_authenticated(fixture: Fixture) {
    let directory = fixture.directory;
    let reply = directory
        .handle(Uuid::new_v4(), creation("ada@example.com"))
        .await
        .unwrap();
    let user = created_user(&reply).expect("created").clone();
    assert_eq!(user.email, "ada@example.com");
    assert_eq!(user.name, "Ada Lovelace");

    let reply = directory
        .handle(Uuid::new_v4(), existence("ada@example.com"))
        .await
        .unwrap();
    assert_eq!(
        reply,
        DirectoryReply::ExistenceCheck(Reply::Ok {
            result: ExistenceResult { exists: true }
        })
    );
    let reply = directory
        .handle(Uuid::new_v4(), authentication("ada@example.com"))
        .await
        .unwrap();
    let DirectoryReply::Authentication(Reply::Ok {
        result: AuthenticationResult {
            account: Some(credentials),
        },
    }) = reply
    else {
        panic!("expected credentials, got {reply:?}");
    };
    assert_eq!(credentials.user, user);
    assert_eq!(credentials.password_hash, HASH);
}

async fn a_second_creation_of_an_email_says_it_already_exists(fixture: Fixture) {
    let directory = fixture.directory;
    directory
        .handle(Uuid::new_v4(), creation("ada@example.com"))
        .await
        .unwrap();
    let reply = directory
        .handle(Uuid::new_v4(), creation("ada@example.com"))
        .await
        .unwrap();
    assert_eq!(
        reply,
        DirectoryReply::UserCreation(Reply::Ok {
            result: UserCreationResult::AlreadyExists
        })
    );
}

async fn a_redelivered_creation_gets_the_identical_reply(fixture: Fixture) {
    let directory = fixture.directory;
    let request_id = Uuid::new_v4();
    let first = directory
        .handle(request_id, creation("ada@example.com"))
        .await
        .unwrap();
    assert!(created_user(&first).is_some());
    // Another request creates nothing new, but a redelivery must still say "created", with
    // the same user, not "already exists".
    let second = directory
        .handle(request_id, creation("ada@example.com"))
        .await
        .unwrap();
    assert_eq!(second, first);

    let other_request = Uuid::new_v4();
    let already = directory
        .handle(other_request, creation("ada@example.com"))
        .await
        .unwrap();
    let again = directory
        .handle(other_request, creation("ada@example.com"))
        .await
        .unwrap();
    assert_eq!(again, already);
}

async fn a_request_id_reused_for_another_email_is_rejected(fixture: Fixture) {
    let directory = fixture.directory;
    let request_id = Uuid::new_v4();
    directory
        .handle(request_id, creation("ada@example.com"))
        .await
        .unwrap();
    let reply = directory
        .handle(request_id, creation("grace@example.com"))
        .await
        .unwrap();
    assert_eq!(rejection_code(&reply), Some(codes::REQUEST_ID_REUSED));
    let exists = directory
        .handle(Uuid::new_v4(), existence("grace@example.com"))
        .await
        .unwrap();
    assert_eq!(
        exists,
        DirectoryReply::ExistenceCheck(Reply::Ok {
            result: ExistenceResult { exists: false }
        })
    );
}

async fn a_retry_with_other_content_under_one_request_id_is_refused(fixture: Fixture) {
    let directory = fixture.directory;
    let request_id = Uuid::new_v4();
    let first = directory
        .handle(request_id, creation("ada@example.com"))
        .await
        .unwrap();
    let user = created_user(&first).unwrap().clone();

    // Same request id and email, another password or name: another digest.
    let other_digest = "0".repeat(64);
    let conflicting = directory
        .handle(
            request_id,
            creation_with_digest("ada@example.com", Some(&other_digest)),
        )
        .await
        .unwrap();
    assert_eq!(rejection_code(&conflicting), Some(codes::REQUEST_CONFLICT));

    // The refusal changed nothing: the honest retry still gets the first answer, and the
    // account keeps the first request's content.
    let honest = directory
        .handle(request_id, creation("ada@example.com"))
        .await
        .unwrap();
    assert_eq!(honest, first);
    let credentials = directory
        .handle(Uuid::new_v4(), authentication("ada@example.com"))
        .await
        .unwrap();
    let DirectoryReply::Authentication(Reply::Ok {
        result: AuthenticationResult {
            account: Some(account),
        },
    }) = credentials
    else {
        panic!("no account: {credentials:?}");
    };
    assert_eq!(account.user, user);

    // A request from a producer without digests is bound by its email only.
    let legacy = directory
        .handle(request_id, creation_with_digest("ada@example.com", None))
        .await
        .unwrap();
    assert_eq!(legacy, first);
}

async fn a_request_recorded_without_a_digest_accepts_any_retry_of_its_email(fixture: Fixture) {
    let directory = fixture.directory;
    let request_id = Uuid::new_v4();
    let first = directory
        .handle(request_id, creation_with_digest("ada@example.com", None))
        .await
        .unwrap();
    assert!(created_user(&first).is_some());
    let retry = directory
        .handle(request_id, creation("ada@example.com"))
        .await
        .unwrap();
    assert_eq!(retry, first);
}

async fn concurrent_creations_of_one_email_make_exactly_one_user(fixture: Fixture) {
    let directory = fixture.directory;
    let attempts = (0..12).map(|_| {
        let directory = directory.clone();
        tokio::spawn(async move {
            directory
                .handle(Uuid::new_v4(), creation("race@example.com"))
                .await
                .unwrap()
        })
    });
    let replies: Vec<DirectoryReply> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let created: Vec<_> = replies.iter().filter_map(created_user).collect();
    assert_eq!(created.len(), 1, "{replies:?}");
    let already = DirectoryReply::UserCreation(Reply::Ok {
        result: UserCreationResult::AlreadyExists,
    });
    assert_eq!(replies.iter().filter(|r| **r == already).count(), 11);
}

async fn concurrent_deliveries_of_one_request_get_one_answer(fixture: Fixture) {
    let directory = fixture.directory;
    let request_id = Uuid::new_v4();
    let deliveries = (0..8).map(|_| {
        let directory = directory.clone();
        tokio::spawn(async move {
            directory
                .handle(request_id, creation("twice@example.com"))
                .await
                .unwrap()
        })
    });
    let replies: Vec<DirectoryReply> = futures::future::join_all(deliveries)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let distinct: HashSet<String> = replies.iter().map(|r| format!("{r:?}")).collect();
    assert_eq!(distinct.len(), 1, "{replies:?}");
    assert!(created_user(&replies[0]).is_some());
}

async fn invalid_requests_are_rejected_and_store_nothing(fixture: Fixture) {
    let directory = fixture.directory;
    let cases = [
        (
            existence("Not-Normalized@Example.com"),
            codes::INVALID_EMAIL,
        ),
        (authentication("no-at-sign"), codes::INVALID_EMAIL),
        (creation(" ada@example.com"), codes::INVALID_EMAIL),
        (
            DirectoryRequest::UserCreation(UserCreation {
                email: "ada@example.com".into(),
                name: "   ".into(),
                password_hash: HASH.into(),
                request_digest: None,
            }),
            codes::INVALID_NAME,
        ),
        (
            DirectoryRequest::UserCreation(UserCreation {
                email: "ada@example.com".into(),
                name: "Ada".into(),
                password_hash: "plain text password".into(),
                request_digest: None,
            }),
            codes::INVALID_PASSWORD_HASH,
        ),
        (
            creation_with_digest("ada@example.com", Some("not hex")),
            codes::INVALID_REQUEST_DIGEST,
        ),
        (
            creation_with_digest("ada@example.com", Some(&DIGEST.to_uppercase())),
            codes::INVALID_REQUEST_DIGEST,
        ),
    ];
    for (request, code) in cases {
        let reply = directory.handle(Uuid::new_v4(), request).await.unwrap();
        assert_eq!(rejection_code(&reply), Some(code), "{reply:?}");
    }
    let exists = directory
        .handle(Uuid::new_v4(), existence("ada@example.com"))
        .await
        .unwrap();
    assert_eq!(
        exists,
        DirectoryReply::ExistenceCheck(Reply::Ok {
            result: ExistenceResult { exists: false }
        })
    );
}

/// Runs every suite function against each backend.
macro_rules! for_each_backend {
    ($($test:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    super::$test(super::postgres().await).await;
                }
            )*
        }
        mod sqlite_memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    super::$test(super::sqlite_memory().await).await;
                }
            )*
        }
        mod sqlite_file {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    super::$test(super::sqlite_file().await).await;
                }
            )*
        }
    };
}

for_each_backend!(
    an_unknown_email_does_not_exist_and_has_no_credentials,
    a_created_user_exists_and_can_be_authenticated,
    a_second_creation_of_an_email_says_it_already_exists,
    a_redelivered_creation_gets_the_identical_reply,
    a_request_id_reused_for_another_email_is_rejected,
    a_retry_with_other_content_under_one_request_id_is_refused,
    a_request_recorded_without_a_digest_accepts_any_retry_of_its_email,
    concurrent_creations_of_one_email_make_exactly_one_user,
    concurrent_deliveries_of_one_request_get_one_answer,
    invalid_requests_are_rejected_and_store_nothing,
    a_password_update_sets_the_hash_and_the_time_of_the_change,
    a_redelivered_password_update_is_answered_as_before_and_applied_once,
    a_password_update_retried_with_another_password_is_refused,
    a_password_update_for_an_unknown_email_changes_nothing,
);

#[tokio::test]
async fn an_unreachable_postgres_is_a_transient_error() {
    let error = PostgresUserRepository::connect("postgres://root@127.0.0.1:1/none", 1)
        .await
        .unwrap_err();
    assert!(error.is_transient(), "{error}");
}

#[tokio::test]
async fn sqlite_data_survives_reopening_the_file() {
    let path = std::env::temp_dir().join(format!("ba_test_{}.db", Uuid::new_v4().simple()));
    let _file = TempFile(path.clone());
    let url = format!("sqlite://{}", path.display());
    {
        let repository = SqliteUserRepository::connect(&url).await.unwrap();
        let directory = migrated(Arc::new(repository.clone())).await;
        directory
            .handle(Uuid::new_v4(), creation("ada@example.com"))
            .await
            .unwrap();
        repository.pool().close().await;
    }
    let repository = SqliteUserRepository::connect(&url).await.unwrap();
    let directory = migrated(Arc::new(repository)).await;
    let reply = directory
        .handle(Uuid::new_v4(), existence("ada@example.com"))
        .await
        .unwrap();
    assert_eq!(
        reply,
        DirectoryReply::ExistenceCheck(Reply::Ok {
            result: ExistenceResult { exists: true }
        })
    );
}
