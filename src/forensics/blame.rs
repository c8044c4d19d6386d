//! Blame: every event of a branch that touched a node or a service, directly or through what
//! it owns, with who signed it and when.

use std::collections::{BTreeSet, HashMap, VecDeque};

use serde::Serialize;
use uuid::Uuid;

use super::branch::{Branch, BranchInfo, EVENTS_PAGE_MAX};
use super::ForensicsError;
use crate::core::event::{ChainedEvent, EventBody};
use crate::core::projection::Projection;
use crate::core::types::{ChainHash, NodeId, Timestamp};
use crate::store::replay::StopAt;

/// Fewest hex characters a node-id prefix must have to name a node in [`BlameTarget::resolve`].
pub const NODE_PREFIX_HEX_MIN: usize = 4;

/// What to blame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BlameTarget {
    /// A node.
    Node {
        /// Its id.
        node: NodeId,
    },
    /// One service.
    Service {
        /// Its id.
        service_id: Uuid,
    },
    /// Every service ever registered under this name (instances share names).
    ServiceName {
        /// The name.
        name: String,
    },
}

impl BlameTarget {
    /// A target that needs no registry to resolve: 64 hex characters (a node id) or a UUID.
    pub fn parse_exact(text: &str) -> Option<BlameTarget> {
        let t = text.trim();
        if t.len() == 64 {
            if let Ok(node) = NodeId::from_hex(t) {
                return Some(BlameTarget::Node { node });
            }
        }
        Uuid::parse_str(t).ok().map(|service_id| BlameTarget::Service { service_id })
    }

    /// Resolves `text` against a registry: a node id, a UUID, a node-id prefix of at least
    /// [`NODE_PREFIX_HEX_MIN`] hex characters matching exactly one node ever admitted, or else
    /// a service name (matched against every registration while blaming).
    pub fn resolve(text: &str, registry: &Projection) -> Result<BlameTarget, ForensicsError> {
        if let Some(t) = Self::parse_exact(text) {
            return Ok(t);
        }
        let t = text.trim();
        if t.is_empty() {
            return Err(ForensicsError::TargetNotFound(text.to_string()));
        }
        if t.len() >= NODE_PREFIX_HEX_MIN && t.bytes().all(|c| c.is_ascii_hexdigit()) {
            let prefix = t.to_ascii_lowercase();
            let matches: Vec<NodeId> =
                registry.nodes().map(|n| n.node).filter(|id| id.to_hex().starts_with(&prefix)).collect();
            match matches.as_slice() {
                [one] => return Ok(BlameTarget::Node { node: *one }),
                [] => {}
                many => return Err(ForensicsError::AmbiguousTarget { text: t.to_string(), count: many.len() }),
            }
        }
        Ok(BlameTarget::ServiceName { name: t.to_string() })
    }
}

/// How an event touched the blamed target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "how", rename_all = "snake_case")]
pub enum Touch {
    /// The event is about the target (its subject node or service).
    Subject,
    /// A service offered by the target node was registered.
    ServiceOfNodeRegistered {
        /// The service.
        service_id: Uuid,
    },
    /// A service offered by the target node was deregistered.
    ServiceOfNodeDeregistered {
        /// The service.
        service_id: Uuid,
    },
    /// The target service's node left, and the service went with it.
    RemovedWithNode {
        /// The node that left.
        node: NodeId,
    },
    /// The target node signed an event about something else (listed only when asked).
    Authored,
}

/// One event that touched the target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BlameEntry {
    /// Its sequence number.
    pub seq: u64,
    /// Its chain hash.
    pub hash: ChainHash,
    /// Its kind (`node_joined`, …).
    pub kind: &'static str,
    /// Who signed it.
    pub author: NodeId,
    /// When its author made it.
    pub timestamp: Timestamp,
    /// How it touched the target.
    pub touch: Touch,
    /// Services it removed as a consequence (a `node_left` of the target node, or of the
    /// node of a blamed service).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services_removed: Vec<Uuid>,
    /// The event's body.
    pub body: EventBody,
}

/// What [`blame`] may include and keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlameOptions {
    /// Also list events the target node signed about other things (for a voter: most of
    /// the log).
    pub include_authored: bool,
    /// Keep at most this many entries, the latest ones; the earlier ones are only counted.
    pub limit: usize,
}

impl Default for BlameOptions {
    fn default() -> Self {
        BlameOptions { include_authored: false, limit: 1000 }
    }
}

/// The outcome of [`blame`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BlameReport {
    /// The source searched.
    pub source: BranchInfo,
    /// The target.
    pub target: BlameTarget,
    /// For a service name: every service id registered under it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Uuid>,
    /// Events that touched the target.
    pub total: u64,
    /// The earliest ones left out (over the limit): `total - entries.len()`.
    pub omitted: u64,
    /// The latest `limit` entries, oldest first.
    pub entries: Vec<BlameEntry>,
}

/// Follows one target through a chain: which services belong to a blamed node, and which
/// node a blamed service is on, as events register, move and remove them.
struct Tracker<'a> {
    target: &'a BlameTarget,
    include_authored: bool,
    /// Services of the blamed node, or the blamed services, currently registered → node.
    live: HashMap<Uuid, NodeId>,
    /// For a service name: every id registered under it.
    named: BTreeSet<Uuid>,
}

