//! The OpenAPI document: generated from the handlers, served by the API, committed as
//! `docs/openapi.json`. Regenerate the committed copy with
//! `UPDATE_OPENAPI=1 cargo nextest run -p broker-auth-api --test openapi`.

#![allow(clippy::unwrap_used)] // A failed unwrap in a test is a failed test, with its location.

use std::collections::BTreeSet;
use std::path::PathBuf;

use broker_auth_api::http::openapi::{document, document_json};
use broker_auth_e2e::{Mode, TestEnv};
use serde_json::Value;

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json")
}

fn generated() -> Value {
    serde_json::from_str(&document_json()).unwrap()
}

#[test]
fn the_committed_openapi_document_matches_the_handlers() {
    let expected = document_json();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(committed_path(), &expected).expect("write docs/openapi.json");
    }
    let actual = std::fs::read_to_string(committed_path()).unwrap_or_default();
    assert!(
        actual == expected,
        "docs/openapi.json is out of date; regenerate it with \
         `UPDATE_OPENAPI=1 cargo nextest run -p broker-auth-api --test openapi`"
    );
}

#[test]
fn the_document_is_openapi_3_1_with_both_cookie_names_and_bearer() {
    let doc = generated();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["session_cookie"]["in"], "cookie");
    assert_eq!(schemes["session_cookie"]["name"], "__Host-ba_session");
    assert_eq!(schemes["session_cookie_plain"]["name"], "ba_session");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    let me = &doc["paths"]["/api/v1/auth/me"]["get"];
    assert_eq!(me["security"].as_array().unwrap().len(), 3);
    // Logout works without a session too: one of its alternatives is no security at all.
    let logout = &doc["paths"]["/api/v1/auth/logout"]["post"]["security"];
    assert!(
        logout
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == &serde_json::json!({}))
    );
}

/// The statuses each operation can answer, read off the code: the middleware of every auth route
/// (cross-site 403, rate limit 429, store failures 503/500), the JSON extractor (400/413/415),
/// field validation (422) and each handler's own outcomes.
#[test]
fn every_operation_documents_every_status_it_can_answer() {
    let doc = generated();
    let middleware = ["403", "429", "500", "503"];
    let body = ["400", "413", "415", "422"];
    let expected: [(&str, &str, Vec<&str>); 14] = [
        (
            "/api/v1/auth/signup",
            "post",
            [&["202"][..], &body, &middleware].concat(),
        ),
        (
            "/api/v1/auth/verify",
            "post",
            [&["201", "409"][..], &body, &middleware].concat(),
        ),
        (
            "/api/v1/auth/signin",
            "post",
            [&["200", "401"][..], &body, &middleware].concat(),
        ),
        (
            "/api/v1/auth/me",
            "get",
            [&["200", "401"][..], &middleware].concat(),
        ),
        (
            "/api/v1/auth/logout",
            "post",
            [&["204", "401", "422"][..], &middleware].concat(),
        ),
        (
            "/api/v1/auth/recover",
            "post",
            [&["202"][..], &body, &middleware].concat(),
        ),
        (
            "/api/v1/auth/recover/verify",
            "post",
            [&["200", "409"][..], &body, &middleware].concat(),
        ),
        (
            "/api/v1/auth/password",
            "post",
            [&["200", "401"][..], &body, &middleware].concat(),
        ),
        (
            "/api/v1/auth/sessions",
            "get",
            [&["200", "401"][..], &middleware].concat(),
        ),
        (
            "/api/v1/auth/sessions/{id}",
            "delete",
            [&["204", "401", "404"][..], &middleware].concat(),
        ),
        // Forward auth: no body, no per-IP limit, no cross-site refusal.
        (
            "/api/v1/auth/check",
            "get",
            vec!["200", "401", "500", "503"],
        ),
        ("/healthz", "get", vec!["200"]),
        ("/readyz", "get", vec!["200", "503"]),
        ("/api/v1/openapi.json", "get", vec!["200"]),
    ];
    for (path, method, statuses) in expected {
        let responses = doc["paths"][path][method]["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{method} {path} is not documented"));
        let documented: BTreeSet<&str> = responses.keys().map(String::as_str).collect();
        let expected: BTreeSet<&str> = statuses.into_iter().collect();
        assert_eq!(documented, expected, "{method} {path}");
    }
    // 429 and 503 tell the client when to come back.
    for name in ["RateLimited", "Unavailable"] {
        let response = &doc["components"]["responses"][name];
        assert!(response["headers"]["Retry-After"].is_object(), "{name}");
    }
}

#[test]
fn links_walk_a_session_from_signup_to_logout_and_target_real_operations() {
    let doc = generated();
    let operation_ids: BTreeSet<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|item| item.as_object().unwrap().values())
        .filter_map(|operation| operation["operationId"].as_str())
        .collect();
    let links = |path: &str, method: &str, status: &str| -> BTreeSet<String> {
        let links = &doc["paths"][path][method]["responses"][status]["links"];
        links
            .as_object()
            .unwrap_or_else(|| panic!("{method} {path} {status} has no links"))
            .values()
            .map(|link| {
                let target = link["operationId"].as_str().unwrap();
                assert!(operation_ids.contains(target), "no operation {target}");
                target.to_owned()
            })
            .collect()
    };
    let set = |ids: &[&str]| {
        ids.iter()
            .map(|id| (*id).to_owned())
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(
        links("/api/v1/auth/signup", "post", "202"),
        set(&["verify"])
    );
    assert_eq!(
        links("/api/v1/auth/verify", "post", "201"),
        set(&["me", "logout"])
    );
    assert_eq!(
        links("/api/v1/auth/signin", "post", "200"),
        set(&["me", "logout"])
    );
    assert_eq!(links("/api/v1/auth/me", "get", "200"), set(&["logout"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_serves_the_document_at_api_v1_openapi_json() {
    let env = TestEnv::start(Mode::Embedded).await;
    let response = reqwest::get(env.api().url("/api/v1/openapi.json"))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let served: Value = response.json().await.unwrap();
    assert_eq!(served, serde_json::to_value(document()).unwrap());
}
