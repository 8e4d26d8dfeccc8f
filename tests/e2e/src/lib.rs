//! The end-to-end harness: starts the real API (and, in distributed mode, the real dbproc) in
//! this process on port 0, each test with its own topics, Redis keys, database and SMTP capture.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use broker_auth_testkit::postgres::TestDatabase;
use broker_auth_testkit::services;
use broker_auth_testkit::smtp::{ReceivedMail, SmtpCapture};
use clap::Parser;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Which deployment shape a test runs against. The flow tests run against both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One process: SQLite, in-memory store, in-process directory.
    Embedded,
    /// API and dbproc over Kafka, with Redis and Postgres.
    Distributed,
}

/// How long a test waits for something that should happen quickly.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The `MAIL_SEAL_KEY` the API and dbproc of every distributed test share.
pub const MAIL_SEAL_KEY: &str = "e2e-mail-seal-key-e2e-mail-seal-key-e2e";

/// The reply deadline the API gets in tests: short, so "dbproc is down" answers fast.
pub const REPLY_TIMEOUT: Duration = Duration::from_millis(2000);

/// A binary's app running in a task of this process, stopped through its cancellation token.
pub struct Running {
    /// The HTTP address: the API's port, or dbproc's metrics port.
    pub addr: SocketAddr,
    /// Where `/metrics` is served: the API's operational port, or dbproc's metrics port.
    pub metrics: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    /// Runs `app` until its token is cancelled.
    fn spawn<F>(
        addr: SocketAddr,
        metrics: SocketAddr,
        app: impl FnOnce(CancellationToken) -> F,
    ) -> Self
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let task = tokio::spawn(app(stop.clone()));
        Self {
            addr,
            metrics,
            stop,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A URL on the operational port (`/metrics`).
    pub fn metrics_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.metrics)
    }

    /// Cancels the app and waits for it to finish, failing the test if it panicked or did not
    /// stop within [`PATIENCE`].
    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("the app stops within the deadline")
            .expect("the app did not panic");
    }
}

/// Everything one test owns.
pub struct TestEnv {
    pub mode: Mode,
    pub prefix: String,
    pub smtp: SmtpCapture,
    pub database: Option<TestDatabase>,
    pub apis: Vec<Running>,
    pub dbproc: Option<Running>,
    embedded_db: String,
    options: Options,
}

/// API settings a test or benchmark may change.
#[derive(Debug, Clone)]
pub struct Options {
    /// Off by default so tests can sign an address up twice.
    pub signup_cooldown_secs: u64,
    /// The minimum by default: tests check behaviour, not hashing cost.
    pub bcrypt_cost: u32,
    pub rate_limit_per_minute: u64,
    /// Per-IP limits of signin and verify; high by default so flow tests can repeat them.
    pub signin_rate_limit_per_minute: u32,
    pub verify_rate_limit_per_minute: u32,
    /// `0`: the API's defaults.
    pub hash_concurrency: u32,
    pub hash_queue_length: u32,
    /// Off by default: tests talk plain http and the cookie jar must send the cookie back.
    pub cookie_secure: bool,
    /// `TRUSTED_PROXY_CIDRS`; empty trusts no proxy.
    pub trusted_proxy_cidrs: String,
    /// Another Redis than the shared one (distributed mode), e.g. a private instance a test
    /// can fill up.
    pub redis_url: Option<String>,
    /// Further API flags, e.g. `["--signin-max-failures-per-address", "15"]`.
    pub extra_args: Vec<String>,
    /// Embedded mode's bound on mails waiting for SMTP.
    pub mail_queue_capacity: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            signup_cooldown_secs: 0,
            bcrypt_cost: 4,
            rate_limit_per_minute: 300,
            signin_rate_limit_per_minute: 100_000,
            verify_rate_limit_per_minute: 100_000,
            hash_concurrency: 0,
            hash_queue_length: 0,
            cookie_secure: false,
            trusted_proxy_cidrs: String::new(),
            redis_url: None,
            extra_args: Vec::new(),
            mail_queue_capacity: 1000,
        }
    }
}

impl TestEnv {
    /// Starts the services of `mode` and one API with the default [`Options`], and waits until
    /// the API is ready.
    pub async fn start(mode: Mode) -> Self {
        Self::start_with(mode, Options::default()).await
    }

    /// Embedded mode on a database file, so a restarted API finds its data again.
    pub async fn start_embedded_with_database(path: &std::path::Path) -> Self {
        let mut env = Self::bare(Mode::Embedded, Options::default()).await;
        env.embedded_db = path.to_string_lossy().into_owned();
        let api = env.spawn_api().await;
        env.apis.push(api);
        env
    }

