//! Mail requests as they travel on the mail topic: the sign-up code sealed, so a dump of the
//! topic, of its dead letters or of a broker's disk shows no usable code.
//!
//! The API seals with [`MailSealKey::seal`] before producing; dbproc's mailer opens with
//! [`MailSealKey::open`] before rendering. Both derive the key from the same `MAIL_SEAL_KEY`
//! secret. It is a key of its own, not one derived from `JWT_SECRET`: the worker tier needs to
//! open mail, and must not be able to sign sessions.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

use crate::{MailRequest, MailTemplate};

/// Shortest accepted `MAIL_SEAL_KEY`, in bytes.
pub const MIN_SEAL_SECRET_BYTES: usize = 32;

/// HKDF `info` of the sealing key: names its one use, so the same secret given to something
/// else by mistake yields an unrelated key.
const SEAL_KEY_INFO: &[u8] = b"broker-auth/mail-seal/v1";
/// Associated data prefix: a sealed code opens only in a record for the recipient it was
/// sealed for.
const SEAL_AAD_PREFIX: &[u8] = b"broker-auth/mail-code/v1\0";
/// XChaCha20-Poly1305's 192-bit nonce is long enough to draw at random for every message.
const NONCE_BYTES: usize = 24;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("MAIL_SEAL_KEY must be at least {MIN_SEAL_SECRET_BYTES} bytes")]
    ShortSecret,
    #[error("the sealed code is not base64 of a nonce and a ciphertext")]
    Malformed,
    #[error("the sealed code does not open with this key for this recipient")]
    WrongKeyOrRecipient,
}

/// The key mail codes are sealed with.
#[derive(Clone)]
pub struct MailSealKey {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for MailSealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MailSealKey(<redacted>)")
    }
}

impl MailSealKey {
    /// Derives the key from the `MAIL_SEAL_KEY` secret (any bytes, at least 32, e.g. 48 random
    /// bytes in base64) with HKDF-SHA-256.
    pub fn from_secret(secret: &[u8]) -> Result<Self, SealError> {
        if secret.len() < MIN_SEAL_SECRET_BYTES {
            return Err(SealError::ShortSecret);
        }
        let mut key = [0u8; 32];
        // 32 bytes is far below HKDF-SHA-256's output limit, so expanding cannot fail.
        hkdf::Hkdf::<sha2::Sha256>::new(None, secret)
            .expand(SEAL_KEY_INFO, &mut key)
            .map_err(|_| SealError::ShortSecret)?;
        let cipher = XChaCha20Poly1305::new(&key.into());
        Ok(Self { cipher })
    }

    /// The wire form of `mail`: any code sealed under a fresh random nonce.
    pub fn seal(&self, mail: MailRequest) -> SealedMailRequest {
        let template = match mail.template {
            MailTemplate::SignupCode {
                code,
                expires_in_minutes,
            } => SealedMailTemplate::SignupCode {
                sealed_code: self.seal_text(&mail.to, &code),
                expires_in_minutes,
            },
            MailTemplate::AccountExists => SealedMailTemplate::AccountExists,
            MailTemplate::RecoveryCode {
                code,
                expires_in_minutes,
            } => SealedMailTemplate::RecoveryCode {
                sealed_code: self.seal_text(&mail.to, &code),
                expires_in_minutes,
            },
            MailTemplate::PasswordChanged => SealedMailTemplate::PasswordChanged,
        };
        SealedMailRequest {
            to: mail.to,
            template,
        }
    }

    /// The mail with its code opened, or why it cannot be.
    pub fn open(&self, sealed: SealedMailRequest) -> Result<MailRequest, SealError> {
        let template = match sealed.template {
            SealedMailTemplate::SignupCode {
                sealed_code,
                expires_in_minutes,
            } => MailTemplate::SignupCode {
                code: self.open_text(&sealed.to, &sealed_code)?,
                expires_in_minutes,
            },
            SealedMailTemplate::AccountExists => MailTemplate::AccountExists,
            SealedMailTemplate::RecoveryCode {
                sealed_code,
                expires_in_minutes,
            } => MailTemplate::RecoveryCode {
                code: self.open_text(&sealed.to, &sealed_code)?,
                expires_in_minutes,
            },
            SealedMailTemplate::PasswordChanged => MailTemplate::PasswordChanged,
        };
        Ok(MailRequest {
            to: sealed.to,
            template,
        })
    }

    fn seal_text(&self, recipient: &str, text: &str) -> String {
        let nonce_bytes: [u8; NONCE_BYTES] = rand::random();
        let nonce = XNonce::from(nonce_bytes);
        let aad = [SEAL_AAD_PREFIX, recipient.as_bytes()].concat();
        // Encryption fails only for plaintexts beyond 256 GiB; a code is six bytes.
        let ciphertext = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: text.as_bytes(),
                    aad: &aad,
                },
            )
            .unwrap_or_default();
        URL_SAFE_NO_PAD.encode([nonce_bytes.as_slice(), &ciphertext].concat())
    }

    fn open_text(&self, recipient: &str, sealed: &str) -> Result<String, SealError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(sealed)
            .map_err(|_| SealError::Malformed)?;
        if bytes.len() <= NONCE_BYTES {
            return Err(SealError::Malformed);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_BYTES);
        let aad = [SEAL_AAD_PREFIX, recipient.as_bytes()].concat();
        let plaintext = self
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::WrongKeyOrRecipient)?;
        String::from_utf8(plaintext).map_err(|_| SealError::Malformed)
    }
}

