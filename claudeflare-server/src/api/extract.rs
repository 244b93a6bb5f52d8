//! Request extractors of the JSON API whose rejections keep its `{"error": …}` shape (axum's own
//! answer in plain text).

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// A JSON body that must be an object (an array or a string is refused, though serde would read
/// a struct from an array).
pub struct JsonObject<T>(pub T);

impl<T, S> FromRequest<S> for JsonObject<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        // Over the body limit, not readable: the rejection's status, with its text as the error.
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|rejection| ApiError::Status(rejection.status(), rejection.body_text()))?;
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
        if !value.is_object() {
            return Err(ApiError::BadRequest(
                "invalid JSON body: expected a JSON object".into(),
            ));
        }
        serde_json::from_value(value)
            .map(JsonObject)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
    }
}

/// Path parameters, with `{"error"}` rejections (an id that is not UTF-8, say).
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(PathRejection::FailedToDeserializePathParams(error)) => Err(ApiError::BadRequest(
                format!("invalid path: {}", error.body_text()),
            )),
            Err(rejection) => Err(ApiError::Status(rejection.status(), rejection.body_text())),
        }
    }
}

/// A query string, with `{"error"}` rejections naming the parameter that is wrong.
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| ApiQuery(value))
            .map_err(|rejection| ApiError::BadRequest(rejection.body_text()))
    }
}
