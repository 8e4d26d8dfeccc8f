//! The flows through the real API: latency at concurrency 1, and throughput swept over
//! concurrency.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use broker_auth_e2e::{Mode, extract_code, metric_sum_in};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::Result;
use crate::deploy::{Deployment, cores_between, services_cpu_seconds, usage_of};
use crate::load::{self, Outcome, RunResult};
use crate::stats::Samples;

pub const PASSWORD: &str = "correct horse battery";
/// How long the bench waits for a mail.
const MAIL_PATIENCE: Duration = Duration::from_secs(60);

/// An answer's status and `Retry-After` (seconds).
#[derive(Debug, Clone, Copy)]
pub struct Answer {
    pub status: StatusCode,
    pub retry_after: Option<u64>,
}

/// An HTTP client of the API with a cookie jar of its own, from a chosen source address.
#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
    base: String,
}

impl Http {
    pub fn new(origin: &str, source: Option<IpAddr>) -> Result<Self> {
        Ok(Self {
            client: reqwest::Client::builder()
                .cookie_store(true)
                .timeout(Duration::from_secs(30))
                .local_address(source)
                .build()?,
            base: format!("{origin}/api/v1/auth"),
        })
    }

    pub async fn post(&self, path: &str, body: Value) -> Result<Answer, String> {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        answer(response).await
    }

    pub async fn get(&self, path: &str) -> Result<Answer, String> {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        answer(response).await
    }

    pub async fn signup(&self, email: &str) -> Result<Answer, String> {
        self.post("/signup", json!({ "email": email })).await
    }

    pub async fn verify(&self, email: &str, code: &str) -> Result<Answer, String> {
        self.post(
            "/verify",
            json!({ "email": email, "otp": code, "password": PASSWORD, "name": "Bench" }),
        )
        .await
    }

    pub async fn signin(&self, email: &str) -> Result<Answer, String> {
        self.post("/signin", json!({ "email": email, "password": PASSWORD }))
            .await
    }

    pub async fn me(&self) -> Result<Answer, String> {
        self.get("/me").await
    }

    pub async fn check(&self) -> Result<Answer, String> {
        self.get("/check").await
    }

    pub async fn logout(&self) -> Result<Answer, String> {
        self.post("/logout", json!({})).await
    }

    pub async fn change_password(&self, current: &str, new: &str) -> Result<Answer, String> {
        self.post(
            "/password",
            json!({ "current_password": current, "password": new }),
        )
        .await
    }

    pub async fn recover(&self, email: &str) -> Result<Answer, String> {
        self.post("/recover", json!({ "email": email })).await
    }

    pub async fn recover_verify(&self, email: &str, code: &str) -> Result<Answer, String> {
        self.post(
            "/recover/verify",
            json!({ "email": email, "otp": code, "password": PASSWORD }),
        )
        .await
    }
}

/// The password a latency walk changes to, and recovers from.
const CHANGED_PASSWORD: &str = "plum kettle orbit 42";

async fn answer(response: reqwest::Response) -> Result<Answer, String> {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok()?.parse().ok());
    // Read to the end, so the connection is reused.
    response.bytes().await.map_err(|e| e.to_string())?;
    Ok(Answer {
        status,
        retry_after,
    })
}

pub fn new_email() -> String {
    format!("bench-{}@example.com", uuid::Uuid::new_v4().simple())
}

fn expect(answer: Result<Answer, String>, expected: StatusCode, what: &str) -> Result<()> {
    match answer {
        Ok(answer) if answer.status == expected => Ok(()),
        Ok(answer) => Err(format!("{what} answered {}, expected {expected}", answer.status).into()),
        Err(error) => Err(format!("{what} failed: {error}").into()),
    }
}

/// The code mailed to `email`.
pub async fn code_for(deployment: &Deployment, email: &str) -> Result<String> {
    code_where(deployment, email, |_| true).await
}

/// The code of the first mail to `email` whose subject passes `subject`.
async fn code_where(
    deployment: &Deployment,
    email: &str,
    subject: impl Fn(&str) -> bool,
) -> Result<String> {
    let mail = deployment
        .env
        .smtp
        .wait_for(
            |mail| {
                mail.is_to(email)
                    && extract_code(&mail.text()).is_some()
                    && subject(&mail.subject().unwrap_or_default())
            },
            MAIL_PATIENCE,
        )
        .await
        .ok_or_else(|| format!("no code arrived for {email} within {MAIL_PATIENCE:?}"))?;
    extract_code(&mail.text()).ok_or_else(|| "the mail has no code".into())
}

