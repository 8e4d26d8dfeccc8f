//! Worker tier sizing: how fast one dbproc replica drains a backlog of directory requests, how
//! long a request queued behind a given lag waits, and the lag per replica the autoscaler should
//! target so a request's wait stays within the API's reply timeout with a 2× margin.

use std::time::{Duration, Instant};

use broker_auth_contract::{
    AuthenticationLookup, Envelope, ExistenceCheck, MailRequest, MailSealKey, MailTemplate,
    RequestHeaders, RequestKind, Topics, UserCreation, headers,
};
use broker_auth_e2e::{MAIL_SEAL_KEY, Mode, Options, TestEnv};
use broker_auth_kafka::KafkaSettings;
use broker_auth_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use broker_auth_kafka::rdkafka::producer::FutureRecord;
use broker_auth_kafka::rdkafka::util::Timeout;
use broker_auth_testkit::process::Stop;
use broker_auth_testkit::services;

use crate::Result;
use crate::deploy::{Deployment, Settings, cores_between, services_cpu_seconds, usage_of};

/// The API's default reply timeout (`KAFKA_REPLY_TIMEOUT_MS`).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// One drain: `requests` queued on `partitions` partitions before one dbproc replica starts.
pub struct Drain {
    pub requests: usize,
    /// Replies per second from the first reply to the last.
    pub rate: f64,
    /// From the replica's start to its first reply (joining the group, connecting).
    pub startup: Duration,
    /// When the reply to the n-th queued request had been written, counted from the first
    /// reply: the wait of a request queued behind a lag of n, once the replica is running.
    pub waits: Vec<(usize, Duration)>,
}

impl Drain {
    /// The lag per replica at which a queued request waits half the reply timeout.
    pub fn lag_threshold(&self) -> f64 {
        self.rate * REPLY_TIMEOUT.as_secs_f64() / 2.0
    }
}

