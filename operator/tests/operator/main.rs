//! Integration tests of the operator. One test binary keeps link time down.
//!
//! Needs the tansu broker on 127.0.0.1:9092 (`scripts/dev-services`) and
//! `pip install kubernetes-validate` for the manifest checks.

#![allow(clippy::unwrap_used)] // A failed unwrap in a test is a failed test, with its location.

mod crd;
mod external_metrics;
mod fake_api;
mod help;
mod high_availability;
mod kafka_cleanup;
mod lag;
mod leader;
mod manifests;
mod metrics_catalogue;
mod over_time;
mod reconcile;
mod reply_topics;
mod settings;
mod support;
