//! A router that remembers what it serves.
//!
//! Every route of the API is declared once, through [`Routes::at`], with
//! the methods it takes. The axum router is built from those declarations
//! and the list of `(method, path)` pairs is kept beside it, so the OpenAPI
//! document ([`crate::openapi`]) is checked against the router itself and
//! not against a second list someone has to keep in step.
//!
//! A `GET` route also answers `HEAD` (axum does that); a method a path does
//! not take gets the router's 405.

use axum::Router;
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{MethodFilter, on};

/// The methods of an Ironic vendor passthru call: whichever the driver's
/// method declares, checked by the conductor.
pub const VENDOR_METHODS: [Method; 5] = [Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE];

pub struct Routes<S> {
    router: Router<S>,
    served: Vec<(Method, String)>,
}

impl<S: Clone + Send + Sync + 'static> Default for Routes<S> {
    fn default() -> Self {
        Routes { router: Router::new(), served: Vec::new() }
    }
}

impl<S: Clone + Send + Sync + 'static> Routes<S> {
    pub fn new() -> Routes<S> {
        Routes::default()
    }

    /// Serve `methods` of `path` with `handler`. A path may be given again
    /// with other methods (and another handler).
    #[track_caller]
    pub fn at<H, T>(mut self, path: &str, methods: &[Method], handler: H) -> Routes<S>
    where
        H: Handler<T, S>,
        T: 'static,
    {
        let filter = methods
            .iter()
            .map(|m| MethodFilter::try_from(m.clone()).expect("a method axum can route"))
            .reduce(MethodFilter::or)
            .expect("a route takes at least one method");
        self.router = self.router.route(path, on(filter, handler));
        self.served.extend(methods.iter().map(|m| (m.clone(), path.to_string())));
        self
    }

    /// `inner`'s routes under `prefix`.
    pub fn nest(mut self, prefix: &str, inner: Routes<S>) -> Routes<S> {
        self.router = self.router.nest(prefix, inner.router);
        self.served.extend(inner.served.into_iter().map(|(m, p)| (m, format!("{prefix}{p}"))));
        self
    }

    /// `other`'s routes beside these.
    pub fn merge(mut self, other: Routes<S>) -> Routes<S> {
        self.router = self.router.merge(other.router);
        self.served.extend(other.served);
        self
    }

    /// Every `(method, path)` served, paths in axum's (and OpenAPI's)
    /// `{param}` syntax.
    pub fn served(&self) -> &[(Method, String)] {
        &self.served
    }

    pub fn into_router(self) -> Router<S> {
        self.router
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn what_is_served_is_what_was_declared() {
        let inner = Routes::<()>::new().at("/a/{id}", &[Method::GET], || async { "get" }).at(
            "/a/{id}",
            &[Method::PUT, Method::DELETE],
            || async { "put or delete" },
        );
        let routes = Routes::new().at("/", &[Method::GET], || async { "root" }).nest("/v1", inner);
        let mut served: Vec<String> = routes.served().iter().map(|(m, p)| format!("{m} {p}")).collect();
        served.sort();
        assert_eq!(served, ["DELETE /v1/a/{id}", "GET /", "GET /v1/a/{id}", "PUT /v1/a/{id}"]);
        let app = routes.into_router();
        let call = |m: Method, uri: &str| {
            app.clone().oneshot(Request::builder().method(m).uri(uri).body(Body::empty()).unwrap())
        };
        assert_eq!(call(Method::GET, "/v1/a/1").await.unwrap().status(), StatusCode::OK);
        assert_eq!(call(Method::HEAD, "/v1/a/1").await.unwrap().status(), StatusCode::OK, "GET answers HEAD");
        assert_eq!(call(Method::DELETE, "/v1/a/1").await.unwrap().status(), StatusCode::OK);
        assert_eq!(call(Method::POST, "/v1/a/1").await.unwrap().status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(call(Method::GET, "/a/1").await.unwrap().status(), StatusCode::NOT_FOUND);
    }
}
