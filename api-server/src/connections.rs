//! Accepting connections and serving HTTP/1.1 and HTTP/2 (h2c) on them,
//! in place of `axum::serve`, which reads headers without a timeout: a
//! client that opened connections and sent its headers a byte at a time
//! (slowloris) held each one — a task and a file descriptor — forever.
//!
//! Shutdown is `axum::serve`'s graceful one: when `shutdown` is cancelled
//! the listener closes, every connection is asked to finish the requests
//! it is serving (idle ones close at once), and [`serve`] returns when the
//! last one has.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::Response;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceExt};

/// Serve `app` on every connection `listener` accepts until `shutdown`.
///
/// A connection's first request, and every HTTP/1 request's headers (and
/// so the wait for the next request on an idle keep-alive connection),
/// must arrive within `header_read_timeout`, or the connection is closed.
pub async fn serve<S>(mut listener: TcpListener, app: S, header_read_timeout: Duration, shutdown: CancellationToken)
where
    S: Service<axum::extract::Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_read_timeout);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, client) = tokio::select! {
            // axum's accept: retries (after a pause) on errors such as EMFILE
            accepted = axum::serve::Listener::accept(&mut listener) => accepted,
            () = shutdown.cancelled() => break,
        };
        let first_request = Arc::new(Notify::new());
        let seen = first_request.clone();
        // the client's address reaches handlers as axum's ConnectInfo (the
        // iPXE endpoints' rate limit keys on it)
        let service = app.clone().map_request(move |req: hyper::Request<hyper::body::Incoming>| {
            seen.notify_one();
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(ConnectInfo(client));
            req
        });
        let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service)).into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            // hyper's header timer starts once the protocol is known: a
            // client that sends nothing (or part of the HTTP/2 preface) never
            // gets there, so the first request is bounded here
            let ended = tokio::select! {
                ended = conn.as_mut() => Some(ended),
                () = first_request.notified() => None,
                () = tokio::time::sleep(header_read_timeout) => {
                    tracing::debug!(%client, "no request within the header read timeout: connection closed");
                    return;
                }
            };
            let ended = match ended {
                Some(ended) => ended,
                None => conn.await,
            };
            if let Err(e) = ended {
                tracing::debug!(%client, "connection closed: {e}");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::Router;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    /// `app` served on a free loopback port; the server's task and address.
    async fn start(
        app: Router,
        header_read_timeout: Duration,
        shutdown: &CancellationToken,
    ) -> (tokio::task::JoinHandle<()>, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (tokio::spawn(serve(listener, app, header_read_timeout, shutdown.clone())), addr)
    }

    async fn read_all(s: &mut TcpStream) -> String {
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await.expect("closed in time").unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn a_request_in_flight_when_shutdown_comes_is_answered() {
        let entered = Arc::new(Notify::new());
        let in_handler = entered.clone();
        let app = Router::new().route(
            "/slow",
            get(move || async move {
                in_handler.notify_one();
                tokio::time::sleep(Duration::from_millis(300)).await;
                "done"
            }),
        );
        let shutdown = CancellationToken::new();
        let (server, addr) = start(app, Duration::from_secs(10), &shutdown).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
        entered.notified().await;
        shutdown.cancel();
        let answer = read_all(&mut s).await;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("done"), "{answer}");
        tokio::time::timeout(Duration::from_secs(10), server).await.expect("serve returned").unwrap();
        assert!(TcpStream::connect(addr).await.is_err(), "the listener is closed");
    }

    #[tokio::test]
    async fn handlers_see_the_client_address() {
        let app =
            Router::new().route("/me", get(|ConnectInfo(c): ConnectInfo<SocketAddr>| async move { c.to_string() }));
        let shutdown = CancellationToken::new();
        let (server, addr) = start(app, Duration::from_secs(10), &shutdown).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let me = s.local_addr().unwrap();
        s.write_all(b"GET /me HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").await.unwrap();
        let answer = read_all(&mut s).await;
        assert!(answer.ends_with(&me.to_string()), "{answer}");
        shutdown.cancel();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn connections_without_a_request_are_closed_after_the_header_timeout() {
        let app = Router::new().route("/", get(|| async { "ok" }));
        let shutdown = CancellationToken::new();
        let (server, addr) = start(app, Duration::from_millis(200), &shutdown).await;
        // nothing at all, part of the HTTP/2 preface, part of a request line
        for start in ["", "PRI * HTTP", "GET / HTTP/1.1\r\nHost"] {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(start.as_bytes()).await.unwrap();
            assert_eq!(read_all(&mut s).await, "", "{start:?}: closed without an answer");
        }
        // a keep-alive connection is served, then closed once idle
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
        let answer = read_all(&mut s).await;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"), "{answer}");
        shutdown.cancel();
        server.await.unwrap();
    }
}
