//! Producing replies and dead letters until Kafka acknowledges them.

use std::time::Duration;

use broker_auth_contract::headers;
use broker_auth_kafka::rdkafka::Message;
use broker_auth_kafka::rdkafka::message::{BorrowedMessage, Header, OwnedHeaders};
use broker_auth_kafka::rdkafka::producer::{FutureProducer, FutureRecord};

use broker_auth_kafka::rdkafka::error::KafkaError;
use broker_auth_kafka::rdkafka::types::RDKafkaErrorCode;

use crate::backoff::Backoff;
use crate::consumer::{Abandoned, HeldRecord};

/// How long a record may wait in the producer's queue when it is full.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// A producer that retries every record until Kafka acknowledges it (or shutdown): a reply or a
/// dead letter that was never written must not let its request's offset be committed.
#[derive(Clone)]
pub struct Outbox {
    producer: FutureProducer,
    retry: Backoff,
}

impl Outbox {
    pub fn new(producer: FutureProducer, retry: Backoff) -> Self {
        Self { producer, retry }
    }

    /// Sends a reply until Kafka acknowledges it (`Ok(true)`), except that one to a topic that
    /// does not exist is given up (`Ok(false)`): an API instance's own reply topic goes with the
    /// instance.
    pub async fn send_reply(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: OwnedHeaders,
        held: &mut HeldRecord<'_>,
    ) -> Result<bool, Abandoned> {
        self.send_unless(topic, key, payload, headers, held, topic_is_gone)
            .await
    }

    /// Sends until Kafka acknowledges (`Ok(true)`) or `give_up` says an error is final
    /// (`Ok(false)`).
    async fn send_unless(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: OwnedHeaders,
        held: &mut HeldRecord<'_>,
        give_up: fn(&KafkaError) -> bool,
    ) -> Result<bool, Abandoned> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
                .payload(payload)
                .headers(headers.clone());
            if let Some(key) = key {
                record = record.key(key);
            }
            match held
                .attempt(self.producer.send(record, QUEUE_TIMEOUT))
                .await?
            {
                Ok(_) => return Ok(true),
                Err((error, _)) if give_up(&error) => {
                    tracing::warn!(%topic, %error, "kafka has no such topic; the record is dropped");
                    return Ok(false);
                }
                Err((error, _)) => {
                    tracing::warn!(%topic, %error, attempt, "kafka did not take a record; retrying");
                    held.wait(self.retry.delay(attempt)).await?;
                }
            }
        }
    }

    /// Writes `message` to the dead-letter topic with its key, payload and headers, plus why
    /// (`dead-letter-reason`) and where it came from (`dead-letter-source`).
    pub async fn dead_letter(
        &self,
        dead_letter_topic: &str,
        message: &BorrowedMessage<'_>,
        reason: &str,
        held: &mut HeldRecord<'_>,
    ) -> Result<(), Abandoned> {
        let source = format!(
            "{}/{}/{}",
            message.topic(),
            message.partition(),
            message.offset()
        );
        let headers = broker_auth_kafka::copy_headers(message.headers())
            .insert(Header {
                key: headers::DEAD_LETTER_REASON,
                value: Some(reason),
            })
            .insert(Header {
                key: headers::DEAD_LETTER_SOURCE,
                value: Some(&source),
            });
        self.send_unless(
            dead_letter_topic,
            message.key(),
            message.payload().unwrap_or_default(),
            headers,
            held,
            // A dead letter is written whatever it takes: the topic is the deployment's own.
            |_| false,
        )
        .await
        .map(|_| ())
    }
}

/// Whether Kafka refused a record because its topic does not exist.
fn topic_is_gone(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic)
    )
}
