//! The headers of request and reply records, decoded from and encoded to `(name, value)` pairs.
//!
//! Kept free of any Kafka client type so the same code serves dbproc, the API and the fuzz targets;
//! the binaries pass their client's header iterator in.

use uuid::Uuid;

use crate::{ContractError, headers};

/// The headers a directory request carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHeaders {
    pub correlation_id: Uuid,
    /// The reply topic the requester reads. Decoding does not check it against a deployment's
    /// topics; the worker does, so a request cannot make it write elsewhere.
    pub reply_to: String,
    pub traceparent: Option<String>,
}

/// The headers a directory reply carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyHeaders {
    pub correlation_id: Uuid,
    pub traceparent: Option<String>,
}

/// A header as a Kafka client hands it over: a name and an optional value of any bytes.
pub type RawHeader<'a> = (&'a str, Option<&'a [u8]>);

impl RequestHeaders {
    pub fn decode(raw: &[RawHeader<'_>]) -> Result<Self, ContractError> {
        Ok(Self {
            correlation_id: correlation_id(raw)?,
            reply_to: required_text(raw, headers::REPLY_TO)?.to_owned(),
            traceparent: optional_text(raw, headers::TRACEPARENT),
        })
    }

    pub fn encode(&self) -> Vec<(&'static str, String)> {
        let mut pairs = vec![
            (headers::CORRELATION_ID, self.correlation_id.to_string()),
            (headers::REPLY_TO, self.reply_to.clone()),
        ];
        pairs.extend(
            self.traceparent
                .clone()
                .map(|traceparent| (headers::TRACEPARENT, traceparent)),
        );
        pairs
    }
}

impl ReplyHeaders {
    pub fn decode(raw: &[RawHeader<'_>]) -> Result<Self, ContractError> {
        Ok(Self {
            correlation_id: correlation_id(raw)?,
            traceparent: optional_text(raw, headers::TRACEPARENT),
        })
    }

    pub fn encode(&self) -> Vec<(&'static str, String)> {
        let mut pairs = vec![(headers::CORRELATION_ID, self.correlation_id.to_string())];
        pairs.extend(
            self.traceparent
                .clone()
                .map(|traceparent| (headers::TRACEPARENT, traceparent)),
        );
        pairs
    }
}

/// The value of the first header named `name`, if it has one. Kafka allows repeated names; the
/// first one counts, as it does for every reader of this contract.
fn first<'a>(raw: &[RawHeader<'a>], name: &str) -> Option<Option<&'a [u8]>> {
    raw.iter()
        .find(|(key, _)| *key == name)
        .map(|(_, value)| *value)
}

fn required_text<'a>(raw: &[RawHeader<'a>], name: &'static str) -> Result<&'a str, ContractError> {
    let value = first(raw, name)
        .flatten()
        .ok_or(ContractError::MissingHeader(name))?;
    std::str::from_utf8(value).map_err(|_| ContractError::InvalidHeader {
        name,
        reason: "not UTF-8",
    })
}

/// An optional header: absent, valueless or not UTF-8 all read as absent, since nothing depends on
/// it (trace context is best effort).
fn optional_text<'a>(raw: &[RawHeader<'a>], name: &str) -> Option<String> {
    first(raw, name)
        .flatten()
        .and_then(|value| std::str::from_utf8(value).ok())
        .map(str::to_owned)
}

fn correlation_id(raw: &[RawHeader<'_>]) -> Result<Uuid, ContractError> {
    required_text(raw, headers::CORRELATION_ID)?
        .parse()
        .map_err(|_| ContractError::InvalidHeader {
            name: headers::CORRELATION_ID,
            reason: "not a UUID",
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(pairs: &[(&'static str, &'static str)]) -> Vec<RawHeader<'static>> {
        pairs
            .iter()
            .map(|(name, value)| (*name, Some(value.as_bytes())))
            .collect()
    }

    #[test]
    fn request_headers_round_trip() {
        let headers = RequestHeaders {
            correlation_id: Uuid::new_v4(),
            reply_to: "user-creation-response".into(),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        };
        let pairs = headers.encode();
        let raw: Vec<RawHeader<'_>> = pairs
            .iter()
            .map(|(name, value)| (*name, Some(value.as_bytes())))
            .collect();
        assert_eq!(RequestHeaders::decode(&raw).unwrap(), headers);
    }

    #[test]
    fn missing_and_invalid_headers_are_named() {
        let none = RequestHeaders::decode(&raw(&[(headers::REPLY_TO, "t")])).unwrap_err();
        assert!(matches!(
            none,
            ContractError::MissingHeader(headers::CORRELATION_ID)
        ));
        let bad = RequestHeaders::decode(&raw(&[
            (headers::CORRELATION_ID, "not-a-uuid"),
            (headers::REPLY_TO, "t"),
        ]))
        .unwrap_err();
        assert!(matches!(
            bad,
            ContractError::InvalidHeader {
                name: headers::CORRELATION_ID,
                ..
            }
        ));
        let no_reply_to = RequestHeaders::decode(&raw(&[(
            headers::CORRELATION_ID,
            "11111111-1111-1111-1111-111111111111",
        )]))
        .unwrap_err();
        assert!(matches!(
            no_reply_to,
            ContractError::MissingHeader(headers::REPLY_TO)
        ));
    }

    #[test]
    fn a_valueless_or_binary_header_is_refused_not_a_panic() {
        let valueless = [(headers::CORRELATION_ID, None)];
        assert!(ReplyHeaders::decode(&valueless).is_err());
        let binary = [(headers::CORRELATION_ID, Some(&b"\xff\xfe"[..]))];
        assert!(ReplyHeaders::decode(&binary).is_err());
    }

    #[test]
    fn the_first_of_repeated_headers_counts() {
        let first_id = "11111111-1111-1111-1111-111111111111";
        let decoded = ReplyHeaders::decode(&raw(&[
            (headers::CORRELATION_ID, first_id),
            (
                headers::CORRELATION_ID,
                "22222222-2222-2222-2222-222222222222",
            ),
        ]))
        .unwrap();
        assert_eq!(decoded.correlation_id.to_string(), first_id);
    }
}
