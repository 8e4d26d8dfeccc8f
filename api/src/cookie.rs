//! The session cookie and where a session token is read from.

use std::time::Duration;

use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::{HeaderMap, HeaderValue};

pub const SESSION_COOKIE: &str = "ba_session";

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
    let secure = if secure { "; Secure" } else { "" };
    let cookie = format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    );
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
        .find(|(name, value)| *name == SESSION_COOKIE && !value.is_empty())
        .map(|(_, value)| value);
    from_cookie.or_else(|| {
        headers
            .get(AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")
            .map(str::trim)
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
        assert!(cookie.starts_with("ba_session=abc.def.ghi;"));
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
        assert!(!cookie.to_str().unwrap().contains("Secure"));
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
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer tok2"));
        assert_eq!(session_token(&headers), Some("tok2"));

        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic dXNlcg=="));
        headers.insert(COOKIE, HeaderValue::from_static("ba_session="));
        assert_eq!(session_token(&headers), None);
    }
}
