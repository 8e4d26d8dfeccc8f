//! The API's OpenAPI 3.1 description, generated from the handlers' `#[utoipa::path]` attributes
//! and the types they read and answer with. Served at `/api/v1/openapi.json`; the committed copy
//! `docs/openapi.json` is kept equal to it by a test (`api/tests/openapi.rs`).

use std::sync::LazyLock;

use axum::http::HeaderValue;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::response::{Response as ResponseDoc, ResponseBuilder};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, ObjectBuilder, OpenApi, Ref, RefOr, Type};
use utoipa::{Modify, ToResponse};

use crate::cookie::{SECURE_SESSION_COOKIE, SESSION_COOKIE};

/// Names of the security schemes; the handlers' `security(...)` attributes spell them out (the
/// macro takes literals only).
const COOKIE_SCHEME: &str = "session_cookie";
const PLAIN_COOKIE_SCHEME: &str = "session_cookie_plain";
const BEARER_SCHEME: &str = "bearer";

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "broker-auth",
        description = "Sign up with an emailed one-time code, sign in with a password, and hold a \
            revocable session (cookie or Bearer token); recover a forgotten password with a \
            mailed code, change it, and list and end sessions.\n\n\
            Every error is JSON: `{\"error\":{\"code\":\"…\",\"message\":\"…\",\"fields\":{…}}}`, \
            `fields` only on 422. Besides the answers listed per operation, any path answers \
            **404** `not_found` when it does not exist, **405** `method_not_allowed` (with \
            `Allow`) to a method it does not serve, and **408** (empty body) when a request takes \
            longer than 30 s, slow bodies included.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    modifiers(&SecuritySchemes),
    components(
        schemas(ErrorBody),
        responses(
            MalformedJson,
            PayloadTooLarge,
            UnsupportedMediaType,
            ValidationFailed,
            CrossSite,
            RateLimited,
            Internal,
            Unavailable
        )
    ),
    tags(
        (name = "auth", description = "Signup, verification, signin and sessions (`/api/v1/auth`)"),
        (name = "account", description = "Password recovery and change (`/api/v1/auth`)"),
        (name = "sessions", description = "The signed-in user's sessions: list and end them (`/api/v1/auth`)"),
        (name = "forward-auth", description = "For ingresses and proxies: is this request's session live? (`/api/v1/auth/check`)"),
        (name = "operations", description = "Health, readiness, metrics and this document"),
        (name = "ui", description = "The web UI's static files"),
    )
)]
pub struct ApiDoc;

/// The cookie (`__Host-ba_session` when Secure, `ba_session` over plain http) and
/// `Authorization: Bearer` carry the same session token; any one of them authenticates.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let cookie = |name: &str, description: &str| {
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                name,
                description,
            )))
        };
        components.add_security_scheme(
            COOKIE_SCHEME,
            cookie(
                SECURE_SESSION_COOKIE,
                "The session cookie set by verify and signin (HttpOnly, Secure, SameSite=Strict).",
            ),
        );
        components.add_security_scheme(
            PLAIN_COOKIE_SCHEME,
            cookie(
                SESSION_COOKIE,
                "The session cookie's name when the API runs with COOKIE_SECURE=false (local http).",
            ),
        );
        components.add_security_scheme(
            BEARER_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "The session token (the cookie's value) for clients that are not browsers.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The body of every error answer.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, for programs: `validation_failed`, `malformed_json`, `invalid_code`, `rate_limited`, …
    pub code: &'static str,
    /// For people.
    pub message: &'static str,
    /// Only on 422: the message for each invalid field.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub fields: Option<std::collections::BTreeMap<&'static str, &'static str>>,
}

fn error_response(description: &str, retry_after: bool) -> RefOr<ResponseDoc> {
    let mut response = ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ErrorBody")))
            .build(),
    );
    if retry_after {
        response = response.header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(Some(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(1)),
                ))
                .description(Some("Seconds to wait before trying again."))
                .build(),
        );
    }
    response.build().into()
}

