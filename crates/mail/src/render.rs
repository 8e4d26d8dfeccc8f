use broker_auth_contract::{MailRequest, MailTemplate};
use lettre::Address;
use lettre::Message;
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, MultiPart, SinglePart};
use uuid::Uuid;

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

/// Longest code lifetime a mail may announce; anything longer is not what the API sends.
const MAX_EXPIRES_IN_MINUTES: u32 = 24 * 60;

/// The subject and bodies of a template. The texts are plain ASCII so they travel as 7-bit.
///
/// The template's fields come from a Kafka record, so they are checked here rather than
/// trusted: a code is exactly six ASCII digits, which also keeps anything but a code (links,
/// markup, line breaks) out of a mail sent in the broker's name.
pub fn render(template: &MailTemplate) -> Result<RenderedMail> {
    check_template(template)?;
    Ok(match template {
        MailTemplate::SignupCode {
            code,
            expires_in_minutes,
        } => {
            let minutes = minutes_text(*expires_in_minutes);
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
        MailTemplate::RecoveryCode {
            code,
            expires_in_minutes,
        } => {
            let minutes = minutes_text(*expires_in_minutes);
            RenderedMail {
                subject: "Your password recovery code".to_owned(),
                text: format!(
                    "Hello,\n\n\
                     your password recovery code is: {code}\n\n\
                     Enter it on the password recovery page, with a new password. It expires \
                     in {minutes} and works once. Setting the new password signs you out \
                     everywhere else.\n\n\
                     If you did not ask to recover your password, you can ignore this email; \
                     your password stays as it is.\n"
                ),
                html: format!(
                    "<p>Hello,</p>\
                     <p>your password recovery code is: <strong style=\"font-size:1.4em;letter-spacing:0.2em\">{}</strong></p>\
                     <p>Enter it on the password recovery page, with a new password. It expires \
                     in {minutes} and works once. Setting the new password signs you out \
                     everywhere else.</p>\
                     <p>If you did not ask to recover your password, you can ignore this email; \
                     your password stays as it is.</p>",
                    escape_html(code)
                ),
            }
        }
        MailTemplate::PasswordChanged => RenderedMail {
            subject: "Your password was changed".to_owned(),
            text: "Hello,\n\n\
                   the password of your account was just changed, and every other session of \
                   the account was signed out.\n\n\
                   If this was not you, recover your password at once with \"Forgot \
                   password?\" on the sign-in page, and tell our support.\n"
                .to_owned(),
            html: "<p>Hello,</p>\
                   <p>the password of your account was just changed, and every other session of \
                   the account was signed out.</p>\
                   <p>If this was not you, recover your password at once with \"Forgot \
                   password?\" on the sign-in page, and tell our support.</p>"
                .to_owned(),
        },
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
    })
}

fn minutes_text(minutes: u32) -> String {
    if minutes == 1 {
        "1 minute".to_owned()
    } else {
        format!("{minutes} minutes")
    }
}

fn check_template(template: &MailTemplate) -> Result<()> {
    match template {
        MailTemplate::SignupCode {
            code,
            expires_in_minutes,
        }
        | MailTemplate::RecoveryCode {
            code,
            expires_in_minutes,
        } => {
            if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
                return Err(MailError::InvalidTemplate(
                    "a code must be exactly six digits",
                ));
            }
            if !(1..=MAX_EXPIRES_IN_MINUTES).contains(expires_in_minutes) {
                return Err(MailError::InvalidTemplate(
                    "a code must expire within 1 to 1440 minutes",
                ));
            }
            Ok(())
        }
        MailTemplate::AccountExists | MailTemplate::PasswordChanged => Ok(()),
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

/// The complete message for mail request `request_id`, from `from`: plain text with an HTML
/// alternative. Its `Message-ID` is made from the request id, so every delivery of one request
/// carries the same id (and a duplicate is recognisable as one).
pub fn build_message(from: &Mailbox, request_id: Uuid, request: &MailRequest) -> Result<Message> {
    // A bare address only: a display name would be text of the producer's choosing.
    let to = request
        .to
        .parse::<Address>()
        .map(|address| Mailbox::new(None, address))
        .map_err(|_| MailError::InvalidRecipient {
            address: request.to.clone(),
        })?;
    let rendered = render(&request.template)?;
    let message = Message::builder()
        .message_id(Some(message_id(from, request_id)))
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

/// `<request-id@sender-domain>`.
pub fn message_id(from: &Mailbox, request_id: Uuid) -> String {
    format!("<{}@{}>", request_id.hyphenated(), from.email.domain())
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
        })
        .unwrap();
        assert!(rendered.text.contains("004217"));
        assert!(rendered.text.contains("5 minutes"));
        assert!(rendered.html.contains("004217"));
        assert!(!format!("{rendered:?}").contains("004217"));
    }

    #[test]
    fn a_recovery_mail_shows_its_code_and_a_password_notice_none() {
        let rendered = render(&MailTemplate::RecoveryCode {
            code: "730019".into(),
            expires_in_minutes: 1,
        })
        .unwrap();
        assert!(rendered.text.contains("recovery code is: 730019"));
        assert!(rendered.text.contains("1 minute"));
        assert!(rendered.html.contains("730019"));
        assert!(!format!("{rendered:?}").contains("730019"));
        let notice = render(&MailTemplate::PasswordChanged).unwrap();
        assert!(notice.subject.contains("password was changed"));
        assert!(!notice.text.chars().any(|c| c.is_ascii_digit()));
        let bad = MailTemplate::RecoveryCode {
            code: "<b>1</b>".into(),
            expires_in_minutes: 5,
        };
        assert!(matches!(render(&bad), Err(MailError::InvalidTemplate(_))));
    }

    #[test]
    fn an_account_exists_mail_has_no_code() {
        let rendered = render(&MailTemplate::AccountExists).unwrap();
        assert!(rendered.subject.contains("already have an account"));
        assert!(!rendered.text.chars().any(|c| c.is_ascii_digit()));
    }

    #[test]
    fn a_message_is_addressed_and_formatted() {
        let request = MailRequest {
            to: "ada@example.com".into(),
            template: MailTemplate::AccountExists,
        };
        let request_id = Uuid::new_v4();
        let message = build_message(&from(), request_id, &request).unwrap();
        let formatted = String::from_utf8(message.formatted()).unwrap();
        assert!(formatted.contains(&format!("Message-ID: <{request_id}@example.com>")));
        assert!(formatted.contains("To: ada@example.com"));
        assert!(formatted.contains("Subject: You already have an account"));
        assert!(formatted.contains("multipart/alternative"));
    }

    #[test]
    fn a_code_that_is_not_six_digits_is_refused_permanently() {
        for code in [
            "12345",
            "1234567",
            "12345a",
            "<b>1</b>",
            "123\n45",
            "١٢٣٤٥٦",
            "",
        ] {
            let template = MailTemplate::SignupCode {
                code: code.into(),
                expires_in_minutes: 5,
            };
            let error = render(&template).unwrap_err();
            assert!(matches!(error, MailError::InvalidTemplate(_)), "{code:?}");
            assert!(!error.is_transient());
        }
        let forever = MailTemplate::SignupCode {
            code: "123456".into(),
            expires_in_minutes: 0,
        };
        assert!(render(&forever).is_err());
    }

    #[test]
    fn a_recipient_with_a_display_name_is_refused() {
        let request = MailRequest {
            to: "Your Bank <ada@example.com>".into(),
            template: MailTemplate::AccountExists,
        };
        let error = build_message(&from(), Uuid::new_v4(), &request).unwrap_err();
        assert!(matches!(error, MailError::InvalidRecipient { .. }));
    }

    #[test]
    fn html_special_characters_are_escaped() {
        assert_eq!(
            escape_html(r#"<a href="x">&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn an_unmailable_recipient_is_a_permanent_error() {
        let request = MailRequest {
            to: "not an address".into(),
            template: MailTemplate::AccountExists,
        };
        let error = build_message(&from(), Uuid::new_v4(), &request).unwrap_err();
        assert!(matches!(error, MailError::InvalidRecipient { .. }));
        assert!(!error.is_transient());
    }
}
