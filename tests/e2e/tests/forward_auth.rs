//! `GET /api/v1/auth/check`, the forward-auth endpoint for ingresses, in both modes.

#![allow(clippy::unwrap_used)] // A failed unwrap in a test is a failed test, with its location.

use broker_auth_e2e::{Client, Mode, Options, TestEnv};
use reqwest::{Method, StatusCode};
use serde_json::json;

macro_rules! in_both_modes {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(broker_auth_e2e::Mode::Embedded).await })*
        }
        mod distributed {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(broker_auth_e2e::Mode::Distributed).await })*
        }
    };
}

in_both_modes!(
    a_live_session_is_answered_with_who_it_is,
    a_revoked_session_is_refused_at_once,
    any_method_and_any_path_below_check_get_the_same_answer,
    neither_the_per_ip_limit_nor_the_cross_site_refusal_applies,
);

const PASSWORD: &str = "correct horse battery";

/// The session token a signin hands out, for `Authorization: Bearer`.
async fn token(env: &TestEnv, email: &str) -> String {
    let response = reqwest::Client::new()
        .post(env.api().url("/api/v1/auth/signin"))
        .json(&json!({ "email": email, "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    let value = cookie.split(';').next().unwrap();
    value.split_once('=').unwrap().1.to_owned()
}

async fn check(client: &Client, method: Method, path: &str) -> reqwest::Response {
    client.request(method, path).send().await.unwrap()
}

async fn a_live_session_is_answered_with_who_it_is(mode: Mode) {
    let env = TestEnv::start(mode).await;
    let email = env.new_email();
    let browser = env.register(&email, PASSWORD).await;
    let (_, me) = browser.me().await;

    let response = check(&browser, Method::GET, "/check").await;
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert_eq!(
        headers["x-auth-user-id"],
        me["user"]["id"].as_str().unwrap()
    );
    assert_eq!(headers["x-auth-email"], email.as_str());
    assert_eq!(headers["cache-control"], "no-store");
    let (_, listed) = browser.sessions().await;
    let current = listed["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["current"] == true)
        .unwrap()["id"]
        .clone();
    assert_eq!(headers["x-auth-session-id"], current.as_str().unwrap());
    assert!(response.bytes().await.unwrap().is_empty(), "no body");

    // An app's Bearer token works the same.
    let bearer = token(&env, &email).await;
    let response = reqwest::Client::new()
        .get(env.api().url("/api/v1/auth/check"))
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-auth-email"], email.as_str());

    // Nothing, or something that is not a token: 401, and no identity.
    let anonymous = Client::new(env.api());
    let response = check(&anonymous, Method::GET, "/check").await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(!response.headers().contains_key("x-auth-user-id"));
    let response = reqwest::Client::new()
        .get(env.api().url("/api/v1/auth/check"))
        .bearer_auth("not.a.token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

async fn a_revoked_session_is_refused_at_once(mode: Mode) {
    let env = TestEnv::start(mode).await;
    let email = env.new_email();
    let browser = env.register(&email, PASSWORD).await;
    let phone = Client::new(env.api());
    assert_eq!(phone.signin(&email, PASSWORD).await.0, StatusCode::OK);
    assert_eq!(
        check(&phone, Method::GET, "/check").await.status(),
        StatusCode::OK
    );

    // Ended from the other device: the very next check is refused, although the token itself
    // is valid for another hour.
    assert_eq!(
        browser.logout_scope("others").await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        check(&phone, Method::GET, "/check").await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        check(&browser, Method::GET, "/check").await.status(),
        StatusCode::OK
    );
    assert_eq!(browser.logout().await, StatusCode::NO_CONTENT);
    assert_eq!(
        check(&browser, Method::GET, "/check").await.status(),
        StatusCode::UNAUTHORIZED
    );
}

async fn any_method_and_any_path_below_check_get_the_same_answer(mode: Mode) {
    let env = TestEnv::start(mode).await;
    let browser = env.register(&env.new_email(), PASSWORD).await;
    let anonymous = Client::new(env.api());
    for (method, path) in [
        (Method::HEAD, "/check"),
        (Method::POST, "/check"),
        (Method::DELETE, "/check"),
        (Method::GET, "/check/"),
        (Method::POST, "/check/trading/orders"),
        (Method::PUT, "/check/balances/42?currency=EUR"),
    ] {
        let live = check(&browser, method.clone(), path).await;
        assert_eq!(live.status(), StatusCode::OK, "{method} {path}");
        assert!(
            live.headers().contains_key("x-auth-user-id"),
            "{method} {path}"
        );
        let refused = check(&anonymous, method.clone(), path).await;
        assert_eq!(
            refused.status(),
            StatusCode::UNAUTHORIZED,
            "{method} {path}"
        );
    }
}

async fn neither_the_per_ip_limit_nor_the_cross_site_refusal_applies(mode: Mode) {
    let env = TestEnv::start_with(
        mode,
        Options {
            rate_limit_per_minute: 5,
            ..Options::default()
        },
    )
    .await;
    let browser = env.register(&env.new_email(), PASSWORD).await;
    // Behind an ingress every user has the ingress's address: /check is not limited per IP,
    // where /me, from the same address, is.
    for _ in 0..20 {
        assert_eq!(
            check(&browser, Method::GET, "/check").await.status(),
            StatusCode::OK
        );
    }
    let mut me = StatusCode::OK;
    for _ in 0..10 {
        me = browser.me().await.0;
    }
    assert_eq!(me, StatusCode::TOO_MANY_REQUESTS);

    // A link from another site into a protected service is a navigation, not a forgery.
    let response = browser
        .request(Method::GET, "/check")
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}
