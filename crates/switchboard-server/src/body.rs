//! Request bodies (SSE posts, API calls) read whole, bounded in bytes and in time, so a client
//! can neither send more than the route takes nor hold a request open by trickling it.

use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::json;

/// Why a body was not read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BodyError {
    /// Declared or sent larger than the route's limit: 413.
    TooLarge(usize),
    /// Not all there within the timeout: 408.
    TooSlow(Duration),
    /// The connection broke or the body was malformed: 400.
    Broken,
}

/// Reads `body` whole: at most `limit` bytes, within `within`. A `Content-Length` over the
/// limit is refused before a byte is read.
pub(crate) async fn read(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    within: Duration,
) -> Result<Bytes, BodyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge(limit));
    }
    match tokio::time::timeout(within, Limited::new(body, limit).collect()).await {
        Err(_) => Err(BodyError::TooSlow(within)),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(BodyError::TooLarge(limit)),
        Ok(Err(_)) => Err(BodyError::Broken),
    }
}

impl IntoResponse for BodyError {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            Self::TooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body is larger than {limit} bytes"),
            ),
            Self::TooSlow(within) => (
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!("the body did not arrive within {} ms", within.as_millis()),
            ),
            Self::Broken => (
                StatusCode::BAD_REQUEST,
                "invalid_body",
                "the body could not be read".to_owned(),
            ),
        };
        let mut response = (
            status,
            Json(json!({"error": {"code": code, "message": message}})),
        )
            .into_response();
        // The rest of a refused body is never read: the connection cannot be reused.
        response.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
        response
    }
}
