//! Where the API hands mail off. It never talks SMTP on a request: distributed mode produces to
//! the mail topic for dbproc's mailer, with the code sealed; embedded mode gives the mail to a
//! background task.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use broker_auth_contract::{Envelope, MailRequest, MailSealKey, headers};
use broker_auth_mail::Mailer;
use broker_auth_user_store::RequestRecords;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("could not queue mail: {0}")]
    Queue(String),
}

#[async_trait]
pub trait MailOutbox: Send + Sync + 'static {
    async fn enqueue(&self, mail: MailRequest) -> Result<(), OutboxError>;
}

pub struct KafkaOutbox {
    producer: FutureProducer,
    topic: String,
    timeout: Duration,
    seal: MailSealKey,
}

impl KafkaOutbox {
    pub fn new(
        producer: FutureProducer,
        topic: String,
        timeout: Duration,
        seal: MailSealKey,
    ) -> Self {
        Self {
            producer,
            topic,
            timeout,
            seal,
        }
    }
}

#[async_trait]
impl MailOutbox for KafkaOutbox {
    async fn enqueue(&self, mail: MailRequest) -> Result<(), OutboxError> {
        let id = Uuid::new_v4();
        // The mail record carries this span's trace context: dbproc's sending is its child.
        let span = tracing::info_span!(
            "mail_enqueue",
            otel.kind = "producer",
            template = mail.template.name(),
            request_id = %id,
        );
        self.produce(id, mail).instrument(span).await
    }
}

impl KafkaOutbox {
    async fn produce(&self, id: Uuid, mail: MailRequest) -> Result<(), OutboxError> {
        let key = mail.to.clone();
        // Sealed, so the topic, its dead letters and the broker's disks hold no usable code.
        let body = Envelope::new(id, self.seal.seal(mail)).to_json();
        let correlation = id.to_string();
        let traceparent = broker_auth_telemetry::traceparent(&tracing::Span::current());
        let mut pairs = vec![(headers::CORRELATION_ID, correlation.as_str())];
        if let Some(traceparent) = &traceparent {
            pairs.push((headers::TRACEPARENT, traceparent));
        }
        let record = FutureRecord::to(&self.topic)
            .key(&key)
            .payload(&body)
            .headers(broker_auth_kafka::headers(pairs));
        self.producer
            .send(record, Timeout::After(self.timeout))
            .await
            .map_err(|(error, _)| OutboxError::Queue(error.to_string()))?;
        Ok(())
    }
}

/// How many mails embedded mode sends at once.
const IN_PROCESS_SENDERS: usize = 4;

/// Embedded mode: a bounded queue drained by a background task, so the request never waits on
/// delivery and a slow SMTP server cannot make the queue (and the process) grow without bound:
/// a full queue refuses the mail, and signup answers 503 with Retry-After.
pub struct InProcessOutbox {
    queue: mpsc::Sender<(Uuid, MailRequest)>,
}

impl InProcessOutbox {
    /// Starts the sender task; it stops when `stop` is cancelled. Each mail sent is recorded in
    /// `records`, as dbproc's mailer does.
    pub fn start(
        mailer: Arc<dyn Mailer>,
        records: Arc<dyn RequestRecords>,
        capacity: usize,
        stop: CancellationToken,
    ) -> Self {
        let (queue, receiver) = mpsc::channel(capacity.max(1));
        tokio::spawn(send_queued(mailer, records, receiver, stop));
        Self { queue }
    }
}

#[async_trait]
impl MailOutbox for InProcessOutbox {
    async fn enqueue(&self, mail: MailRequest) -> Result<(), OutboxError> {
        match self.queue.try_send((Uuid::new_v4(), mail)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(OutboxError::Queue(
                "the mail queue is full (SMTP is slower than signups arrive)".to_owned(),
            )),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(OutboxError::Queue("the mail sender has stopped".to_owned()))
            }
        }
    }
}

async fn send_queued(
    mailer: Arc<dyn Mailer>,
    records: Arc<dyn RequestRecords>,
    mut queue: mpsc::Receiver<(Uuid, MailRequest)>,
    stop: CancellationToken,
) {
    let mut sending = JoinSet::new();
    loop {
        // At most IN_PROCESS_SENDERS at once; the rest wait in the bounded queue.
        if sending.len() >= IN_PROCESS_SENDERS {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = sending.join_next() => continue,
            }
        }
        let next = tokio::select! {
            () = stop.cancelled() => break,
            next = queue.recv() => next,
            Some(_) = sending.join_next(), if !sending.is_empty() => continue,
        };
        let Some((request_id, mail)) = next else {
            break;
        };
        let mailer = mailer.clone();
        let records = records.clone();
        sending.spawn(async move {
            match mailer.send(request_id, &mail).await {
                Ok(()) => {
                    if let Err(error) = records.record_mail_sent(request_id).await {
                        tracing::warn!(%error, "could not record a sent mail");
                    }
                }
                Err(error) => {
                    tracing::error!(to = %mail.to, template = mail.template.name(), %error, "sending mail failed");
                }
            }
        });
    }
    sending.shutdown().await;
}
