//! The read-only HTTP/JSON endpoint of a running node (the top layer): `curl`, dashboards and
//! Prometheus read a node over plain HTTP/1.1; writes stay signed and go over QUIC.
//!
//! The library never starts it by itself: an embedder (or `spore node --http`) binds a TCP
//! listener and calls [`serve`], which returns an [`HttpServer`] to shut down gracefully. Every
//! route is a GET; every answer that is not a download, an event stream or metrics is JSON, and
//! every error is `{"error": "..."}` with a 4xx or 5xx status (`schema/http.md` lists the routes
//! and shapes). One job per file: this one (options, router, server), [`json`] (the JSON shapes,
//! shared with the CLI's `--json`), [`params`] (query parameters), `error` (JSON errors, the
//! bearer token and the bounds every request passes), `catalog` (registry reads), `cache`
//! (registry answers kept until the next commit), `events` (event pages and the SSE watch),
//! `seed` (the seed download) and `probe` (`/healthz`, `/readyz`, `/metrics`).
//!
//! ```no_run
//! # async fn demo(system: mycnet_spores::SporeSystem) -> Result<(), Box<dyn std::error::Error>> {
//! use mycnet_spores::http::{serve, HttpOptions};
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8500").await?;
//! let server = serve(system, listener, HttpOptions::default())?;
//! // curl http://127.0.0.1:8500/v1/status
//! server.shutdown().await?;
//! # Ok(()) }
//! ```

mod cache;
mod catalog;
mod error;
mod events;
pub mod json;
pub mod params;
mod probe;
mod seed;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use tokio::sync::{watch, Semaphore};

use crate::node::SporeSystem;

pub use error::HttpError;

/// Events one `/v1/events` page holds when `limit` is not given.
pub const EVENTS_LIMIT_DEFAULT: u32 = 100;
/// The largest `limit` of one `/v1/events` page.
pub const EVENTS_LIMIT_MAX: u32 = 1000;

const _: () = assert!(EVENTS_LIMIT_DEFAULT <= EVENTS_LIMIT_MAX);

/// How a node's HTTP endpoint runs: its bearer token and its bounds. The defaults suit an
/// operator's loopback endpoint; [`HttpOptions::token`] guards one bound elsewhere.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// A bearer token every route but `/healthz` requires (`Authorization: Bearer TOKEN`):
    /// visible ASCII, at least one character ([`HttpError::BadToken`] otherwise); `None`: none is
    /// asked for.
    pub token: Option<String>,
    /// How long a request may take to produce its answer's head (default 10 s); an SSE watch's
    /// stream and a download's body run past it. A request that takes longer gets a 503.
    pub request_timeout: Duration,
    /// How long a `/v1/seed` export may take before its download starts (default 120 s).
    pub seed_timeout: Duration,
    /// The longest query string taken, in bytes (default 2048); a longer one gets a 414.
    pub query_bytes_max: usize,
    /// SSE watches served at once (default 256); one more gets a 503.
    pub watchers_max: usize,
    /// How often an idle SSE watch sends a keep-alive comment (default 15 s).
    pub keep_alive: Duration,
    /// How far a Raft member's applied index may trail its own log for `/readyz` (default 1024
    /// entries).
    pub ready_lag_max: u64,
    /// How long [`HttpServer::shutdown`] waits for requests in flight (default 5 s).
    pub shutdown_grace: Duration,
    /// Where `/v1/seed` writes the seed before streaming it (default: the system's temporary
    /// directory); the file is removed as soon as it is open.
    pub scratch_dir: Option<PathBuf>,
    /// Bytes of `/v1/nodes` and `/v1/services` answers kept, as written, until the next commit
    /// changes the chain's head (default 32 MiB; 0 keeps none): a query asked again before then
    /// is answered without reading the registry or writing JSON again.
    pub answer_cache_bytes: usize,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            token: None,
            request_timeout: Duration::from_secs(10),
            seed_timeout: Duration::from_secs(120),
            query_bytes_max: 2048,
            watchers_max: 256,
            keep_alive: Duration::from_secs(15),
            ready_lag_max: 1024,
            shutdown_grace: Duration::from_secs(5),
            scratch_dir: None,
            answer_cache_bytes: 32 << 20,
        }
    }
}

