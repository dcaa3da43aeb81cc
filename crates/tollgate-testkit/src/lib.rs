//! Test kit: mock upstreams for every provider protocol.
//!
//! Each mock binds `127.0.0.1:0`, records every request it receives (method,
//! path, query, headers, body), counts calls, and checks what the real
//! provider checks (keys, API versions, SigV4 and JWT signatures) before it
//! answers with a response shaped like the provider's own. Modules:
//! [`openai`] (also serves `tollgate mock-upstream`), [`azure`],
//! [`anthropic`], [`google`] (Gemini API and Vertex AI, with its OAuth token
//! endpoint), [`bedrock`] (Converse, ConverseStream, STS). Beside them,
//! [`redis_server`] runs a throwaway Redis for tests that stop or inspect it;
//! [`postgres_db`] makes a throwaway PostgreSQL database, [`tcp_proxy`]
//! stands in front of one so that a test can cut it off and restore it, and
//! [`backend`] reads `TOLLGATE_TEST_BACKEND`, the switch that runs the server
//! tests on SQLite or on PostgreSQL and Redis.

// Test support only: a failed setup step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod anthropic;
pub mod azure;
pub mod backend;
pub mod bedrock;
pub mod control;
pub mod google;
pub mod openai;
pub mod postgres_db;
pub mod redis_cluster;
pub mod redis_server;
pub mod responses;
pub mod tcp_proxy;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::serve::ListenerExt;
use axum::Router;
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::task::JoinHandle;

/// One request as the mock received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Recorded {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// What every mock shares: the requests it saw.
#[derive(Debug, Default, Clone)]
pub struct Journal(Arc<Mutex<Vec<Recorded>>>);

impl Journal {
    pub fn push(&self, r: Recorded) {
        self.0.lock().push(r);
    }
    /// How many requests arrived.
    pub fn calls(&self) -> usize {
        self.0.lock().len()
    }
    /// A copy of every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.0.lock().clone()
    }
    /// The most recent request.
    pub fn last(&self) -> Option<Recorded> {
        self.0.lock().last().cloned()
    }
    pub fn clear(&self) {
        self.0.lock().clear();
    }
}

/// Reads a whole request into a [`Recorded`].
pub async fn read(req: Request) -> Recorded {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 64 * 1024 * 1024).await.unwrap_or_default();
    Recorded {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
    }
}

/// Reads a whole request into a [`Recorded`] and appends it to the journal.
pub async fn record(journal: &Journal, req: Request) -> Recorded {
    let r = read(req).await;
    journal.push(r.clone());
    r
}

/// A running mock server. Dropping it stops the server.
pub struct MockServer {
    pub addr: SocketAddr,
    pub journal: Journal,
    task: JoinHandle<()>,
}

impl MockServer {
    /// Serves `router` on `127.0.0.1:0`.
    pub async fn start(router: Router, journal: Journal) -> std::io::Result<MockServer> {
        Self::start_on(router, journal, 0).await
    }

    /// Serves `router` on `127.0.0.1:port` (0 for any free port).
    pub async fn start_on(router: Router, journal: Journal, port: u16) -> std::io::Result<MockServer> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(
                listener.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                }),
                router,
            )
            .await;
        });
        Ok(MockServer { addr, journal, task })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn calls(&self) -> usize {
        self.journal.calls()
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Shared state handed to mock handlers.
pub type JournalState = State<Journal>;

/// Wraps a mock's router so that its journal never grows: each request
/// empties it first. For mocks served by a long-running process
/// (`tollgate mock-upstream`), where nothing reads the journal and keeping
/// every request would only use memory.
pub(crate) fn forgetful(router: Router, journal: Journal) -> Router {
    router.layer(axum::middleware::map_request(move |req: Request| {
        let journal = journal.clone();
        async move {
            journal.clear();
            req
        }
    }))
}
