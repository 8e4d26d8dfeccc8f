//! The parsers of user input: email, new and offered password, display name, one-time code.
//!
//! Input: any text. Nothing may panic; whatever parses is in canonical form, so parsing it again
//! gives the same value (the directory receives the canonical form and must accept it).

#![no_main]

use broker_auth_api::domain::{
    DisplayName, EmailAddress, NewPassword, OtpCode, parse_offered_password,
};
use broker_auth_user_store::validation::check_email;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };

    if let Ok(email) = EmailAddress::parse(raw) {
        assert!(email.as_str().len() <= EmailAddress::MAX_LEN);
        assert_eq!(EmailAddress::parse(email.as_str()), Ok(email.clone()));
        // The worker tier applies its own checks to what the API sends; they must agree.
        assert!(
            check_email(email.as_str()).is_ok(),
            "the API accepted an address the directory refuses: {email:?}"
        );
    }

    if let Ok(password) = NewPassword::parse(raw) {
        assert_eq!(password.expose(), raw, "a password is used whole");
        let chars = raw.chars().count();
        assert!((NewPassword::MIN_CHARS..=NewPassword::MAX_CHARS).contains(&chars));
    }
    if let Ok(offered) = parse_offered_password(raw) {
        assert_eq!(offered, raw);
    }

    if let Ok(name) = DisplayName::parse(raw) {
        let name = name.into_inner();
        assert_eq!(DisplayName::parse(&name).map(DisplayName::into_inner), Ok(name.clone()));
    }

    if let Ok(code) = OtpCode::parse(raw) {
        assert_eq!(code.as_str().len(), 6);
        assert_eq!(OtpCode::parse(code.as_str()), Ok(code.clone()));
    }
});
