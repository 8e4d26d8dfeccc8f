//! The API under hostile traffic: tossed cookies, signin floods from several addresses,
//! lockout attempts, forged forwarding headers, probes of the operational endpoints. Each runs
//! in both modes. Client IPs are loopback source addresses (127.0.0.2 and up).

#![allow(clippy::unwrap_used)] // A failed unwrap in a test is a failed test, with its location.

use std::net::{IpAddr, Ipv4Addr};

use broker_auth_e2e::{Client, Mode, Options, TestEnv, read};
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
    in_secure_mode_a_tossed_unprefixed_cookie_is_ignored_and_401s_clear_both_names,
    one_ip_cannot_lock_out_an_owner_signing_in_from_elsewhere,
    the_per_address_ceiling_still_stops_guesses_spread_over_many_ips,
    wrong_codes_from_one_ip_do_not_stop_the_owner_verifying_from_another,
    a_signin_flood_from_several_ips_is_refused_while_a_legitimate_user_signs_in,
    a_saturated_hashing_budget_answers_503_with_retry_after_at_once,
    forwarded_addresses_are_read_only_from_trusted_proxies,
    metrics_are_served_on_the_operational_port_only,
);

const PASSWORD: &str = "correct horse battery";

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// The session token a response set, from its `Set-Cookie` for `name`.
fn cookie_value(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .filter_map(|value| value.split(';').next()?.split_once('='))
        .find(|(cookie, value)| *cookie == name && !value.is_empty())
        .map(|(_, value)| value.to_owned())
}

fn cleared_cookies(response: &reqwest::Response) -> Vec<String> {
    let mut names: Vec<String> = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .filter(|value| value.contains("Max-Age=0"))
        .filter_map(|value| Some(value.split_once('=')?.0.to_owned()))
        .collect();
    names.sort();
    names
}

