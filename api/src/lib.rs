//! broker-auth's HTTP API.
//!
//! `App::build(config)` wires either mode — distributed (Kafka to dbproc, Redis) or embedded
//! (SQLite and memory in one process) — behind the same router and handlers.

mod app;
pub mod config;
pub mod cookie;
pub mod crypto;
pub mod directory;
pub mod domain;
pub mod events;
pub mod http;
pub mod metrics;
pub mod outbox;
pub mod store;

pub use app::{App, StartError, shutdown_signal};
pub use config::Config;
