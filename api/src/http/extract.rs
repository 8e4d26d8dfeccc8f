//! Extractors that give malformed input the same JSON error shape as everything else.

use std::fmt;
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRequest, Request};
use axum::http::{HeaderMap, StatusCode};
use ipnet::IpNet;
use serde::de::value::MapAccessDeserializer;
use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::error::ApiError;

/// `axum::Json` with errors mapped to [`ApiError`], accepting a JSON object only (serde would
/// also read a struct from an array of its fields in order).
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(ObjectOnly(value)) =
            axum::Json::<ObjectOnly<T>>::from_request(request, state).await?;
        Ok(Self(value))
    }
}

/// Deserializes `T` from a JSON object and refuses every other JSON type.
struct ObjectOnly<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
            type Value = T;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }

        deserializer
            .deserialize_map(ObjectVisitor(PhantomData))
            .map(ObjectOnly)
    }
}

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

/// A text field of a request body: a string, absent (or `null`), or something else. Wrong types
/// are reported per field with the other validation errors instead of failing the whole body.
#[derive(Debug, Default)]
pub enum Text {
    #[default]
    Missing,
    Value(String),
    NotAString,
}

impl<'de> serde::Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(
            match <serde_json::Value as serde::Deserialize>::deserialize(deserializer)? {
                serde_json::Value::String(value) => Self::Value(value),
                serde_json::Value::Null => Self::Missing,
                _ => Self::NotAString,
            },
        )
    }
}

impl Text {
    /// The text to validate (`""` when absent, which the parsers call "required").
    pub fn as_str(&self) -> Result<&str, &'static str> {
        match self {
            Self::Missing => Ok(""),
            Self::Value(value) => Ok(value),
            Self::NotAString => Err("must be a string"),
        }
    }
}

/// The client's IP: the socket peer, unless the peer is one of the `trusted_proxies`. Then
/// `X-Forwarded-For` is read from the right: entries our own proxies appended are skipped, and
/// the first address outside the trusted ranges is the client. Entries further left were written
/// by the client and never count. An entry may carry a port (`1.2.3.4:5678`,
/// `[2001:db8::1]:443`); at an unreadable one the walk stops at the last proxy it could vouch for.
pub fn client_ip(
    headers: &HeaderMap,
    connect_info: Option<&ConnectInfo<SocketAddr>>,
    trusted_proxies: &[IpNet],
) -> Option<IpAddr> {
    let peer = connect_info.map(|ConnectInfo(addr)| addr.ip().to_canonical())?;
    let trusted = |ip: &IpAddr| trusted_proxies.iter().any(|net| net.contains(ip));
    if !trusted(&peer) {
        return Some(peer);
    }
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for entry in entries.iter().rev() {
        let Some(ip) = entry
            .parse::<IpAddr>()
            .ok()
            .or_else(|| entry.parse::<SocketAddr>().ok().map(|addr| addr.ip()))
            .map(|ip| ip.to_canonical())
        else {
            break;
        };
        client = ip;
        if !trusted(&ip) {
            break;
        }
    }
    Some(client)
}

