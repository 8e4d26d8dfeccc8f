//! The account lifecycle: password recovery and change, the sessions list, and logout scopes,
//! in embedded and distributed mode alike.

#![allow(clippy::unwrap_used)] // A failed unwrap in a test is a failed test, with its location.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use broker_auth_e2e::{Client, Mode, Options, TestEnv, extract_code};
use broker_auth_testkit::smtp::ReceivedMail;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

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
    recovery_sets_the_password_and_ends_every_other_session,
    recover_answers_alike_for_unknown_addresses_and_mails_them_nothing,
    recovery_codes_burn_and_are_apart_from_signup_codes,
    a_recovery_request_within_the_cooldown_is_refused,
    changing_the_password_keeps_this_session_and_ends_the_others,
    a_wrong_current_password_counts_as_a_failed_signin,
    sessions_are_listed_newest_first_and_only_their_owner_ends_them,
    logout_scopes_end_this_the_others_or_all_sessions,
    a_signin_racing_a_global_logout_leaves_no_session_from_before_it,
    bad_input_to_the_new_endpoints_gets_clear_errors,
);

const PASSWORD: &str = "correct horse battery";
const NEW_PASSWORD: &str = "plum kettle orbit 42";
const NEWEST_PASSWORD: &str = "velvet anchor lantern 7";

fn is_recovery_mail(mail: &ReceivedMail) -> bool {
    mail.subject()
        .is_some_and(|subject| subject.contains("recovery code"))
}

fn is_password_notice(mail: &ReceivedMail) -> bool {
    mail.subject()
        .is_some_and(|subject| subject.contains("password was changed"))
}

/// The code of the recovery mail to `email`.
async fn recovery_code(env: &TestEnv, email: &str) -> String {
    let mail = env.mail_for(email, is_recovery_mail).await;
    extract_code(&mail.text()).expect("the recovery mail has a code")
}

