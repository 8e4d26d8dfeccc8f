//! The mail consumer: a sealed mail request in, opened, an SMTP delivery (or a dead letter) out.
//!
//! Effectively once: the request id of every mail SMTP accepted is recorded before the offset is
//! committed, and a redelivered request already recorded is skipped. A mail is sent twice only if
//! the process dies in the moment between SMTP's acceptance and that record.

use std::sync::Arc;

use broker_auth_contract::{Envelope, MailSealKey, SealedMailRequest, Topics, headers};
use broker_auth_kafka::header_str;
use broker_auth_kafka::rdkafka::Message;
use broker_auth_kafka::rdkafka::message::BorrowedMessage;
use broker_auth_mail::Mailer;
use broker_auth_user_store::{RequestRecords, StoreError};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::consumer::{self, Abandoned, ConsumerName, GroupConsumer, HeldRecord};
use crate::metrics::{DeadLetterLabels, MailFailureLabels, MailLabels, Metrics};
use crate::outbox::Outbox;

pub struct MailWorker {
    pub consumer: Arc<GroupConsumer>,
    pub outbox: Outbox,
    pub mailer: Arc<dyn Mailer>,
    /// Which mail requests were sent already.
    pub records: Arc<dyn RequestRecords>,
    /// Backoff while the database is unavailable.
    pub store_retry: Backoff,
    pub topics: Topics,
    pub metrics: Arc<Metrics>,
    pub max_attempts: u32,
    pub retry: Backoff,
    /// Opens the code the API sealed into the record.
    pub seal: MailSealKey,
}

impl MailWorker {
    /// Consumes until `shutdown`; a mail being sent is sent and recorded first, a mail waiting
    /// between attempts is left uncommitted and picked up again at the next start.
    pub async fn run(self, shutdown: CancellationToken) {
        while let Some(message) =
            consumer::next_record(&self.consumer, ConsumerName::Mail, &shutdown).await
        {
            let span = tracing::info_span!(
                "mail",
                otel.kind = "consumer",
                partition = message.partition(),
                offset = message.offset(),
                template = tracing::field::Empty,
                request_id = tracing::field::Empty,
            );
            let traceparent = header_str(message.headers(), headers::TRACEPARENT);
            broker_auth_telemetry::set_remote_parent(&span, traceparent);
            let mut held = HeldRecord::new(&self.consumer, ConsumerName::Mail, &message, &shutdown);
            let started = std::time::Instant::now();
            let outcome = self.process(&message, &mut held).instrument(span).await;
            if outcome.is_ok() {
                self.metrics
                    .mail_duration
                    .observe(started.elapsed().as_secs_f64());
            }
            match outcome {
                Ok(()) if held.still_assigned() => consumer::commit(&self.consumer, &message),
                // Answered, but the partition moved meanwhile: its new owner answers it again.
                Ok(()) | Err(Abandoned::Revoked) | Err(Abandoned::Shutdown) => {}
            }
            held.release();
            if outcome == Err(Abandoned::Shutdown) {
                break;
            }
        }
    }

    async fn process(
        &self,
        message: &BorrowedMessage<'_>,
        held: &mut HeldRecord<'_>,
    ) -> Result<(), Abandoned> {
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
                return self.dead_letter(message, code, &reason, held).await;
            }
        };
        let template = mail.template.name();
        let span = tracing::Span::current();
        span.record("template", template);
        span.record("request_id", tracing::field::display(request_id));
        let already_sent = self
            .with_store_retry(held, || self.records.mail_was_sent(request_id))
            .await?;
        if already_sent == Some(true) {
            self.metrics
                .mail_duplicates_skipped
                .get_or_create(&MailLabels { template })
                .inc();
            tracing::info!("mail already sent by an earlier delivery of this record; skipping it");
            return Ok(());
        }

        let mut attempt = 0;
        let mut retrying = None;
        loop {
            attempt += 1;
            // Not begun after shutdown, but finished if shutdown comes meanwhile, and recorded.
            held.check_shutdown()?;
            let sent = held
                .finish(
                    self.mailer
                        .send(request_id, &mail)
                        .instrument(tracing::info_span!("smtp_send", attempt)),
                )
                .await;
            let error = match sent {
                Ok(()) => {
                    self.metrics
                        .mail_sent
                        .get_or_create(&MailLabels { template })
                        .inc();
                    tracing::info!(attempt, "mail sent");
                    return self.record_sent(request_id, held).await;
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
                    .dead_letter(message, "smtp_permanent", &reason, held)
                    .await;
            }
            if attempt >= self.max_attempts {
                tracing::warn!(%error, attempt, "mail still failing after the last attempt; dead-lettering it");
                let reason = format!("smtp_attempts_exhausted after {attempt} attempts: {error}");
                return self
                    .dead_letter(message, "smtp_attempts_exhausted", &reason, held)
                    .await;
            }
            retrying.get_or_insert_with(|| self.metrics.retrying(ConsumerName::Mail.label()));
            let delay = self.retry.delay(attempt);
            tracing::warn!(%error, attempt, retry_in_ms = delay.as_millis(), "mail not sent; retrying");
            held.wait(delay).await?;
        }
    }

    /// Records that `request_id` was sent, retrying while the database is unavailable — even
    /// when the partition moves meanwhile, since its new owner checks this record.
    async fn record_sent(
        &self,
        request_id: Uuid,
        held: &mut HeldRecord<'_>,
    ) -> Result<(), Abandoned> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            // The first attempt is finished even if shutdown comes meanwhile: the mail is out.
            let recorded = if attempt == 1 {
                held.finish(self.records.record_mail_sent(request_id)).await
            } else {
                held.attempt(self.records.record_mail_sent(request_id))
                    .await?
            };
            match recorded {
                Ok(()) => return Ok(()),
                Err(error) if error.is_transient() => {
                    let delay = self.store_retry.delay(attempt);
                    tracing::warn!(%error, attempt, retry_in_ms = delay.as_millis(), "could not record a sent mail; retrying");
                    held.wait_through_revocation(delay).await?;
                }
                Err(error) => {
                    tracing::error!(%error, "could not record a sent mail; a redelivery would send it again");
                    return Ok(());
                }
            }
        }
    }

    /// `operation`'s result, retried while the database is unavailable; `None` when it failed
    /// in a way retrying will not fix (logged).
    async fn with_store_retry<T, F, Fut>(
        &self,
        held: &mut HeldRecord<'_>,
        operation: F,
    ) -> Result<Option<T>, Abandoned>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match held.attempt(operation()).await? {
                Ok(value) => return Ok(Some(value)),
                Err(error) if error.is_transient() => {
                    let delay = self.store_retry.delay(attempt);
                    tracing::warn!(%error, attempt, retry_in_ms = delay.as_millis(), "mail records unavailable; retrying");
                    held.wait(delay).await?;
                }
                Err(error) => {
                    tracing::error!(%error, "reading the mail records failed");
                    return Ok(None);
                }
            }
        }
    }

    async fn dead_letter(
        &self,
        message: &BorrowedMessage<'_>,
        code: &'static str,
        reason: &str,
        held: &mut HeldRecord<'_>,
    ) -> Result<(), Abandoned> {
        tracing::warn!(reason = code, "dead-lettering a mail record");
        self.outbox
            .dead_letter(&self.topics.dead_letter(), message, reason, held)
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
