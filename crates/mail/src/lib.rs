//! Mail of broker-auth: the texts of the messages the auth flow sends, and the [`Mailer`]s that
//! deliver them — [`SmtpMailer`] in the worker tier, [`LogMailer`] in embedded mode.
//!
//! The API never sends mail itself; it puts a [`MailRequest`] on the mail topic (or, embedded,
//! hands it to a mailer in-process), so signup never waits on SMTP.

mod render;
mod sender;

pub use broker_auth_contract::{MailRequest, MailTemplate};
pub use lettre::message::Mailbox;
pub use render::{RenderedMail, build_message, message_id, render};
pub use sender::{LogMailer, Mailer, SMTP_TIMEOUT, SmtpMailer};

/// Why a mail was not sent. [`MailError::is_transient`] separates "try again later" (SMTP
/// unreachable, 4xx) from "will fail again" (5xx, an address that cannot be mailed).
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("recipient {address:?} is not a valid email address")]
    InvalidRecipient { address: String },
    #[error("the SMTP settings are invalid: {0}")]
    InvalidSettings(#[source] lettre::transport::smtp::Error),
    #[error("the mail request is invalid: {0}")]
    InvalidTemplate(&'static str),
    #[error("the message could not be built: {0}")]
    Build(#[from] lettre::error::Error),
    #[error("SMTP delivery failed for now, worth retrying: {0}")]
    Transient(#[source] lettre::transport::smtp::Error),
    #[error("SMTP refused the message: {0}")]
    Permanent(#[source] lettre::transport::smtp::Error),
}

impl MailError {
    pub fn is_transient(&self) -> bool {
        matches!(self, MailError::Transient(_))
    }

    /// A short label for metrics and logs.
    pub fn kind_label(&self) -> &'static str {
        match self {
            MailError::InvalidRecipient { .. } => "invalid_recipient",
            MailError::InvalidTemplate(_) => "invalid_template",
            MailError::InvalidSettings(_) => "invalid_settings",
            MailError::Build(_) => "build",
            MailError::Transient(_) => "transient",
            MailError::Permanent(_) => "permanent",
        }
    }
}

pub type Result<T, E = MailError> = std::result::Result<T, E>;
