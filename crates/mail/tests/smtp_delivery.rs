//! The SMTP mailer against a real SMTP server (the test kit's capture).

// Helpers here are test code too; clippy only recognises #[test] functions as such.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use broker_auth_mail::{MailError, MailRequest, MailTemplate, Mailer, SmtpMailer};
use broker_auth_testkit::smtp::SmtpCapture;
use secrecy::SecretString;
use uuid::Uuid;

fn mailer_for(url: String) -> SmtpMailer {
    SmtpMailer::from_url(
        &SecretString::from(url),
        "Broker Auth <no-reply@example.com>".parse().unwrap(),
    )
    .unwrap()
}

fn signup_code(to: &str) -> MailRequest {
    MailRequest {
        to: to.into(),
        template: MailTemplate::SignupCode {
            code: "042137".into(),
            expires_in_minutes: 5,
        },
    }
}

#[tokio::test]
async fn a_signup_code_reaches_the_smtp_server() {
    let capture = SmtpCapture::start().await.unwrap();
    let mailer = mailer_for(capture.url());
    let request_id = Uuid::new_v4();

    mailer
        .send(request_id, &signup_code("ada@example.com"))
        .await
        .unwrap();

    let mail = capture
        .wait_for(|m| m.is_to("ada@example.com"), Duration::from_secs(5))
        .await
        .expect("the mail arrives");
    assert_eq!(mail.from, "no-reply@example.com");
    assert_eq!(mail.subject().as_deref(), Some("Your sign-up code"));
    assert_eq!(
        mail.header("Message-ID"),
        Some(format!("<{request_id}@example.com>"))
    );
    assert!(
        mail.text().contains("your sign-up code is: 042137"),
        "{}",
        mail.text()
    );
}

#[tokio::test]
async fn an_unreachable_server_is_a_transient_failure() {
    let mut capture = SmtpCapture::start().await.unwrap();
    let mailer = mailer_for(capture.url());
    capture.stop().await;

    let error = mailer
        .send(Uuid::new_v4(), &signup_code("ada@example.com"))
        .await
        .unwrap_err();
    assert!(error.is_transient(), "{error}");

    capture.restart().await.unwrap();
    mailer
        .send(Uuid::new_v4(), &signup_code("ada@example.com"))
        .await
        .unwrap();
    assert_eq!(capture.messages().len(), 1);
}

#[tokio::test]
async fn a_5xx_refusal_is_permanent_and_a_4xx_one_transient() {
    let capture = SmtpCapture::start().await.unwrap();
    let mailer = mailer_for(capture.url());

    capture.reject_recipients_with(Some(550));
    let error = mailer
        .send(Uuid::new_v4(), &signup_code("gone@example.com"))
        .await
        .unwrap_err();
    assert!(matches!(error, MailError::Permanent(_)), "{error}");

    capture.reject_recipients_with(Some(451));
    let error = mailer
        .send(Uuid::new_v4(), &signup_code("later@example.com"))
        .await
        .unwrap_err();
    assert!(error.is_transient(), "{error}");
}

#[test]
fn a_malformed_smtp_url_is_refused_without_echoing_it() {
    let secret = "smtp://user:hunter2@/nowhere:xx";
    let error = SmtpMailer::from_url(&SecretString::from(secret), "a@b.c".parse().unwrap());
    if let Err(error) = error {
        assert!(!error.to_string().contains("hunter2"));
    }
}
