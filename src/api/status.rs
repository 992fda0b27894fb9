//! Engine errors to gRPC status, in one place.

use tonic::Status;

use crate::engine::RequestError;

/// A refused request as a status whose message names the field and the problem.
pub(crate) fn to_status(error: RequestError) -> Status {
    match &error {
        RequestError::Invalid { .. } => Status::invalid_argument(error.to_string()),
        RequestError::Limit { .. } => Status::resource_exhausted(error.to_string()),
    }
}