    /// Stops the first API instance and starts a new one with the same settings.
    pub async fn restart_api(&mut self) {
        let old = self.apis.remove(0);
        old.stop().await;
        let new = self.spawn_api().await;
        self.apis.insert(0, new);
    }

    async fn bare(mode: Mode, options: Options) -> Self {
        Self {
            mode,
            prefix: services::unique_prefix("e2e"),
            smtp: SmtpCapture::start().await.expect("start the SMTP capture"),
            database: None,
            apis: Vec::new(),
            dbproc: None,
            embedded_db: "sqlite::memory:".to_owned(),
            options,
        }
    }

    pub async fn start_with(mode: Mode, options: Options) -> Self {
        let mut env = Self::services_only(mode, options).await;
        if mode == Mode::Distributed {
            env.dbproc = Some(env.spawn_dbproc().await);
        }
        let api = env.spawn_api().await;
        env.apis.push(api);
        env
    }

    /// The services of `mode` (Kafka topics prefix, Redis keys, a database, the SMTP capture)
    /// with no API or dbproc running: for tests that start the real binaries, with
    /// [`Self::api_args`] and [`Self::dbproc_args`].
    pub async fn services_only(mode: Mode, options: Options) -> Self {
        let mut env = Self::bare(mode, options).await;
        if mode == Mode::Distributed {
            services::require_kafka().await;
            services::require_redis().await;
            env.database = Some(TestDatabase::create().await);
        }
        env
    }

    pub fn api(&self) -> &Running {
        &self.apis[0]
    }

    /// The command line of an API instance of this environment, program name first (for starting
    /// the real binary too; it listens on the value after `--listen`).
    pub fn api_args(&self) -> Vec<String> {
        let mut args: Vec<String> = [
            "broker-auth-api",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--bcrypt-cost",
            &self.options.bcrypt_cost.to_string(),
            "--rate-limit-per-minute",
            &self.options.rate_limit_per_minute.to_string(),
            "--signin-rate-limit-per-minute",
            &self.options.signin_rate_limit_per_minute.to_string(),
            "--verify-rate-limit-per-minute",
            &self.options.verify_rate_limit_per_minute.to_string(),
            "--hash-concurrency",
            &self.options.hash_concurrency.to_string(),
            "--hash-queue-length",
            &self.options.hash_queue_length.to_string(),
            "--signup-resend-cooldown-secs",
            &self.options.signup_cooldown_secs.to_string(),
            "--mail-queue-capacity",
            &self.options.mail_queue_capacity.to_string(),
            "--cookie-secure",
            &self.options.cookie_secure.to_string(),
            "--smtp-url",
            &self.smtp.url(),
            "--mail-from",
            "broker-auth <no-reply@broker.test>",
        ]
        .map(str::to_owned)
        .to_vec();
        if !self.options.trusted_proxy_cidrs.is_empty() {
            args.extend([
                "--trusted-proxy-cidrs".to_owned(),
                self.options.trusted_proxy_cidrs.clone(),
            ]);
        }
        args.extend(self.options.extra_args.iter().cloned());
        let reply_timeout = REPLY_TIMEOUT.as_millis().to_string();
        let redis_url = self
            .options
            .redis_url
            .clone()
            .unwrap_or_else(services::redis_url);
        match self.mode {
            Mode::Embedded => args.extend(
                ["--database-url", &self.embedded_db]
                    .map(str::to_owned)
                    .to_vec(),
            ),
            Mode::Distributed => args.extend(
                [
                    "--kafka-brokers",
                    &services::kafka_brokers(),
                    "--kafka-topic-prefix",
                    &self.prefix,
                    "--kafka-topic-partitions",
                    "2",
                    "--kafka-reply-timeout-ms",
                    &reply_timeout,
                    "--redis-url",
                    &redis_url,
                    "--redis-key-prefix",
                    &self.prefix,
                    "--jwt-secret",
                    "e2e-secret-e2e-secret-e2e-secret-e2e",
                    "--mail-seal-key",
                    MAIL_SEAL_KEY,
                ]
                .map(str::to_owned)
                .to_vec(),
            ),
        }
        args
    }

    /// Starts another API instance with the same settings (same topics, same Redis keys).
    pub async fn spawn_api(&self) -> Running {
        let config = broker_auth_api::Config::parse_from(self.api_args());
        let app = broker_auth_api::App::build(config)
            .await
            .expect("the API starts");
        let api = Running::spawn(app.local_addr(), app.metrics_addr(), |stop| async move {
            app.run_until_stopped(stop.cancelled_owned())
                .await
                .expect("the API runs");
        });
        wait_until_ok(&api.url("/readyz")).await;
        api
    }

