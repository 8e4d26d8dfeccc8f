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

/// `Set-Cookie` headers that remove the session cookie under both names, whichever mode set it
/// (a deployment may have switched modes) and whatever a sibling host planted under the
/// unprefixed name. The `__Host-` one must carry `Secure` to be accepted at all; the unprefixed
/// one must not, or a browser on plain http would ignore it.
pub fn clearing_cookies() -> [HeaderValue; 2] {
    [build("", 0, true), build("", 0, false)]
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
///
/// Only the cookie name of the configured mode is read. In Secure mode that is the `__Host-`
/// name alone: an unprefixed `ba_session` can be planted by a sibling subdomain or a plain-http
/// page (cookie tossing), and reading it would sign the victim into the attacker's account.
pub fn session_token(headers: &HeaderMap, secure: bool) -> Option<&str> {
    let name = cookie_name(secure);
    let from_cookie = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(candidate, value)| *candidate == name && !value.is_empty())
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
    fn the_clearing_cookies_expire_both_names_at_once() {
        let [secure, plain] = clearing_cookies().map(|c| c.to_str().unwrap().to_owned());
        assert!(secure.starts_with("__Host-ba_session=;"), "{secure}");
        assert!(secure.contains("Max-Age=0") && secure.contains("Secure"));
        assert!(plain.starts_with("ba_session=;"), "{plain}");
        assert!(plain.contains("Max-Age=0") && !plain.contains("Secure"));
    }

    #[test]
    fn the_token_comes_from_the_cookie_or_a_bearer_header() {
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_static("theme=dark; ba_session=tok1"),
        );
        assert_eq!(session_token(&headers, false), Some("tok1"));

        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_static("bearer tok2"));
        assert_eq!(session_token(&headers, true), Some("tok2"));

        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, HeaderValue::from_static("__Host-ba_session=tok3"));
        assert_eq!(session_token(&headers, true), Some("tok3"));

        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic dXNlcg=="));
        headers.insert(COOKIE, HeaderValue::from_static("ba_session="));
        assert_eq!(session_token(&headers, false), None);
    }

    #[test]
    fn in_secure_mode_a_tossed_unprefixed_cookie_is_ignored_wherever_it_stands() {
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_static("ba_session=attacker; __Host-ba_session=victim"),
        );
        assert_eq!(session_token(&headers, true), Some("victim"));

        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, HeaderValue::from_static("ba_session=attacker"));
        assert_eq!(session_token(&headers, true), None);
        // A tossed cookie does not hide the Bearer header either.
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer mine"));
        assert_eq!(session_token(&headers, true), Some("mine"));
    }
}