/// Queues `requests` directory requests (a third each of existence checks, authentication
/// lookups and user creations, as signup, signin and verify send them) on topics with
/// `partitions` partitions, starts one dbproc, and times the drain.
pub async fn drain(
    settings: &Settings,
    partitions: u32,
    requests: usize,
    marks: &[usize],
) -> Result<Drain> {
    let env = TestEnv::services_only(Mode::Distributed, Options::default()).await;
    let topics = Topics::new(env.prefix.clone())?;
    let mut kafka = KafkaSettings::new(services::kafka_brokers());
    kafka.topic_partitions = i32::try_from(partitions)?;
    broker_auth_kafka::ensure_topics(&kafka, &topics.all()).await?;

    let password_hash = bcrypt::hash("correct horse battery", 4)?;
    let producer = kafka.producer()?;
    let mut sends = Vec::new();
    for i in 0..requests {
        let email = format!("drain-{i}-{}@example.com", uuid::Uuid::new_v4().simple());
        let request_id = uuid::Uuid::new_v4();
        let (kind, body) = match i % 3 {
            0 => (
                RequestKind::ExistenceCheck,
                Envelope::new(
                    request_id,
                    ExistenceCheck {
                        email: email.clone(),
                    },
                )
                .to_json(),
            ),
            1 => (
                RequestKind::Authentication,
                Envelope::new(
                    request_id,
                    AuthenticationLookup {
                        email: email.clone(),
                    },
                )
                .to_json(),
            ),
            _ => (
                RequestKind::UserCreation,
                Envelope::new(
                    request_id,
                    UserCreation {
                        email: email.clone(),
                        name: "Drain".to_owned(),
                        password_hash: password_hash.clone(),
                        request_digest: None,
                    },
                )
                .to_json(),
            ),
        };
        let headers = RequestHeaders {
            correlation_id: uuid::Uuid::new_v4(),
            reply_to: topics.reply(kind),
            traceparent: None,
        }
        .encode();
        let topic = topics.request(kind);
        let producer = producer.clone();
        sends.push(async move {
            let record = FutureRecord::to(&topic).key(&email).payload(&body).headers(
                broker_auth_kafka::headers(
                    headers.iter().map(|(name, value)| (*name, value.as_str())),
                ),
            );
            producer
                .send(record, Timeout::After(Duration::from_secs(30)))
                .await
                .map(|_| ())
                .map_err(|(error, _)| error)
        });
        if sends.len() == 1000 || i + 1 == requests {
            for sent in futures::future::join_all(sends.drain(..)).await {
                sent?;
            }
        }
    }

    let mut deployment = Deployment {
        env,
        apis: Vec::new(),
        dbproc: None,
    };
    let dbproc_settings = Settings {
        partitions,
        ..settings.clone()
    };
    let started = Instant::now();
    deployment.dbproc = Some(
        deployment
            .start_dbproc(&dbproc_settings, "dbproc-drain")
            .await?,
    );

    let reply_topics = topics.reply_topics();
    let counter = kafka.clone();
    let marks = marks.to_vec();
    let (first, done, waits) = tokio::task::spawn_blocking(move || -> Result<_> {
        let consumer: BaseConsumer = counter.base_config().create()?;
        let mut first = None;
        let mut waits = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let mut replies = 0usize;
            for topic in &reply_topics {
                for partition in 0..i32::try_from(partitions)? {
                    let (low, high) =
                        consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
                    replies += usize::try_from(high - low).unwrap_or(0);
                }
            }
            let now = Instant::now();
            if replies > 0 && first.is_none() {
                first = Some(now);
            }
            if let Some(first) = first {
                for mark in &marks {
                    if replies >= *mark && !waits.iter().any(|(m, _)| m == mark) {
                        waits.push((*mark, now - first));
                    }
                }
            }
            if replies >= requests {
                return Ok((first.unwrap_or(now), now, waits));
            }
            if now > deadline {
                return Err(format!("only {replies} of {requests} requests were answered").into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await??;
    if let Some(dbproc) = &mut deployment.dbproc {
        dbproc.process.stop(Stop::Term).await?;
    }
    let draining = done.duration_since(first).as_secs_f64().max(1e-3);
    Ok(Drain {
        requests,
        rate: requests as f64 / draining,
        startup: first.duration_since(started),
        waits,
    })
}

/// What an idle deployment (one API, one dbproc, no requests) costs in CPU, in cores: the price
/// of short fetch waits, paid in fetches that find nothing.
pub struct IdleCost {
    pub api: f64,
    pub dbproc: f64,
    pub services: f64,
}

pub async fn idle_cost(settings: &Settings, over: Duration) -> Result<IdleCost> {
    let deployment = Deployment::start(&Settings {
        mode: Mode::Distributed,
        apis: 1,
        ..settings.clone()
    })
    .await?;
    // Let start-up work (group joins, topic checks) finish first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let api_before = usage_of(deployment.api());
    let dbproc_before = deployment.dbproc.as_ref().and_then(usage_of);
    let services_before = services_cpu_seconds();
    let started = Instant::now();
    tokio::time::sleep(over).await;
    let wall = started.elapsed().as_secs_f64();
    let cost = IdleCost {
        api: cores_between(api_before, usage_of(deployment.api()), wall).unwrap_or(f64::NAN),
        dbproc: cores_between(
            dbproc_before,
            deployment.dbproc.as_ref().and_then(usage_of),
            wall,
        )
        .unwrap_or(f64::NAN),
        services: (services_cpu_seconds() - services_before) / wall,
    };
    deployment.stop().await;
    Ok(cost)
}

/// One mail drain: `mails` signup-code mails queued on the mail topic before one dbproc replica
/// starts, sent to the SMTP capture.
pub struct MailDrain {
    pub mails: usize,
    /// Mails per second from the first accepted to the last.
    pub rate: f64,
}

pub async fn mail_drain(settings: &Settings, mails: usize) -> Result<MailDrain> {
    let env = TestEnv::services_only(Mode::Distributed, Options::default()).await;
    let topics = Topics::new(env.prefix.clone())?;
    let mut kafka = KafkaSettings::new(services::kafka_brokers());
    kafka.topic_partitions = i32::try_from(settings.partitions)?;
    broker_auth_kafka::ensure_topics(&kafka, &topics.all()).await?;
    let seal = MailSealKey::from_secret(MAIL_SEAL_KEY.as_bytes())?;
    let producer = kafka.producer()?;
    let topic = topics.mail();
    let mut sends = Vec::new();
    for i in 0..mails {
        let to = format!("mail-{i}-{}@example.com", uuid::Uuid::new_v4().simple());
        let id = uuid::Uuid::new_v4();
        let body = Envelope::new(
            id,
            seal.seal(MailRequest {
                to: to.clone(),
                template: MailTemplate::SignupCode {
                    code: "123456".to_owned(),
                    expires_in_minutes: 5,
                },
            }),
        )
        .to_json();
        let (producer, topic) = (producer.clone(), topic.clone());
        sends.push(async move {
            let correlation = id.to_string();
            let record = FutureRecord::to(&topic).key(&to).payload(&body).headers(
                broker_auth_kafka::headers([(headers::CORRELATION_ID, correlation.as_str())]),
            );
            producer
                .send(record, Timeout::After(Duration::from_secs(30)))
                .await
                .map(|_| ())
                .map_err(|(error, _)| error)
        });
    }
    for sent in futures::future::join_all(sends).await {
        sent?;
    }
    let mut deployment = Deployment {
        env,
        apis: Vec::new(),
        dbproc: None,
    };
    deployment.dbproc = Some(deployment.start_dbproc(settings, "dbproc-mail").await?);
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first = None;
    let done = loop {
        // Counted, not copied: the capture runs in this process, beside the measurement.
        let sent = deployment.env.smtp.message_count();
        let now = Instant::now();
        if sent > 0 && first.is_none() {
            first = Some(now);
        }
        if sent >= mails {
            break now;
        }
        if now > deadline {
            return Err(format!("only {sent} of {mails} mails were sent").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if let Some(dbproc) = &mut deployment.dbproc {
        dbproc.process.stop(Stop::Term).await?;
    }
    let sending = done
        .duration_since(first.unwrap_or(done))
        .as_secs_f64()
        .max(1e-3);
    Ok(MailDrain {
        mails,
        rate: mails as f64 / sending,
    })
}