/// Declares a reusable error response (`#/components/responses/{Name}`).
macro_rules! error_responses {
    ($($name:ident => ($description:literal, retry_after: $retry:literal)),* $(,)?) => {$(
        pub struct $name;

        impl<'r> ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<ResponseDoc>) {
                (stringify!($name), error_response($description, $retry))
            }
        }
    )*};
}

error_responses! {
    MalformedJson => ("`malformed_json`: the body is not a JSON object.", retry_after: false),
    PayloadTooLarge => ("`payload_too_large`: the body is larger than 64 KiB.", retry_after: false),
    UnsupportedMediaType => (
        "`unsupported_media_type`: the body was not sent as `Content-Type: application/json`.",
        retry_after: false
    ),
    ValidationFailed => (
        "`validation_failed`: some fields are not valid; `fields` names each with its message.",
        retry_after: false
    ),
    CrossSite => (
        "`cross_site_request`: a browser marked the request `Sec-Fetch-Site: cross-site`.",
        retry_after: false
    ),
    RateLimited => (
        "`rate_limited`: too many requests from this client, too many attempts for this address, \
         or (signup) a code was sent to it less than the resend cooldown ago.",
        retry_after: true
    ),
    Internal => (
        "`internal_error`: something failed on the server's side (details are logged, not sent).",
        retry_after: false
    ),
    Unavailable => (
        "`service_unavailable`: a dependency (Redis, the worker tier, the password hasher) is \
         busy or down; retrying after `Retry-After` is safe.",
        retry_after: true
    ),
}

/// OpenAPI links between the auth operations, so clients and tools (schemathesis's stateful phase)
/// can follow a session's life: signup → verify → me → logout, and signin → me → logout.
pub(crate) fn with_links(mut doc: OpenApi) -> OpenApi {
    let follow = |operation_id: &str, description: &str| {
        LinkBuilder::new()
            .operation_id(operation_id)
            .description(description)
            .build()
    };
    let links = [
        (
            "/signup",
            "202",
            vec![(
                "Verify",
                LinkBuilder::new()
                    .operation_id("verify")
                    .description("Verify the address with the mailed code.")
                    .request_body(Some(serde_json::json!({ "email": "$request.body#/email" })))
                    .build(),
            )],
        ),
        (
            "/verify",
            "201",
            vec![
                ("Me", follow("me", "The new session's user.")),
                ("Logout", follow("logout", "End the new session.")),
            ],
        ),
        (
            "/signin",
            "200",
            vec![
                ("Me", follow("me", "The new session's user.")),
                ("Logout", follow("logout", "End the new session.")),
            ],
        ),
        (
            "/me",
            "200",
            vec![("Logout", follow("logout", "End this session."))],
        ),
    ];
    for (path, status, links) in links {
        let Some(item) = doc
            .paths
            .paths
            .get_mut(&format!("{}{path}", super::AUTH_BASE))
        else {
            continue;
        };
        let operation = item.post.as_mut().or(item.get.as_mut());
        let Some(RefOr::T(response)) =
            operation.and_then(|operation| operation.responses.responses.get_mut(status))
        else {
            continue;
        };
        response.links.extend(
            links
                .into_iter()
                .map(|(name, link)| (name.to_owned(), RefOr::T(link))),
        );
    }
    doc
}

/// The document, built once.
pub fn document() -> &'static OpenApi {
    static DOCUMENT: LazyLock<OpenApi> = LazyLock::new(|| super::documented_routes().doc);
    &DOCUMENT
}

/// The document as the API serves it and `docs/openapi.json` holds it.
pub fn document_json() -> String {
    // Serializing the document's own types cannot fail.
    document().to_pretty_json().unwrap_or_default() + "\n"
}

/// This document.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 description of this API.", content_type = "application/json", body = Object))
)]
pub async fn openapi_json() -> Response {
    static JSON: LazyLock<String> = LazyLock::new(document_json);
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static("application/json")),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        JSON.as_str(),
    )
        .into_response()
}
