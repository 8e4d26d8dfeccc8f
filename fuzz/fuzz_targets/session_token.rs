//! Where a session token is read from: the `Cookie` headers and `Authorization: Bearer`.
//!
//! Input: header values separated by newlines; the first byte of each says which header it is
//! (even: `Cookie`, odd: `Authorization`). Both cookie modes are tried: plain (`ba_session`) and
//! Secure (`__Host-ba_session` only). Nothing may panic; a token found is non-empty, comes from a
//! header of the place it was read from, and is found again when sent alone there.

#![no_main]

use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::{HeaderMap, HeaderValue};
use broker_auth_api::cookie::{SECURE_SESSION_COOKIE, SESSION_COOKIE, session_token};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let Some((&which, value)) = line.split_first() else {
            continue;
        };
        let Ok(value) = HeaderValue::from_bytes(value) else {
            continue;
        };
        let name = if which % 2 == 0 { COOKIE } else { AUTHORIZATION };
        headers.append(name, value);
    }

    for secure in [false, true] {
        check(&headers, secure);
    }
});

fn check(headers: &HeaderMap, secure: bool) {
    let Some(token) = session_token(headers, secure) else {
        return;
    };
    assert!(!token.is_empty());

    // The cookie wins over the Authorization header; find out which one the token came from.
    let mut cookies = HeaderMap::new();
    for value in headers.get_all(COOKIE) {
        cookies.append(COOKIE, value.clone());
    }
    let from_cookie = session_token(&cookies, secure).is_some();
    let (name, sent_alone) = if from_cookie {
        let cookie_name = if secure {
            SECURE_SESSION_COOKIE
        } else {
            SESSION_COOKIE
        };
        (COOKIE, format!("{cookie_name}={token}"))
    } else {
        (AUTHORIZATION, format!("Bearer {token}"))
    };
    assert!(
        headers
            .get_all(&name)
            .iter()
            .any(|value| contains(value.as_bytes(), token.as_bytes())),
        "the token {token:?} is not part of any {name} header"
    );

    // Sent alone in the same place, the same token is read back.
    let mut alone = HeaderMap::new();
    let value =
        HeaderValue::from_str(&sent_alone).expect("a token read from a header is a valid value");
    alone.insert(name, value);
    assert_eq!(session_token(&alone, secure), Some(token));
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}
