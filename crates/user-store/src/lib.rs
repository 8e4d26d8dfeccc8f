//! broker-auth's user directory.
//!
//! The users live behind [`UserRepository`] — Postgres for the distributed deployment, SQLite
//! for embedded mode — and every directory request is answered by the one handler,
//! [`UserDirectory::handle`], whichever transport delivered it (Kafka in dbproc, a function call
//! in the API's embedded mode). Validation, idempotency and error mapping live here only.

mod directory;
mod error;
mod postgres;
pub mod records;
mod repository;
mod sqlite;
pub mod validation;

pub use directory::UserDirectory;
pub use error::StoreError;
pub use postgres::PostgresUserRepository;
pub use records::{Pruned, RequestRecords, prune_expired, prune_periodically};
pub use repository::{CreationOutcome, PasswordUpdateOutcome, RecordedOutcome, UserRepository};
pub use sqlite::SqliteUserRepository;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