/// Signs a new user up and in; the client holds the session.
pub async fn register(deployment: &Deployment, source: Option<IpAddr>) -> Result<(String, Http)> {
    let http = Http::new(&deployment.api().origin(), source)?;
    let email = new_email();
    expect(http.signup(&email).await, StatusCode::ACCEPTED, "signup")?;
    let code = code_for(deployment, &email).await?;
    expect(
        http.verify(&email, &code).await,
        StatusCode::CREATED,
        "verify",
    )?;
    Ok((email, http))
}

/// me requests per walk of the latency run.
const ME_PER_WALK: usize = 20;

pub const FLOWS: [&str; 9] = [
    "signup",
    "verify",
    "signin",
    "me",
    "check",
    "logout",
    "password",
    "recover",
    "recover_verify",
];

/// Latency of each flow, one request at a time: `iterations` walks of signup → verify → me →
/// check (forward auth) → logout → signin → password (change) → recover → recover/verify for
/// new addresses. After each walk the bench hashes once itself at
/// `bcrypt_cost` (the `"bcrypt"` samples), so the flows are compared with a bcrypt floor taken
/// in the same minutes rather than at the start of the run.
pub async fn latency(
    deployment: &Deployment,
    iterations: usize,
    bcrypt_cost: u32,
) -> Result<HashMap<&'static str, Samples>> {
    let mut samples: HashMap<&'static str, Samples> = HashMap::new();
    // One unmeasured walk: connections and caches warm.
    register(deployment, None).await?;
    for _ in 0..iterations {
        let http = Http::new(&deployment.api().origin(), None)?;
        let email = new_email();
        let mut timed = |name: &'static str, started: Instant| {
            samples.entry(name).or_default().push(started.elapsed());
        };

        let started = Instant::now();
        let status = http.signup(&email).await;
        timed("signup", started);
        expect(status, StatusCode::ACCEPTED, "signup")?;
        let code = code_for(deployment, &email).await?;

        let started = Instant::now();
        let status = http.verify(&email, &code).await;
        timed("verify", started);
        expect(status, StatusCode::CREATED, "verify")?;

        // me and check (forward auth) are cheap: many samples per walk.
        for _ in 0..ME_PER_WALK {
            let started = Instant::now();
            let status = http.me().await;
            timed("me", started);
            expect(status, StatusCode::OK, "me")?;
            let started = Instant::now();
            let status = http.check().await;
            timed("check", started);
            expect(status, StatusCode::OK, "check")?;
        }

        let started = Instant::now();
        let status = http.logout().await;
        timed("logout", started);
        expect(status, StatusCode::NO_CONTENT, "logout")?;

        let started = Instant::now();
        let status = http.signin(&email).await;
        timed("signin", started);
        expect(status, StatusCode::OK, "signin")?;

        let started = Instant::now();
        let status = http.change_password(PASSWORD, CHANGED_PASSWORD).await;
        timed("password", started);
        expect(status, StatusCode::OK, "password")?;

        let started = Instant::now();
        let status = http.recover(&email).await;
        timed("recover", started);
        expect(status, StatusCode::ACCEPTED, "recover")?;
        let code = code_where(deployment, &email, |subject| subject.contains("recovery")).await?;

        // Back to PASSWORD, so every walk ends where it began.
        let started = Instant::now();
        let status = http.recover_verify(&email, &code).await;
        timed("recover_verify", started);
        expect(status, StatusCode::OK, "recover/verify")?;

        let hashed = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            bcrypt::hash(PASSWORD, bcrypt_cost).map(|_| started.elapsed())
        })
        .await??;
        samples.entry("bcrypt").or_default().push(hashed);
    }
    Ok(samples)
}

/// The endpoints the throughput sweep loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Me,
    Signin,
    Signup,
    Verify,
}

impl Endpoint {
    pub fn name(self) -> &'static str {
        match self {
            Self::Me => "me",
            Self::Signin => "signin",
            Self::Signup => "signup",
            Self::Verify => "verify",
        }
    }

    /// Whether each request costs a bcrypt hash or check.
    pub fn hashes(self) -> bool {
        matches!(self, Self::Signin | Self::Verify)
    }
}

