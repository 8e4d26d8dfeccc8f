//! Where the API hands mail off. It never talks SMTP on a request: distributed mode produces to
//! the mail topic for dbproc's mailer, with the code sealed; embedded mode gives the mail to a
//! background task.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use broker_auth_contract::{Envelope, MailRequest, MailSealKey, headers};
use broker_auth_mail::Mailer;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
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

/// Embedded mode: sends in a background task so the request never waits on delivery.
pub struct InProcessOutbox {
    mailer: Arc<dyn Mailer>,
}

impl InProcessOutbox {
    pub fn new(mailer: Arc<dyn Mailer>) -> Self {
        Self { mailer }
    }
}

#[async_trait]
impl MailOutbox for InProcessOutbox {
    async fn enqueue(&self, mail: MailRequest) -> Result<(), OutboxError> {
        let mailer = self.mailer.clone();
        tokio::spawn(async move {
            if let Err(error) = mailer.send(&mail).await {
                tracing::error!(to = %mail.to, template = mail.template.name(), %error, "sending mail failed");
            }
        });
        Ok(())
    }
}
