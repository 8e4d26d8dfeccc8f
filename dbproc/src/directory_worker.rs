//! The user-directory consumer: request in, reply out, offset committed after both.

use std::sync::Arc;
use std::time::{Duration, Instant};

use broker_auth_contract::{
    ContractError, DirectoryReply, DirectoryRequest, ReplyHeaders, RequestHeaders, RequestKind,
    Topics, headers,
};
use broker_auth_kafka::raw_headers;
use broker_auth_kafka::rdkafka::Message;
use broker_auth_kafka::rdkafka::message::BorrowedMessage;
use broker_auth_user_store::UserDirectory;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::consumer::{self, Abandoned, ConsumerName, GroupConsumer, HeldRecord};
use crate::metrics::{DeadLetterLabels, KindLabels, Metrics, RequestLabels};
use crate::outbox::Outbox;

/// The rejection code sent when the database failed in a way retrying will not fix.
pub const INTERNAL_ERROR: &str = "internal_error";

pub struct DirectoryWorker {
    pub consumer: Arc<GroupConsumer>,
    pub outbox: Outbox,
    pub directory: UserDirectory,
    pub topics: Topics,
    pub metrics: Arc<Metrics>,
    /// Backoff while the database is unavailable.
    pub store_retry: Backoff,
}

/// Why a record cannot be answered and goes to the dead-letter topic instead.
struct Undeliverable {
    /// Short, fixed label for metrics and logs.
    code: &'static str,
    /// The full reason, for the `dead-letter-reason` header.
    detail: String,
}

impl Undeliverable {
    fn new(code: &'static str, detail: impl std::fmt::Display) -> Self {
        Self {
            code,
            detail: format!("{code}: {detail}"),
        }
    }
}

/// A decoded request with everything needed to answer it.
struct Request {
    kind: RequestKind,
    request_id: Uuid,
    body: DirectoryRequest,
    correlation_id: Uuid,
    reply_to: String,
    traceparent: Option<String>,
}

