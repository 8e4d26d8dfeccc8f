//! Test support shared by the workspace's integration tests.
//!
//! Tests run against real services. When one is missing, the helpers here fail the test with a
//! message saying what to start — they never skip.

pub mod counted_kafka;
pub mod help;
pub mod metrics_catalogue;
pub mod postgres;
pub mod private;
pub mod process;
pub mod services;
pub mod smtp;
pub mod tcp_proxy;
