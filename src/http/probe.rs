//! Probes and metrics: `/healthz` (the process runs), `/readyz` (the node can answer with
//! current data, and why not), `/metrics` (Prometheus, OpenMetrics text).

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::catalog::{params, RawQuery};
use super::error::{json_response, ApiError};
use super::Api;
use crate::core::modes::OperationalMode;
use crate::wire::status::SporeStatus;

/// The content type of `/metrics`.
pub(super) const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `GET /healthz`: 200 `ok` while the process serves (no token asked).
#[tracing::instrument(name = "http_healthz", skip_all)]
pub(super) async fn healthz() -> &'static str {
    "ok"
}

/// The body of `/readyz`.
#[derive(Debug, Serialize)]
struct Readiness {
    ready: bool,
    reason: String,
}

/// `GET /readyz`: 200 when the node can answer with current data, 503 otherwise, with the
/// reason in either case (see [`readiness`]).
#[tracing::instrument(name = "http_readyz", skip_all)]
pub(super) async fn readyz(State(api): State<Api>, query: RawQuery) -> Result<Response, ApiError> {
    params(query, &[])?;
    let (ready, reason) = match api.system.status() {
        Ok(st) => readiness(&st, api.options.ready_lag_max),
        Err(e) => (false, format!("no status: {e}")),
    };
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    Ok(json_response(status, &Readiness { ready, reason }))
}

/// Whether a node with status `st` is ready, and why (or why not): not halted, no state
/// divergence, a chain held; a Raft member knows a (confirmed) leader and has applied its log
/// to within `lag_max` entries; a latent node reached the Primary tier by gossip recently (its
/// mode is Normal Operation).
fn readiness(st: &SporeStatus, lag_max: u64) -> (bool, String) {
    if let Some(why) = &st.halted {
        return (false, format!("halted: {why}"));
    }
    if let Some(d) = &st.state_divergence {
        return (false, format!("state divergence: {d}"));
    }
    let Some(head) = st.head else { return (false, "no chain yet (network formation)".into()) };
    if !st.raft_member {
        return match st.mode {
            OperationalMode::NormalOperation => {
                let last = st.last_gossip_ms.map_or("none yet".to_string(), |ms| format!("{ms} ms ago"));
                (
                    true,
                    format!(
                        "latent node: the Primary tier was reached by gossip recently (last session {last}); head {}",
                        head.seq
                    ),
                )
            }
            mode => (false, format!("latent node: the Primary tier was not reached recently (mode: {mode})")),
        };
    }
    let Some(leader) = st.leader else {
        return (false, format!("no leader known ({}, term {})", st.raft_state, st.term));
    };
    let (log, applied) = (st.last_log.unwrap_or(0), st.last_applied.unwrap_or(0));
    let lag = log.saturating_sub(applied);
    if lag > lag_max {
        return (
            false,
            format!("applied index {applied} trails the log ({log}) by {lag} entries, more than {lag_max}"),
        );
    }
    (true, format!("leader {} known; applied {applied} of {log}; head {}", leader.short(), head.seq))
}

/// `GET /metrics`: `SporeSystem::metrics_text`, in the OpenMetrics text format.
#[tracing::instrument(name = "http_metrics", skip_all)]
pub(super) async fn metrics(State(api): State<Api>) -> Result<Response, ApiError> {
    let text = api.system.metrics_text()?;
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS))], text).into_response())
}
