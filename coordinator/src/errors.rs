//! The one table from an API error to what each transport says: a stable code (the HTTP API's
//! JSON `error.code`), the HTTP status, and the gRPC status code. `api.rs` (gRPC) and `http`
//! both map through it, so a refusal reads the same whichever way it was asked.

use crate::node::ApiError;

/// Stable error codes; clients may match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// This node is not the leader (HTTP answers a redirect to it when it knows where it is).
    NotLeader,
    /// The request is malformed or refers to nothing valid (a bad plan, a bad flag).
    Invalid,
    NotFound,
    /// The request is valid but the state refuses it (pausing a deleted drill, …).
    Refused,
    /// Try again: shutting down, no leader yet, a cluster not yet upgraded.
    Unavailable,
    /// No credentials, or credentials that are not a live token.
    Unauthenticated,
    /// A token whose role may not do this.
    Forbidden,
}

/// (code, its name, HTTP status, gRPC code): the table.
const TABLE: [(Code, &str, u16, tonic::Code); 7] = [
    (
        Code::NotLeader,
        "not_leader",
        307,
        tonic::Code::FailedPrecondition,
    ),
    (Code::Invalid, "invalid", 400, tonic::Code::InvalidArgument),
    (Code::NotFound, "not_found", 404, tonic::Code::NotFound),
    (
        Code::Refused,
        "refused",
        409,
        tonic::Code::FailedPrecondition,
    ),
    (
        Code::Unavailable,
        "unavailable",
        503,
        tonic::Code::Unavailable,
    ),
    (
        Code::Unauthenticated,
        "unauthenticated",
        401,
        tonic::Code::Unauthenticated,
    ),
    (
        Code::Forbidden,
        "forbidden",
        403,
        tonic::Code::PermissionDenied,
    ),
];

impl Code {
    fn row(self) -> &'static (Code, &'static str, u16, tonic::Code) {
        TABLE.iter().find(|row| row.0 == self).unwrap_or(&TABLE[4])
    }

    pub fn as_str(self) -> &'static str {
        self.row().1
    }

    pub fn http_status(self) -> u16 {
        self.row().2
    }

    pub fn grpc(self) -> tonic::Code {
        self.row().3
    }
}

impl ApiError {
    pub fn code(&self) -> Code {
        match self {
            ApiError::NotLeader { .. } => Code::NotLeader,
            ApiError::Invalid(_) => Code::Invalid,
            ApiError::NotFound(_) => Code::NotFound,
            ApiError::Refused(_) => Code::Refused,
            ApiError::Unavailable(_) => Code::Unavailable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_one_row_and_distinct_names() {
        let codes = [
            Code::NotLeader,
            Code::Invalid,
            Code::NotFound,
            Code::Refused,
            Code::Unavailable,
            Code::Unauthenticated,
            Code::Forbidden,
        ];
        for c in codes {
            assert_eq!(TABLE.iter().filter(|r| r.0 == c).count(), 1, "{c:?}");
        }
        let mut names: Vec<_> = TABLE.iter().map(|r| r.1).collect();
        names.dedup();
        assert_eq!(names.len(), TABLE.len());
        assert_eq!(Code::NotFound.http_status(), 404);
        assert_eq!(Code::Refused.grpc(), tonic::Code::FailedPrecondition);
    }
}
