//! Extractors that give malformed input the same JSON error shape as everything else.

use std::net::{IpAddr, SocketAddr};

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRequest};
use axum::http::{HeaderMap, StatusCode};

use super::error::ApiError;

/// `axum::Json` with errors mapped to [`ApiError`].
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::MissingJsonContentType(_) => Self::UnsupportedMediaType,
            JsonRejection::JsonSyntaxError(e) => Self::MalformedJson(e.body_text()),
            JsonRejection::JsonDataError(e) => Self::MalformedJson(e.body_text()),
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge,
            other => Self::MalformedJson(other.body_text()),
        }
    }
}

/// The client's IP: the socket peer, or — behind `trusted_hops` reverse proxies — the entry of
/// `X-Forwarded-For` that the outermost trusted proxy appended. Entries further left are
/// client-controlled and never trusted.
pub fn client_ip(
    headers: &HeaderMap,
    connect_info: Option<&ConnectInfo<SocketAddr>>,
    trusted_hops: u8,
) -> Option<IpAddr> {
    let peer = connect_info.map(|ConnectInfo(addr)| addr.ip());
    if trusted_hops == 0 {
        return peer;
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|entry| entry.trim().parse::<IpAddr>())
        .collect::<Result<_, _>>()
        .unwrap_or_default();
    // The last `trusted_hops` entries were written by our proxies; the one they saw is at
    // index len - trusted_hops.
    forwarded
        .len()
        .checked_sub(usize::from(trusted_hops))
        .and_then(|index| forwarded.get(index).copied())
        .or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn peer() -> ConnectInfo<SocketAddr> {
        ConnectInfo("10.0.0.9:4000".parse().unwrap())
    }

    #[test]
    fn without_trusted_proxies_the_socket_address_is_used() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        assert_eq!(
            client_ip(&headers, Some(&peer()), 0),
            Some("10.0.0.9".parse().unwrap())
        );
    }

    #[test]
    fn with_one_trusted_proxy_the_last_entry_is_used() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 1.2.3.4"),
        );
        assert_eq!(
            client_ip(&headers, Some(&peer()), 1),
            Some("1.2.3.4".parse().unwrap())
        );
        assert_eq!(
            client_ip(&headers, Some(&peer()), 2),
            Some("6.6.6.6".parse().unwrap())
        );
    }

    #[test]
    fn garbage_or_short_forwarded_headers_fall_back_to_the_peer() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("not-an-ip"));
        assert_eq!(
            client_ip(&headers, Some(&peer()), 1),
            Some("10.0.0.9".parse().unwrap())
        );
        headers.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        assert_eq!(
            client_ip(&headers, Some(&peer()), 3),
            Some("10.0.0.9".parse().unwrap())
        );
    }
}
