use std::time::Duration;

use async_trait::async_trait;
use broker_auth_contract::MailRequest;
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

use crate::render::{build_message, render};
use crate::{MailError, Result};

/// Delivers mail requests. One implementation per destination: SMTP or the log.
#[async_trait]
pub trait Mailer: Send + Sync + 'static {
    /// Sends mail request `request_id` (its `Message-ID` is made from it).
    async fn send(&self, request_id: Uuid, request: &MailRequest) -> Result<()>;
}

/// Sends over SMTP with lettre, from a connection URL such as `smtp://127.0.0.1:2525`,
/// `smtp://host:587?tls=required` or `smtps://user:pass@host`.
#[derive(Clone)]
pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl std::fmt::Debug for SmtpMailer {
    // The transport holds the credentials; show only the sender.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpMailer")
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

/// How long one SMTP exchange may take before it counts as a (transient) failure.
pub const SMTP_TIMEOUT: Duration = Duration::from_secs(10);

impl SmtpMailer {
    pub fn from_url(url: &SecretString, from: Mailbox) -> Result<Self> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose_secret())
            .map_err(MailError::InvalidSettings)?
            .timeout(Some(SMTP_TIMEOUT))
            .build();
        Ok(Self { transport, from })
    }
}

#[async_trait]
impl Mailer for SmtpMailer {
    async fn send(&self, request_id: Uuid, request: &MailRequest) -> Result<()> {
        let message = build_message(&self.from, request_id, request)?;
        self.transport
            .send(message)
            .await
            .map_err(classify_smtp_error)?;
        Ok(())
    }
}

/// 5xx replies and errors of our own making will fail again; everything else (no connection,
/// timeouts, 4xx, a connection dropped mid-way) may work later.
fn classify_smtp_error(error: lettre::transport::smtp::Error) -> MailError {
    if error.is_permanent() || error.is_client() {
        MailError::Permanent(error)
    } else {
        MailError::Transient(error)
    }
}

/// Embedded mode's mailer: prints each mail — code included, so the person at the terminal can
/// read it — to the log instead of sending it.
#[derive(Debug, Clone, Default)]
pub struct LogMailer;

#[async_trait]
impl Mailer for LogMailer {
    async fn send(&self, request_id: Uuid, request: &MailRequest) -> Result<()> {
        let rendered = render(&request.template)?;
        tracing::info!(
            %request_id,
            to = %request.to,
            template = request.template.name(),
            subject = %rendered.subject,
            "mail not sent (embedded mode prints it instead):\n{}",
            rendered.text
        );
        Ok(())
    }
}
