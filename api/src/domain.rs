//! Validated input types. Each `parse` returns the message shown next to the field when it fails.

use std::fmt;

use broker_auth_common_passwords::CommonPasswords;

/// A trimmed, lowercased email address of plausible shape.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EmailAddress(String);

impl EmailAddress {
    pub const MAX_LEN: usize = broker_auth_user_store::validation::MAX_EMAIL_BYTES;

    /// Trims and lowercases, converts an internationalized domain to its ASCII (punycode) form so
    /// one mailbox has one spelling, then applies the directory's own rules — one set of rules
    /// for the API and the worker tier.
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        let email = raw.trim().to_lowercase();
        if email.is_empty() {
            return Err("is required");
        }
        if email.len() > Self::MAX_LEN {
            return Err("must be at most 254 characters");
        }
        let Some((local, domain)) = email.rsplit_once('@') else {
            return Err("must be a valid email address");
        };
        if !local.is_ascii() {
            return Err("must use only ASCII letters, digits and punctuation before the @");
        }
        let domain = idna::domain_to_ascii(domain).map_err(|_| "must be a valid email address")?;
        let email = format!("{local}@{domain}");
        broker_auth_user_store::validation::check_email(&email)
            .map_err(|_| "must be a valid email address")?;
        Ok(Self(email))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A new password. Length is counted in characters; there is no composition rule, but a password
/// on the list of common and breached passwords is refused (NIST SP 800-63B). Every accepted
/// password is used whole: it is pre-hashed before bcrypt, which reads only 72 bytes.
#[derive(Clone)]
pub struct NewPassword(String);

impl NewPassword {
    pub const MIN_CHARS: usize = 8;
    pub const MAX_CHARS: usize = 128;

    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        let chars = raw.chars().count();
        if chars == 0 {
            Err("is required")
        } else if chars < Self::MIN_CHARS {
            Err("must be at least 8 characters")
        } else if chars > Self::MAX_CHARS {
            Err("must be at most 128 characters")
        } else if CommonPasswords::get().contains(raw) {
            Err(Self::COMMON)
        } else {
            Ok(Self(raw.to_owned()))
        }
    }

    /// The message for a password on the common-password list.
    pub const COMMON: &'static str =
        "is one of the most common passwords, which attackers try first: choose another";

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for NewPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NewPassword(<redacted>)")
    }
}

/// A password offered at signin: only bounded, so an oversized body cannot make bcrypt input huge.
pub fn parse_offered_password(raw: &str) -> Result<&str, &'static str> {
    if raw.is_empty() {
        Err("is required")
    } else if raw.chars().count() > NewPassword::MAX_CHARS {
        Err("must be at most 128 characters")
    } else {
        Ok(raw)
    }
}

/// A display name: trimmed, then the directory's rules (not blank, at most 200 characters, no
/// control characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        let name = raw.trim();
        if name.is_empty() {
            return Err("is required");
        }
        broker_auth_user_store::validation::check_name(name).map_err(|rejection| {
            if name.chars().any(char::is_control) {
                "must not contain control characters"
            } else if name
                .chars()
                .any(broker_auth_user_store::validation::is_refused_in_name)
            {
                "must not contain invisible formatting characters (such as direction overrides or zero-width spaces) or unassigned code points"
            } else {
                debug_assert_eq!(rejection.code, "invalid_name");
                "must be at most 200 characters"
            }
        })?;
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// The six digits a person types in.
#[derive(Clone, PartialEq, Eq)]
pub struct OtpCode(String);

impl OtpCode {
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        let code = raw.trim();
        if code.is_empty() {
            Err("is required")
        } else if code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Self(code.to_owned()))
        } else {
            Err("must be the 6 digits from the email")
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for OtpCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OtpCode(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn emails_are_trimmed_and_lowercased() {
        let email = EmailAddress::parse("  Alice.Smith@Example.COM ").unwrap();
        assert_eq!(email.as_str(), "alice.smith@example.com");
    }

    #[test]
    fn implausible_emails_are_rejected() {
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a@localhost",
            "a b@example.com",
            "a@exa mple.com",
            ".a@example.com",
            "a..b@example.com",
            "a@-example.com",
            "a@example..com",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(EmailAddress::parse(&format!("{}@example.com", "a".repeat(250))).is_err());
    }

    #[test]
    fn passwords_are_counted_in_characters_not_bytes() {
        // 64 four-byte characters: 256 bytes, far past bcrypt's 72, still accepted whole.
        assert!(NewPassword::parse(&"𝄞".repeat(64)).is_ok());
        assert!(NewPassword::parse("short").is_err());
        assert!(NewPassword::parse(&"x".repeat(129)).is_err());
        assert!(NewPassword::parse("xk7#qv2!").is_ok());
    }

    #[test]
    fn common_passwords_are_refused_with_their_own_message() {
        for common in [
            "password1",
            "Password1",
            "12345678",
            "iloveyou",
            "qwertyuiop",
        ] {
            assert_eq!(
                NewPassword::parse(common).err(),
                Some(NewPassword::COMMON),
                "{common:?}"
            );
        }
        assert!(NewPassword::parse("correct horse battery staple 42").is_ok());
    }

    #[test]
    fn codes_are_exactly_six_digits() {
        assert!(OtpCode::parse("012345").is_ok());
        assert!(OtpCode::parse(" 012345 ").is_ok());
        for bad in ["", "12345", "1234567", "12345a", "１２３４５６"] {
            assert!(OtpCode::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn internationalized_domains_have_one_spelling() {
        let unicode = EmailAddress::parse("Anna@Bücher.Example").unwrap();
        let punycode = EmailAddress::parse("anna@xn--bcher-kva.example").unwrap();
        assert_eq!(unicode, punycode);
        assert!(EmailAddress::parse("ßx@example.com").is_err());
    }

    #[test]
    fn names_reject_control_characters() {
        assert!(DisplayName::parse("Ada\u{0}").is_err());
        assert!(
            DisplayName::parse("Ada\u{202E}ecalevoL")
                .unwrap_err()
                .contains("direction overrides")
        );
        assert!(DisplayName::parse("Ad\u{200B}a").is_err());
        assert_eq!(
            DisplayName::parse("  Ada Lovelace ").unwrap().into_inner(),
            "Ada Lovelace"
        );
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        assert!(!format!("{:?}", NewPassword::parse("hunter2hunter2").unwrap()).contains("hunter"));
        assert!(!format!("{:?}", OtpCode::parse("123456").unwrap()).contains("123456"));
    }

    proptest! {
        #[test]
        fn parsing_never_panics(raw in "\\PC{0,300}") {
            let _ = EmailAddress::parse(&raw);
            let _ = NewPassword::parse(&raw);
            let _ = DisplayName::parse(&raw);
            let _ = OtpCode::parse(&raw);
        }

        #[test]
        fn a_parsed_email_is_stable_under_reparsing(local in "[a-z0-9]{1,20}", domain in "[a-z]{1,10}\\.[a-z]{2,5}") {
            let email = EmailAddress::parse(&format!("{local}@{domain}")).unwrap();
            prop_assert_eq!(EmailAddress::parse(email.as_str()).unwrap(), email);
        }
    }
}
