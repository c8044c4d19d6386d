//! Registry reads: the node's status, the nodes, the services (filtered as `find_services`
//! filters them), one node, one service. Stale-ok reads of the local projection; the lists are
//! paged (`limit`, `cursor`; the next page's cursor in the `spores-next-cursor` and `Link`
//! headers) and kept as written until the next commit (`cache`).

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use super::cache::Kept;
use super::error::{json_response, ApiError};
use super::json::{self, ServiceJson};
use super::params::{self, ParamError, Params};
use super::Api;
use crate::core::projection::{FoundService, NodeFilter, Page, Paged, Projection, ServiceFilter};
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

/// The header that carries the next page's cursor of a list answer (absent on the last page).
pub(super) const NEXT_CURSOR: &str = "spores-next-cursor";

/// A page of a registry list at the head: the answer kept for `uri` if the head has not moved
/// since it was written, else `answer` asked of the projection (with the head it answers at,
/// read in the same turn), written as JSON by `write` out of the projection's lock, then kept.
/// A page with a next one says where it starts: `spores-next-cursor: <cursor>` and
/// `Link: <path?…&cursor=<cursor>>; rel="next"`.
fn listed<T, K: ToString>(
    api: &Api,
    uri: &Uri,
    query: &Params,
    answer: impl FnOnce(&Projection) -> Paged<T, K>,
    write: impl FnOnce(&[T]) -> serde_json::Result<Vec<u8>>,
) -> Result<Response, ApiError> {
    let key = uri.path_and_query().map_or(uri.path(), |pq| pq.as_str());
    let head = api.system.with_projection(head_hash)?;
    let kept = match api.answers.get(head, key) {
        Some(kept) => kept,
        None => {
            let (head, page) = api.system.with_projection(|p| (head_hash(p), answer(p)))?;
            let body = Bytes::from(write(&page.items).map_err(|e| ApiError::Io(e.into()))?);
            let kept = Kept { body, next: page.next.map(|k| k.to_string()) };
            api.answers.put(head, key, &kept);
            kept
        }
    };
    let mut response =
        (StatusCode::OK, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], kept.body)
            .into_response();
    if let Some(next) = kept.next {
        let link = format!("<{}?{}>; rel=\"next\"", uri.path(), query.with("cursor", &next));
        // A cursor is a UUID or hex, and the link is URL encoded: both are visible ASCII.
        let headers = response.headers_mut();
        if let (Ok(next), Ok(link)) = (HeaderValue::from_str(&next), HeaderValue::from_str(&link)) {
            headers.insert(NEXT_CURSOR, next);
            headers.insert(header::LINK, link);
        }
    }
    Ok(response)
}

fn head_hash(p: &Projection) -> Option<ChainHash> {
    p.head().map(|h| h.hash)
}

/// The parameters `/v1/nodes` takes.
const NODE_PARAMS: &[&str] = &["name", "capability", "status", "min_trust", "limit", "cursor"];

/// `GET /v1/nodes?name=&capability=&status=&min_trust=&limit=&cursor=`: a page of the nodes
/// the filter selects (every node by default), in node id order.
#[tracing::instrument(name = "http_nodes", skip_all)]
pub(super) async fn nodes(State(api): State<Api>, uri: Uri, query: RawQuery) -> Result<Response, ApiError> {
    let q = params(query, NODE_PARAMS)?;
    let filter = NodeFilter {
        name: q.name("name")?,
        capability: q.name("capability")?,
        status: q.status("status")?,
        min_trust: q.trust("min_trust")?,
    };
    let page = Page { limit: q.limit("limit")?, after: q.node_cursor("cursor")? };
    listed(&api, &uri, &q, |p| p.nodes_page(&filter, &page), serde_json::to_vec)
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
const SERVICE_PARAMS: &[&str] =
    &["name", "capability", "node", "include_offline", "include_critical", "min_trust", "limit", "cursor"];

/// `GET /v1/services?name=&capability=&node=&include_offline=&include_critical=&min_trust=&limit=&cursor=`:
/// a page of the services the filter selects, each with its node's status and trust, in
/// service id order.
#[tracing::instrument(name = "http_services", skip_all)]
pub(super) async fn services(State(api): State<Api>, uri: Uri, query: RawQuery) -> Result<Response, ApiError> {
    let q = params(query, SERVICE_PARAMS)?;
    let filter = ServiceFilter {
        name: q.name("name")?,
        capability: q.name("capability")?,
        node: q.node("node")?,
        include_unavailable: q.flag("include_offline")?,
        include_critical: q.flag("include_critical")?,
        min_trust: q.trust("min_trust")?,
    };
    let page = Page { limit: q.limit("limit")?, after: q.service_cursor("cursor")? };
    // `SporeSystem::find_services_page`, asked of the projection in the turn that reads its head.
    listed(
        &api,
        &uri,
        &q,
        |p| p.find_services_page(&filter, &page),
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
        p.shared_service(&id).map(|record| {
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
