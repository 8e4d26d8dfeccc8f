//! Two API processes — the real binary, twice — sharing one Kafka: every reply must reach the
//! process that asked, and codes and sessions work across them through Redis.

#![allow(clippy::unwrap_used)] // A failed unwrap in a test is a failed test, with its location.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use broker_auth_e2e::{Client, Mode, PATIENCE, TestEnv, metric_sum, set_arg, wait_until_ok};
use broker_auth_testkit::private::TempDir;
use broker_auth_testkit::process::{ManagedProcess, Stop, free_port};
use broker_auth_testkit::services;

const PASSWORD: &str = "correct horse battery";

/// A running `broker-auth-api` process, killed when dropped.
struct ApiProcess {
    child: Child,
    addr: SocketAddr,
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn spawn_process(env: &TestEnv) -> ApiProcess {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let mut args = env.api_args();
    args.remove(0);
    set_arg(&mut args, "--listen", &addr.to_string());
    let child = Command::new(env!("CARGO_BIN_EXE_broker-auth-api"))
        .args(&args)
        .env_remove("KAFKA_BROKERS")
        .env_remove("REDIS_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let process = ApiProcess { child, addr };
    wait_until_ok(&format!("http://{addr}/readyz")).await;
    process
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_api_processes_on_one_kafka_each_get_their_own_replies() {
    let env = TestEnv::start(Mode::Distributed).await;
    let first = spawn_process(&env).await;
    let second = spawn_process(&env).await;
    let processes = [&first, &second];

    let flows = (0..6).map(|i| {
        let env = &env;
        let here = processes[i % 2].addr;
        let there = processes[(i + 1) % 2].addr;
        async move {
            let email = env.new_email();
            // Each user is its own client address: the API gives one client IP one password
            // hash at a time (a second one at once is a 429), and these users run in parallel.
            let source = std::net::IpAddr::from([127, 0, 4, u8::try_from(i + 1).unwrap()]);
            let client = Client::for_origin_from(&format!("http://{here}"), source);
            assert_eq!(client.signup(&email).await.0, StatusCode::ACCEPTED);
            let code = env.code_for(&email).await;
            let client = client.with_origin(&format!("http://{there}"));
            let (status, body) = client.verify(&email, &code, PASSWORD, "Twin").await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            let client = client.with_origin(&format!("http://{here}"));
            assert_eq!(client.me().await.0, StatusCode::OK);
            assert_eq!(client.signin(&email, PASSWORD).await.0, StatusCode::OK);
        }
    });
    futures::future::join_all(flows).await;
}

/// This environment's instance reply topics (`{prefix}api-replies.*`) as Kafka lists them.
fn instance_topics(env: &TestEnv) -> Vec<String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let topics = broker_auth_contract::Topics::new(env.prefix.clone()).unwrap();
    let client: BaseConsumer = broker_auth_kafka::KafkaSettings::new(services::kafka_brokers())
        .base_config()
        .create()
        .unwrap();
    let metadata = client
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap();
    let mut names: Vec<String> = metadata
        .topics()
        .iter()
        .map(|topic| topic.name().to_owned())
        .filter(|name| topics.instance_of(name).is_some())
        .collect();
    names.sort();
    names
}

/// Polls `instance_topics` until `done` holds, failing after [`PATIENCE`] with the log of
/// `process`.
async fn until_topics(
    env: &TestEnv,
    process: &ManagedProcess,
    what: &str,
    done: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let topics = instance_topics(env);
        if done(&topics) {
            return topics;
        }
        assert!(
            Instant::now() < deadline,
            "{what}; the instance topics are {topics:?}; {}'s log ends:\n{}",
            process.name(),
            process.log_tail()
        );
        // Polling Kafka's metadata: a short pause between looks, bounded by the deadline.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The real binary, with its own instance id and a quick reply-topic check.
fn api_process(
    env: &TestEnv,
    logs: &TempDir,
    instance: &str,
) -> (ManagedProcess, SocketAddr, SocketAddr) {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let mut args = env.api_args();
    args.remove(0);
    set_arg(&mut args, "--listen", &addr.to_string());
    set_arg(&mut args, "--metrics-listen", &metrics.to_string());
    args.extend(
        [
            "--instance-id",
            instance,
            "--kafka-metadata-refresh-ms",
            "200",
        ]
        .map(str::to_owned),
    );
    let process = ManagedProcess::new(
        instance,
        env!("CARGO_BIN_EXE_broker-auth-api"),
        logs.path().join(format!("{instance}.log")),
    )
    .args(args);
    (process, addr, metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_api_process_reads_only_its_own_replies_and_its_topic_goes_with_it() {
    let env = TestEnv::start(Mode::Distributed).await;
    let logs = TempDir::new("two-processes").unwrap();
    let (mut first, first_addr, first_metrics) = api_process(&env, &logs, "api-one");
    let (mut second, second_addr, second_metrics) = api_process(&env, &logs, "api-two");
    for (process, addr) in [(&mut first, first_addr), (&mut second, second_addr)] {
        process.start_listening(addr, PATIENCE).await.unwrap();
        wait_until_ok(&format!("http://{addr}/readyz")).await;
    }
    let prefix = format!("{}api-replies.", env.prefix);
    let one = format!("{prefix}api-one");
    let two = format!("{prefix}api-two");
    // The environment's own in-process API has a topic too.
    let topics = instance_topics(&env);
    assert_eq!(topics.len(), 3, "{topics:?}");
    assert!(topics.contains(&one) && topics.contains(&two), "{topics:?}");

    // Three signups through each: one directory round trip each, and no process reads a reply
    // meant for the other.
    for addr in [first_addr, second_addr] {
        let client = Client::for_origin(&format!("http://{addr}"));
        for _ in 0..3 {
            assert_eq!(
                client.signup(&env.new_email()).await.0,
                StatusCode::ACCEPTED
            );
        }
    }
    for metrics in [first_metrics, second_metrics] {
        let url = format!("http://{metrics}/metrics");
        let awaited = metric_sum(
            &url,
            r#"broker_auth_api_kafka_replies_read_total{awaited="true"}"#,
        )
        .await;
        let others = metric_sum(
            &url,
            r#"broker_auth_api_kafka_replies_read_total{awaited="false"}"#,
        )
        .await;
        assert_eq!(
            (awaited, others),
            (3.0, 0.0),
            "replies read by the process at {metrics}"
        );
    }

    // A process that shuts down deletes its topic, and exits cleanly; one that is killed leaves
    // it (the operator deletes those).
    let exit = second.stop_status(Stop::Term).await.unwrap();
    assert!(
        exit.is_some_and(|status| status.success()),
        "api-two exited with {exit:?}; its log ends:\n{}",
        second.log_tail()
    );
    until_topics(
        &env,
        &second,
        "the stopped process's topic is deleted",
        |topics| !topics.contains(&two),
    )
    .await;
    first.stop(Stop::Kill).await.unwrap();
    assert!(instance_topics(&env).contains(&one));
}
