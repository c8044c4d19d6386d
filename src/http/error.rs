//! Errors as JSON (`{"error": "..."}` with the status that says who is at fault), and the guard
//! every request passes first: the bearer token, the query string's length, the timeout.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::params::ParamError;
use super::Api;
use crate::core::types::NodeId;
use crate::error::{Error, LedgerError};

/// What can fail in running the endpoint itself (not in answering a request).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The listener given has no local address.
    #[error("the http listener has no address: {0}")]
    Listener(#[source] std::io::Error),
    /// The server stopped on an I/O error.
    #[error("the http server failed: {0}")]
    Serve(#[source] std::io::Error),
    /// The server's task panicked or was cancelled.
    #[error("the http server's task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// A token that is empty or holds characters an `Authorization` header cannot carry as
    /// they are (visible ASCII only): nothing was served.
    #[error("the http bearer token must be visible ASCII characters, at least one")]
    BadToken,
}

/// Why a request gets no answer, each with its status (the body says it in words).
#[derive(Debug, thiserror::Error)]
pub(super) enum ApiError {
    /// A query parameter or path segment that does not parse (400).
    #[error(transparent)]
    Param(#[from] ParamError),
    /// No route at this path (404).
    #[error("no route for {0}")]
    NoRoute(String),
    /// Routes here answer GET only (405).
    #[error("{0} is not allowed here: every route is read-only (GET)")]
    Method(String),
    /// No node with that id in the registry (404).
    #[error("no node {0} in the registry")]
    UnknownNode(NodeId),
    /// No service with that id in the registry (404).
    #[error("no service {0} in the registry")]
    UnknownService(uuid::Uuid),
    /// The bearer token is missing or wrong (401).
    #[error("a bearer token is required (Authorization: Bearer TOKEN)")]
    Unauthorized,
    /// The query string is longer than the bound (414).
    #[error("the query string is {len} bytes, more than the {max} taken")]
    QueryTooLong {
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A read from below the history this node holds (410), saying where it starts.
    #[error("this node holds the history from seq {first_held} on, not from {from}")]
    HistoryNotHeld {
        /// The first seq asked for.
        from: u64,
        /// The first seq held.
        first_held: u64,
    },
    /// The answer took longer than the request timeout (503).
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Too many SSE watches open (503).
    #[error("{0} SSE watches are open, the most this endpoint serves")]
    TooManyWatchers(usize),
    /// The node could not answer (503 while it is not started or halted, 500 otherwise).
    #[error(transparent)]
    Node(Error),
    /// Writing the answer failed: the seed to stream, an event as JSON (500).
    #[error("writing the answer: {0}")]
    Io(#[source] std::io::Error),
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::HistoryNotHeld { from, first_held } => ApiError::HistoryNotHeld { from, first_held },
            e => ApiError::Node(e),
        }
    }
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::Param(_) => StatusCode::BAD_REQUEST,
            ApiError::NoRoute(_) | ApiError::UnknownNode(_) | ApiError::UnknownService(_) => StatusCode::NOT_FOUND,
            ApiError::Method(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::QueryTooLong { .. } => StatusCode::URI_TOO_LONG,
            ApiError::HistoryNotHeld { .. } => StatusCode::GONE,
            ApiError::Timeout(_) | ApiError::TooManyWatchers(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Node(
                Error::NotStarted
                | Error::NotInitialized
                | Error::Halted(_)
                | Error::NoLeader { .. }
                | Error::Ledger(LedgerError::HistoryIncomplete { .. }),
            ) => StatusCode::SERVICE_UNAVAILABLE,
            // Pruned under the node's retention policy: it will not come back here.
            ApiError::Node(Error::Ledger(LedgerError::HistoryArchived { .. })) => StatusCode::GONE,
            ApiError::Node(_) | ApiError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The body of every error.
#[derive(Serialize)]
struct ErrorBody {
    error: String,
    /// On a 410: the first seq this node holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    first_held: Option<u64>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, %status, "http request failed");
        } else {
            tracing::debug!(error = %self, %status, "http request refused");
        }
        let first_held = match self {
            ApiError::HistoryNotHeld { first_held, .. } => Some(first_held),
            _ => None,
        };
        let mut response = json_response(status, &ErrorBody { error: self.to_string(), first_held });
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// `value` as a JSON answer with `status`.
pub(super) fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => {
            (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
        }
        // Our shapes always serialize; say so in JSON if one ever does not.
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            format!("{{\"error\":\"the answer could not be written as JSON: {}\"}}", e.to_string().replace('"', "'")),
        )
            .into_response(),
    }
}

/// The fallback: a 404 naming the path.
pub(super) async fn not_found(request: Request) -> ApiError {
    ApiError::NoRoute(request.uri().path().to_string())
}

/// A method other than GET (or HEAD) on a route.
pub(super) async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::Method(request.method().to_string())
}

/// The path every probe may reach without the token.
const OPEN_PATH: &str = "/healthz";

/// What every request passes before its handler: the bearer token (every route but
/// `/healthz`), the query string's length, and the time its answer may take to start.
pub(super) async fn guard(State(api): State<Api>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if let Some(want) = &api.token {
        if path != OPEN_PATH && !bearer_matches(&request, want) {
            return ApiError::Unauthorized.into_response();
        }
    }
    let len = request.uri().query().map_or(0, str::len);
    if len > api.options.query_bytes_max {
        return ApiError::QueryTooLong { len, max: api.options.query_bytes_max }.into_response();
    }
    let limit = match path {
        // The stream runs as long as the watcher stays; its start is immediate.
        "/v1/watch" => None,
        "/v1/seed" => Some(api.options.seed_timeout),
        _ => Some(api.options.request_timeout),
    };
    match limit {
        None => next.run(request).await,
        Some(t) => match tokio::time::timeout(t, next.run(request)).await {
            Ok(response) => response,
            Err(_) => ApiError::Timeout(t).into_response(),
        },
    }
}

/// Whether the request carries `Authorization: Bearer T` with T the token: the digests of the
/// two are compared (in constant time, so neither the token nor its length leaks by timing).
fn bearer_matches(request: &Request, want: &blake3::Hash) -> bool {
    let Some(value) = request.headers().get(header::AUTHORIZATION) else { return false };
    // The scheme's name is case-insensitive (RFC 9110).
    let (scheme, given) = value.as_bytes().split_at(value.len().min(7));
    scheme.eq_ignore_ascii_case(b"bearer ") && blake3::hash(given) == *want
}
