//! Defensive checks of what arrives at the directory. The API validates user input first; these
//! checks make sure a buggy or hostile producer cannot store something malformed. A failed check
//! becomes a `Reply::Rejected` with one of the [`codes`], never a panic or a dead letter.

/// Rejection codes sent back in `Reply::Rejected { code, .. }`.
pub mod codes {
    /// The email is not a normalized (trimmed, lowercase) address of a plausible shape.
    pub const INVALID_EMAIL: &str = "invalid_email";
    /// The name is blank, too long or contains control characters.
    pub const INVALID_NAME: &str = "invalid_name";
    /// The password hash is not a bcrypt hash.
    pub const INVALID_PASSWORD_HASH: &str = "invalid_password_hash";
    /// The creation request id was used before for another email.
    pub const REQUEST_ID_REUSED: &str = "request_id_reused";
    /// The creation request id was used before for the same email with another name or
    /// password (another request digest): the first request's account stands, unchanged.
    pub const REQUEST_CONFLICT: &str = "request_conflict";
    /// The request digest is not 64 lowercase hex digits.
    pub const INVALID_REQUEST_DIGEST: &str = "invalid_request_digest";
}

/// Longest address SMTP can carry (RFC 5321 path limit minus the angle brackets).
pub const MAX_EMAIL_BYTES: usize = 254;
const MAX_LOCAL_PART_BYTES: usize = 64;
/// Longest display name the directory stores, in characters.
pub const MAX_NAME_CHARS: usize = 200;

/// Why a request was refused: a stable code for programs and a message for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    pub code: &'static str,
    pub message: &'static str,
}

const fn reject(code: &'static str, message: &'static str) -> Rejection {
    Rejection { code, message }
}

/// Accepts a normalized email: trimmed, lowercase, ASCII (internationalized domains as punycode),
/// `local@domain` with a dotted domain, within SMTP's length limits, without whitespace, control
/// characters or characters that need quoting. The API parses user input with these same rules.
pub fn check_email(email: &str) -> Result<(), Rejection> {
    let invalid = |message| Err(reject(codes::INVALID_EMAIL, message));
    if email.is_empty() || email.len() > MAX_EMAIL_BYTES {
        return invalid("the email is empty or longer than 254 bytes");
    }
    if email.trim() != email || email.to_lowercase() != email {
        return invalid("the email is not normalized (trimmed and lowercase)");
    }
    if email
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || "<>()[]\\,;:\"".contains(c))
    {
        return invalid("the email contains characters an address cannot have unquoted");
    }
    let Some((local, domain)) = email.split_once('@') else {
        return invalid("the email has no @");
    };
    if local.is_empty() || local.len() > MAX_LOCAL_PART_BYTES || domain.contains('@') {
        return invalid("the email's local part is empty, too long, or there is more than one @");
    }
    if !email.is_ascii() {
        // Internationalized domains travel as punycode; the API converts them.
        return invalid("the email is not ASCII");
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return invalid("the email's local part has a misplaced dot");
    }
    let labels_ok = domain.contains('.')
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if !labels_ok {
        return invalid("the email's domain is not a dotted host name");
    }
    Ok(())
}

/// Whether a character has no place in a display name: control characters (Cc), format
/// characters (Cf: bidi overrides such as U+202E that make a name read backwards, zero-width
/// characters such as U+200B that make two names look alike) and code points Unicode has not
/// assigned (no font shows them and a later Unicode version may give them any meaning). The
/// categories come from the `unicode-general-category` tables, not from a hand-kept list.
pub fn is_refused_in_name(c: char) -> bool {
    use unicode_general_category::{GeneralCategory, get_general_category};
    matches!(
        get_general_category(c),
        GeneralCategory::Control | GeneralCategory::Format | GeneralCategory::Unassigned
    )
}

/// Accepts a display name that is not blank, at most [`MAX_NAME_CHARS`] characters, and free of
/// control, format and unassigned characters ([`is_refused_in_name`]).
pub fn check_name(name: &str) -> Result<(), Rejection> {
    if name.trim().is_empty() {
        return Err(reject(codes::INVALID_NAME, "the name is blank"));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(reject(
            codes::INVALID_NAME,
            "the name is longer than 200 characters",
        ));
    }
    if name.chars().any(is_refused_in_name) {
        return Err(reject(
            codes::INVALID_NAME,
            "the name contains control, invisible formatting or unassigned characters",
        ));
    }
    Ok(())
}

/// Accepts a request digest of 64 lowercase hex digits (a SHA-256 HMAC), or none.
pub fn check_request_digest(digest: Option<&str>) -> Result<(), Rejection> {
    match digest {
        Some(digest)
            if digest.len() != 64
                || !digest
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
        {
            Err(reject(
                codes::INVALID_REQUEST_DIGEST,
                "the request digest is not 64 lowercase hex digits",
            ))
        }
        _ => Ok(()),
    }
}

