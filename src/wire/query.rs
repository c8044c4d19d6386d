//! Registry and chain queries, and their answers: what `RpcRequest::Query` asks a node's
//! local view.
//!
//! No list answer is unbounded. The paged queries ([`Query::FindPage`], [`Query::NodesPage`])
//! take a limit (0: [`PAGE_LIMIT_DEFAULT`](crate::core::limits::PAGE_LIMIT_DEFAULT); at most [`PAGE_LIMIT_MAX`]) and a cursor and
//! answer with the next cursor (`core::projection::page`). The older list queries have no
//! cursor: they answer at most [`PAGE_LIMIT_MAX`] items, the first in key order
//! ([`clip`]); ask the paged forms to read more.

use serde::{Deserialize, Serialize};

use crate::core::event::EventFilter;
use crate::core::limits::PAGE_LIMIT_MAX;
use crate::core::projection::{FoundService, NodeFilter, NodeRecord, Paged, ServiceFilter};
use crate::core::types::{ChainPoint, NodeId, SporeType};

/// Most bytes (postcard) the items of one paged answer carry: a page of large services is cut
/// short of it, so every page fits an RPC frame (16 MiB) whatever its limit.
pub const PAGE_ANSWER_BYTES_MAX: usize = 8 << 20;

/// `page` cut to at most [`PAGE_ANSWER_BYTES_MAX`] bytes of items (always at least one item):
/// a page cut short ends at the last item it keeps, and its `next` is that item's key, so a
/// walk still returns every item once.
pub fn fit_page<T: Serialize, K>(mut page: Paged<T, K>, key: impl Fn(&T) -> K) -> Paged<T, K> {
    let mut bytes = 0usize;
    let keep = page.items.iter().position(|item| {
        bytes = bytes.saturating_add(postcard::to_stdvec(item).map_or(usize::MAX, |v| v.len()));
        bytes > PAGE_ANSWER_BYTES_MAX
    });
    if let Some(keep) = keep.map(|i| i.max(1)).filter(|k| *k < page.items.len()) {
        page.items.truncate(keep);
        page.next = page.items.last().map(key);
    }
    page
}

/// The first [`PAGE_LIMIT_MAX`] items of an unpaged list answer.
pub fn clip<'a, T: Clone + 'a>(items: impl Iterator<Item = &'a T>) -> Vec<T> {
    items.take(PAGE_LIMIT_MAX as usize).cloned().collect()
}

/// A read-only registry query.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    /// Every node in the registry (at most [`PAGE_LIMIT_MAX`], the first in node id order;
    /// [`Query::NodesPage`] reads them all).
    Nodes,
    /// Every registered service (at most [`PAGE_LIMIT_MAX`], the first in service id order;
    /// [`Query::FindPage`] reads them all).
    Services,
    /// Services with this name (at most [`PAGE_LIMIT_MAX`], as [`Query::Services`]).
    ServicesByName(String),
    /// Services providing this capability (at most [`PAGE_LIMIT_MAX`], as [`Query::Services`]).
    ServicesByCapability(String),
    /// Nodes committed as offline (at most [`PAGE_LIMIT_MAX`], as [`Query::Nodes`]).
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
    /// and trust ([`QueryAnswer::Found`]; at most [`PAGE_LIMIT_MAX`], the first in service id
    /// order: [`Query::FindPage`] reads them all). Appended last: older peers decode every
    /// variant before it unchanged.
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
    /// One page of [`Query::Find`]: at most `limit` services `filter` selects (0:
    /// [`PAGE_LIMIT_DEFAULT`](crate::core::limits::PAGE_LIMIT_DEFAULT), clipped to [`PAGE_LIMIT_MAX`]), in service id order, after the
    /// service id `after` ([`QueryAnswer::FoundPage`]). Appended last (postcard is positional:
    /// older peers decode every variant before it unchanged).
    FindPage {
        /// Which services.
        filter: ServiceFilter,
        /// At most this many.
        limit: u32,
        /// The previous page's `next` (`None`: the first page).
        after: Option<uuid::Uuid>,
    },
    /// One page of the nodes `filter` selects: at most `limit` (as [`Query::FindPage`]), in
    /// node id order, after the node id `after` ([`QueryAnswer::NodesPage`]). Appended last.
    NodesPage {
        /// Which nodes.
        filter: NodeFilter,
        /// At most this many.
        limit: u32,
        /// The previous page's `next` (`None`: the first page).
        after: Option<NodeId>,
    },
}

/// The longest a [`Query::Watch`] waits for a matching event: well under the QUIC idle
/// timeout of the connection that carries it (10 s), as the node sends nothing meanwhile.
pub const WATCH_WAIT_MS_MAX: u32 = 5_000;

