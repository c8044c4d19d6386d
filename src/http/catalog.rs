//! Registry reads: the node's status, the nodes, the services (filtered as `find_services`
//! filters them), one node, one service. Stale-ok reads of the local projection; the lists are
//! kept as written until the next commit (`cache`).

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use super::error::{json_response, ApiError};
use super::json::{self, ServiceJson};
use super::params::{self, ParamError, Params};
use super::Api;
use crate::core::projection::{FoundService, Projection, ServiceFilter};
use crate::core::types::ChainHash;

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

/// A registry list at the head: the answer kept for `uri` if the head has not moved since it
/// was written, else `answer` asked of the projection (with the head it answers at, read in
/// the same turn), written as JSON by `write` out of the projection's lock, then kept.
fn listed<T>(
    api: &Api,
    uri: &Uri,
    answer: impl FnOnce(&Projection) -> T,
    write: impl FnOnce(&T) -> serde_json::Result<Vec<u8>>,
) -> Result<Response, ApiError> {
    let key = uri.path_and_query().map_or(uri.path(), |pq| pq.as_str());
    let head = api.system.with_projection(head_hash)?;
    let body = match api.answers.get(head, key) {
        Some(kept) => kept,
        None => {
            let (head, value) = api.system.with_projection(|p| (head_hash(p), answer(p)))?;
            let body = Bytes::from(write(&value).map_err(|e| ApiError::Io(e.into()))?);
            api.answers.put(head, key, &body);
            body
        }
    };
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response())
}

fn head_hash(p: &Projection) -> Option<ChainHash> {
    p.head().map(|h| h.hash)
}

/// `GET /v1/nodes`: every node in the registry.
#[tracing::instrument(name = "http_nodes", skip_all)]
pub(super) async fn nodes(State(api): State<Api>, uri: Uri, query: RawQuery) -> Result<Response, ApiError> {
    params(query, &[])?;
    listed(&api, &uri, |p| p.nodes().cloned().collect::<Vec<_>>(), serde_json::to_vec)
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
pub(super) async fn services(State(api): State<Api>, uri: Uri, query: RawQuery) -> Result<Response, ApiError> {
    let p = params(query, SERVICE_PARAMS)?;
    let filter = ServiceFilter {
        name: p.name("name")?,
        capability: p.name("capability")?,
        node: p.node("node")?,
        include_unavailable: p.flag("include_offline")?,
        include_critical: p.flag("include_critical")?,
        min_trust: p.trust("min_trust")?,
    };
    // `SporeSystem::find_services`, asked of the projection in the turn that reads its head.
    listed(
        &api,
        &uri,
        |p| p.find_services(&filter),
        |found| {
            // About 500 bytes a service: written without growing the buffer again and again.
            let mut body = Vec::with_capacity(found.len() * 512 + 2);
            serde_json::to_writer(&mut body, &json::services(found))?;
            Ok(body)
        },
    )
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
