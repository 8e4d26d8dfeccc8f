//! The mail consumer: a sealed mail request in, opened, an SMTP delivery (or a dead letter) out.

use std::sync::Arc;

use broker_auth_contract::{Envelope, MailSealKey, SealedMailRequest, Topics, headers};
use broker_auth_kafka::header_str;
use broker_auth_kafka::rdkafka::Message;
use broker_auth_kafka::rdkafka::message::BorrowedMessage;
use broker_auth_mail::Mailer;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::consumer::{self, ConsumerName, GroupConsumer};
use crate::metrics::{DeadLetterLabels, MailFailureLabels, MailLabels, Metrics};
use crate::outbox::{Interrupted, Outbox};

pub struct MailWorker {
    pub consumer: Arc<GroupConsumer>,
    pub outbox: Outbox,
    pub mailer: Arc<dyn Mailer>,
    pub topics: Topics,
    pub metrics: Arc<Metrics>,
    pub max_attempts: u32,
    pub retry: Backoff,
    /// Opens the code the API sealed into the record.
    pub seal: MailSealKey,
}

impl MailWorker {
    /// Consumes until `shutdown`; a mail waiting between attempts is left uncommitted and
    /// picked up again at the next start.
    pub async fn run(self, shutdown: CancellationToken) {
        while let Some(message) =
            consumer::next_record(&self.consumer, ConsumerName::Mail, &self.retry, &shutdown).await
        {
            let span = tracing::info_span!(
                "mail",
                partition = message.partition(),
                offset = message.offset(),
                template = tracing::field::Empty,
                request_id = tracing::field::Empty,
            );
            let traceparent = header_str(message.headers(), headers::TRACEPARENT);
            broker_auth_telemetry::set_remote_parent(&span, traceparent);
            if self
                .process(&message, &shutdown)
                .instrument(span)
                .await
                .is_err()
            {
                break;
            }
            consumer::commit(&self.consumer, &message);
        }
    }

    async fn process(
        &self,
        message: &BorrowedMessage<'_>,
        shutdown: &CancellationToken,
    ) -> Result<(), Interrupted> {
        let decoded = message
            .payload()
            .ok_or(("empty_payload", "the record has no body".to_owned()))
            .and_then(|payload| {
                Envelope::<SealedMailRequest>::from_json(payload)
                    .map_err(|error| ("undecodable", error.to_string()))
            })
            .and_then(|envelope| {
                // A code sealed under another key (a key rotated between api and dbproc) or
                // tampered with can never be sent: dead-letter it, sealed as it came.
                let request_id = envelope.request_id;
                self.seal
                    .open(envelope.body)
                    .map(|mail| (request_id, mail))
                    .map_err(|error| ("unsealable", error.to_string()))
            });
        let (request_id, mail) = match decoded {
            Ok(opened) => opened,
            Err((code, detail)) => {
                let reason = format!("{code}: {detail}");
                return self.dead_letter(message, code, &reason, shutdown).await;
            }
        };
        let template = mail.template.name();
        let span = tracing::Span::current();
        span.record("template", template);
        span.record("request_id", tracing::field::display(request_id));

        let mut attempt = 0;
        let mut retrying = None;
        loop {
            attempt += 1;
            let sent = tokio::select! {
                () = shutdown.cancelled() => return Err(Interrupted),
                sent = self.mailer.send(&mail) => sent,
            };
            let error = match sent {
                Ok(()) => {
                    self.metrics
                        .mail_sent
                        .get_or_create(&MailLabels { template })
                        .inc();
                    tracing::info!(attempt, "mail sent");
                    return Ok(());
                }
                Err(error) => error,
            };
            self.metrics
                .mail_failed_attempts
                .get_or_create(&MailFailureLabels {
                    template,
                    error: error.kind_label(),
                })
                .inc();
            if !error.is_transient() {
                tracing::warn!(%error, attempt, "mail refused permanently; dead-lettering it");
                let reason = format!("smtp_permanent: {error}");
                return self
                    .dead_letter(message, "smtp_permanent", &reason, shutdown)
                    .await;
            }
            if attempt >= self.max_attempts {
                tracing::warn!(%error, attempt, "mail still failing after the last attempt; dead-lettering it");
                let reason = format!("smtp_attempts_exhausted after {attempt} attempts: {error}");
                return self
                    .dead_letter(message, "smtp_attempts_exhausted", &reason, shutdown)
                    .await;
            }
            retrying.get_or_insert_with(|| self.metrics.retrying(ConsumerName::Mail.label()));
            let delay = self.retry.delay(attempt);
            tracing::warn!(%error, attempt, retry_in_ms = delay.as_millis(), "mail not sent; retrying");
            if !self.retry.wait(attempt, shutdown).await {
                return Err(Interrupted);
            }
        }
    }

    async fn dead_letter(
        &self,
        message: &BorrowedMessage<'_>,
        code: &'static str,
        reason: &str,
        shutdown: &CancellationToken,
    ) -> Result<(), Interrupted> {
        tracing::warn!(reason = code, "dead-lettering a mail record");
        self.outbox
            .dead_letter(&self.topics.dead_letter(), message, reason, shutdown)
            .await?;
        self.metrics
            .dead_lettered
            .get_or_create(&DeadLetterLabels {
                consumer: ConsumerName::Mail.label(),
                reason: code,
            })
            .inc();
        Ok(())
    }
}
