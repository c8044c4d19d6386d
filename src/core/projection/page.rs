//! Paged, filtered answers: a list query takes a limit and a cursor and returns the next
//! cursor, so no answer is unbounded and a walk over a large registry reads it a page at a
//! time.
//!
//! Keyset pagination: services are listed in service id order, nodes in node id order, and a
//! cursor is the last key a page looked at (exclusive: the next page starts after it). A page
//! is read from the narrowest index the filter names with a `BTreeSet`/`BTreeMap` range that
//! starts at the cursor, so it costs `O(limit + log n)` when the index selects exactly, and at
//! most [`PAGE_SCAN_MAX`] candidates when a condition no index serves (liveness, health, trust)
//! leaves most of them out. A walk is stable under concurrent writes: an item present for the
//! whole walk is returned exactly once, and no item is ever returned twice (keys only grow
//! along a walk); an item registered or removed during the walk may or may not appear.
//!
//! `next` is `None` when the page is the last. A page may hold fewer items than its limit —
//! even none — and still have a `next` (its scan stopped at the bound): follow `next` until
//! it is `None`.

use std::ops::Bound;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{FoundService, NodeRecord, NodeStatus, Projection, ServiceFilter, ServiceRecord};
use crate::core::limits::{PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX, PAGE_SCAN_MAX};
use crate::core::types::{NodeId, TrustScore};

/// A page request: at most `limit` items after the cursor `after` (exclusive).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page<K> {
    /// At most this many items: 0 asks for [`PAGE_LIMIT_DEFAULT`], more than
    /// [`PAGE_LIMIT_MAX`] is clipped to it ([`Page::limit`]).
    pub limit: u32,
    /// The cursor: the `next` of the page before (`None`: from the first item).
    pub after: Option<K>,
}

impl<K> Default for Page<K> {
    fn default() -> Self {
        Page { limit: 0, after: None }
    }
}

impl<K> Page<K> {
    /// The first page of at most `limit` items (0: the default limit).
    pub fn first(limit: u32) -> Self {
        Page { limit, after: None }
    }

    /// The page of at most `limit` items after `after`.
    pub fn after(limit: u32, after: K) -> Self {
        Page { limit, after: Some(after) }
    }

    /// The limit that applies: [`PAGE_LIMIT_DEFAULT`] for 0, else at most [`PAGE_LIMIT_MAX`].
    pub fn limit(&self) -> usize {
        match self.limit {
            0 => PAGE_LIMIT_DEFAULT as usize,
            n => n.min(PAGE_LIMIT_MAX) as usize,
        }
    }
}

/// One page of an answer: the items, in key order, and the cursor of the next page (`None`:
/// this page is the last).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Paged<T, K> {
    /// The items of this page.
    pub items: Vec<T>,
    /// Where the next page starts (give it as the next [`Page::after`]); `None` on the last.
    pub next: Option<K>,
}

/// A page of services in service id order ([`Projection::find_services_page`]).
pub type ServicePage = Paged<FoundService, Uuid>;
/// A page of nodes in node id order ([`Projection::nodes_page`]).
pub type NodePage = Paged<NodeRecord, NodeId>;

/// Which nodes a node listing returns. The default lists every node the registry holds,
/// whatever its status (as `Query::Nodes` always did); each field narrows it (all given
/// conditions must hold).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFilter {
    /// Only nodes with this name.
    pub name: Option<String>,
    /// Only nodes that announce this capability.
    pub capability: Option<String>,
    /// Only nodes with this status (liveness): `Active` for the nodes answering now,
    /// `Offline` for those an authority committed as offline, `Left` for tombstones.
    pub status: Option<NodeStatus>,
    /// Only nodes trusted at least this much.
    pub min_trust: Option<TrustScore>,
}

impl NodeFilter {
    /// Nodes with this status.
    pub fn status(status: NodeStatus) -> Self {
        NodeFilter { status: Some(status), ..Default::default() }
    }