/// The body of a mail-topic record: a [`MailRequest`] whose code is sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedMailRequest {
    pub to: String,
    #[serde(flatten)]
    pub template: SealedMailTemplate,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "template", rename_all = "snake_case")]
pub enum SealedMailTemplate {
    /// The one-time code for a new address, sealed: base64url of a 24-byte nonce and the
    /// XChaCha20-Poly1305 ciphertext with its tag.
    SignupCode {
        sealed_code: String,
        expires_in_minutes: u32,
    },
    AccountExists,
    /// The recovery code of a registered address, sealed like a sign-up code.
    RecoveryCode {
        sealed_code: String,
        expires_in_minutes: u32,
    },
    PasswordChanged,
}

impl SealedMailTemplate {
    pub fn name(&self) -> &'static str {
        match self {
            SealedMailTemplate::SignupCode { .. } => "signup_code",
            SealedMailTemplate::AccountExists => "account_exists",
            SealedMailTemplate::RecoveryCode { .. } => "recovery_code",
            SealedMailTemplate::PasswordChanged => "password_changed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Envelope;

    fn key(byte: u8) -> MailSealKey {
        MailSealKey::from_secret(&[byte; 32]).unwrap()
    }

    fn signup_code(to: &str, code: &str) -> MailRequest {
        MailRequest {
            to: to.into(),
            template: MailTemplate::SignupCode {
                code: code.into(),
                expires_in_minutes: 5,
            },
        }
    }

    #[test]
    fn a_sealed_code_opens_with_the_same_key_and_shows_nowhere_on_the_wire() {
        let mail = signup_code("a@example.com", "012345");
        let wire = Envelope::new(uuid::Uuid::nil(), key(1).seal(mail.clone())).to_json();
        assert!(!String::from_utf8_lossy(&wire).contains("012345"));
        let back = Envelope::<SealedMailRequest>::from_json(&wire).unwrap();
        assert_eq!(back.body.template.name(), "signup_code");
        assert_eq!(key(1).open(back.body).unwrap(), mail);
    }

    #[test]
    fn sealing_twice_gives_different_text() {
        let a = key(1).seal(signup_code("a@example.com", "012345"));
        let b = key(1).seal(signup_code("a@example.com", "012345"));
        assert_ne!(a, b);
    }

    #[test]
    fn another_key_or_recipient_or_a_flipped_bit_does_not_open() {
        let sealed = key(1).seal(signup_code("a@example.com", "012345"));
        assert_eq!(
            key(2).open(sealed.clone()),
            Err(SealError::WrongKeyOrRecipient)
        );
        let mut moved = sealed.clone();
        moved.to = "mallory@example.com".into();
        assert_eq!(key(1).open(moved), Err(SealError::WrongKeyOrRecipient));
        let SealedMailTemplate::SignupCode { sealed_code, .. } = &sealed.template else {
            panic!("sealed as another template");
        };
        let mut bytes = URL_SAFE_NO_PAD.decode(sealed_code).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let mut tampered = sealed.clone();
        tampered.template = SealedMailTemplate::SignupCode {
            sealed_code: URL_SAFE_NO_PAD.encode(bytes),
            expires_in_minutes: 5,
        };
        assert_eq!(key(1).open(tampered), Err(SealError::WrongKeyOrRecipient));
        for garbage in ["", "!!!", "AAAA"] {
            let mut bad = sealed.clone();
            bad.template = SealedMailTemplate::SignupCode {
                sealed_code: garbage.into(),
                expires_in_minutes: 5,
            };
            assert_eq!(key(1).open(bad), Err(SealError::Malformed), "{garbage:?}");
        }
    }

    #[test]
    fn a_plaintext_code_record_does_not_decode_as_sealed() {
        let plain = br#"{"version":1,"request_id":"6f1c1d43-6b6c-4f0e-8b7e-1d1d7d8f4c11","to":"a@b.c","template":"signup_code","code":"012345","expires_in_minutes":5}"#;
        assert!(Envelope::<SealedMailRequest>::from_json(plain).is_err());
    }

    #[test]
    fn mail_without_a_code_passes_through() {
        let mail = MailRequest {
            to: "a@example.com".into(),
            template: MailTemplate::AccountExists,
        };
        assert_eq!(key(1).open(key(1).seal(mail.clone())).unwrap(), mail);
    }

    #[test]
    fn short_secrets_are_refused_and_keys_never_print() {
        assert_eq!(
            MailSealKey::from_secret(&[7; 31]).err(),
            Some(SealError::ShortSecret)
        );
        assert_eq!(format!("{:?}", key(1)), "MailSealKey(<redacted>)");
    }
}
