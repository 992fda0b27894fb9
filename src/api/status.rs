//! Refusals to gRPC status, in one place.
//!
//! A status message travels as an HTTP/2 header (`grpc-message`): clients refuse long
//! ones (tonic's fails the call past about 16 KiB, and drops the connection past 64 KiB),
//! and Cedar's messages can quote a value of the request whole. So a message is cut to
//! [`MAX_MESSAGE_BYTES`], saying how much was left out.

use tonic::Status;

use crate::decide::{Reason, Refusal};

/// Longest status message sent; the field at fault comes first, so it always fits.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// A refused request as a status whose message names the field and the problem.
pub(crate) fn to_status(refusal: Refusal) -> Status {
    let message = bounded(refusal.to_string());
    match refusal.reason() {
        Reason::Invalid => Status::invalid_argument(message),
        Reason::Limit | Reason::Overloaded => Status::resource_exhausted(message),
        Reason::Unauthenticated => Status::unauthenticated(message),
        Reason::CallerNotAllowed => Status::permission_denied(message),
        Reason::Timeout => Status::deadline_exceeded(message),
        Reason::Internal => Status::internal(message),
    }
}

/// `message` cut to [`MAX_MESSAGE_BYTES`] at a character boundary.
fn bounded(mut message: String) -> String {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message;
    }
    let total = message.len();
    let mut cut = MAX_MESSAGE_BYTES;
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    message.truncate(cut);
    message.push_str(&format!("… ({} more bytes)", total - cut));
    message
}

#[cfg(test)]
mod tests {
    use super::{MAX_MESSAGE_BYTES, bounded};

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        assert_eq!(bounded("short".to_owned()), "short");
        let long = format!("field: {}", "é".repeat(2_000));
        let cut = bounded(long.clone());
        assert!(cut.len() <= MAX_MESSAGE_BYTES + 32, "{}", cut.len());
        assert!(cut.starts_with("field: é"));
        let kept = cut.split('…').next().unwrap().len();
        assert!(
            cut.ends_with(&format!("({} more bytes)", long.len() - kept)),
            "{cut}"
        );
    }
}