/// One step of the sweep, with the API's and dbproc's CPU during it.
pub struct Step {
    pub result: RunResult,
    pub api_cores: Option<f64>,
    pub dbproc_cores: Option<f64>,
    /// Redis, Postgres and tansu together.
    pub services_cores: f64,
}

/// What the sweep needs ready before it starts.
pub struct Fixtures {
    /// Signed-in users: their addresses and clients (each with its session cookie).
    users: Vec<(String, Http)>,
    /// Addresses with a code waiting, for verify.
    codes: Arc<Mutex<Vec<(String, String)>>>,
}

/// Registers `users` users and signs up `pending` more whose codes verify will use.
pub async fn fixtures(deployment: &Deployment, users: usize, pending: usize) -> Result<Fixtures> {
    let mut registered = Vec::new();
    for i in 0..users {
        registered.push(register(deployment, Some(load::source(i))).await?);
    }
    let origin = deployment.api().origin();
    let mut emails = Vec::new();
    let mut signups = Vec::new();
    for i in 0..pending {
        let email = new_email();
        emails.push(email.clone());
        let http = Http::new(&origin, Some(load::source(i % 200)))?;
        signups.push(async move { http.signup(&email).await });
        if signups.len() == 16 || i + 1 == pending {
            for status in futures::future::join_all(signups.drain(..)).await {
                expect(status, StatusCode::ACCEPTED, "signup")?;
            }
        }
    }
    // Wait until every code has arrived, then read them all at once.
    let deadline = Instant::now() + MAIL_PATIENCE;
    let codes = loop {
        let codes: HashMap<String, String> = deployment
            .env
            .smtp
            .messages()
            .into_iter()
            .filter_map(|mail| {
                Some((
                    mail.recipients.first()?.clone(),
                    extract_code(&mail.text())?,
                ))
            })
            .collect();
        let found: Vec<(String, String)> = emails
            .iter()
            .filter_map(|email| Some((email.clone(), codes.get(email)?.clone())))
            .collect();
        if found.len() == emails.len() {
            break found;
        }
        if Instant::now() > deadline {
            return Err(format!("only {} of {} codes arrived", found.len(), emails.len()).into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    Ok(Fixtures {
        users: registered,
        codes: Arc::new(Mutex::new(codes)),
    })
}

/// Loads `endpoint` with `concurrency` workers for `duration`.
pub async fn throughput(
    deployment: &Deployment,
    fixtures: &Fixtures,
    endpoint: Endpoint,
    concurrency: usize,
    warm_up: Duration,
    duration: Duration,
) -> Result<Step> {
    settle(deployment).await?;
    let origin = deployment.api().origin();
    let api_before = usage_of(deployment.api());
    let dbproc_before = deployment.dbproc.as_ref().and_then(usage_of);
    let services_before = services_cpu_seconds();
    let started = Instant::now();
    let result = match endpoint {
        Endpoint::Me => {
            let clients: Vec<Http> = fixtures
                .users
                .iter()
                .map(|(_, http)| http.clone())
                .collect();
            load::run(concurrency, warm_up, duration, |i| {
                let http = clients[i % clients.len()].clone();
                move || {
                    let http = http.clone();
                    async move { outcome(http.me().await, StatusCode::OK, "me") }
                }
            })
            .await
        }
        Endpoint::Signin => {
            let emails: Vec<String> = fixtures
                .users
                .iter()
                .map(|(email, _)| email.clone())
                .collect();
            let clients = sourced_clients(concurrency, |_| origin.clone())?;
            load::run(concurrency, warm_up, duration, |i| {
                let http = clients[i].clone();
                let email = emails[i % emails.len()].clone();
                move || {
                    let (http, email) = (http.clone(), email.clone());
                    async move { outcome(http.signin(&email).await, StatusCode::OK, "signin") }
                }
            })
            .await
        }
        Endpoint::Signup => {
            signup_load(
                &sourced_clients(concurrency, |_| origin.clone())?,
                warm_up,
                duration,
            )
            .await
        }
        Endpoint::Verify => {
            let clients = sourced_clients(concurrency, |_| origin.clone())?;
            let codes = fixtures.codes.clone();
            load::run(concurrency, warm_up, duration, |i| {
                let http = clients[i].clone();
                let codes = codes.clone();
                move || {
                    let http = http.clone();
                    let next = codes.lock().map(|mut codes| codes.pop()).ok().flatten();
                    let codes = codes.clone();
                    async move {
                        let Some((email, code)) = next else {
                            return Outcome::Exhausted;
                        };
                        let result = outcome(
                            http.verify(&email, &code).await,
                            StatusCode::CREATED,
                            "verify",
                        );
                        // A shed verify did not use its code: it goes back for another try.
                        if matches!(result, Outcome::Refused(_))
                            && let Ok(mut codes) = codes.lock()
                        {
                            codes.push((email, code));
                        }
                        result
                    }
                }
            })
            .await
        }
    };
    let wall = started.elapsed().as_secs_f64();
    Ok(Step {
        services_cores: (services_cpu_seconds() - services_before) / wall,
        api_cores: cores_between(api_before, usage_of(deployment.api()), wall),
        dbproc_cores: cores_between(
            dbproc_before,
            deployment.dbproc.as_ref().and_then(usage_of),
            wall,
        ),
        result,
    })
}

/// One client per worker, worker `i` connecting from its own loopback address to `origin(i)`.
pub fn sourced_clients(count: usize, origin: impl Fn(usize) -> String) -> Result<Vec<Http>> {
    (0..count)
        .map(|i| Http::new(&origin(i), Some(load::source(i))))
        .collect()
}

/// Each of `clients` signs up a new address after another, as fast as the API answers.
pub async fn signup_load(clients: &[Http], warm_up: Duration, duration: Duration) -> RunResult {
    load::run(clients.len(), warm_up, duration, |i| {
        let http = clients[i].clone();
        move || {
            let http = http.clone();
            async move {
                outcome(
                    http.signup(&new_email()).await,
                    StatusCode::ACCEPTED,
                    "signup",
                )
            }
        }
    })
    .await
}

pub fn outcome(answer: Result<Answer, String>, expected: StatusCode, what: &str) -> Outcome {
    match answer {
        Ok(answer) => load::outcome_of(answer.status, answer.retry_after, expected, what),
        Err(error) => Outcome::Failed(format!("{what}: {error}")),
    }
}

/// Waits until the API has no password hash running or queued: requests a step abandoned at its
/// end are still being hashed, and would slow the next step down.
async fn settle(deployment: &Deployment) -> Result<()> {
    let url = deployment.api().metrics_url();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = reqwest::get(&url).await?.text().await?;
        if metric_sum_in(&text, "broker_auth_api_password_hashes_running") == 0.0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("the API kept hashing for two minutes after a step".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The floors a flow pays in `mode`, by name, for the latency table.
pub fn floor_parts(flow: &str, mode: Mode) -> &'static [&'static str] {
    match (mode, flow) {
        (Mode::Distributed, "signup") => {
            &["http", "redis", "kafka_rpc", "postgres", "kafka_produce"]
        }
        (Mode::Distributed, "verify") => &["http", "redis", "bcrypt", "kafka_rpc", "postgres"],
        (Mode::Distributed, "signin") => &["http", "kafka_rpc", "postgres", "bcrypt", "redis"],
        // The session, the credentials, checking the old password and hashing the new one, the
        // update, the revocation; the notice mail is handed over too.
        (Mode::Distributed, "password") => &[
            "http",
            "redis",
            "kafka_rpc",
            "postgres",
            "bcrypt",
            "bcrypt",
            "kafka_rpc",
            "postgres",
            "redis",
            "kafka_produce",
        ],
        (Mode::Distributed, "recover") => &["http", "redis", "kafka_rpc", "postgres"],
        (Mode::Distributed, "recover_verify") => &[
            "http",
            "redis",
            "bcrypt",
            "kafka_rpc",
            "postgres",
            "redis",
            "kafka_produce",
        ],
        (Mode::Distributed, _) => &["http", "redis"],
        (Mode::Embedded, "verify" | "signin" | "recover_verify") => &["http", "bcrypt"],
        (Mode::Embedded, "password") => &["http", "bcrypt", "bcrypt"],
        (Mode::Embedded, _) => &["http"],
    }
}
