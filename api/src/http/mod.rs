//! The HTTP surface: the auth API, the web UI, and the operational endpoints.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::header::CACHE_CONTROL;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::crypto::{Keys, PasswordHasher};
use crate::directory::Directory;
use crate::metrics::Metrics;
use crate::outbox::MailOutbox;
use crate::store::EphemeralStore;

mod account;
mod auth;
pub mod error;
// Public for the fuzz targets (`fuzz/`): the JSON body extractor.
pub mod extract;
pub mod openapi;
mod ops;
mod sessions;
mod ui;

pub use error::{ApiError, RateLimit};
pub use ops::ReadinessCache;
pub use sessions::now_rfc3339;
// Public for the fuzz target of the JSON body extractor (`fuzz/`), which decodes into them.
pub use account::{ChangePasswordRequest, RecoverRequest, RecoverVerifyRequest};
pub use auth::{SigninRequest, SignupRequest, VerifyRequest};

/// The most a request body may hold.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The longest a request may take, body included. Far above any healthy request (bcrypt plus
/// the directory's reply deadline), short enough that stuck connections are closed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Limits and lifetimes of the auth flows.
#[derive(Debug, Clone)]
pub struct Policy {
    pub session_ttl: Duration,
    pub otp_ttl: Duration,
    pub otp_max_attempts: u32,
    pub resend_cooldown: Duration,
    /// Failed signins per (address, client IP), then per address from everywhere.
    pub signin_max_failures: u64,
    pub signin_max_failures_per_address: u64,
    pub signin_failure_window: Duration,
    /// Wrong codes per (address, client IP), then per address from everywhere.
    pub verify_max_failures: u64,
    pub verify_max_failures_per_address: u64,
    pub verify_failure_window: Duration,
    pub rate_limit_per_minute: u64,
    /// The per-IP limits of the two endpoints that cost a bcrypt.
    pub signin_rate_limit_per_minute: u32,
    pub verify_rate_limit_per_minute: u32,
    /// Peers whose `X-Forwarded-For` is read (see [`extract::client_ip`]).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub cookie_secure: bool,
}

/// Everything a handler needs, cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub store: Arc<dyn EphemeralStore>,
    pub events: crate::events::Events,
    pub directory: Directory,
    pub outbox: Arc<dyn MailOutbox>,
    pub keys: Keys,
    pub hasher: PasswordHasher,
    pub policy: Policy,
    pub metrics: Metrics,
    pub readiness: ops::ReadinessCache,
}

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl AppState {
    /// Hands a security event of this request on (never waits, never fails the request).
    pub(crate) fn event(
        &self,
        context: &crate::events::EventContext,
        kind: broker_auth_contract::AuthEventKind,
        subject: crate::events::Subject,
        reason: Option<&str>,
        sessions_revoked: Option<u64>,
    ) {
        let mut event = context.event(kind, subject);
        event.reason = reason.map(str::to_owned);
        event.sessions_revoked = sessions_revoked;
        self.events.emit(event);
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The documented routes, unlayered, and their OpenAPI description: one list makes both, so
/// nothing is routed without being described.
pub(crate) struct DocumentedRoutes {
    /// Under `/api/v1/auth`.
    pub auth: Router<AppState>,
    /// Everything else: operations, this document, the UI.
    pub public: Router<AppState>,
    pub doc: utoipa::openapi::OpenApi,
}

pub(crate) fn documented_routes() -> DocumentedRoutes {
    let (auth, auth_doc) = OpenApiRouter::new()
        .routes(routes!(auth::signup))
        .routes(routes!(auth::verify))
        .routes(routes!(auth::signin))
        .routes(routes!(auth::me))
        .routes(routes!(sessions::logout))
        .routes(routes!(account::recover))
        .routes(routes!(account::recover_verify))
        .routes(routes!(account::change_password))
        .routes(routes!(sessions::list_sessions))
        .routes(routes!(sessions::end_session))
        .split_for_parts();
    let (public, doc) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(sessions::check))
        .routes(routes!(openapi::openapi_json))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ui::index))
        .routes(routes!(ui::app_js))
        .routes(routes!(ui::app_css))
        .split_for_parts();
    // Forward auth answers the methods its document lists, and any path below it (Envoy appends
    // the original one), with any method.
    let check = axum::routing::any(sessions::check);
    let public = public
        .route(&format!("{FORWARD_AUTH}/"), check.clone())
        .route(&format!("{FORWARD_AUTH}/{{*rest}}"), check);
    DocumentedRoutes {
        auth,
        public,
        doc: openapi::with_links(doc.nest(AUTH_BASE, auth_doc)),
    }
}

/// Where the auth flows live.
pub const AUTH_BASE: &str = "/api/v1/auth";

/// The forward-auth endpoint for ingresses: outside [`AUTH_BASE`]'s per-IP limits and
/// cross-site refusal, since behind an ingress every user has the ingress's address and a
/// cross-site link into a protected service is an ordinary navigation.
const FORWARD_AUTH: &str = "/api/v1/auth/check";

pub fn router(state: AppState) -> Router {
    let DocumentedRoutes { auth, public, .. } = documented_routes();
    let auth = auth
        .route_layer(middleware::from_fn_with_state(state.clone(), rate_limit))
        .route_layer(middleware::from_fn(refuse_cross_site))
        .layer(SetResponseHeaderLayer::overriding(
            CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ));

    let router = Router::new()
        .nest(AUTH_BASE, auth)
        .merge(public)
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // Slow clients cannot hold a connection (or a graceful shutdown) forever.
        .layer(RequestBodyTimeoutLayer::new(REQUEST_TIMEOUT))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            record_metrics,
        ))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request| {
                // The matched route, not the raw path: paths can carry anything a client sends.
                let route = request
                    .extensions()
                    .get::<MatchedPath>()
                    .map_or("unmatched", MatchedPath::as_str);
                tracing::info_span!(
                    "http",
                    otel.kind = "server",
                    method = %request.method(),
                    route
                )
            }),
        )
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal("handler panicked".into()).into_response()
        }))
        .with_state(state);
    ui::with_security_headers(router)
}

