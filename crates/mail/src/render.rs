use broker_auth_contract::{MailRequest, MailTemplate};
use lettre::Message;
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, MultiPart, SinglePart};

use crate::{MailError, Result};

/// A message's subject and bodies, before addressing.
#[derive(Clone, PartialEq, Eq)]
pub struct RenderedMail {
    pub subject: String,
    pub text: String,
    pub html: String,
}

// The bodies may hold a sign-up code; keep them out of debug output.
impl std::fmt::Debug for RenderedMail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RenderedMail")
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

/// The subject and bodies of a template. The texts are plain ASCII so they travel as 7-bit.
pub fn render(template: &MailTemplate) -> RenderedMail {
    match template {
        MailTemplate::SignupCode {
            code,
            expires_in_minutes,
        } => {
            let minutes = if *expires_in_minutes == 1 {
                "1 minute".to_owned()
            } else {
                format!("{expires_in_minutes} minutes")
            };
            RenderedMail {
                subject: "Your sign-up code".to_owned(),
                text: format!(
                    "Hello,\n\n\
                     your sign-up code is: {code}\n\n\
                     Enter it on the sign-up page to finish creating your account. It expires \
                     in {minutes} and works once.\n\n\
                     If you did not ask to sign up, you can ignore this email; no account is \
                     created without the code.\n"
                ),
                html: format!(
                    "<p>Hello,</p>\
                     <p>your sign-up code is: <strong style=\"font-size:1.4em;letter-spacing:0.2em\">{}</strong></p>\
                     <p>Enter it on the sign-up page to finish creating your account. It expires \
                     in {minutes} and works once.</p>\
                     <p>If you did not ask to sign up, you can ignore this email; no account is \
                     created without the code.</p>",
                    escape_html(code)
                ),
            }
        }
        MailTemplate::AccountExists => RenderedMail {
            subject: "You already have an account".to_owned(),
            text: "Hello,\n\n\
                   someone, hopefully you, tried to sign up with this email address, but it \
                   already has an account. Sign in with your password instead.\n\n\
                   If this was not you, you can ignore this email; nothing has changed.\n"
                .to_owned(),
            html: "<p>Hello,</p>\
                   <p>someone, hopefully you, tried to sign up with this email address, but it \
                   already has an account. Sign in with your password instead.</p>\
                   <p>If this was not you, you can ignore this email; nothing has changed.</p>"
                .to_owned(),
        },
    }
}

fn escape_html(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '&' => "&amp;".to_owned(),
            '"' => "&quot;".to_owned(),
            '\'' => "&#39;".to_owned(),
            c => c.to_string(),
        })
        .collect()
}

/// The complete message for `request`, from `from`: plain text with an HTML alternative.
pub fn build_message(from: &Mailbox, request: &MailRequest) -> Result<Message> {
    let to: Mailbox = request
        .to
        .parse()
        .map_err(|_| MailError::InvalidRecipient {
            address: request.to.clone(),
        })?;
    let rendered = render(&request.template);
    let message = Message::builder()
        .from(from.clone())
        .to(to)
        .subject(rendered.subject)
        .multipart(
            MultiPart::alternative()
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_PLAIN)
                        .body(rendered.text),
                )
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_HTML)
                        .body(rendered.html),
                ),
        )?;
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from() -> Mailbox {
        "Broker Auth <no-reply@example.com>".parse().unwrap()
    }

    #[test]
    fn a_signup_code_mail_shows_the_code_and_its_lifetime() {
        let rendered = render(&MailTemplate::SignupCode {
            code: "004217".into(),
            expires_in_minutes: 5,
        });
        assert!(rendered.text.contains("004217"));
        assert!(rendered.text.contains("5 minutes"));
        assert!(rendered.html.contains("004217"));
        assert!(!format!("{rendered:?}").contains("004217"));
    }

    #[test]
    fn an_account_exists_mail_has_no_code() {
        let rendered = render(&MailTemplate::AccountExists);
        assert!(rendered.subject.contains("already have an account"));
        assert!(!rendered.text.chars().any(|c| c.is_ascii_digit()));
    }

    #[test]
    fn a_message_is_addressed_and_formatted() {
        let request = MailRequest {
            to: "ada@example.com".into(),
            template: MailTemplate::AccountExists,
        };
        let message = build_message(&from(), &request).unwrap();
        let formatted = String::from_utf8(message.formatted()).unwrap();
        assert!(formatted.contains("To: ada@example.com"));
        assert!(formatted.contains("Subject: You already have an account"));
        assert!(formatted.contains("multipart/alternative"));
    }

    #[test]
    fn an_unmailable_recipient_is_a_permanent_error() {
        let request = MailRequest {
            to: "not an address".into(),
            template: MailTemplate::AccountExists,
        };
        let error = build_message(&from(), &request).unwrap_err();
        assert!(matches!(error, MailError::InvalidRecipient { .. }));
        assert!(!error.is_transient());
    }
}
