//! `docs/metrics.md` lists exactly what the api and dbproc expose on `/metrics` after the flows
//! have run, with the right types and labels. (The operator's section: operator/tests.)

#![allow(clippy::unwrap_used)] // A failed unwrap in a test is a failed test, with its location.

use broker_auth_e2e::{Mode, TestEnv};
use broker_auth_testkit::metrics_catalogue::{catalogue, differences, exposed};
use reqwest::StatusCode;

const CATALOGUE: &str = include_str!("../../../docs/metrics.md");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalogue_lists_what_api_and_dbproc_expose() {
    let env = TestEnv::start(Mode::Distributed).await;
    // Every flow, so the families with labels have samples to show them.
    let email = env.new_email();
    let client = env.register(&email, "correct horse battery").await;
    assert_eq!(client.me().await.0, StatusCode::OK);
    assert_eq!(client.logout().await, StatusCode::NO_CONTENT);
    let (status, _) = client.signin(&email, "correct horse battery").await;
    assert_eq!(status, StatusCode::OK);

    let api = reqwest::get(env.api().metrics_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dbproc = reqwest::get(env.dbproc.as_ref().expect("dbproc runs").url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut report = String::new();
    for (section, text) in [("API", &api), ("dbproc", &dbproc)] {
        let found = differences(&catalogue(CATALOGUE, section), &exposed(text));
        if !found.is_empty() {
            report.push_str(&format!("section {section} of docs/metrics.md:\n{found}"));
        }
    }
    assert!(report.is_empty(), "{report}");
}
