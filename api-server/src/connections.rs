//! Accepting connections and serving HTTP/1.1 and HTTP/2 (h2c) on them,
//! in place of `axum::serve`, which reads headers without a timeout: a
//! client that opened connections and sent its headers a byte at a time
//! (slowloris) held each one — a task and a file descriptor — forever.
//!
//! With a TLS acceptor every connection starts with its handshake, bounded
//! by the header read timeout (a client that connects and sends nothing,
//! or a TLS hello a byte at a time, is cut like a slow request).
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
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::time::Instant;
use tokio::net::TcpListener;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceExt};

/// How long a connection may take between bytes that matter.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From the first byte of a request to its complete headers (and, for a
    /// new connection, from the connect to its first request).
    pub header_read: Duration,
    /// How long an idle keep-alive connection (no request in progress, no
    /// byte of a next one) stays open. Longer than clients' idle pools
    /// should be: a server that closes first races the client's next
    /// request on that connection (its request is lost with it).
    pub keep_alive: Duration,
}

/// What a connection is doing, as its watchdog sees it: set by the reads
/// (a byte arrives while no request is in progress: the clock of a new
/// request's headers starts) and by the service (a request is dispatched;
/// its answer is ready).
#[derive(Debug)]
struct Activity {
    state: std::sync::Mutex<Phase>,
    /// A request was dispatched on this connection: it is no longer new.
    served: std::sync::atomic::AtomicBool,
    changed: Notify,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Nothing in progress since this instant.
    Idle(Instant),
    /// The first byte of a request arrived at this instant; its headers
    /// are not complete yet.
    Heading(Instant),
    /// This many requests are being served.
    Serving(usize),
    /// HTTP/2: this many streams are being served (frames of its own come
    /// at any time), idle since the instant when none is.
    Multiplexed(usize, Instant),
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            state: std::sync::Mutex::new(Phase::Idle(Instant::now())),
            served: std::sync::atomic::AtomicBool::new(false),
            changed: Notify::new(),
        })
    }

    fn set(&self, f: impl FnOnce(Phase) -> Phase) {
        let mut st = self.state.lock().expect("connection activity");
        *st = f(*st);
        self.changed.notify_one();
    }

    fn bytes_arrived(&self) {
        let mut st = self.state.lock().expect("connection activity");
        if let Phase::Idle(_) = *st {
            *st = Phase::Heading(Instant::now());
            self.changed.notify_one();
        }
    }

    /// When the connection is to be closed if nothing changes, or `None`.
    fn deadline(&self, t: Timeouts) -> Option<Instant> {
        let first = !self.served.load(std::sync::atomic::Ordering::SeqCst);
        match *self.state.lock().expect("connection activity") {
            Phase::Idle(since) if first => Some(since + t.header_read),
            Phase::Idle(since) => Some(since + t.keep_alive),
            Phase::Heading(since) => Some(since + t.header_read),
            Phase::Multiplexed(0, since) => Some(since + t.keep_alive),
            Phase::Serving(_) | Phase::Multiplexed(..) => None,
        }
    }
}

/// The connection's stream, telling [`Activity`] when bytes arrive.
struct Watched<T> {
    io: T,
    activity: Arc<Activity>,
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Watched<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.bytes_arrived();
        }
        r
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// In a request's extensions when it came over TLS: links to the API are
/// then `https://`.
#[derive(Debug, Clone, Copy)]
pub struct OverTls;

