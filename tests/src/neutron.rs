//! A minimal networking (Neutron) endpoint: metalsmith formats every
//! instance it prints with the instance's Neutron ports (`GET /` for the
//! version document, then `GET /v2.0/ports?binding%3Ahost_id=<node>`), so
//! `metalsmith deploy`, `list` and `show` need one to answer. This one
//! knows no ports and records what it was asked.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{OriginalUri, State};
use axum::routing::get;
use serde_json::{Value, json};

pub struct NetworkStub {
    pub endpoint: String,
    requests: Arc<Mutex<Vec<String>>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Clone)]
struct Stub {
    endpoint: String,
    requests: Arc<Mutex<Vec<String>>>,
}

async fn versions(State(s): State<Stub>, OriginalUri(uri): OriginalUri) -> axum::Json<Value> {
    s.requests.lock().expect("requests").push(uri.to_string());
    axum::Json(json!({"versions": [{
        "id": "v2.0", "status": "CURRENT",
        "links": [{"href": format!("{}/v2.0/", s.endpoint), "rel": "self"}],
    }]}))
}

async fn no_ports(State(s): State<Stub>, OriginalUri(uri): OriginalUri) -> axum::Json<Value> {
    s.requests.lock().expect("requests").push(uri.to_string());
    axum::Json(json!({"ports": []}))
}

impl NetworkStub {
    /// Serves on a free loopback port until dropped.
    pub fn start() -> NetworkStub {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the network stub");
        listener.set_nonblocking(true).expect("nonblocking");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let state = Stub { endpoint: endpoint.clone(), requests: requests.clone() };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let app = Router::new()
                    .route("/", get(versions))
                    .route("/v2.0", get(versions))
                    .route("/v2.0/", get(versions))
                    .route("/v2.0/ports", get(no_ports))
                    .route("/ports", get(no_ports))
                    .with_state(state);
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = rx.await;
                    })
                    .await;
            });
        });
        NetworkStub { endpoint, requests, shutdown: Some(tx), thread: Some(thread) }
    }

    /// The paths (with queries) asked so far.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("requests").clone()
    }
}

impl Drop for NetworkStub {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
