//! The five flows and their failure cases, run against embedded and distributed mode alike so
//! the two can never drift.

#![allow(clippy::unwrap_used)] // A failed unwrap in a test is a failed test, with its location.

use broker_auth_e2e::{Client, Mode, Options, TestEnv, extract_code, metric_sum};
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
    signup_verify_me_logout_signin_walks_the_whole_flow,
    four_wrong_codes_still_leave_the_right_one_usable,
    new_codes_do_not_buy_unlimited_guesses,
    parallel_wrong_signins_cannot_overrun_the_failure_limit,
    each_client_ip_is_limited_per_endpoint_whatever_it_forwards,
    a_request_another_site_made_is_refused,
    a_wrong_code_is_refused_and_the_right_one_still_works,
    a_code_burns_after_five_wrong_attempts,
    concurrent_verifies_of_one_code_create_exactly_one_user,
    signup_answers_the_same_for_new_and_existing_addresses,
    signin_gives_one_answer_for_unknown_users_and_wrong_passwords,
    logout_revokes_only_its_own_session,
    bad_input_gets_clear_errors_and_never_a_5xx,
    repeated_failed_signins_are_rate_limited,
    a_second_signup_within_the_cooldown_is_refused_with_retry_after,
    a_common_password_is_refused_on_its_field_and_the_code_still_works,
);

const PASSWORD: &str = "correct horse battery";

async fn signup_verify_me_logout_signin_walks_the_whole_flow(mode: Mode) {
    let env = TestEnv::start(mode).await;
    let email = env.new_email();
    let client = Client::new(env.api());

    let (status, body) = client
        .signup(&format!("  {}  ", email.to_uppercase()))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let code = env.code_for(&email).await;

    let (status, body) = client.verify(&email, &code, PASSWORD, "Ada Lovelace").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["user"]["email"], email.as_str());
    assert_eq!(body["user"]["name"], "Ada Lovelace");
    let id = body["user"]["id"].clone();

    // The session works at once.
    let (status, body) = client.me().await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user"]["id"], id);

    assert_eq!(client.logout().await, StatusCode::NO_CONTENT);
    assert_eq!(client.me().await.0, StatusCode::UNAUTHORIZED);
    // Idempotent.
    assert_eq!(client.logout().await, StatusCode::NO_CONTENT);

    let (status, body) = client.signin(&email, PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user"]["id"], id);
    let (status, body) = client.me().await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["user"]["email"], email.as_str());

    // The code was consumed: it cannot create a second account.
    let (status, _) = Client::new(env.api())
        .verify(&email, &code, PASSWORD, "Again")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