/// A connection's byte stream: plain TCP or TLS over it.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// Serve `app` on every connection `listener` accepts until `shutdown`;
/// with `tls`, HTTPS only.
///
/// A request's headers must arrive within `timeouts.header_read` of its
/// first byte (and a new connection's first request within it of the
/// connect); an idle keep-alive connection is closed after
/// `timeouts.keep_alive`. Either way the connection is closed without an
/// answer. The time between requests is not the time of a request's
/// headers: a client that keeps a connection in its pool is not cut after
/// the header timeout (racing its next request on it, which it then loses).
pub async fn serve<S>(
    mut listener: TcpListener,
    app: S,
    timeouts: Timeouts,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) where
    S: Service<axum::extract::Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, client) = tokio::select! {
            // axum's accept: retries (after a pause) on errors such as EMFILE
            accepted = axum::serve::Listener::accept(&mut listener) => accepted,
            () = shutdown.cancelled() => break,
        };
        let activity = Activity::new();
        let (dispatched, answered) = (activity.clone(), activity.clone());
        let over_tls = tls.is_some();
        // the client's address reaches handlers as axum's ConnectInfo (the
        // iPXE endpoints' rate limit keys on it)
        let service = app
            .clone()
            .map_request(move |req: hyper::Request<hyper::body::Incoming>| {
                let h2 = req.version() == hyper::Version::HTTP_2;
                dispatched.served.store(true, std::sync::atomic::Ordering::SeqCst);
                dispatched.set(|p| match p {
                    Phase::Multiplexed(n, since) => Phase::Multiplexed(n + 1, since),
                    _ if h2 => Phase::Multiplexed(1, Instant::now()),
                    Phase::Serving(n) => Phase::Serving(n + 1),
                    _ => Phase::Serving(1),
                });
                let mut req = req.map(Body::new);
                req.extensions_mut().insert(ConnectInfo(client));
                if over_tls {
                    req.extensions_mut().insert(OverTls);
                }
                req
            })
            .map_response(move |resp| {
                answered.set(|p| match p {
                    Phase::Serving(n) if n > 1 => Phase::Serving(n - 1),
                    Phase::Serving(_) => Phase::Idle(Instant::now()),
                    Phase::Multiplexed(n, _) => Phase::Multiplexed(n.saturating_sub(1), Instant::now()),
                    other => other,
                });
                resp
            });
        let (builder, watcher, tls, stopping) = (builder.clone(), graceful.watcher(), tls.clone(), shutdown.clone());
        tokio::spawn(async move {
            let stream: Box<dyn Io> = match tls {
                None => Box::new(stream),
                Some(acceptor) => match tokio::time::timeout(timeouts.header_read, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => Box::new(s),
                    Ok(Err(e)) => {
                        tracing::debug!(%client, "TLS handshake failed: {e}");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%client, "connection closed: TLS handshake timeout");
                        return;
                    }
                },
            };
            if stopping.is_cancelled() {
                return;
            }
            let io = Watched { io: stream, activity: activity.clone() };
            let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service)).into_owned();
            let conn = watcher.watch(conn);
            let mut conn = std::pin::pin!(conn);
            loop {
                let deadline = activity.deadline(timeouts);
                let wait = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d.into()).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    ended = conn.as_mut() => {
                        if let Err(e) = ended {
                            tracing::debug!(%client, "connection closed: {e}");
                        }
                        return;
                    }
                    () = activity.changed.notified() => {}
                    () = wait => {
                        // look again: a byte or a request may have come meanwhile
                        if activity.deadline(timeouts).is_some_and(|d| d <= Instant::now()) {
                            tracing::debug!(%client, "connection closed: header or keep-alive timeout");
                            return;
                        }
                    }
                }
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
        start_with(app, Timeouts { header_read: header_read_timeout, keep_alive: Duration::from_secs(120) }, shutdown)
            .await
    }

    async fn start_with(
        app: Router,
        timeouts: Timeouts,
        shutdown: &CancellationToken,
    ) -> (tokio::task::JoinHandle<()>, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (tokio::spawn(serve(listener, app, timeouts, None, shutdown.clone())), addr)
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
        shutdown.cancel();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_outlives_the_header_timeout_and_closes_after_its_own() {
        let app = Router::new().route("/", get(|| async { "ok" }));
        let shutdown = CancellationToken::new();
        let t = Timeouts { header_read: Duration::from_millis(200), keep_alive: Duration::from_millis(1500) };
        let (server, addr) = start_with(app, t, &shutdown).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let ask = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n";
        let mut buf = [0u8; 1024];
        s.write_all(ask).await.unwrap();
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).ends_with("ok"));
        // idle for several header timeouts: a pooled connection is still there
        tokio::time::sleep(Duration::from_millis(700)).await;
        s.write_all(ask).await.unwrap();
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).ends_with("ok"), "the idle connection was closed");
        // a request that starts and stalls is cut by the header timeout
        s.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        assert_eq!(read_all(&mut s).await, "", "stalled headers were not cut");
        // and an idle one by the keep-alive timeout
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(ask).await.unwrap();
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).ends_with("ok"));
        assert_eq!(read_all(&mut s).await, "", "an idle connection was not closed after its keep-alive timeout");
        shutdown.cancel();
        server.await.unwrap();
    }
}
