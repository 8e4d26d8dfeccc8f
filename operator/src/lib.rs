//! The BrokerAuth operator: reconciles a `BrokerAuth` into the api and dbproc tiers, keeps their
//! Kafka topics, and serves dbproc's consumer lag to the HPA through the external metrics API.

pub mod access_review;
pub mod app;
pub mod autoscaler;
pub mod config;
pub mod crd;
pub mod deletion;
pub mod error;
pub mod external_metrics;
pub mod front_proxy;
pub mod kafka;
pub mod lag;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod reply_topics;
pub mod resources;
pub mod status;
pub mod tls;
pub mod uninstall;
pub mod watch;

pub use error::{Error, Result};