async fn in_secure_mode_a_tossed_unprefixed_cookie_is_ignored_and_401s_clear_both_names(
    mode: Mode,
) {
    let options = Options {
        cookie_secure: true,
        ..Options::default()
    };
    let env = TestEnv::start_with(mode, options).await;
    let http = reqwest::Client::new();
    let base = env.api().url("/api/v1/auth");
    let mut tokens = Vec::new();
    for who in ["victim", "attacker"] {
        let email = env.new_email();
        env.register(&email, PASSWORD).await;
        let response = http
            .post(format!("{base}/signin"))
            .json(&json!({ "email": email, "password": PASSWORD }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{who}");
        let token = cookie_value(&response, "__Host-ba_session").expect("a __Host- cookie");
        tokens.push((email, token));
    }
    let [(victim, victim_token), (_, attacker_token)] = tokens.try_into().unwrap();
    let me = |cookie: String| {
        http.get(format!("{base}/me"))
            .header("cookie", cookie)
            .send()
    };

    // A sibling subdomain planted the attacker's session under the unprefixed name, first in
    // the header: the victim stays the victim.
    let response = me(format!(
        "ba_session={attacker_token}; __Host-ba_session={victim_token}"
    ))
    .await
    .unwrap();
    let (status, body) = read(response).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user"]["email"], victim.as_str());

    // The planted cookie alone signs nobody in, and the 401 clears both names.
    let response = me(format!("ba_session={attacker_token}")).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        cleared_cookies(&response),
        ["__Host-ba_session", "ba_session"]
    );

    // Logout clears both names too.
    let response = http
        .post(format!("{base}/logout"))
        .header("cookie", format!("__Host-ba_session={victim_token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        cleared_cookies(&response),
        ["__Host-ba_session", "ba_session"]
    );
}

/// `count` wrong signins for `email` from `client`, returning their statuses.
async fn wrong_signins(client: &Client, email: &str, count: usize) -> Vec<StatusCode> {
    let mut statuses = Vec::new();
    for i in 0..count {
        statuses.push(client.signin(email, &format!("wrong guess {i}")).await.0);
    }
    statuses
}

async fn one_ip_cannot_lock_out_an_owner_signing_in_from_elsewhere(mode: Mode) {
    let env = TestEnv::start(mode).await;
    let email = env.new_email();
    env.register(&email, PASSWORD).await;

    let attacker = Client::from_source(env.api(), loopback(2));
    let statuses = wrong_signins(&attacker, &email, 10).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::UNAUTHORIZED),
        "{statuses:?}"
    );
    // The attacker's address is stopped, even with the right password...
    for status in wrong_signins(&attacker, &email, 20).await {
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    }
    assert_eq!(
        attacker.signin(&email, PASSWORD).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    // ...while the owner, from elsewhere, signs in.
    let owner = Client::from_source(env.api(), loopback(3));
    let (status, body) = owner.signin(&email, PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn the_per_address_ceiling_still_stops_guesses_spread_over_many_ips(mode: Mode) {
    let options = Options {
        extra_args: ["--signin-max-failures-per-address", "25"]
            .map(str::to_owned)
            .to_vec(),
        ..Options::default()
    };
    let env = TestEnv::start_with(mode, options).await;
    let email = env.new_email();
    env.register(&email, PASSWORD).await;
    let mut statuses = Vec::new();
    for source in 2..=4 {
        let attacker = Client::from_source(env.api(), loopback(source));
        statuses.extend(wrong_signins(&attacker, &email, 10).await);
    }
    let checked = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    assert_eq!(checked, 25, "{statuses:?}");
    let owner = Client::from_source(env.api(), loopback(5));
    assert_eq!(
        owner.signin(&email, PASSWORD).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
}

async fn wrong_codes_from_one_ip_do_not_stop_the_owner_verifying_from_another(mode: Mode) {
    let env = TestEnv::start(mode).await;
    let email = env.new_email();
    let owner = Client::from_source(env.api(), loopback(3));
    assert_eq!(owner.signup(&email).await.0, StatusCode::ACCEPTED);
    let first = env.code_for(&email).await;

    // Ten wrong codes from one address (they burn the first code on the way), then 429.
    let attacker = Client::from_source(env.api(), loopback(2));
    let wrong = if first == "999999" {
        "999998"
    } else {
        "999999"
    };
    for _ in 0..10 {
        let (status, body) = attacker.verify(&email, wrong, "attacker pass", "X").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }
    let (status, _) = attacker.verify(&email, wrong, "attacker pass", "X").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);

    // The owner asks for a new code and verifies from their own address.
    assert_eq!(owner.signup(&email).await.0, StatusCode::ACCEPTED);
    let fresh = env
        .mail_for(&email, |mail| {
            broker_auth_e2e::extract_code(&mail.text()).is_some_and(|code| code != first)
        })
        .await;
    let fresh = broker_auth_e2e::extract_code(&fresh.text()).unwrap();
    let (status, body) = owner.verify(&email, &fresh, PASSWORD, "Owner").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

async fn a_signin_flood_from_several_ips_is_refused_while_a_legitimate_user_signs_in(mode: Mode) {
    let options = Options {
        signin_rate_limit_per_minute: 20,
        ..Options::default()
    };
    let env = TestEnv::start_with(mode, options).await;
    let email = env.new_email();
    env.register(&email, PASSWORD).await;

    let flood = tokio_util::sync::CancellationToken::new();
    let flooders: Vec<_> = (2..=8)
        .flat_map(|source| {
            // Several connections per address, each signing in as a fresh random address.
            (0..4).map(move |_| source)
        })
        .map(|source| {
            let client = Client::from_source(env.api(), loopback(source));
            let flood = flood.clone();
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                while !flood.is_cancelled() {
                    let email = format!("flood-{}@example.com", uuid::Uuid::new_v4().simple());
                    statuses.push(client.signin(&email, "whatever password").await.0);
                }
                statuses
            })
        })
        .collect();

    let legitimate = Client::from_source(env.api(), loopback(9));
    let mut legitimate_statuses = Vec::new();
    for _ in 0..5 {
        let (status, body) = legitimate.signin(&email, PASSWORD).await;
        legitimate_statuses.push((status, body));
    }
    flood.cancel();
    let mut flood_statuses = Vec::new();
    for flooder in flooders {
        flood_statuses.extend(flooder.await.unwrap());
    }

    for (status, body) in &legitimate_statuses {
        assert_eq!(*status, StatusCode::OK, "{body}");
    }
    let refused = flood_statuses
        .iter()
        .filter(|s| {
            [
                StatusCode::TOO_MANY_REQUESTS,
                StatusCode::SERVICE_UNAVAILABLE,
            ]
            .contains(s)
        })
        .count();
    let checked = flood_statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    assert_eq!(
        refused + checked,
        flood_statuses.len(),
        "only refusals and 401s: {flood_statuses:?}"
    );
    // Each flooding address gets its burst (5) checked and little more; the rest is refused
    // before any bcrypt work.
    assert!(
        refused > checked,
        "the flood was not refused: {checked} checked, {refused} refused"
    );
}

async fn a_saturated_hashing_budget_answers_503_with_retry_after_at_once(mode: Mode) {
    let options = Options {
        bcrypt_cost: 12,
        hash_concurrency: 1,
        hash_queue_length: 1,
        ..Options::default()
    };
    let env = TestEnv::start_with(mode, options).await;
    let signins = (2..=9).map(|source| {
        let client = Client::from_source(env.api(), loopback(source));
        async move {
            let response = client
                .request(Method::POST, "/signin")
                .json(&json!({ "email": "nobody@example.com", "password": "some password" }))
                .send()
                .await
                .unwrap();
            let retry_after = response.headers().get("retry-after").cloned();
            (response.status(), retry_after)
        }
    });
    let results = futures::future::join_all(signins).await;
    let busy: Vec<_> = results
        .iter()
        .filter(|(status, _)| *status == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    // One hashes, one waits; the others cannot all have arrived after both finished.
    assert!(!busy.is_empty(), "nothing was turned away: {results:?}");
    assert!(busy.iter().all(|(_, retry_after)| retry_after.is_some()));
    assert!(
        results.iter().all(|(status, _)| [
            StatusCode::UNAUTHORIZED,
            StatusCode::SERVICE_UNAVAILABLE
        ]
        .contains(status)),
        "{results:?}"
    );
}

async fn forwarded_addresses_are_read_only_from_trusted_proxies(mode: Mode) {
    let options = Options {
        rate_limit_per_minute: 3,
        trusted_proxy_cidrs: "127.0.0.2/32".to_owned(),
        ..Options::default()
    };
    let env = TestEnv::start_with(mode, options).await;
    let me = |client: &Client, forwarded: &str| {
        client
            .request(Method::GET, "/me")
            .header("x-forwarded-for", forwarded.to_owned())
            .send()
    };
    // Through the trusted proxy, each forwarded client has a bucket of its own.
    let proxy = Client::from_source(env.api(), loopback(2));
    for _ in 0..3 {
        assert_eq!(
            me(&proxy, "203.0.113.1").await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        me(&proxy, "203.0.113.1").await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        me(&proxy, "203.0.113.2").await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    // A peer outside the trusted range cannot pick its bucket by forging the header.
    let outsider = Client::from_source(env.api(), loopback(3));
    for i in 0..3 {
        assert_eq!(
            me(&outsider, &format!("198.51.100.{i}"))
                .await
                .unwrap()
                .status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        me(&outsider, "198.51.100.99").await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

async fn metrics_are_served_on_the_operational_port_only(mode: Mode) {
    let env = TestEnv::start(mode).await;
    let http = reqwest::Client::new();
    let public = http.get(env.api().url("/metrics")).send().await.unwrap();
    assert_eq!(public.status(), StatusCode::NOT_FOUND);
    let private = http
        .get(env.api().metrics_url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(private.status(), StatusCode::OK);
    assert!(private.text().await.unwrap().contains("# EOF"));
    // The probes stay on the public port, for the kubelet.
    for path in ["/healthz", "/readyz"] {
        let response = http.get(env.api().url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
}