/// Accepts a modular-crypt bcrypt hash: `$2a$`, `$2b$`, `$2x$` or `$2y$`, a two-digit cost from
/// 04 to 31, `$`, and 53 characters of bcrypt's base64 (22 of salt, 31 of hash).
pub fn check_password_hash(hash: &str) -> Result<(), Rejection> {
    let invalid = Err(reject(
        codes::INVALID_PASSWORD_HASH,
        "the password hash is not a bcrypt hash",
    ));
    let bytes = hash.as_bytes();
    if bytes.len() != 60 {
        return invalid;
    }
    let prefix_ok = bytes[0] == b'$'
        && bytes[1] == b'2'
        && matches!(bytes[2], b'a' | b'b' | b'x' | b'y')
        && bytes[3] == b'$'
        && bytes[6] == b'$';
    let cost_ok = std::str::from_utf8(&bytes[4..6])
        .ok()
        .filter(|digits| digits.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|digits| digits.parse::<u8>().ok())
        .is_some_and(|cost| (4..=31).contains(&cost));
    let encoding_ok = bytes[7..]
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'/'));
    if prefix_ok && cost_ok && encoding_ok {
        Ok(())
    } else {
        invalid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW";

    #[test]
    fn plausible_normalized_emails_are_accepted() {
        for email in [
            "a@b.c",
            "first.last+tag@example.co.uk",
            "anna@xn--bcher-kva.de",
        ] {
            assert_eq!(check_email(email), Ok(()), "{email}");
        }
    }

    #[test]
    fn unnormalized_or_malformed_emails_are_rejected() {
        let long_local = format!("{}@example.com", "a".repeat(65));
        let too_long = format!("a@{}.com", "b".repeat(260));
        for email in [
            "",
            " a@b.c",
            "A@b.c",
            "a@b.c\n",
            "no-at-sign",
            "@b.c",
            "a@",
            "a@@b.c",
            "a@b@c",
            "a b@c.d",
            "a@b..c",
            "a@-b.c",
            "a@b.c.",
            "user@localhost",
            "über@bücher.de",
            ".a@b.c",
            "a..b@c.d",
            "<a@b.c>",
            "a\u{0}@b.c",
            &long_local,
            &too_long,
        ] {
            let rejection = check_email(email).unwrap_err();
            assert_eq!(rejection.code, codes::INVALID_EMAIL, "{email:?}");
        }
    }

    #[test]
    fn names_must_be_present_short_and_printable() {
        assert_eq!(check_name("Ada Lovelace"), Ok(()));
        assert_eq!(check_name(&"é".repeat(MAX_NAME_CHARS)), Ok(()));
        for name in ["", "   ", "a\u{7}b", "line\nbreak"] {
            assert_eq!(check_name(name).unwrap_err().code, codes::INVALID_NAME);
        }
        // Scripts and emoji are names too.
        for name in ["Ðorđe Stanković", "李小龍", "Ada 🚀", "Zoë O'Brien-Núñez"] {
            assert_eq!(check_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn names_with_bidi_overrides_zero_width_or_unassigned_characters_are_rejected() {
        for name in [
            "Ada\u{202E}ecalevoL",  // RIGHT-TO-LEFT OVERRIDE
            "Ad\u{200B}a",          // ZERO WIDTH SPACE
            "Ada\u{2066}x\u{2069}", // LEFT-TO-RIGHT ISOLATE ... POP
            "\u{FEFF}Ada",          // ZERO WIDTH NO-BREAK SPACE (BOM)
            "Ada\u{0378}",          // unassigned in the Greek block
            "Ada\u{E0001}",         // LANGUAGE TAG (Cf)
        ] {
            assert_eq!(
                check_name(name).unwrap_err().code,
                codes::INVALID_NAME,
                "{name:?}"
            );
        }
        let long = "x".repeat(MAX_NAME_CHARS + 1);
        assert_eq!(check_name(&long).unwrap_err().code, codes::INVALID_NAME);
    }

    #[test]
    fn only_bcrypt_hashes_are_accepted() {
        assert_eq!(check_password_hash(HASH), Ok(()));
        assert_eq!(
            check_password_hash(&HASH.replacen("$2b$", "$2y$", 1)),
            Ok(())
        );
        let bad_cost = HASH.replacen("$12$", "$03$", 1);
        let high_cost = HASH.replacen("$12$", "$32$", 1);
        let bad_char = HASH.replacen('R', "!", 1);
        let short = &HASH[..59];
        for hash in [
            "",
            "password",
            short,
            &bad_cost,
            &high_cost,
            &bad_char,
            "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$abcdefghijklmnopqrs",
        ] {
            assert_eq!(
                check_password_hash(hash).unwrap_err().code,
                codes::INVALID_PASSWORD_HASH,
                "{hash}"
            );
        }
    }

    #[test]
    fn multibyte_input_of_hash_length_is_rejected_without_panicking() {
        let sneaky = format!("$2b$1é{}", "a".repeat(52));
        assert!(check_password_hash(&sneaky).is_err());
    }
}