/// What every handler shares: the node, the options, the shutdown signal and the bounds on
/// concurrent watches and exports.
#[derive(Clone)]
struct Api {
    system: SporeSystem,
    options: Arc<HttpOptions>,
    /// The token's digest (compared in constant time), if one is required.
    token: Option<blake3::Hash>,
    /// Turns `true` at shutdown: open SSE watches end.
    shutdown: watch::Receiver<bool>,
    watchers: Arc<Semaphore>,
    /// Seed exports run one at a time.
    exports: Arc<Semaphore>,
    /// Registry answers kept at the head.
    answers: Arc<cache::AnswerCache>,
}

/// Serves the read-only HTTP endpoint of `system` on `listener` until [`HttpServer::shutdown`]
/// (or the handle is dropped). Call it within a tokio runtime: it spawns the server's task.
pub fn serve(
    system: SporeSystem,
    listener: tokio::net::TcpListener,
    options: HttpOptions,
) -> Result<HttpServer, HttpError> {
    if options.token.as_deref().is_some_and(|t| t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic())) {
        return Err(HttpError::BadToken);
    }
    let addr = listener.local_addr().map_err(HttpError::Listener)?;
    let (tx, rx) = watch::channel(false);
    let grace = options.shutdown_grace;
    let api = Api {
        system,
        token: options.token.as_deref().map(|t| blake3::hash(t.as_bytes())),
        watchers: Arc::new(Semaphore::new(options.watchers_max)),
        exports: Arc::new(Semaphore::new(1)),
        answers: Arc::new(cache::AnswerCache::new(options.answer_cache_bytes)),
        options: Arc::new(options),
        shutdown: rx.clone(),
    };
    let app = router(api);
    let mut stop = rx;
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                // A dropped sender is a shutdown too.
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
    });
    tracing::info!(%addr, "http endpoint listening");
    Ok(HttpServer { addr, stop: tx, task: Some(task), grace })
}

/// Every route, behind the guard (token, bounds, timeout).
fn router(api: Api) -> Router {
    Router::new()
        .route("/v1/status", get(catalog::status))
        .route("/v1/nodes", get(catalog::nodes))
        .route("/v1/nodes/{id}", get(catalog::node))
        .route("/v1/services", get(catalog::services))
        .route("/v1/services/{id}", get(catalog::service))
        .route("/v1/events", get(events::events))
        .route("/v1/watch", get(events::watch))
        .route("/v1/seed", get(seed::seed))
        .route("/healthz", get(probe::healthz))
        .route("/readyz", get(probe::readyz))
        .route("/metrics", get(probe::metrics))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(api.clone(), error::guard))
        .with_state(api)
}

/// A running HTTP endpoint. Dropping it asks the server to stop; [`HttpServer::shutdown`] also
/// waits for it.
#[derive(Debug)]
pub struct HttpServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    grace: Duration,
}

impl HttpServer {
    /// The address it listens on (the bound port when the listener was bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops taking connections, ends open SSE watches, and waits for requests in flight for
    /// at most [`HttpOptions::shutdown_grace`] before cutting them off.
    pub async fn shutdown(mut self) -> Result<(), HttpError> {
        self.stop.send_replace(true);
        let Some(mut task) = self.task.take() else { return Ok(()) };
        match tokio::time::timeout(self.grace, &mut task).await {
            Ok(Ok(served)) => served.map_err(HttpError::Serve),
            Ok(Err(join)) => Err(HttpError::Task(join)),
            Err(_) => {
                tracing::warn!(addr = %self.addr, grace = ?self.grace, "http requests still open after the grace period; cut off");
                task.abort();
                Ok(())
            }
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}
