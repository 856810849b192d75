//! Errors as HTTP answers: one JSON shape (`{"error": {"code", "message"}}`) whose `code` is the
//! stable name from [`crate::errors::Code`]; "not leader" as a redirect to the leader.

use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::errors::Code;
use crate::node::ApiError;

/// The body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable: not_leader, invalid, not_found, refused, unavailable, unauthenticated, forbidden.
    pub code: String,
    pub message: String,
    /// For `not_leader`: the leader's id, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader: Option<u64>,
}

/// An error on its way out: the code and message, and for "not leader" where to go instead.
#[derive(Debug)]
pub struct HttpError {
    code: Code,
    message: String,
    leader: Option<u64>,
    /// The same request at the leader's HTTP address.
    location: Option<String>,
}

impl HttpError {
    pub fn new(code: Code, message: impl Into<String>) -> HttpError {
        HttpError {
            code,
            message: message.into(),
            leader: None,
            location: None,
        }
    }

    pub fn invalid(message: impl Into<String>) -> HttpError {
        HttpError::new(Code::Invalid, message)
    }

    /// An API error; "not leader" becomes a redirect when the leader's HTTP address is known.
    pub fn from_api(e: ApiError, leader_http: impl Fn(u64) -> Option<String>, uri: &Uri) -> Self {
        let code = e.code();
        match e {
            ApiError::NotLeader { leader } => {
                let id = leader.map(|(id, _)| id);
                let location = id.and_then(&leader_http).map(|base| {
                    let path = uri.path_and_query().map_or("/", |p| p.as_str());
                    format!("{}{path}", base.trim_end_matches('/'))
                });
                HttpError {
                    code,
                    message: match id {
                        Some(id) => format!("not leader; the leader is node {id}"),
                        None => "not leader, and no leader is known yet".to_owned(),
                    },
                    leader: id,
                    location,
                }
            }
            other => HttpError::new(code, other.to_string()),
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = match (&self.location, self.code) {
            (Some(_), _) => StatusCode::TEMPORARY_REDIRECT,
            // A follower that cannot say where the leader is: try again.
            (None, Code::NotLeader) => StatusCode::SERVICE_UNAVAILABLE,
            (None, code) => StatusCode::from_u16(code.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.as_str().to_owned(),
                message: self.message,
                leader: self.leader,
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(location) = self.location
            && let Ok(value) = HeaderValue::from_str(&location)
        {
            response.headers_mut().insert(header::LOCATION, value);
        }
        response
    }
}
