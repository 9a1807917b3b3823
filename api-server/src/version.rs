//! Microversion negotiation, exactly as Ironic's clients expect it.
//!
//! The standard `OpenStack-API-Version: baremetal 1.N` header wins over
//! the legacy `X-OpenStack-Ironic-API-Version`; no header means 1.1,
//! `latest` the maximum. Every response carries the min/max headers
//! (the request id is [`crate::trace`]'s); successful negotiation also
//! echoes the version used.

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

pub const MIN_MINOR: u32 = 1;
pub const MAX_MINOR: u32 = 115;

/// The negotiated microversion's minor number (1.N → N).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32);

impl Version {
    pub fn at_least(self, minor: u32) -> bool {
        self.0 >= minor
    }
}

fn range() -> String {
    format!("The supported version range is: [1.{MIN_MINOR}, 1.{MAX_MINOR}].")
}

pub fn negotiate(headers: &HeaderMap) -> Result<Version, ApiError> {
    let standard = headers.get_all("openstack-api-version").iter().find_map(|v| {
        let s = v.to_str().ok()?.trim();
        let (service, version) = s.split_once(char::is_whitespace)?;
        service.eq_ignore_ascii_case("baremetal").then(|| version.trim().to_string())
    });
    let (raw, header) = match standard {
        Some(v) => (v, "OpenStack-API-Version"),
        None => match headers.get("x-openstack-ironic-api-version") {
            Some(v) => (v.to_str().unwrap_or("").trim().to_string(), "X-OpenStack-Ironic-API-Version"),
            None => return Ok(Version(MIN_MINOR)),
        },
    };
    if raw.eq_ignore_ascii_case("latest") {
        return Ok(Version(MAX_MINOR));
    }
    let invalid = || ApiError::not_acceptable(format!("Invalid value for {header} header"));
    let (major, minor) = raw.split_once('.').ok_or_else(invalid)?;
    let major: u32 = major.parse().map_err(|_| invalid())?;
    let minor: u32 = minor.parse().map_err(|_| invalid())?;
    if major != 1 {
        return Err(ApiError::not_acceptable(format!(
            "Mutually exclusive versions requested. Version {raw} requested but not supported by this service. {}",
            range()
        )));
    }
    if !(MIN_MINOR..=MAX_MINOR).contains(&minor) {
        return Err(ApiError::not_acceptable(format!(
            "Version {raw} was requested but the minor version is not supported by this service. {}",
            range()
        )));
    }
    Ok(Version(minor))
}

/// The `method` label of the request metrics: the methods the API
/// serves, and `other` — any token is a valid HTTP method, and one metric
/// series per client-chosen string would grow without bound.
fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method as M;
    match *m {
        M::GET => "GET",
        M::HEAD => "HEAD",
        M::POST => "POST",
        M::PUT => "PUT",
        M::PATCH => "PATCH",
        M::DELETE => "DELETE",
        M::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Middleware: negotiate, stash the version, decorate the response.
pub async fn middleware(mut req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let method = method_label(req.method());
    let negotiated = negotiate(req.headers());
    let mut resp = match negotiated {
        Ok(v) => {
            req.extensions_mut().insert(v);
            let mut resp = next.run(req).await;
            let value = HeaderValue::from_str(&format!("1.{}", v.0)).expect("ascii");
            resp.headers_mut().insert("x-openstack-ironic-api-version", value.clone());
            resp.headers_mut().insert(
                "openstack-api-version",
                HeaderValue::from_str(&format!("baremetal 1.{}", v.0)).expect("ascii"),
            );
            resp.headers_mut().insert("vary", HeaderValue::from_static("X-OpenStack-Ironic-API-Version"));
            resp
        }
        Err(e) => e.into_response(),
    };
    let h = resp.headers_mut();
    h.insert(
        "x-openstack-ironic-api-minimum-version",
        HeaderValue::from_str(&format!("1.{MIN_MINOR}")).expect("ascii"),
    );
    h.insert(
        "x-openstack-ironic-api-maximum-version",
        HeaderValue::from_str(&format!("1.{MAX_MINOR}")).expect("ascii"),
    );
    metrics::counter!(ferric_common::metrics::API_REQUESTS_TOTAL, "method" => method, "status" => resp.status().as_u16().to_string())
        .increment(1);
    metrics::histogram!(ferric_common::metrics::API_REQUEST_SECONDS).record(started.elapsed().as_secs_f64());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_share_one_metric_label() {
        assert_eq!(method_label(&axum::http::Method::PATCH), "PATCH");
        let odd = axum::http::Method::from_bytes(b"X-RANDOM-12345").unwrap();
        assert_eq!(method_label(&odd), "other");
        assert_eq!(method_label(&axum::http::Method::TRACE), "other");
    }

    fn hdrs(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn negotiation_rules() {
        assert_eq!(negotiate(&hdrs(&[])).unwrap(), Version(1));
        assert_eq!(negotiate(&hdrs(&[("x-openstack-ironic-api-version", "latest")])).unwrap(), Version(MAX_MINOR));
        assert_eq!(negotiate(&hdrs(&[("x-openstack-ironic-api-version", "1.31")])).unwrap(), Version(31));
        // the standard header wins
        let both = hdrs(&[("openstack-api-version", "baremetal 1.50"), ("x-openstack-ironic-api-version", "1.2")]);
        assert_eq!(negotiate(&both).unwrap(), Version(50));
        let e = negotiate(&hdrs(&[("x-openstack-ironic-api-version", "1.200")])).unwrap_err();
        assert_eq!(e.status.as_u16(), 406);
        assert!(e.message.contains("minor version is not supported"), "{}", e.message);
        let e = negotiate(&hdrs(&[("x-openstack-ironic-api-version", "2.1")])).unwrap_err();
        assert!(e.message.starts_with("Mutually exclusive versions requested"));
        let e = negotiate(&hdrs(&[("x-openstack-ironic-api-version", "1.abc")])).unwrap_err();
        assert_eq!(e.message, "Invalid value for X-OpenStack-Ironic-API-Version header");
    }
}
