//! JSON request bodies with errors that name the field.

use crate::AppState;
use crate::error::ApiError;
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use serde::de::DeserializeOwned;

/// Like `axum::Json`, but a bad body gets a 400 naming the offending field
/// (`classes[1].id`) and an oversized one a 413.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        read_json(req, state.config.max_json_bytes).await.map(JsonBody)
    }
}

/// A JSON body that lists items by the thousand (a segment of a 100k-frame lasso is a few
/// MB of ids): bounded by the upload limit, up to `MAX_BULK_JSON_BYTES`, not the small JSON one.
pub struct BulkJsonBody<T>(pub T);

/// The most a bulk JSON body may be, whatever the upload limit.
const MAX_BULK_JSON_BYTES: u64 = 256 << 20;

impl<T: DeserializeOwned> FromRequest<AppState> for BulkJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let limit = state.config.max_upload_bytes.min(MAX_BULK_JSON_BYTES).max(state.config.max_json_bytes as u64);
        read_json(req, usize::try_from(limit).unwrap_or(usize::MAX)).await.map(BulkJsonBody)
    }
}

async fn read_json<T: DeserializeOwned>(req: Request, limit: usize) -> Result<T, ApiError> {
    {
        let is_json =
            req.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
                v.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
            });
        if !is_json {
            return Err(ApiError::new(
                axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with Content-Type: application/json",
            ));
        }
        let bytes = http_body_util::BodyExt::collect(http_body_util::Limited::new(req.into_body(), limit))
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    ApiError::too_large(limit as u64)
                } else {
                    ApiError::invalid("body", format!("could not read the request body: {e}"))
                }
            })?
            .to_bytes();
        Ok(milkglass_service::parse_json(&bytes)?)
    }
}