async fn a_wrong_code_is_refused_and_the_right_one_still_works(mode: Mode) {
    let env = TestEnv::start(mode).await;
    let email = env.new_email();
    let client = Client::new(env.api());
    assert_eq!(client.signup(&email).await.0, StatusCode::ACCEPTED);
    let code = env.code_for(&email).await;
    let wrong = if code == "000000" { "000001" } else { "000000" };

    let (status, body) = client.verify(&email, wrong, PASSWORD, "Ada").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_code");

    let (status, body) = client.verify(&email, &code, PASSWORD, "Ada").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

async fn a_common_password_is_refused_on_its_field_and_the_code_still_works(mode: Mode) {
    let env = TestEnv::start(mode).await;
    let email = env.new_email();
    let client = Client::new(env.api());
    assert_eq!(client.signup(&email).await.0, StatusCode::ACCEPTED);
    let code = env.code_for(&email).await;

    for common in ["password123", "Iloveyou1", "qwertyuiop"] {
        let (status, body) = client.verify(&email, &code, common, "Ada").await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{common}: {body}");
        assert_eq!(body["error"]["code"], "validation_failed");
        let message = body["error"]["fields"]["password"]
            .as_str()
            .unwrap_or_default();
        assert!(message.contains("common"), "{common}: {body}");
    }
    // Refused before the code was looked at: it is still good.
    let (status, body) = client.verify(&email, &code, PASSWORD, "Ada").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

async fn a_code_burns_after_five_wrong_attempts(mode: Mode) {
    let env = TestEnv::start(mode).await;
    let email = env.new_email();
    let client = Client::new(env.api());
    assert_eq!(client.signup(&email).await.0, StatusCode::ACCEPTED);
    let code = env.code_for(&email).await;
    let wrong = if code == "999999" { "999998" } else { "999999" };
    for _ in 0..5 {
        let (status, body) = client.verify(&email, wrong, PASSWORD, "Ada").await;
        assert_eq!(body["error"]["code"], "invalid_code", "{status} {body}");
    }
    let (status, body) = client.verify(&email, &code, PASSWORD, "Ada").await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "a burned code must not work: {body}"
    );
    assert_eq!(body["error"]["code"], "invalid_code");
}

async fn concurrent_verifies_of_one_code_create_exactly_one_user(mode: Mode) {
    let env = TestEnv::start(mode).await;
    let email = env.new_email();
    assert_eq!(
        Client::new(env.api()).signup(&email).await.0,
        StatusCode::ACCEPTED
    );
    let code = env.code_for(&email).await;
    let racers = (0..8).map(|i| {
        let client = Client::new(env.api());
        let (email, code) = (email.clone(), code.clone());
        async move {
            client
                .verify(&email, &code, PASSWORD, &format!("Racer {i}"))
                .await
        }
    });
    let results = futures::future::join_all(racers).await;
    let created: Vec<_> = results
        .iter()
        .filter(|(status, _)| *status == StatusCode::CREATED)
        .collect();
    assert_eq!(created.len(), 1, "{results:?}");
    assert!(
        results
            .iter()
            .filter(|(status, _)| *status != StatusCode::CREATED)
            .all(|(status, body)| *status == StatusCode::BAD_REQUEST
                && body["error"]["code"] == "invalid_code"),
        "{results:?}"
    );
    // Exactly one account: signing in gives the winner's user.
    let (status, body) = Client::new(env.api()).signin(&email, PASSWORD).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["user"]["id"], created[0].1["user"]["id"]);
}

async fn signup_answers_the_same_for_new_and_existing_addresses(mode: Mode) {
    let env = TestEnv::start(mode).await;
    let existing = env.new_email();
    env.register(&existing, PASSWORD).await;
    let new = env.new_email();

    let existing_answer = Client::new(env.api()).signup(&existing).await;
    let new_answer = Client::new(env.api()).signup(&new).await;
    assert_eq!(existing_answer.0, StatusCode::ACCEPTED);
    assert_eq!(existing_answer, new_answer);

    // The owner of the existing account is told so by mail, without a code.
    let notice = env
        .mail_for(&existing, |mail| extract_code(&mail.text()).is_none())
        .await;
    assert!(
        notice.text().to_lowercase().contains("already"),
        "{}",
        notice.text()
    );
    env.code_for(&new).await;
}

async fn signin_gives_one_answer_for_unknown_users_and_wrong_passwords(mode: Mode) {
    let env = TestEnv::start(mode).await;
    let email = env.new_email();
    env.register(&email, PASSWORD).await;
    let client = Client::new(env.api());
    let wrong_password = client.signin(&email, "not the password").await;
    let unknown_user = client.signin(&env.new_email(), PASSWORD).await;
    assert_eq!(wrong_password.0, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong_password, unknown_user);
    assert_eq!(client.me().await.0, StatusCode::UNAUTHORIZED);
}