/// A question to the registries, asked through [`Query::Tiered`]. (Not a nested [`Query`]:
/// a recursive type would let a peer's frame nest deep enough to exhaust the decoder's stack.)
/// Each answers at most [`PAGE_LIMIT_MAX`] records, the first in key order.
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
    /// Answers from one projection: at most [`PAGE_LIMIT_MAX`] records ([`clip`]).
    pub fn answer(&self, p: &crate::core::projection::Projection) -> RegistryAnswer {
        match self {
            RegistryQuery::Nodes => RegistryAnswer::Nodes(clip(p.nodes())),
            RegistryQuery::OfflineNodes => RegistryAnswer::Nodes(clip(p.offline_nodes())),
            RegistryQuery::Services => RegistryAnswer::Services(clip(p.services())),
            RegistryQuery::ServicesByName(n) => RegistryAnswer::Services(clip(p.services_by_name(n))),
            RegistryQuery::ServicesByCapability(c) => RegistryAnswer::Services(clip(p.services_by_capability(c))),
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
            Query::ChainAt(_)
            | Query::Events { .. }
            | Query::Tiered(_)
            | Query::Find(_)
            | Query::Watch { .. }
            | Query::FindPage { .. }
            | Query::NodesPage { .. } => return None,
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
    /// To `Find`: the services selected, in service id order (at most [`PAGE_LIMIT_MAX`]).
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
    /// To `FindPage`: the services of the page, in service id order, and where the next page
    /// starts (`None`: this page is the last). Appended last.
    FoundPage {
        /// The services.
        items: Vec<FoundService>,
        /// The next page's `after`.
        next: Option<uuid::Uuid>,
    },
    /// To `NodesPage`: the nodes of the page, in node id order, and where the next page
    /// starts (`None`: this page is the last). Appended last.
    NodesPage {
        /// The nodes.
        items: Vec<NodeRecord>,
        /// The next page's `after`.
        next: Option<NodeId>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::projection::{NodeFilter, ServiceFilter};

    /// postcard writes an enum's variant index first: the paged variants come after every
    /// older one, so a peer built before them decodes every query and answer it knows alike.
    #[test]
    fn the_paged_variants_are_appended_after_every_older_one() {
        let tag = |v: Vec<u8>| v[0];
        let q = |q: Query| tag(postcard::to_stdvec(&q).expect("encode"));
        assert_eq!(q(Query::Nodes), 0);
        assert_eq!(q(Query::Find(ServiceFilter::default())), 8);
        assert_eq!(q(Query::Watch { from: 0, filter: EventFilter::default(), max: 1, wait_ms: 0 }), 9);
        assert_eq!(q(Query::FindPage { filter: ServiceFilter::default(), limit: 0, after: None }), 10);
        assert_eq!(q(Query::NodesPage { filter: NodeFilter::default(), limit: 0, after: None }), 11);
        let a = |a: QueryAnswer| tag(postcard::to_stdvec(&a).expect("encode"));
        assert_eq!(a(QueryAnswer::Found(vec![])), 5);
        assert_eq!(a(QueryAnswer::Watched { events: vec![], named: vec![], next: 0, head: None }), 6);
        assert_eq!(a(QueryAnswer::FoundPage { items: vec![], next: None }), 7);
        assert_eq!(a(QueryAnswer::NodesPage { items: vec![], next: None }), 8);
    }

    #[test]
    fn a_page_too_large_for_a_frame_is_cut_at_an_item_and_says_where_to_go_on() {
        let big = "x".repeat(1 << 20);
        let items: Vec<(u32, String)> = (0..20).map(|i| (i, big.clone())).collect();
        let page = fit_page(Paged { items, next: None }, |item| item.0);
        assert_eq!(page.items.len(), 7, "7 MiB and a bit fit, 8 would not");
        assert_eq!(page.next, Some(6), "the next page starts after the last item kept");
        let small = fit_page(Paged { items: vec![(1, String::new())], next: Some(1) }, |item| item.0);
        assert_eq!((small.items.len(), small.next), (1, Some(1)), "a page that fits is unchanged");
        let huge = vec![(1, "y".repeat(PAGE_ANSWER_BYTES_MAX + 1)), (2, String::new())];
        let one = fit_page(Paged { items: huge, next: None }, |item| item.0);
        assert_eq!((one.items.len(), one.next), (1, Some(1)), "at least one item");
    }

    #[test]
    fn unpaged_answers_are_clipped_at_the_maximum() {
        let many: Vec<u32> = (0..PAGE_LIMIT_MAX + 5).collect();
        let clipped = clip(many.iter());
        assert_eq!(clipped.len(), PAGE_LIMIT_MAX as usize);
        assert_eq!(clipped.last(), Some(&(PAGE_LIMIT_MAX - 1)), "the first in key order");
    }
}
