//! Registry reads: the node's status, the nodes, the services (filtered as `find_services`
//! filters them), one node, one service. Stale-ok reads of the local projection.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;

use super::error::{json_response, ApiError};
use super::json::{self, ServiceJson};
use super::params::{self, ParamError, Params};
use super::Api;
use crate::core::projection::{FoundService, ServiceFilter};

/// The decoded query string, or the 400 of one that is not URL encoding.
pub(super) type RawQuery = Result<Query<Vec<(String, String)>>, QueryRejection>;

/// The query's parameters, checked against the names the route takes.
pub(super) fn params(query: RawQuery, allowed: &[&'static str]) -> Result<Params, ParamError> {
    let Query(pairs) = query.map_err(|e| ParamError::Malformed(e.body_text()))?;
    Params::new(pairs, allowed)
}

/// `GET /v1/status`: what `SporeSystem::status` reports.
#[tracing::instrument(name = "http_status", skip_all)]
pub(super) async fn status(State(api): State<Api>, query: RawQuery) -> Result<Response, ApiError> {
    params(query, &[])?;
    Ok(json_response(StatusCode::OK, &api.system.status()?))
}

/// `GET /v1/nodes`: every node in the registry.
#[tracing::instrument(name = "http_nodes", skip_all)]
pub(super) async fn nodes(State(api): State<Api>, query: RawQuery) -> Result<Response, ApiError> {
    params(query, &[])?;
    Ok(json_response(StatusCode::OK, &api.system.nodes()?))
}

/// `GET /v1/nodes/{id}`: one node.
#[tracing::instrument(name = "http_node", skip_all, fields(id = %id))]
pub(super) async fn node(
    State(api): State<Api>,
    Path(id): Path<String>,
    query: RawQuery,
) -> Result<Response, ApiError> {
    params(query, &[])?;
    let id = params::node_id("id", &id)?;
    let node = api.system.node(&id)?.ok_or(ApiError::UnknownNode(id))?;
    Ok(json_response(StatusCode::OK, &node))
}

/// The parameters `/v1/services` takes.
const SERVICE_PARAMS: &[&str] = &["name", "capability", "node", "include_offline", "include_critical", "min_trust"];

/// `GET /v1/services?name=&capability=&node=&include_offline=&include_critical=&min_trust=`:
/// the services the filter selects, each with its node's status and trust.
#[tracing::instrument(name = "http_services", skip_all)]
pub(super) async fn services(State(api): State<Api>, query: RawQuery) -> Result<Response, ApiError> {
    let p = params(query, SERVICE_PARAMS)?;
    let filter = ServiceFilter {
        name: p.name("name")?,
        capability: p.name("capability")?,
        node: p.node("node")?,
        include_unavailable: p.flag("include_offline")?,
        include_critical: p.flag("include_critical")?,
        min_trust: p.trust("min_trust")?,
    };
    let found = api.system.find_services(&filter)?;
    tracing::debug!(found = found.len(), "services");
    Ok(json_response(StatusCode::OK, &json::services(&found)))
}

/// `GET /v1/services/{id}`: one service, whatever its node's status and health.
#[tracing::instrument(name = "http_service", skip_all, fields(id = %id))]
pub(super) async fn service(
    State(api): State<Api>,
    Path(id): Path<String>,
    query: RawQuery,
) -> Result<Response, ApiError> {
    params(query, &[])?;
    let id = params::service_id("id", &id)?;
    let found = api.system.with_projection(|p| {
        p.service(&id).map(|record| {
            let node = p.node(&record.service.node);
            FoundService {
                record: record.clone(),
                node_status: node.map(|n| n.status),
                node_trust: node.map_or(crate::core::types::TrustScore(0), |n| n.trust),
                critical: p.service_health(&id).cloned(),
            }
        })
    })?;
    let found = found.ok_or(ApiError::UnknownService(id))?;
    Ok(json_response(StatusCode::OK, &ServiceJson::from(&found)))
}
