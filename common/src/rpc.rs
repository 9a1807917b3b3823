//! Typed errors across the gRPC boundary: a `tonic::Status` code plus an
//! [`ErrorDetail`] in the status details — never a message to parse; and
//! [`endpoint`], the one way every client (API processes, `ferricctl`, a
//! conductor checking its own address, the tests) reaches a conductor.

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

/// A conductor's gRPC endpoint at `url` (as it advertises it in the
/// ring), with mutual TLS when `tls` is given.
///
/// With TLS configured the URL must be `https://`: a client never sends
/// its calls (node updates, drains, agent tokens) in plaintext to a
/// conductor that advertises one. The conductor's certificate must name
/// the URL's host (an IP address SAN for an IP, a DNS SAN for a name).
/// Without TLS an `https://` URL is refused, naming the setting that is
/// missing.
pub fn endpoint(url: &str, tls: Option<&crate::tls::GrpcTls>) -> Result<tonic::transport::Endpoint, String> {
    let ep =
        tonic::transport::Endpoint::from_shared(url.to_string()).map_err(|e| format!("bad gRPC URL {url}: {e}"))?;
    let https = ep.uri().scheme_str() == Some("https");
    match tls {
        Some(tls) => {
            if !https {
                return Err(format!(
                    "conductor gRPC URL {url} is plaintext but grpc.ca_file is set (mutual TLS): the conductor must \
                     advertise an https:// URL (set its grpc.* TLS keys too)"
                ));
            }
            let host = ep.uri().host().ok_or_else(|| format!("gRPC URL {url} has no host"))?.to_string();
            let cfg = tls.client_config(&host).map_err(|e| format!("grpc TLS settings: {e}"))?;
            ep.tls_config(cfg).map_err(|e| format!("grpc TLS settings for {url}: {e}"))
        }
        None if https => Err(format!(
            "conductor gRPC URL {url} is https:// (mutual TLS) but this process has no grpc.ca_file, grpc.cert_file \
             and grpc.key_file to present"
        )),
        None => Ok(ep),
    }
}

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
