//! Registry and chain queries, and their answers: what `RpcRequest::Query` asks a node's
//! local view.

use serde::{Deserialize, Serialize};

use crate::core::event::EventFilter;
use crate::core::projection::{FoundService, ServiceFilter};
use crate::core::types::{ChainPoint, SporeType};

/// A read-only registry query.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    /// Every node in the registry.
    Nodes,
    /// Every registered service.
    Services,
    /// Services with this name.
    ServicesByName(String),
    /// Services providing this capability.
    ServicesByCapability(String),
    /// Nodes committed as offline.
    OfflineNodes,
    /// The chain point (sequence number and hash) at this sequence number, if the node's
    /// ledger has it, and its head.
    ChainAt(u64),
    /// Chained events from `from` on, at most `max` (clipped to [`EVENTS_PER_QUERY_MAX`]):
    /// how a split-brain resolver reads the other branch of a fork.
    Events {
        /// First sequence number.
        from: u64,
        /// At most this many.
        max: u32,
    },
    /// A registry query answered from the most authoritative spore tier that has a
    /// non-empty answer, saying which ([`QueryAnswer::Tiered`]; see [`crate::node::tiers`]).
    Tiered(RegistryQuery),
    /// Services as discovery asks for them: filtered by name, capability, node and minimum
    /// trust, services of offline nodes left out unless asked for, each with its node's status
    /// and trust ([`QueryAnswer::Found`]). Appended last: older peers decode every variant
    /// before it unchanged.
    Find(ServiceFilter),
    /// A blocking read of committed events from `from` on that pass `filter`: answered at once
    /// when any is held, else when one commits or after `wait_ms` (at most
    /// [`WATCH_WAIT_MS_MAX`]) with none ([`QueryAnswer::Watched`]). A watcher asks again from
    /// the answer's `next`; nothing is buffered for it on the node. Appended last.
    Watch {
        /// First sequence number wanted.
        from: u64,
        /// Which events.
        filter: EventFilter,
        /// At most this many events in the answer (clipped to [`EVENTS_PER_QUERY_MAX`]).
        max: u32,
        /// How long to wait for a matching event when none is held (milliseconds).
        wait_ms: u32,
    },
}

/// The longest a [`Query::Watch`] waits for a matching event: well under the QUIC idle
/// timeout of the connection that carries it (10 s), as the node sends nothing meanwhile.
pub const WATCH_WAIT_MS_MAX: u32 = 5_000;

/// A question to the registries, asked through [`Query::Tiered`]. (Not a nested [`Query`]:
/// a recursive type would let a peer's frame nest deep enough to exhaust the decoder's stack.)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegistryQuery {
    /// Every node.
    Nodes,
    /// Every service.
    Services,
    /// Services with this name.
    ServicesByName(String),
    /// Services providing this capability.
    ServicesByCapability(String),
    /// Nodes committed as offline.
    OfflineNodes,
}

impl RegistryQuery {
    /// Answers from one projection.
    pub fn answer(&self, p: &crate::core::projection::Projection) -> RegistryAnswer {
        match self {
            RegistryQuery::Nodes => RegistryAnswer::Nodes(p.nodes().cloned().collect()),
            RegistryQuery::OfflineNodes => RegistryAnswer::Nodes(p.offline_nodes().cloned().collect()),
            RegistryQuery::Services => RegistryAnswer::Services(p.services().cloned().collect()),
            RegistryQuery::ServicesByName(n) => RegistryAnswer::Services(p.services_by_name(n).cloned().collect()),
            RegistryQuery::ServicesByCapability(c) => {
                RegistryAnswer::Services(p.services_by_capability(c).cloned().collect())
            }
        }
    }
}

/// The registries' answer to a [`RegistryQuery`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegistryAnswer {
    /// Node records.
    Nodes(Vec<crate::core::projection::NodeRecord>),
    /// Service records.
    Services(Vec<crate::core::projection::ServiceRecord>),
}

impl RegistryAnswer {
    /// Whether it lists nothing.
    pub fn is_empty(&self) -> bool {
        match self {
            RegistryAnswer::Nodes(v) => v.is_empty(),
            RegistryAnswer::Services(v) => v.is_empty(),
        }
    }
}

impl From<RegistryAnswer> for QueryAnswer {
    fn from(a: RegistryAnswer) -> QueryAnswer {
        match a {
            RegistryAnswer::Nodes(v) => QueryAnswer::Nodes(v),
            RegistryAnswer::Services(v) => QueryAnswer::Services(v),
        }
    }
}

impl Query {
    /// The registry question this asks (`None` for a chain or tiered query).
    pub fn as_registry(&self) -> Option<RegistryQuery> {
        Some(match self {
            Query::Nodes => RegistryQuery::Nodes,
            Query::Services => RegistryQuery::Services,
            Query::ServicesByName(n) => RegistryQuery::ServicesByName(n.clone()),
            Query::ServicesByCapability(c) => RegistryQuery::ServicesByCapability(c.clone()),
            Query::OfflineNodes => RegistryQuery::OfflineNodes,
            Query::ChainAt(_) | Query::Events { .. } | Query::Tiered(_) | Query::Find(_) | Query::Watch { .. } => {
                return None
            }
        })
    }
}

/// Most events one [`Query::Events`] answers (64 records always fit in an RPC frame).
pub const EVENTS_PER_QUERY_MAX: u32 = 64;

/// The answer to a [`Query`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryAnswer {
    /// Node records.
    Nodes(Vec<crate::core::projection::NodeRecord>),
    /// Service records.
    Services(Vec<crate::core::projection::ServiceRecord>),
    /// To `ChainAt`: the point asked for (if held), the head and the network.
    Chain {
        /// The point at the asked sequence number.
        at: Option<ChainPoint>,
        /// The node's head.
        head: Option<ChainPoint>,
        /// The node's network.
        fingerprint: Option<crate::core::types::NetworkFingerprint>,
    },
    /// To `Events`: the events, in order (empty past the head).
    Events(Vec<crate::core::event::ChainedEvent>),
    /// To `Tiered`: the answer of the most authoritative tier that has a non-empty one, with
    /// that tier and its chain point (`None`: no tier has any).
    Tiered(Option<Tiered<RegistryAnswer>>),
    /// To `Find`: the services selected, in service id order.
    Found(Vec<FoundService>),
    /// To `Watch`: the events that passed the filter, in order, and where to ask next (past
    /// every event read, whether it passed or not). With a service-name filter the node passes
    /// every deregistration it cannot place (the watcher knows the ids it saw registered and
    /// filters exactly) and says which services are registered under the name now.
    Watched {
        /// The events.
        events: Vec<crate::core::event::ChainedEvent>,
        /// With a service-name filter: the ids registered under the name when it answered.
        named: Vec<uuid::Uuid>,
        /// The sequence number to ask from next.
        next: u64,
        /// The node's head when it answered.
        head: Option<u64>,
    },
}

/// An answer and the tier it came from, from [`SporeSystem::answer`](crate::SporeSystem::answer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tiered<T> {
    /// The answer.
    pub value: T,
    /// The most authoritative tier that had it.
    pub tier: SporeType,
    /// The chain point of that tier's view.
    pub at: ChainPoint,
    /// The answer may be stale: this node cannot confirm its view is the cluster's current
    /// one (a Raft member that knows no confirmed leader, e.g. a leader cut off from the
    /// majority, or an answer from a tier below Primary).
    pub stale: bool,
}