async fn recovery_sets_the_password_and_ends_every_other_session(mode: Mode) {
    let env = TestEnv::start(mode).await;
    let email = env.new_email();
    let first = env.register(&email, PASSWORD).await;
    let second = Client::new(env.api());
    assert_eq!(second.signin(&email, PASSWORD).await.0, StatusCode::OK);

    let person = Client::new(env.api());
    let (status, body) = person.recover(&format!(" {} ", email.to_uppercase())).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let code = recovery_code(&env, &email).await;
    let (status, body) = person.recover_verify(&email, &code, NEW_PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user"]["email"], email.as_str());

    // The recovering browser is signed in; every earlier session has ended.
    assert_eq!(person.me().await.0, StatusCode::OK);
    assert_eq!(first.me().await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(second.me().await.0, StatusCode::UNAUTHORIZED);
    let (_, listed) = person.sessions().await;
    assert_eq!(listed["sessions"].as_array().unwrap().len(), 1, "{listed}");

    let fresh = Client::new(env.api());
    assert_eq!(
        fresh.signin(&email, PASSWORD).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(fresh.signin(&email, NEW_PASSWORD).await.0, StatusCode::OK);
    // A signin after the change is not caught by the revocation of older sessions.
    assert_eq!(fresh.me().await.0, StatusCode::OK);
    assert_eq!(person.me().await.0, StatusCode::OK);

    // The owner is told, without a code; the used code does not work again.
    let notice = env.mail_for(&email, is_password_notice).await;
    assert!(extract_code(&notice.text()).is_none());
    let (status, body) = Client::new(env.api())
        .recover_verify(&email, &code, NEW_PASSWORD)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_code");
}

async fn recover_answers_alike_for_unknown_addresses_and_mails_them_nothing(mode: Mode) {
    let env = TestEnv::start(mode).await;
    let known = env.new_email();
    env.register(&known, PASSWORD).await;
    let unknown = env.new_email();

    let known_answer = Client::new(env.api()).recover(&known).await;
    let unknown_answer = Client::new(env.api()).recover(&unknown).await;
    assert_eq!(known_answer.0, StatusCode::ACCEPTED);
    assert_eq!(known_answer, unknown_answer);
    let code = recovery_code(&env, &known).await;

    // A wrong code for the unknown address gets exactly what a wrong code for a known one gets.
    let wrong = if code == "000000" { "000001" } else { "000000" };
    let for_known = Client::new(env.api())
        .recover_verify(&known, wrong, NEW_PASSWORD)
        .await;
    let for_unknown = Client::new(env.api())
        .recover_verify(&unknown, &code, NEW_PASSWORD)
        .await;
    assert_eq!(for_known.0, StatusCode::BAD_REQUEST);
    assert_eq!(for_known, for_unknown);

    // The unknown address gets no mail. Its mails share one partition (keyed by address), so
    // once a later sign-up mail to it has arrived, a recovery mail sent earlier would have too.
    assert_eq!(
        Client::new(env.api()).signup(&unknown).await.0,
        StatusCode::ACCEPTED
    );
    env.code_for(&unknown).await;
    let to_unknown: Vec<ReceivedMail> = env
        .smtp
        .messages()
        .into_iter()
        .filter(|mail| mail.is_to(&unknown))
        .collect();
    assert_eq!(to_unknown.len(), 1, "only the sign-up mail");
    assert!(!to_unknown.iter().any(is_recovery_mail));
}

async fn recovery_codes_burn_and_are_apart_from_signup_codes(mode: Mode) {
    let env = TestEnv::start(mode).await;
    let email = env.new_email();
    env.register(&email, PASSWORD).await;
    let client = Client::new(env.api());
    assert_eq!(client.recover(&email).await.0, StatusCode::ACCEPTED);
    let code = recovery_code(&env, &email).await;

    // A recovery code is no sign-up code (and the account exists anyway).
    let (status, _) = client.verify(&email, &code, NEW_PASSWORD, "Eve").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let wrong = if code == "999999" { "999998" } else { "999999" };
    for _ in 0..5 {
        let (status, body) = client.recover_verify(&email, wrong, NEW_PASSWORD).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"]["code"], "invalid_code");
    }
    let (status, body) = client.recover_verify(&email, &code, NEW_PASSWORD).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "a burned code must not work: {body}"
    );

    // The password is unchanged; a new code works.
    assert_eq!(
        Client::new(env.api()).signin(&email, PASSWORD).await.0,
        StatusCode::OK
    );
    assert_eq!(client.recover(&email).await.0, StatusCode::ACCEPTED);
    let newer = env
        .mail_for(&email, |mail| {
            is_recovery_mail(mail) && extract_code(&mail.text()).as_deref() != Some(&code)
        })
        .await;
    let newer = extract_code(&newer.text()).unwrap();
    let (status, body) = client.recover_verify(&email, &newer, NEW_PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn a_recovery_request_within_the_cooldown_is_refused(mode: Mode) {
    let env = TestEnv::start_with(
        mode,
        Options {
            signup_cooldown_secs: 60,
            ..Options::default()
        },
    )
    .await;
    let email = env.new_email();
    let client = Client::new(env.api());
    assert_eq!(client.recover(&email).await.0, StatusCode::ACCEPTED);
    let response = client
        .request(Method::POST, "/recover")
        .json(&json!({ "email": email }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("retry-after"));
    // The sign-up cooldown of the same address is its own.
    assert_eq!(client.signup(&email).await.0, StatusCode::ACCEPTED);
}

async fn changing_the_password_keeps_this_session_and_ends_the_others(mode: Mode) {
    let env = TestEnv::start(mode).await;
    let email = env.new_email();
    let me = env.register(&email, PASSWORD).await;
    let laptop = Client::new(env.api());
    assert_eq!(laptop.signin(&email, PASSWORD).await.0, StatusCode::OK);

    let (status, body) = me.change_password("not the password", NEW_PASSWORD).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "invalid_credentials");
    assert_eq!(
        laptop.me().await.0,
        StatusCode::OK,
        "a refused change ends nothing"
    );

    let (status, body) = me.change_password(PASSWORD, NEW_PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user"]["email"], email.as_str());
    assert_eq!(me.me().await.0, StatusCode::OK);
    assert_eq!(laptop.me().await.0, StatusCode::UNAUTHORIZED);
    env.mail_for(&email, is_password_notice).await;

    let fresh = Client::new(env.api());
    assert_eq!(
        fresh.signin(&email, PASSWORD).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(fresh.signin(&email, NEW_PASSWORD).await.0, StatusCode::OK);
    // The session that made the change survives the signin that re-asserts it.
    assert_eq!(me.me().await.0, StatusCode::OK);

    // Twice in a row, each change from the session that stays.
    let (status, body) = me.change_password(NEW_PASSWORD, NEWEST_PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(fresh.me().await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(me.me().await.0, StatusCode::OK);

    // Signed out, there is nothing to change.
    assert_eq!(
        Client::new(env.api())
            .change_password(NEWEST_PASSWORD, NEW_PASSWORD)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
}

async fn a_wrong_current_password_counts_as_a_failed_signin(mode: Mode) {
    let env = TestEnv::start_with(
        mode,
        Options {
            extra_args: vec![
                "--signin-max-failures".into(),
                "3".into(),
                "--signin-max-failures-per-address".into(),
                "50".into(),
            ],
            ..Options::default()
        },
    )
    .await;
    let email = env.new_email();
    let me = env.register(&email, PASSWORD).await;
    for _ in 0..3 {
        let (status, body) = me.change_password("not the password", NEW_PASSWORD).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    }
    let (status, body) = me.change_password(PASSWORD, NEW_PASSWORD).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    // The same counter as signin's, from this client.
    let (status, _) = Client::new(env.api()).signin(&email, PASSWORD).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
}

async fn signin_with_agent(client: &Client, email: &str, agent: &str) {
    let response = client
        .request(Method::POST, "/signin")
        .header("user-agent", agent)
        .json(&json!({ "email": email, "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

fn sessions_of(body: &Value) -> Vec<Value> {
    body["sessions"].as_array().cloned().unwrap_or_default()
}

async fn sessions_are_listed_newest_first_and_only_their_owner_ends_them(mode: Mode) {
    let env = TestEnv::start(mode).await;
    let email = env.new_email();
    env.register(&email, PASSWORD).await;
    let phone = Client::new(env.api());
    signin_with_agent(&phone, &email, "Phone Browser/1.0").await;
    let desk = Client::new(env.api());
    signin_with_agent(&desk, &email, "Desk Browser/2.0").await;

    let (status, body) = desk.sessions().await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sessions = sessions_of(&body);
    assert_eq!(sessions.len(), 3, "{body}");
    assert_eq!(sessions[0]["user_agent"], "Desk Browser/2.0");
    assert_eq!(sessions[0]["current"], true);
    assert_eq!(sessions[1]["user_agent"], "Phone Browser/1.0");
    assert_eq!(sessions[1]["current"], false);
    assert!(sessions[2]["user_agent"].is_null());
    for session in &sessions {
        assert_eq!(
            session["ip_prefix"], "127.0.0.0/24",
            "never the whole address"
        );
        let created = session["created_at"].as_str().unwrap();
        assert!(time_parses(created), "{created}");
        assert!(time_parses(session["last_seen_at"].as_str().unwrap()));
    }
    let created: Vec<&str> = sessions
        .iter()
        .map(|s| s["created_at"].as_str().unwrap())
        .collect();
    assert!(created.windows(2).all(|w| w[0] >= w[1]), "{created:?}");
    let phone_id = sessions[1]["id"].as_str().unwrap().to_owned();

    // Another user's attempt looks exactly like an id that does not exist.
    let other = env.register(&env.new_email(), PASSWORD).await;
    let (status, foreign) = other.end_session(&phone_id).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, nonexistent) = other.end_session(&uuid::Uuid::new_v4().to_string()).await;
    assert_eq!(foreign, nonexistent);
    assert_eq!(
        other.end_session("not-a-session-id").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(phone.me().await.0, StatusCode::OK);

    assert_eq!(desk.end_session(&phone_id).await.0, StatusCode::NO_CONTENT);
    assert_eq!(phone.me().await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(desk.end_session(&phone_id).await.0, StatusCode::NOT_FOUND);
    let (_, body) = desk.sessions().await;
    assert_eq!(sessions_of(&body).len(), 2);

    // Signed out, there is nothing to list.
    assert_eq!(phone.sessions().await.0, StatusCode::UNAUTHORIZED);
}

fn time_parses(text: &str) -> bool {
    text.len() >= 20 && text.ends_with('Z') && text.as_bytes()[10] == b'T'
}

async fn logout_scopes_end_this_the_others_or_all_sessions(mode: Mode) {
    let env = TestEnv::start(mode).await;
    let email = env.new_email();
    let a = env.register(&email, PASSWORD).await;
    let b = Client::new(env.api());
    let c = Client::new(env.api());
    for client in [&b, &c] {
        assert_eq!(client.signin(&email, PASSWORD).await.0, StatusCode::OK);
    }

    let (status, body) = a.logout_scope("others").await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(a.me().await.0, StatusCode::OK);
    assert_eq!(b.me().await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(c.me().await.0, StatusCode::UNAUTHORIZED);

    assert_eq!(b.signin(&email, PASSWORD).await.0, StatusCode::OK);
    let (status, _) = b.logout_scope("global").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(a.me().await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(b.me().await.0, StatusCode::UNAUTHORIZED);

    // Signing in again works at once after a global logout.
    assert_eq!(c.signin(&email, PASSWORD).await.0, StatusCode::OK);
    assert_eq!(c.me().await.0, StatusCode::OK);
    let (status, _) = c.logout_scope("local").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(c.me().await.0, StatusCode::UNAUTHORIZED);

    let (status, body) = c.logout_scope("everywhere").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["error"]["fields"]["scope"].is_string(), "{body}");
    assert_eq!(c.logout_scope("others").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(c.logout_scope("global").await.0, StatusCode::UNAUTHORIZED);
}

async fn a_signin_racing_a_global_logout_leaves_no_session_from_before_it(mode: Mode) {
    let env = TestEnv::start(mode).await;
    let email = env.new_email();
    let owner = env.register(&email, PASSWORD).await;
    let logging_out = Arc::new(AtomicBool::new(false));
    // Each from its own address: one client may hash one password at a time.
    let racers: Vec<_> = (2..14u8)
        .map(|host| {
            let source = std::net::IpAddr::from([127, 0, 0, host]);
            let client = Client::from_source(env.api(), source);
            let (email, logging_out) = (email.clone(), logging_out.clone());
            tokio::spawn(async move {
                let (status, _) = client.signin(&email, PASSWORD).await;
                assert_eq!(status, StatusCode::OK);
                let before = !logging_out.load(Ordering::SeqCst);
                (client, before)
            })
        })
        .collect();
    // Wait for a few signins to land, then log out everywhere while the rest run.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, body) = owner.sessions().await;
        if sessions_of(&body).len() >= 4 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no signin landed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    logging_out.store(true, Ordering::SeqCst);
    assert_eq!(owner.logout_scope("global").await.0, StatusCode::NO_CONTENT);
    let mut survivors = 0;
    for racer in racers {
        let (client, finished_before) = racer.await.unwrap();
        let status = client.me().await.0;
        if finished_before {
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "a session started before the logout survived it"
            );
        } else if status == StatusCode::OK {
            survivors += 1;
        }
    }
    // What survived started after the logout, and the list shows exactly those.
    let checker = Client::new(env.api());
    assert_eq!(checker.signin(&email, PASSWORD).await.0, StatusCode::OK);
    let (_, body) = checker.sessions().await;
    assert_eq!(sessions_of(&body).len(), survivors + 1, "{body}");
}

async fn bad_input_to_the_new_endpoints_gets_clear_errors(mode: Mode) {
    let env = TestEnv::start(mode).await;
    let email = env.new_email();
    let me = env.register(&email, PASSWORD).await;
    let anyone = Client::new(env.api());

    let (status, body) = anyone.recover("not an address").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["error"]["fields"]["email"].is_string(), "{body}");

    let (status, body) = anyone
        .post(
            "/recover/verify",
            json!({ "email": "x", "otp": "12", "password": "short" }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    for field in ["email", "otp", "password"] {
        assert!(
            body["error"]["fields"][field].is_string(),
            "{field}: {body}"
        );
    }
    let (status, body) = anyone.recover_verify(&email, "123456", "password123").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["error"]["fields"]["password"]
            .as_str()
            .unwrap()
            .contains("common")
    );

    let (status, body) = me.post("/password", json!({ "password": 7 })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["error"]["fields"]["current_password"].is_string(),
        "{body}"
    );
    assert!(body["error"]["fields"]["password"].is_string(), "{body}");
    let (status, _) = me.post("/password", json!([])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A refused change changes nothing.
    assert_eq!(me.me().await.0, StatusCode::OK);
    assert_eq!(anyone.signin(&email, PASSWORD).await.0, StatusCode::OK);
}