/// The rate-limit bucket of an address: the address itself for IPv4, its /64 for IPv6 (one
/// subscriber usually holds a whole /64, so single addresses would be free to rotate).
pub fn rate_limit_key(ip: Option<IpAddr>) -> String {
    match ip {
        Some(IpAddr::V4(v4)) => v4.to_string(),
        Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let [a, b, c, d, ..] = v6.segments();
                format!("{a:x}:{b:x}:{c:x}:{d:x}::/64")
            }
        },
        None => "unknown".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn from(peer: &str) -> ConnectInfo<SocketAddr> {
        ConnectInfo(peer.parse().unwrap())
    }

    fn proxies() -> Vec<IpNet> {
        vec!["10.0.0.0/24".parse().unwrap(), "fd00::/8".parse().unwrap()]
    }

    fn forwarded(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static(value));
        headers
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    async fn extract(body: &'static str) -> Result<serde_json::Value, ApiError> {
        #[derive(Debug, serde::Deserialize)]
        struct Body {
            email: String,
        }
        let request = Request::builder()
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body))
            .unwrap();
        ApiJson::<Body>::from_request(request, &())
            .await
            .map(|ApiJson(body)| serde_json::json!({ "email": body.email }))
    }

    #[tokio::test]
    async fn a_body_must_be_a_json_object_not_an_array_of_its_fields() {
        assert!(extract(r#"{"email":"a@b.co"}"#).await.is_ok());
        // serde reads a struct from a sequence of its fields in order; the API does not.
        let error = extract(r#"["a@b.co"]"#).await.unwrap_err();
        assert!(matches!(error, ApiError::MalformedJson(_)), "{error:?}");
        // Duplicate fields are still refused, as serde refuses them in an object.
        let error = extract(r#"{"email":"a@b.co","email":"c@d.co"}"#)
            .await
            .unwrap_err();
        assert!(matches!(error, ApiError::MalformedJson(_)), "{error:?}");
    }

    #[test]
    fn without_trusted_proxies_the_socket_address_is_used() {
        let headers = forwarded("1.2.3.4");
        assert_eq!(
            client_ip(&headers, Some(&from("10.0.0.9:4000")), &[]),
            ip("10.0.0.9")
        );
    }

    #[test]
    fn a_peer_outside_the_trusted_ranges_cannot_forward_an_address() {
        let headers = forwarded("1.2.3.4");
        assert_eq!(
            client_ip(&headers, Some(&from("10.0.1.9:4000")), &proxies()),
            ip("10.0.1.9")
        );
        assert_eq!(
            client_ip(&headers, Some(&from("[2001:db8::1]:4000")), &proxies()),
            ip("2001:db8::1")
        );
    }

    #[test]
    fn a_trusted_peer_forwards_the_first_address_outside_the_trusted_ranges() {
        let headers = forwarded("6.6.6.6, 1.2.3.4");
        assert_eq!(
            client_ip(&headers, Some(&from("10.0.0.9:4000")), &proxies()),
            ip("1.2.3.4")
        );
        // A chain of our own proxies is walked through; what the client wrote stays ignored.
        let headers = forwarded("6.6.6.6, 1.2.3.4, 10.0.0.7");
        assert_eq!(
            client_ip(&headers, Some(&from("10.0.0.9:4000")), &proxies()),
            ip("1.2.3.4")
        );
        let headers = forwarded("1.2.3.4");
        assert_eq!(
            client_ip(&headers, Some(&from("[fd00::5]:4000")), &proxies()),
            ip("1.2.3.4")
        );
        // An IPv4 peer seen through a dual-stack socket is still recognised.
        assert_eq!(
            client_ip(&headers, Some(&from("[::ffff:10.0.0.9]:4000")), &proxies()),
            ip("1.2.3.4")
        );
    }

    #[test]
    fn forwarded_entries_may_carry_ports() {
        let headers = forwarded("garbage, 1.2.3.4:5678");
        assert_eq!(
            client_ip(&headers, Some(&from("10.0.0.9:4000")), &proxies()),
            ip("1.2.3.4")
        );
        let headers = forwarded("[2001:db8::7]:443");
        assert_eq!(
            client_ip(&headers, Some(&from("10.0.0.9:4000")), &proxies()),
            ip("2001:db8::7")
        );
    }

    #[test]
    fn garbage_or_missing_forwarded_headers_fall_back_to_the_last_trusted_hop() {
        let peer = from("10.0.0.9:4000");
        assert_eq!(
            client_ip(&forwarded("not-an-ip"), Some(&peer), &proxies()),
            ip("10.0.0.9")
        );
        assert_eq!(
            client_ip(
                &forwarded("6.6.6.6, not-an-ip, 10.0.0.3"),
                Some(&peer),
                &proxies()
            ),
            ip("10.0.0.3")
        );
        assert_eq!(
            client_ip(&HeaderMap::new(), Some(&peer), &proxies()),
            ip("10.0.0.9")
        );
    }

    #[test]
    fn ipv6_clients_share_a_bucket_per_64() {
        let a = rate_limit_key(Some("2001:db8:1:2::1".parse().unwrap()));
        let b = rate_limit_key(Some("2001:db8:1:2:ffff::9".parse().unwrap()));
        let c = rate_limit_key(Some("2001:db8:1:3::1".parse().unwrap()));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            rate_limit_key(Some("10.1.2.3".parse().unwrap())),
            "10.1.2.3"
        );
        assert_eq!(
            rate_limit_key(Some("::ffff:10.1.2.3".parse().unwrap())),
            "10.1.2.3"
        );
    }
}
