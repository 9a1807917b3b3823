//! Typed errors across the gRPC boundary: a `tonic::Status` code plus an
//! [`ErrorDetail`] in the status details — never a message to parse.

use prost::Message;
use tonic::{Code, Status};

pub use crate::proto::ErrorDetail;
pub use crate::proto::error_detail::Reason;

/// Build a Status carrying a machine-readable reason.
/// The largest message either side of the API↔conductor contract takes.
/// tonic's default is 4 MiB, but a provision request carries its config
/// drive (Ironic takes up to 64 MiB, and the API's body limit is
/// `[api] max_request_body_size`, 128 MiB by default), and a node that holds
/// one in `instance_info` travels with it, twice in an update (its base and
/// its patched copy).
pub const MAX_MESSAGE_BYTES: usize = 320 * 1024 * 1024;

/// The gRPC header carrying the id the API gives each call it makes to a
/// conductor — one id for all the attempts of one call, so that a
/// conductor answers a call it applied already as applied (see
/// `db::AppliedCall`).
pub const CALL_ID_HEADER: &str = "x-ferric-call-id";

pub fn status(reason: Reason, message: impl Into<String>, epoch: u64, holder: &str) -> Status {
    let message = message.into();
    let code = match reason {
        Reason::NotOwner | Reason::Conflict => Code::FailedPrecondition,
        Reason::NodeLocked => Code::Aborted,
        Reason::Invalid | Reason::TooLarge => Code::InvalidArgument,
        Reason::NotFound => Code::NotFound,
        Reason::Forbidden => Code::PermissionDenied,
        Reason::Unavailable => Code::Unavailable,
        Reason::Internal | Reason::Unspecified => Code::Internal,
    };
    let detail = ErrorDetail { reason: reason as i32, epoch, holder: holder.to_string(), message: message.clone() };
    Status::with_details(code, message, detail.encode_to_vec().into())
}

/// The reason a Status carries; transport failures (no details) are
/// reported as `Unavailable` so callers retry them.
pub fn detail(status: &Status) -> ErrorDetail {
    match ErrorDetail::decode(status.details()) {
        Ok(d) if d.reason != Reason::Unspecified as i32 => d,
        _ => ErrorDetail {
            reason: match status.code() {
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => Reason::Unavailable,
                Code::NotFound => Reason::NotFound,
                Code::InvalidArgument => Reason::Invalid,
                _ => Reason::Internal,
            } as i32,
            epoch: 0,
            holder: String::new(),
            message: status.message().to_string(),
        },
    }
}

/// Whether the request surely never reached a conductor: its connection
/// was refused. (A reset, a timeout or a dropped connection may come after
/// the conductor received — and applied — it.)
pub fn surely_not_delivered(status: &Status) -> bool {
    if !is_transport_error(status) {
        return false;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        if e.to_string().contains("tcp connect error") {
            return true;
        }
        source = e.source();
    }
    false
}

/// Whether a Status came from the transport (the conductor never
/// answered) rather than from a conductor.
pub fn is_transport_error(status: &Status) -> bool {
    !matches!(ErrorDetail::decode(status.details()), Ok(d) if d.reason != Reason::Unspecified as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_round_trips_through_status() {
        let s = status(Reason::NotOwner, "not mine", 42, "");
        assert_eq!(s.code(), Code::FailedPrecondition);
        let d = detail(&s);
        assert_eq!(d.reason(), Reason::NotOwner);
        assert_eq!(d.epoch, 42);
        let d = detail(&status(Reason::NodeLocked, "busy", 1, "inc-7"));
        assert_eq!(d.reason(), Reason::NodeLocked);
        assert_eq!(d.holder, "inc-7");
    }

    #[test]
    fn too_large_is_invalid_input_with_its_own_reason() {
        let s = status(Reason::TooLarge, "node too large", 3, "");
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(detail(&s).reason(), Reason::TooLarge);
    }

    #[test]
    fn transport_errors_are_unavailable() {
        let d = detail(&Status::unavailable("connection refused"));
        assert_eq!(d.reason(), Reason::Unavailable);
    }
}