/// Browsers label every request with where it came from; a request another site made is
/// refused. The JSON endpoints are also safe through their content type (a cross-site form
/// cannot send JSON without a CORS preflight, which this API never grants), but logout has no
/// body, and this covers it and any future endpoint alike. Clients that are not browsers send
/// no such header and are unaffected.
async fn refuse_cross_site(request: Request, next: Next) -> Result<Response, ApiError> {
    let cross_site = request
        .headers()
        .get("sec-fetch-site")
        .is_some_and(|site| site.as_bytes().eq_ignore_ascii_case(b"cross-site"));
    if cross_site {
        return Err(ApiError::CrossSite);
    }
    Ok(next.run(request).await)
}

/// The rate-limit bucket of the request's client (its IP, or its /64 for IPv6), for handlers
/// that count per client; set by [`rate_limit`].
#[derive(Debug, Clone)]
pub struct ClientBucket(pub String);

/// Per client IP and endpoint, a fixed one-minute window; and for the endpoints that cost a
/// bcrypt, a much lower smooth limit on top, so a few addresses cannot keep the hashing slots
/// busy.
async fn rate_limit(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    // Worked out once per request, by `record_metrics` around every route.
    let address = request
        .extensions()
        .get::<sessions::ClientAddress>()
        .map_or_else(
            || client_address(&request, &state.policy.trusted_proxies),
            |address| address.0,
        );
    let ip = extract::rate_limit_key(address);
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("", MatchedPath::as_str)
        .to_owned();
    let route = route.as_str();
    let (count, retry_after) = state
        .store
        .hit(&format!("ip:{route}:{ip}"), Duration::from_secs(60))
        .await?;
    if count > state.policy.rate_limit_per_minute {
        tracing::info!(route, %ip, "rate limited");
        return Err(ApiError::RateLimited {
            retry_after,
            limit: RateLimit::PerIp,
        });
    }
    // Changing the password costs two hashes and checks a password as signin does.
    let hashing_limit = if route.ends_with("/signin") || route.ends_with("/password") {
        Some(state.policy.signin_rate_limit_per_minute)
    } else if route.ends_with("/verify") {
        // Both verifies: the sign-up code's and the recovery code's.
        Some(state.policy.verify_rate_limit_per_minute)
    } else {
        None
    };
    if let Some(per_minute) = hashing_limit {
        let per_minute = per_minute.max(1);
        let interval = Duration::from_secs(60) / per_minute;
        let burst = per_minute.div_ceil(4);
        if let Some(retry_after) = state
            .store
            .throttle(&format!("{route}:{ip}"), interval, burst)
            .await?
        {
            tracing::info!(route, %ip, "rate limited (hashing endpoint)");
            return Err(ApiError::RateLimited {
                retry_after,
                limit: RateLimit::HashingPerIp,
            });
        }
    }
    request.extensions_mut().insert(ClientBucket(ip));
    Ok(next.run(request).await)
}

/// The parts of a request its auth events read, kept past handing the request on.
struct EventHeaders {
    headers: axum::http::HeaderMap,
    address: Option<std::net::IpAddr>,
    route: Option<MatchedPath>,
}

impl EventHeaders {
    fn of(request: &Request, address: Option<std::net::IpAddr>) -> Self {
        let mut headers = axum::http::HeaderMap::new();
        for name in [axum::http::header::USER_AGENT.as_str(), "x-request-id"] {
            if let Some(value) = request.headers().get(name) {
                headers.insert(name, value.clone());
            }
        }
        Self {
            headers,
            address,
            route: request.extensions().get::<MatchedPath>().cloned(),
        }
    }
}

/// The request's client address (see [`extract::client_ip`]).
fn client_address(request: &Request, trusted_proxies: &[ipnet::IpNet]) -> Option<std::net::IpAddr> {
    extract::client_ip(
        request.headers(),
        request.extensions().get::<ConnectInfo<SocketAddr>>(),
        trusted_proxies,
    )
}

async fn record_metrics(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    // The client's address, for the rate limits, the sessions and the events downstream.
    let address = client_address(&request, &state.policy.trusted_proxies);
    request
        .extensions_mut()
        .insert(sessions::ClientAddress(address));
    // For the event of a refused request: what it needs of the request, kept cheaply (the
    // request is handed on); the event itself is made only for a 429.
    let asked = EventHeaders::of(&request, address);
    // Only known methods become label values: a client must not be able to mint new series.
    let method = match *request.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let response = next.run(request).await;
    if let Some(limit) = response.extensions().get::<RateLimit>() {
        state.metrics.rate_limited(*limit);
        let context = sessions::event_context(&asked.headers, asked.address, asked.route.as_ref());
        let mut event = context.event(
            broker_auth_contract::AuthEventKind::RateLimited,
            crate::events::Subject::Network,
        );
        event.reason = Some(limit.label().to_owned());
        state.events.emit(event);
    }
    state.metrics.observe_http(
        &route,
        method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// The operational port's router: `/metrics`, `/healthz`, `/readyz`.
pub fn metrics_router(state: AppState) -> Router {
    ops::router(state)
}
