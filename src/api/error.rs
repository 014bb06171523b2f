//! The API's errors and the one table that maps them to HTTP statuses and
//! error codes. Messages are fixed texts: never content, keys or tokens.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use ephemera_actors::store::{CommitError, ReadError};
use serde::Serialize;

use crate::store::StoreError;

/// An HTTP API error.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed request (not JSON, missing or mistyped fields).
    #[error("{0}")]
    BadRequest(&'static str),
    /// Missing, forged, expired or revoked token, or bad credentials.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// Not yours.
    #[error("{0}")]
    Forbidden(&'static str),
    /// No such thing.
    #[error("{0}")]
    NotFound(&'static str),
    /// Already exists.
    #[error("{0}")]
    Conflict(&'static str),
    /// Too large.
    #[error("{0}")]
    TooLarge(&'static str),
    /// Well-formed but invalid values.
    #[error("{0}")]
    Invalid(&'static str),
    /// Over a rate or quota: `429` with `Retry-After` in whole seconds.
    #[error("{message}")]
    RateLimited {
        /// What is exceeded (a fixed text).
        message: &'static str,
        /// When to try again, in seconds (at least 1).
        retry_after_secs: u64,
    },
    /// Overloaded or a dependency is down (answered with `Retry-After: 1`).
    #[error("service unavailable, retry")]
    Unavailable,
    /// A server fault (the detail is in the server log).
    #[error("internal error")]
    Internal,
}

impl From<ephemera_actors::frames::FrameError> for ApiError {
    /// An actor's answer to a request that came over HTTP.
    fn from(e: ephemera_actors::frames::FrameError) -> Self {
        use ephemera_actors::frames::ErrorCode as C;
        match e.code {
            C::BadFrame => ApiError::BadRequest(e.message),
            C::Invalid => ApiError::Invalid(e.message),
            C::Forbidden => ApiError::Forbidden(e.message),
            C::NotFound => ApiError::NotFound(e.message),
            C::TooLarge => ApiError::TooLarge(e.message),
            C::RateLimited | C::Unavailable => ApiError::Unavailable,
            C::Internal => ApiError::Internal,
        }
    }
}

impl From<crate::media::service::CopyError> for ApiError {
    /// A highlight's copy of a story's media failed.
    fn from(e: crate::media::service::CopyError) -> Self {
        use crate::media::service::CopyError as C;
        match e {
            C::Gone => ApiError::NotFound("no such story"),
            C::Damaged => ApiError::Invalid("the story's media does not open"),
            C::Unavailable => ApiError::Unavailable,
            C::Store(e) => e.into(),
        }
    }
}

impl ApiError {
    /// The status and the code of the error body.
    fn table(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ApiError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: String,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.table().0
    }

    fn error_response(&self) -> HttpResponse {
        let (status, code) = self.table();
        let mut response = HttpResponse::build(status);
        match self {
            ApiError::RateLimited {
                retry_after_secs, ..
            } => {
                response.insert_header((header::RETRY_AFTER, (*retry_after_secs).max(1)));
            }
            ApiError::Unavailable => {
                response.insert_header((header::RETRY_AFTER, 1u64));
            }
            _ => {}
        }
        response.json(Body {
            error: Inner {
                code,
                message: self.to_string(),
            },
        })
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => ApiError::Conflict("already exists"),
            // Logged where it happened (the kind only).
            StoreError::Shared(_) => ApiError::Unavailable,
            other => {
                tracing::error!(error = %other, "storage failure");
                ApiError::Internal
            }
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(_: ReadError) -> Self {
        ApiError::Internal
    }
}

impl From<CommitError> for ApiError {
    fn from(e: CommitError) -> Self {
        match e {
            CommitError::Overloaded => ApiError::Unavailable,
            _ => ApiError::Internal,
        }
    }
}

impl From<actix_web::error::BlockingError> for ApiError {
    fn from(_: actix_web::error::BlockingError) -> Self {
        ApiError::Unavailable
    }
}

/// Maps a JSON body that failed to parse to our error.
pub fn json_error(
    err: actix_web::error::JsonPayloadError,
    _: &actix_web::HttpRequest,
) -> actix_web::Error {
    use actix_web::error::JsonPayloadError as J;
    match err {
        J::Overflow { .. } | J::OverflowKnownLength { .. } => {
            ApiError::TooLarge("request body is too large")
        }
        J::ContentType => {
            ApiError::BadRequest("expected a JSON body (Content-Type: application/json)")
        }
        _ => ApiError::BadRequest("malformed JSON body, or a missing or mistyped field"),
    }
    .into()
}

/// Maps a query string that failed to parse to our error.
pub fn query_error(
    _: actix_web::error::QueryPayloadError,
    _: &actix_web::HttpRequest,
) -> actix_web::Error {
    ApiError::BadRequest("malformed query string").into()
}

/// Maps a path that failed to parse to our error.
pub fn path_error(_: actix_web::error::PathError, _: &actix_web::HttpRequest) -> actix_web::Error {
    ApiError::NotFound("no such resource").into()
}