impl Tracker<'_> {
    fn is_target_service(&self, id: &Uuid) -> bool {
        match self.target {
            BlameTarget::Service { service_id } => service_id == id,
            BlameTarget::ServiceName { .. } => self.named.contains(id),
            BlameTarget::Node { .. } => false,
        }
    }

    /// How `ev` touched the target (None: it did not), and the services it removed.
    fn touch(&mut self, ev: &ChainedEvent) -> Option<(Touch, Vec<Uuid>)> {
        let body = &ev.event.body;
        match (self.target, body) {
            (BlameTarget::Node { node }, EventBody::ServiceRegistered(s)) if s.node == *node => {
                self.live.insert(s.service_id, s.node);
                Some((Touch::ServiceOfNodeRegistered { service_id: s.service_id }, Vec::new()))
            }
            (BlameTarget::Node { .. }, EventBody::ServiceDeregistered { service_id, .. })
                if self.live.remove(service_id).is_some() =>
            {
                Some((Touch::ServiceOfNodeDeregistered { service_id: *service_id }, Vec::new()))
            }
            (BlameTarget::Node { node }, EventBody::NodeLeft { node: left, .. }) if left == node => {
                let removed: Vec<Uuid> = self.live.drain().map(|(id, _)| id).collect();
                Some((Touch::Subject, sorted(removed)))
            }
            (BlameTarget::Node { node }, _) if body.subject_node() == Some(*node) => Some((Touch::Subject, Vec::new())),
            (BlameTarget::Node { node }, _) if self.include_authored && ev.event.author == *node => {
                Some((Touch::Authored, Vec::new()))
            }
            (BlameTarget::Node { .. }, _) => None,
            (_, EventBody::ServiceRegistered(s)) => {
                if let BlameTarget::ServiceName { name } = self.target {
                    if s.name == *name {
                        self.named.insert(s.service_id);
                    }
                }
                if self.is_target_service(&s.service_id) {
                    self.live.insert(s.service_id, s.node);
                    Some((Touch::Subject, Vec::new()))
                } else {
                    None
                }
            }
            (_, EventBody::ServiceDeregistered { service_id, .. }) if self.is_target_service(service_id) => {
                self.live.remove(service_id);
                Some((Touch::Subject, Vec::new()))
            }
            (_, EventBody::NodeLeft { node, .. }) => {
                let removed: Vec<Uuid> = self.live.iter().filter(|(_, n)| *n == node).map(|(id, _)| *id).collect();
                if removed.is_empty() {
                    return None;
                }
                for id in &removed {
                    self.live.remove(id);
                }
                Some((Touch::RemovedWithNode { node: *node }, sorted(removed)))
            }
            _ => None,
        }
    }
}

fn sorted(mut ids: Vec<Uuid>) -> Vec<Uuid> {
    ids.sort_unstable();
    ids
}

/// Every event of `source` that touched `target`, oldest first, with who signed it and when:
/// for a node, the events about it, the registrations and deregistrations of its services,
/// and its leaving (which removes its services, listed); for a service, its registration,
/// deregistration, and its node leaving. Reads the chain page by page; keeps the latest
/// `options.limit` entries. `progress` counts events read.
#[tracing::instrument(level = "debug", skip(source, progress), fields(path = %source.info.path.display()))]
pub fn blame(
    source: &Branch,
    target: &BlameTarget,
    options: BlameOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<BlameReport, ForensicsError> {
    if !source.has_events() {
        return Err(source.without_events("the history of a node or service"));
    }
    let mut tracker =
        Tracker { target, include_authored: options.include_authored, live: HashMap::new(), named: BTreeSet::new() };
    let mut entries: VecDeque<BlameEntry> = VecDeque::with_capacity(options.limit.min(EVENTS_PAGE_MAX));
    let mut total = 0u64;
    let head = source.head().seq;
    let mut at = 0u64;
    while at <= head {
        let page = source.events(at, head)?;
        let Some(last) = page.last() else { break };
        at = last.seq + 1;
        for ev in page {
            let Some((touch, services_removed)) = tracker.touch(&ev) else {
                continue;
            };
            total += 1;
            if options.limit == 0 {
                continue;
            }
            if entries.len() == options.limit {
                entries.pop_front();
            }
            entries.push_back(BlameEntry {
                seq: ev.seq,
                hash: ev.hash,
                kind: ev.event.body.kind(),
                author: ev.event.author,
                timestamp: ev.event.timestamp,
                touch,
                services_removed,
                body: ev.event.body,
            });
        }
        progress(at);
    }
    if total == 0 {
        let text = match target {
            BlameTarget::Node { node } => node.to_hex(),
            BlameTarget::Service { service_id } => service_id.to_string(),
            BlameTarget::ServiceName { name } => name.clone(),
        };
        return Err(ForensicsError::TargetNotFound(text));
    }
    let entries: Vec<BlameEntry> = entries.into();
    let omitted = total - entries.len() as u64;
    Ok(BlameReport {
        source: source.info.clone(),
        target: target.clone(),
        services: tracker.named.into_iter().collect(),
        total,
        omitted,
        entries,
    })
}

/// Resolves a blame target written by a user against `source`: exact ids directly, anything
/// else against the registry at the source's head (a replay for a ledger). See
/// [`BlameTarget::resolve`].
pub fn resolve_target(
    source: &Branch,
    text: &str,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<BlameTarget, ForensicsError> {
    if let Some(t) = BlameTarget::parse_exact(text) {
        return Ok(t);
    }
    // A seed without events answers at its head from its state, so this works for it too.
    let registry = source.projection(StopAt::End, progress)?;
    BlameTarget::resolve(text, &registry)
}
