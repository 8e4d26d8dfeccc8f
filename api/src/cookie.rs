//! The session cookie and where a session token is read from.

use std::time::Duration;

use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::{HeaderMap, HeaderValue};

/// The cookie's name over plain http (`COOKIE_SECURE=false`).
pub const SESSION_COOKIE: &str = "ba_session";
/// The cookie's name when Secure: the `__Host-` prefix makes browsers refuse it unless it is
/// Secure, host-only and `Path=/`, so a sibling subdomain cannot plant or shadow it.
pub const SECURE_SESSION_COOKIE: &str = "__Host-ba_session";

fn cookie_name(secure: bool) -> &'static str {
    if secure {
        SECURE_SESSION_COOKIE
    } else {
        SESSION_COOKIE
    }
}

/// `Set-Cookie` for a new session: HttpOnly, SameSite=Strict, Max-Age equal to the session's
/// lifetime, Secure unless turned off for local http.
pub fn session_cookie(token: &str, max_age: Duration, secure: bool) -> HeaderValue {
    build(token, max_age.as_secs(), secure)
}

/// `Set-Cookie` that removes the session cookie.
pub fn clearing_cookie(secure: bool) -> HeaderValue {
    build("", 0, secure)
}

fn build(value: &str, max_age: u64, secure: bool) -> HeaderValue {
    let name = cookie_name(secure);
    let secure = if secure { "; Secure" } else { "" };
    let cookie =
        format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}");
    // A JWT is base64url and dots; nothing here can make the header invalid.
    HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The session token from the cookie, or else from `Authorization: Bearer`.
pub fn session_token(headers: &HeaderMap) -> Option<&str> {
    let from_cookie = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, value)| {
            (*name == SECURE_SESSION_COOKIE || *name == SESSION_COOKIE) && !value.is_empty()
        })
        .map(|(_, value)| value);
    from_cookie.or_else(|| {
        let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        // The scheme is case-insensitive (RFC 9110 §11.1).
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|token| !token.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_has_every_protection() {
        let cookie = session_cookie("abc.def.ghi", Duration::from_secs(3600), true);
        let cookie = cookie.to_str().unwrap();
        assert!(cookie.starts_with("__Host-ba_session=abc.def.ghi;"));
        for attribute in [
            "HttpOnly",
            "SameSite=Strict",
            "Max-Age=3600",
            "Secure",
            "Path=/",
        ] {
            assert!(cookie.contains(attribute), "{cookie} lacks {attribute}");
        }
    }

    #[test]
    fn secure_can_be_turned_off_for_local_http() {
        let cookie = session_cookie("t", Duration::from_secs(60), false);
        let cookie = cookie.to_str().unwrap();
        assert!(!cookie.contains("Secure"));
        assert!(cookie.starts_with("ba_session=t;"));
    }

    #[test]
    fn the_clearing_cookie_expires_at_once() {
        let cookie = clearing_cookie(true);
        assert!(cookie.to_str().unwrap().contains("Max-Age=0"));
    }

    #[test]
    fn the_token_comes_from_the_cookie_or_a_bearer_header() {
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_static("theme=dark; ba_session=tok1"),
        );
        assert_eq!(session_token(&headers), Some("tok1"));

        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_static("bearer tok2"));
        assert_eq!(session_token(&headers), Some("tok2"));

        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, HeaderValue::from_static("__Host-ba_session=tok3"));
        assert_eq!(session_token(&headers), Some("tok3"));

        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic dXNlcg=="));
        headers.insert(COOKIE, HeaderValue::from_static("ba_session="));
        assert_eq!(session_token(&headers), None);
    }
}
