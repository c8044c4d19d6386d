//! The JSON shapes a node's data is given in, the one place both the HTTP endpoint and the
//! CLI's `--json` take them from, so the two cannot drift (`schema/http.md`, *Shapes*).
//!
//! - a status: [`SporeStatus`](crate::wire::status::SporeStatus) as serde writes it
//!   (`/v1/status`, `spore status --json`);
//! - a node: [`NodeRecord`](crate::core::projection::NodeRecord) as serde writes it (`/v1/nodes`, `spore query nodes --json`);
//! - a service: [`ServiceJson`], the record with its node's status and trust and its health
//!   (`/v1/services`, `spore query services --json`);
//! - an event: [`EventJson`] (`/v1/events`, `/v1/watch`, `spore watch --json`).

use serde::Serialize;

use crate::core::event::{ChainedEvent, EventBody};
use crate::core::projection::{FoundService, NodeStatus, ServiceHealth, ServiceRecord};
use crate::core::types::{ChainHash, NodeId, Timestamp, TrustScore};

/// A service in a discovery answer: the fields of its [`ServiceRecord`] (`service`,
/// `registered_seq`, `registered_at`, `registered_by`) with `node_status`, `node_trust` and
/// `critical` beside them.
#[derive(Debug, Serialize)]
pub struct ServiceJson<'a> {
    /// The service as registered.
    #[serde(flatten)]
    pub record: &'a ServiceRecord,
    /// Its node's status (`null`: the node is not in the registry).
    pub node_status: Option<NodeStatus>,
    /// Its node's trust score.
    pub node_trust: TrustScore,
    /// Why it is critical, and since when (`null` while it passes).
    pub critical: Option<&'a ServiceHealth>,
}

impl<'a> From<&'a FoundService> for ServiceJson<'a> {
    fn from(f: &'a FoundService) -> Self {
        ServiceJson {
            record: &f.record,
            node_status: f.node_status,
            node_trust: f.node_trust,
            critical: f.critical.as_ref(),
        }
    }
}

/// A committed event: where it is in the chain, its kind, author and time, and its body.
#[derive(Debug, Serialize)]
pub struct EventJson<'a> {
    /// Its sequence number.
    pub seq: u64,
    /// Its chain hash.
    pub hash: &'a ChainHash,
    /// Its kind (`service_registered`, …; [`EventBody::kind`]).
    pub kind: &'static str,
    /// Who signed it.
    pub author: &'a NodeId,
    /// When its author made it.
    pub timestamp: &'a Timestamp,
    /// What changed.
    pub event: &'a EventBody,
}

impl<'a> From<&'a ChainedEvent> for EventJson<'a> {
    fn from(ev: &'a ChainedEvent) -> Self {
        EventJson {
            seq: ev.seq,
            hash: &ev.hash,
            kind: ev.event.body.kind(),
            author: &ev.event.author,
            timestamp: &ev.event.timestamp,
            event: &ev.event.body,
        }
    }
}

/// The services of a discovery answer in their JSON shape.
pub fn services(found: &[FoundService]) -> Vec<ServiceJson<'_>> {
    found.iter().map(ServiceJson::from).collect()
}