    /// The command line of dbproc serving this environment (distributed mode), program name
    /// first: this test's database, topics and SMTP capture.
    pub fn dbproc_args(&self) -> Vec<String> {
        let database = self
            .database
            .as_ref()
            .expect("distributed mode has a database");
        // Restarted in a test, dbproc keeps its static membership, as a restarted pod does.
        let instance_id = format!("{}dbproc", self.prefix);
        // tansu stalls cooperative rebalances of static members (see dbproc's --help).
        let strategy =
            std::env::var("KAFKA_ASSIGNMENT_STRATEGY").unwrap_or_else(|_| "range".to_owned());
        [
            "broker-auth-dbproc",
            "serve",
            "--kafka-group-instance-id",
            &instance_id,
            "--kafka-assignment-strategy",
            &strategy,
            "--kafka-brokers",
            &services::kafka_brokers(),
            "--kafka-topic-prefix",
            &self.prefix,
            "--kafka-topic-partitions",
            "2",
            "--kafka-fetch-wait-ms",
            "10",
            "--database-url",
            database.url(),
            "--smtp-url",
            &self.smtp.url(),
            "--mail-from",
            "broker-auth <no-reply@broker.test>",
            "--mail-seal-key",
            MAIL_SEAL_KEY,
            "--metrics-listen",
            "127.0.0.1:0",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// Starts dbproc against this test's database, topics and SMTP capture, and waits until it
    /// reports ready (consumers assigned).
    pub async fn spawn_dbproc(&self) -> Running {
        let args = self.dbproc_args();
        let broker_auth_dbproc::Command::Serve(config) =
            broker_auth_dbproc::Cli::try_parse_from(args)
                .expect("dbproc settings")
                .command
        else {
            panic!("`serve` parses as the serve command")
        };
        let app = broker_auth_dbproc::App::build(config)
            .await
            .expect("dbproc starts");
        let dbproc = Running::spawn(app.metrics_addr(), app.metrics_addr(), |stop| async move {
            app.run(stop).await.expect("dbproc runs");
        });
        wait_until_ok(&dbproc.url("/readyz")).await;
        dbproc
    }

    /// A fresh address no other test uses.
    pub fn new_email(&self) -> String {
        format!("user-{}@example.com", uuid::Uuid::new_v4().simple())
    }

    /// Waits for the mail to `email` carrying a code and returns the code.
    pub async fn code_for(&self, email: &str) -> String {
        let mail = self
            .mail_for(email, |mail| extract_code(&mail.text()).is_some())
            .await;
        extract_code(&mail.text()).expect("the mail has a code")
    }

    pub async fn mail_for(
        &self,
        email: &str,
        predicate: impl Fn(&ReceivedMail) -> bool,
    ) -> ReceivedMail {
        self.smtp
            .wait_for(|mail| mail.is_to(email) && predicate(mail), PATIENCE)
            .await
            .unwrap_or_else(|| panic!("no matching mail to {email} within {PATIENCE:?}"))
    }

    /// Signs up `email` and returns a logged-in client after verifying with the emailed code.
    pub async fn register(&self, email: &str, password: &str) -> Client {
        let client = Client::new(self.api());
        let (status, _) = client.signup(email).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        let code = self.code_for(email).await;
        let (status, body) = client.verify(email, &code, password, "Test User").await;
        assert_eq!(status, StatusCode::CREATED, "verify failed: {body}");
        client
    }
}

/// The sum of the Prometheus samples at `url` whose line starts with `prefix`.
pub async fn metric_sum(url: &str, prefix: &str) -> f64 {
    let text = reqwest::get(url)
        .await
        .expect("the metrics endpoint answers")
        .text()
        .await
        .unwrap_or_default();
    metric_sum_in(&text, prefix)
}

/// The sum of the samples in Prometheus text `text` whose line starts with `prefix`.
pub fn metric_sum_in(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The six digits in a code mail.
pub fn extract_code(text: &str) -> Option<String> {
    text.split(|c: char| !c.is_ascii_digit())
        .find(|word| word.len() == 6)
        .map(str::to_owned)
}

/// Sets `flag` to `value` in a command line such as [`TestEnv::api_args`]: replaces the value after
/// `flag`, or appends both (e.g. to give a real binary fixed ports instead of the harness's 0).
pub fn set_arg(args: &mut Vec<String>, flag: &str, value: &str) {
    match args.iter().position(|arg| arg == flag) {
        Some(at) => args[at + 1] = value.to_owned(),
        None => args.extend([flag.to_owned(), value.to_owned()]),
    }
}

/// Polls `url` until it answers 200, failing the test after [`PATIENCE`].
pub async fn wait_until_ok(url: &str) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let last = client.get(url).timeout(Duration::from_secs(2)).send().await;
        match last {
            Ok(response) if response.status() == StatusCode::OK => return,
            last if Instant::now() > deadline => {
                let detail = match last {
                    Ok(response) => format!(
                        "{}: {}",
                        response.status(),
                        response.text().await.unwrap_or_default()
                    ),
                    Err(error) => error.to_string(),
                };
                panic!("{url} was not OK within {PATIENCE:?}: {detail}")
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A browser-like HTTP client with its own cookie jar.
pub struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    pub fn new(api: &Running) -> Self {
        Self::for_origin(&api.url(""))
    }

    /// A client of the API at `origin` (`http://host:port`), e.g. a separately started process.
    pub fn for_origin(origin: &str) -> Self {
        Self::build(origin, None)
    }

    /// A client whose connections come from `source`, a loopback address such as 127.0.0.2:
    /// to the API, another client IP.
    pub fn from_source(api: &Running, source: std::net::IpAddr) -> Self {
        Self::build(&api.url(""), Some(source))
    }

    /// A client of the API at `origin` whose connections come from `source`.
    pub fn for_origin_from(origin: &str, source: std::net::IpAddr) -> Self {
        Self::build(origin, Some(source))
    }

    fn build(origin: &str, source: Option<std::net::IpAddr>) -> Self {
        Self {
            http: reqwest::Client::builder()
                .cookie_store(true)
                .timeout(PATIENCE)
                .local_address(source)
                .build()
                .expect("an HTTP client"),
            base: format!("{origin}/api/v1/auth"),
        }
    }

    /// The same cookie jar, pointed at another API instance.
    pub fn at(&self, api: &Running) -> Self {
        self.with_origin(&api.url(""))
    }

    /// The same cookie jar, pointed at the API at `origin`.
    pub fn with_origin(&self, origin: &str) -> Self {
        Self {
            http: self.http.clone(),
            base: format!("{origin}/api/v1/auth"),
        }
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .expect("the API answers");
        read(response).await
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    pub async fn signup(&self, email: &str) -> (StatusCode, Value) {
        self.post("/signup", json!({ "email": email })).await
    }

    pub async fn verify(
        &self,
        email: &str,
        otp: &str,
        password: &str,
        name: &str,
    ) -> (StatusCode, Value) {
        self.post(
            "/verify",
            json!({ "email": email, "otp": otp, "password": password, "name": name }),
        )
        .await
    }

    pub async fn signin(&self, email: &str, password: &str) -> (StatusCode, Value) {
        self.post("/signin", json!({ "email": email, "password": password }))
            .await
    }

    pub async fn me(&self) -> (StatusCode, Value) {
        let response = self
            .http
            .get(format!("{}/me", self.base))
            .send()
            .await
            .expect("the API answers");
        read(response).await
    }

    pub async fn logout(&self) -> StatusCode {
        self.http
            .post(format!("{}/logout", self.base))
            .send()
            .await
            .expect("the API answers")
            .status()
    }

    /// `POST /logout?scope={scope}`.
    pub async fn logout_scope(&self, scope: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .post(format!("{}/logout?scope={scope}", self.base))
            .send()
            .await
            .expect("the API answers");
        read(response).await
    }

    pub async fn recover(&self, email: &str) -> (StatusCode, Value) {
        self.post("/recover", json!({ "email": email })).await
    }

    pub async fn recover_verify(
        &self,
        email: &str,
        otp: &str,
        password: &str,
    ) -> (StatusCode, Value) {
        self.post(
            "/recover/verify",
            json!({ "email": email, "otp": otp, "password": password }),
        )
        .await
    }

    pub async fn change_password(&self, current: &str, new: &str) -> (StatusCode, Value) {
        self.post(
            "/password",
            json!({ "current_password": current, "password": new }),
        )
        .await
    }

    /// `GET /sessions`.
    pub async fn sessions(&self) -> (StatusCode, Value) {
        let response = self
            .http
            .get(format!("{}/sessions", self.base))
            .send()
            .await
            .expect("the API answers");
        read(response).await
    }

    /// `DELETE /sessions/{id}`.
    pub async fn end_session(&self, id: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .delete(format!("{}/sessions/{id}", self.base))
            .send()
            .await
            .expect("the API answers");
        read(response).await
    }
}

pub async fn read(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, body)
}