async fn logout_revokes_only_its_own_session(mode: Mode) {
    let env = TestEnv::start(mode).await;
    let email = env.new_email();
    let first = env.register(&email, PASSWORD).await;
    let second = Client::new(env.api());
    assert_eq!(second.signin(&email, PASSWORD).await.0, StatusCode::OK);

    assert_eq!(first.logout().await, StatusCode::NO_CONTENT);
    assert_eq!(first.me().await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(second.me().await.0, StatusCode::OK);
}

async fn bad_input_gets_clear_errors_and_never_a_5xx(mode: Mode) {
    let env = TestEnv::start(mode).await;
    let client = Client::new(env.api());

    let (status, body) = client.signup("not-an-email").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["code"], "validation_failed");
    assert!(body["error"]["fields"]["email"].is_string());

    let (status, body) = client
        .post(
            "/verify",
            json!({ "email": "a@example.com", "otp": "12", "password": "short" }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    for field in ["otp", "password", "name"] {
        assert!(
            body["error"]["fields"][field].is_string(),
            "{field}: {body}"
        );
    }

    // A name that reads backwards (U+202E) or hides a zero-width space (U+200B) is refused.
    for name in ["Ada\u{202E}ecalevoL", "Ad\u{200B}a"] {
        let (status, body) = client
            .verify("a@example.com", "123456", "correct horse battery", name)
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{name:?}: {body}");
        assert!(body["error"]["fields"]["name"].is_string(), "{body}");
    }

    let send = |builder: reqwest::RequestBuilder| async move {
        broker_auth_e2e::read(builder.send().await.expect("the API answers")).await
    };
    let (status, body) = send(
        client
            .request(Method::POST, "/signup")
            .header("content-type", "application/json")
            .body("{\"email\":"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "malformed_json");

    let (status, body) = send(
        client
            .request(Method::POST, "/signup")
            .header("content-type", "application/json")
            .body(format!("{{\"email\":\"{}\"}}", "a".repeat(70 * 1024))),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["error"]["code"], "payload_too_large");

    let (status, _) = send(client.request(Method::POST, "/signin").body("email=a")).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let (status, _) = send(
        client
            .request(Method::GET, "/me")
            .header("authorization", "Bearer not.a.jwt"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, body) = client
        .post("/signin", json!({ "email": ["x"], "password": 7 }))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["fields"]["email"], "must be a string");
    assert_eq!(body["error"]["fields"]["password"], "must be a string");

    let (status, body) = send(client.request(Method::GET, "/signup")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["error"]["code"], "method_not_allowed");
}

async fn a_request_another_site_made_is_refused(mode: Mode) {
    let env = TestEnv::start(mode).await;
    let email = env.new_email();
    let client = env.register(&email, PASSWORD).await;
    // What a cross-site form posting to /logout would look like from a browser.
    let response = client
        .request(Method::POST, "/logout")
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .expect("the API answers");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(response.headers().get("set-cookie").is_none());
    assert_eq!(
        client.me().await.0,
        StatusCode::OK,
        "the session must survive"
    );
    // The page's own requests are same-origin.
    let response = client
        .request(Method::POST, "/logout")
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .expect("the API answers");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
}

async fn repeated_failed_signins_are_rate_limited(mode: Mode) {
    let env = TestEnv::start(mode).await;
    let email = env.new_email();
    env.register(&email, PASSWORD).await;
    let client = Client::new(env.api());
    for _ in 0..10 {
        assert_eq!(
            client.signin(&email, "wrong password").await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    let response = client
        .request(Method::POST, "/signin")
        .json(&json!({ "email": email, "password": PASSWORD }))
        .send()
        .await
        .expect("the API answers");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after > 0 && retry_after <= 900);
    // Counted by the limit that refused it; every password check went through the hashing
    // budget, without waiting.
    let metrics = env.api().metrics_url("/metrics");
    let refused = |limit: &str| format!("broker_auth_api_rate_limited_total{{limit=\"{limit}\"}}");
    assert_eq!(metric_sum(&metrics, &refused("signin_failures")).await, 1.0);
    assert_eq!(metric_sum(&metrics, &refused("per_ip")).await, 0.0);
    assert!(metric_sum(&metrics, "broker_auth_api_password_hash_slots").await >= 1.0);
    assert!(
        metric_sum(
            &metrics,
            "broker_auth_api_password_hash_queue_wait_seconds_count"
        )
        .await
            >= 11.0
    );
    assert_eq!(
        metric_sum(&metrics, "broker_auth_api_password_hashes_running").await,
        0.0
    );
}

async fn a_second_signup_within_the_cooldown_is_refused_with_retry_after(mode: Mode) {
    let options = Options {
        signup_cooldown_secs: 60,
        ..Options::default()
    };
    let env = TestEnv::start_with(mode, options).await;
    let email = env.new_email();
    let client = Client::new(env.api());
    assert_eq!(client.signup(&email).await.0, StatusCode::ACCEPTED);
    let response = client
        .request(Method::POST, "/signup")
        .json(&json!({ "email": email }))
        .send()
        .await
        .expect("the API answers");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(
        metric_sum(
            &env.api().metrics_url("/metrics"),
            "broker_auth_api_rate_limited_total{limit=\"signup_cooldown\"}"
        )
        .await,
        1.0
    );
    // The first code still works.
    let code = env.code_for(&email).await;
    assert_eq!(
        client.verify(&email, &code, PASSWORD, "Ada").await.0,
        StatusCode::CREATED
    );
}

async fn four_wrong_codes_still_leave_the_right_one_usable(mode: Mode) {
    let env = TestEnv::start(mode).await;
    let email = env.new_email();
    let client = Client::new(env.api());
    assert_eq!(client.signup(&email).await.0, StatusCode::ACCEPTED);
    let code = env.code_for(&email).await;
    let wrong = if code == "999999" { "999998" } else { "999999" };
    for _ in 0..4 {
        assert_eq!(
            client.verify(&email, wrong, PASSWORD, "Ada").await.0,
            StatusCode::BAD_REQUEST
        );
    }
    let (status, body) = client.verify(&email, &code, PASSWORD, "Ada").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

async fn new_codes_do_not_buy_unlimited_guesses(mode: Mode) {
    let env = TestEnv::start(mode).await;
    let email = env.new_email();
    let client = Client::new(env.api());
    // Two codes, five wrong guesses each: the address's ten guesses are used up.
    let mut code = String::new();
    for round in 0..2 {
        assert_eq!(client.signup(&email).await.0, StatusCode::ACCEPTED);
        let previous = code.clone();
        let mail = env
            .mail_for(&email, |mail| {
                extract_code(&mail.text()).is_some_and(|c| c != previous)
            })
            .await;
        code = extract_code(&mail.text()).expect("a code");
        let wrong = if code == "999999" { "999998" } else { "999999" };
        for _ in 0..5 {
            let (status, body) = client.verify(&email, wrong, PASSWORD, "Ada").await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "round {round}: {body}");
        }
    }
    assert_eq!(client.signup(&email).await.0, StatusCode::ACCEPTED);
    let fresh = env
        .mail_for(&email, |mail| {
            extract_code(&mail.text()).is_some_and(|c| c != code)
        })
        .await;
    let fresh = extract_code(&fresh.text()).expect("a code");
    let response = client
        .request(Method::POST, "/verify")
        .json(&json!({ "email": email, "otp": fresh, "password": PASSWORD, "name": "Ada" }))
        .send()
        .await
        .expect("the API answers");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("retry-after"));
}

async fn parallel_wrong_signins_cannot_overrun_the_failure_limit(mode: Mode) {
    let env = TestEnv::start(mode).await;
    let email = env.new_email();
    env.register(&email, PASSWORD).await;
    let guesses = (0..30).map(|i| {
        let client = Client::new(env.api());
        let email = email.clone();
        async move { client.signin(&email, &format!("wrong guess {i}")).await.0 }
    });
    let statuses = futures::future::join_all(guesses).await;
    // Parallel guesses from one address also meet its single hashing place (429), and every
    // guess counts, refused or not: at most 10 are checked, never more.
    let checked = statuses
        .iter()
        .filter(|status| **status == StatusCode::UNAUTHORIZED)
        .count();
    assert!((1..=10).contains(&checked), "{statuses:?}");
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::UNAUTHORIZED || *s == StatusCode::TOO_MANY_REQUESTS)
    );
    // And the limit is spent: even the right password is refused now.
    assert_eq!(
        Client::new(env.api()).signin(&email, PASSWORD).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
}

async fn each_client_ip_is_limited_per_endpoint_whatever_it_forwards(mode: Mode) {
    let options = Options {
        rate_limit_per_minute: 5,
        ..Options::default()
    };
    let env = TestEnv::start_with(mode, options).await;
    let client = Client::new(env.api());
    for i in 0..5 {
        let response = client
            .request(Method::GET, "/me")
            .header("x-forwarded-for", format!("10.0.0.{i}"))
            .send()
            .await
            .expect("the API answers");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    // A forged X-Forwarded-For does not open a new bucket: no proxy is trusted by default.
    let response = client
        .request(Method::GET, "/me")
        .header("x-forwarded-for", "10.0.0.99")
        .send()
        .await
        .expect("the API answers");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after));
    // Other endpoints have buckets of their own.
    assert_eq!(
        client.signup("not-an-email").await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
}