    /// Whether `n` passes every condition given.
    pub fn admits(&self, n: &NodeRecord) -> bool {
        self.name.as_ref().is_none_or(|name| &n.name == name)
            && self.capability.as_ref().is_none_or(|c| n.capabilities.binary_search_by(|x| x.as_str().cmp(c)).is_ok())
            && self.status.is_none_or(|s| n.status == s)
            && self.min_trust.is_none_or(|min| n.trust >= min)
    }
}

/// Collects up to `limit` admitted items from `candidates` (in key order), looking at most
/// [`PAGE_SCAN_MAX`] of them, and says where the next page starts.
fn collect_page<'a, C: 'a, T, K: Copy>(
    candidates: impl Iterator<Item = &'a C>,
    limit: usize,
    key: impl Fn(&C) -> K,
    admit: impl Fn(&C) -> Option<T>,
) -> Paged<T, K> {
    let mut items = Vec::with_capacity(limit.min(1024));
    let mut last = None;
    let mut candidates = candidates.peekable();
    let mut scanned = 0usize;
    while let Some(c) = candidates.peek() {
        if items.len() == limit {
            break;
        }
        if scanned == PAGE_SCAN_MAX {
            // Stopped at the scan bound, not at the end: the next page starts after the last
            // candidate looked at, whether it was admitted or not.
            return Paged { items, next: last };
        }
        scanned += 1;
        let c = *c;
        last = Some(key(c));
        if let Some(item) = admit(c) {
            items.push(item);
        }
        candidates.next();
    }
    // The page is full: there is a next page only if a candidate is left that the filter
    // admits. Looking ahead for one keeps `next: None` exact on the last page; the look-ahead
    // is bounded like the scan (past the bound there may be more: say so).
    let more = items.len() == limit && {
        let mut budget = PAGE_SCAN_MAX.saturating_sub(scanned).max(1);
        loop {
            match candidates.next() {
                None => break false,
                Some(c) if admit(c).is_some() => break true,
                Some(_) if budget <= 1 => break true,
                Some(_) => budget -= 1,
            }
        }
    };
    let next = if more { last } else { None };
    Paged { items, next }
}

impl Projection {
    /// One page of the services `filter` selects, in service id order, after the cursor
    /// `page.after`: what [`Projection::find_services`] answers, a page at a time. Reads a
    /// range of the narrowest index the filter names (name, then capability, then node, else
    /// every service) from the cursor on.
    pub fn find_services_page(&self, filter: &ServiceFilter, page: &Page<Uuid>) -> ServicePage {
        let key = |r: &std::sync::Arc<ServiceRecord>| r.service.service_id;
        let rest = self.unindexed(filter);
        let admit = |r: &std::sync::Arc<ServiceRecord>| self.admit(r, &rest);
        let indexed =
            self.index_range(filter.name.as_deref(), filter.capability.as_deref(), filter.node.as_ref(), page.after);
        match indexed {
            Some(records) => collect_page(records, page.limit(), key, admit),
            None => {
                let from = page.after.map_or(Bound::Unbounded, Bound::Excluded);
                collect_page(
                    self.state.services.range((from, Bound::Unbounded)).map(|(_, r)| r),
                    page.limit(),
                    key,
                    admit,
                )
            }
        }
    }

    /// One page of the nodes `filter` selects, in node id order, after the cursor
    /// `page.after` (a range of the node registry from the cursor on).
    pub fn nodes_page(&self, filter: &NodeFilter, page: &Page<NodeId>) -> NodePage {
        let from = page.after.map_or(Bound::Unbounded, Bound::Excluded);
        let nodes = self.state.nodes.range((from, Bound::Unbounded)).map(|(_, n)| &**n);
        collect_page(nodes, page.limit(), |n: &NodeRecord| n.node, |n| filter.admits(n).then(|| n.clone()))
    }
}

#[cfg(test)]
#[path = "page_tests.rs"]
mod tests;
