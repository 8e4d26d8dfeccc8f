//! The JSON body extractor of the auth endpoints, over each of their request types.
//!
//! Input: one selector byte (request type and `Content-Type`), then the body. Nothing may panic,
//! and every refusal is a 4xx with the JSON error shape: a body never causes a 5xx.

#![no_main]

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use broker_auth_api::http::extract::ApiJson;
use broker_auth_api::http::{
    ChangePasswordRequest, RecoverRequest, RecoverVerifyRequest, SigninRequest, SignupRequest,
    VerifyRequest,
};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;

const CONTENT_TYPES: [Option<&str>; 5] = [
    Some("application/json"),
    Some("application/json; charset=utf-8"),
    Some("application/problem+json"),
    Some("text/plain"),
    None,
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let content_type = CONTENT_TYPES[usize::from(selector >> 3) % CONTENT_TYPES.len()];
    match selector % 6 {
        0 => extract::<SignupRequest>(content_type, body),
        1 => extract::<VerifyRequest>(content_type, body),
        2 => extract::<SigninRequest>(content_type, body),
        3 => extract::<RecoverRequest>(content_type, body),
        4 => extract::<RecoverVerifyRequest>(content_type, body),
        _ => extract::<ChangePasswordRequest>(content_type, body),
    }
});

fn extract<T: DeserializeOwned>(content_type: Option<&str>, body: &[u8]) {
    let mut request = Request::builder().method("POST").uri("/api/v1/auth/x");
    if let Some(content_type) = content_type {
        request = request.header(CONTENT_TYPE, content_type);
    }
    let request = request
        .body(Body::from(body.to_vec()))
        .expect("a request of valid parts");
    let Err(error) = futures::executor::block_on(ApiJson::<T>::from_request(request, &())) else {
        return;
    };
    let response = error.into_response();
    let status = response.status();
    assert!(
        matches!(
            status,
            StatusCode::BAD_REQUEST
                | StatusCode::PAYLOAD_TOO_LARGE
                | StatusCode::UNSUPPORTED_MEDIA_TYPE
        ),
        "a body was answered {status}"
    );
    assert_eq!(
        response.headers().get(CONTENT_TYPE).map(|v| v.as_bytes()),
        Some(&b"application/json"[..])
    );
}