impl DirectoryWorker {
    /// Consumes until `shutdown`; returns after the current record is done or abandoned.
    pub async fn run(self, shutdown: CancellationToken) {
        while let Some(message) =
            consumer::next_record(&self.consumer, ConsumerName::Directory, &shutdown).await
        {
            let mut held =
                HeldRecord::new(&self.consumer, ConsumerName::Directory, &message, &shutdown);
            let outcome = self.process(&message, &mut held).await;
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
        let request = match self.decode(message) {
            Ok(request) => request,
            Err(undeliverable) => {
                let span = tracing::info_span!(
                    "directory_dead_letter",
                    topic = message.topic(),
                    partition = message.partition(),
                    offset = message.offset(),
                );
                return self
                    .dead_letter(message, undeliverable, held)
                    .instrument(span)
                    .await;
            }
        };
        let span = tracing::info_span!(
            "directory_request",
            otel.kind = "consumer",
            kind = request.kind.label(),
            partition = message.partition(),
            offset = message.offset(),
            correlation_id = %request.correlation_id,
            request_id = %request.request_id,
            outcome = tracing::field::Empty,
        );
        broker_auth_telemetry::set_remote_parent(&span, request.traceparent.as_deref());
        self.answer(message, request, held).instrument(span).await
    }

    fn decode(&self, message: &BorrowedMessage<'_>) -> Result<Request, Undeliverable> {
        let kind = self
            .topics
            .request_kind_of(message.topic())
            .ok_or_else(|| {
                Undeliverable::new(
                    "unknown_topic",
                    format!("{} is not a request topic", message.topic()),
                )
            })?;
        let record_headers = raw_headers(message.headers());
        let RequestHeaders {
            correlation_id,
            reply_to,
            traceparent,
        } = RequestHeaders::decode(&record_headers).map_err(|error| {
            let code = match &error {
                ContractError::MissingHeader(headers::CORRELATION_ID) => "missing_correlation_id",
                ContractError::MissingHeader(_) => "missing_reply_to",
                ContractError::InvalidHeader {
                    name: headers::CORRELATION_ID,
                    ..
                } => "invalid_correlation_id",
                _ => "invalid_reply_to",
            };
            Undeliverable::new(code, error)
        })?;
        if !self.topics.is_reply_topic(&reply_to) {
            return Err(Undeliverable::new(
                "invalid_reply_to",
                format!("{reply_to:?} is not a reply topic of this deployment"),
            ));
        }
        let payload = message
            .payload()
            .ok_or_else(|| Undeliverable::new("empty_payload", "the record has no body"))?;
        let envelope = DirectoryRequest::decode(kind, payload)
            .map_err(|error| Undeliverable::new("undecodable", error))?;
        Ok(Request {
            kind,
            request_id: envelope.request_id,
            body: envelope.body,
            correlation_id,
            reply_to,
            traceparent,
        })
    }

    async fn answer(
        &self,
        message: &BorrowedMessage<'_>,
        request: Request,
        held: &mut HeldRecord<'_>,
    ) -> Result<(), Abandoned> {
        let started = Instant::now();
        let kind = request.kind;
        let reply = self.handle_with_retry(&request, held).await?;
        let outcome = match &reply {
            Some(reply) if reply.rejection().is_some() => "rejected",
            Some(_) => "ok",
            None => INTERNAL_ERROR,
        };
        tracing::Span::current().record("outcome", outcome);
        let reply = reply.unwrap_or_else(|| {
            DirectoryReply::rejected(
                kind,
                INTERNAL_ERROR,
                "the user directory failed; try again later",
            )
        });

        // The reply record carries this span's trace context, so the API's receipt of the reply
        // closes the same trace; without tracing set up, the request's context passes through.
        let reply_span = tracing::info_span!("directory_reply", otel.kind = "producer");
        let reply_headers = ReplyHeaders {
            correlation_id: request.correlation_id,
            traceparent: broker_auth_telemetry::traceparent(&reply_span)
                .or_else(|| request.traceparent.clone()),
        }
        .encode();
        let reply_headers = broker_auth_kafka::headers(
            reply_headers
                .iter()
                .map(|(name, value)| (*name, value.as_str())),
        );
        // An instance's own reply topic goes with the instance: a reply to one that is gone has
        // nobody to read it, and retrying it would hold up the partition for nothing.
        let delivered = self
            .outbox
            .send_reply(
                &request.reply_to,
                message.key(),
                &reply.encode(request.request_id),
                reply_headers,
                held,
            )
            .instrument(reply_span)
            .await?;
        if !delivered {
            self.metrics.replies_dropped.inc();
        }

        // Invalid requests are answered (so the API does not wait for a timeout) and also kept
        // on the dead-letter topic, where someone can see what a client sent.
        if let Some((code, reason)) = reply.rejection() {
            self.dead_letter(
                message,
                Undeliverable::new("rejected", format!("{code}: {reason}")),
                held,
            )
            .await?;
        }
        self.metrics
            .requests_handled
            .get_or_create(&RequestLabels {
                kind: kind.label(),
                outcome,
            })
            .inc();
        self.metrics
            .request_duration
            .get_or_create(&KindLabels { kind: kind.label() })
            .observe(started.elapsed().as_secs_f64());
        tracing::debug!(elapsed_ms = started.elapsed().as_millis(), "answered");
        Ok(())
    }

    /// The directory's reply; retried while the database is unavailable. `None` when it
    /// failed permanently.
    async fn handle_with_retry(
        &self,
        request: &Request,
        held: &mut HeldRecord<'_>,
    ) -> Result<Option<DirectoryReply>, Abandoned> {
        let mut attempt = 0;
        let mut retrying = None;
        loop {
            attempt += 1;
            let handled = held
                .attempt(
                    self.directory
                        .handle(request.request_id, request.body.clone()),
                )
                .await?;
            match handled {
                Ok(reply) => return Ok(Some(reply)),
                Err(error) if error.is_transient() => {
                    self.metrics.store_retries.inc();
                    retrying.get_or_insert_with(|| {
                        self.metrics.retrying(ConsumerName::Directory.label())
                    });
                    let delay = self.store_retry.delay(attempt);
                    tracing::warn!(%error, attempt, retry_in_ms = delay.as_millis(), "user database unavailable; retrying the request");
                    held.wait(delay).await?;
                }
                Err(error) => {
                    tracing::error!(%error, "user directory failed permanently; answering internal_error");
                    return Ok(None);
                }
            }
        }
    }

    async fn dead_letter(
        &self,
        message: &BorrowedMessage<'_>,
        undeliverable: Undeliverable,
        held: &mut HeldRecord<'_>,
    ) -> Result<(), Abandoned> {
        tracing::warn!(
            reason = undeliverable.code,
            "dead-lettering a request record"
        );
        self.outbox
            .dead_letter(
                &self.topics.dead_letter(),
                message,
                &undeliverable.detail,
                held,
            )
            .await?;
        self.metrics
            .dead_lettered
            .get_or_create(&DeadLetterLabels {
                consumer: ConsumerName::Directory.label(),
                reason: undeliverable.code,
            })
            .inc();
        Ok(())
    }
}

/// Backoff while the database is unavailable: quick at first, then at most every 5 s.
pub fn store_retry() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
}
