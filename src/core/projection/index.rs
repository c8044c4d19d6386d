//! The service indexes of a projection (by name, node and capability): lookups, and keeping
//! them in step with the registered services. They are rebuilt from the state, never stored.
//!
//! Each index is one persistent ordered set of `(key, service id)` pairs, so the services of
//! one key are a range of it, a key costs no map of its own, and a snapshot of the projection
//! shares the index with the writer. The keys are compact (issue 24, item 2):
//! - a name or capability is keyed by 32 bits of its hash under a key drawn at random for each
//!   projection (so no registrant can aim collisions at a lookup). Two texts may share a hash,
//!   so every lookup keeps only the services that carry the text asked for;
//! - a node is keyed by a 4-byte ordinal (assigned when it first offers a service, never
//!   reused) instead of its 32-byte id.
//!
//! The name index keeps the record itself beside the id, so the hottest lookup (services by
//! name) reads no second map. A fourth index holds only the services that carry a health
//! check, by node: what the rules count against a node's bound and what a node's check runner
//! reads, without going through every service of the node.

use std::hash::BuildHasher;
use std::ops::{Bound, RangeInclusive};
use std::sync::Arc;

use uuid::Uuid;

use super::shared::dense_map;
use super::{Projection, ServiceRecord};
use crate::core::health::CheckSpec;
use crate::core::types::NodeId;

/// `(key, id)` pairs for every id of `key`, as a range bound.
fn ids_of<K: Clone>(key: K) -> RangeInclusive<(K, Uuid)> {
    (key.clone(), Uuid::nil())..=(key, Uuid::max())
}

/// A range of `(key, id)` pairs, as bounds.
type KeyRange<K> = (Bound<(K, Uuid)>, Bound<(K, Uuid)>);

/// The part of an index from `after` on (exclusive), or all of `key`'s range.
fn from<K: Clone>(key: K, after: Option<Uuid>) -> KeyRange<K> {
    let start = match after {
        Some(id) => Bound::Excluded((key.clone(), id)),
        None => Bound::Included((key.clone(), Uuid::nil())),
    };
    (start, Bound::Included((key, Uuid::max())))
}

/// Whether the service carries this capability.
fn offers(record: &ServiceRecord, capability: &str) -> bool {
    record.service.capabilities.iter().any(|c| c == capability)
}

/// The index key of a name or capability: 32 bits of its hash. The capability index's
/// entries take 20 bytes instead of 24; names and capabilities that share a key (about one
/// pair in 2³² among those in use) only cost their lookups a few entries to skip.
pub(super) type TextKey = u32;

/// Hashes a name or capability to its index key, under a key drawn at random when the
/// projection is made (its clones share it).
#[derive(Clone, Debug, Default)]
pub(super) struct TextKeys {
    state: foldhash::fast::RandomState,
    /// Tests: every text gets the same key, so every lookup meets collisions.
    #[cfg(test)]
    pub(super) collide: bool,
}

impl TextKeys {
    fn key(&self, text: &str) -> TextKey {
        #[cfg(test)]
        if self.collide {
            return 0;
        }
        (self.state.hash_one(text) >> 32) as TextKey
    }
}

/// One index entry of each kind for a service: what `index_service` inserts.
struct Entries {
    name: (TextKey, Uuid),
    node: (u32, Uuid),
    capabilities: Vec<(TextKey, Uuid)>,
    /// Whether the service carries a health check (its node's entry goes into `checked`).
    checked: bool,
}

/// Whether a service's metadata carries a health check (well formed or not, as the rules
/// count it).
fn carries_check(record: &ServiceRecord) -> bool {
    CheckSpec::from_metadata(&record.service.metadata).is_some()
}

impl Projection {
    /// The index key of a name or capability.
    fn text_key(&self, text: &str) -> TextKey {
        self.text_keys.key(text)
    }

    /// Services with this name.
    pub fn services_by_name<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a ServiceRecord> + 'a {
        self.by_name.range(ids_of(self.text_key(name))).map(|(_, r)| &**r).filter(move |r| r.service.name == name)
    }

    /// Services offered by this node.
    pub fn services_by_node<'a>(&'a self, node: &NodeId) -> impl Iterator<Item = &'a ServiceRecord> + 'a {
        self.node_services(&self.by_node, node)
    }

    /// Services offered by this node that carry a health check, in id order: at most
    /// [`crate::core::limits::CHECKED_SERVICES_PER_NODE_MAX`], however many services the node
    /// offers.
    pub fn checked_services_by_node<'a>(&'a self, node: &NodeId) -> impl Iterator<Item = &'a ServiceRecord> + 'a {
        self.node_services(&self.checked, node)
    }

    /// The services `index` (keyed by node ordinal and id) lists for this node, in id order.
    fn node_services<'a>(
        &'a self,
        index: &'a imbl::OrdMap<(u32, Uuid), ()>,
        node: &NodeId,
    ) -> impl Iterator<Item = &'a ServiceRecord> + 'a {
        self.node_ords
            .get(node)
            .into_iter()
            .flat_map(move |ord| index.range(ids_of(*ord)))
            .filter_map(move |((_, id), _)| self.service(id))
    }

    /// Services that provide this capability.
    pub fn services_by_capability<'a>(&'a self, capability: &'a str) -> impl Iterator<Item = &'a ServiceRecord> + 'a {
        self.by_capability
            .range(ids_of(self.text_key(capability)))
            .filter_map(move |((_, id), _)| self.service(id))
            .filter(move |r| offers(r, capability))
    }

    /// The services a name, capability or node index holds (the first the arguments name, in
    /// that order; `None` if they name none), from `after` on (exclusive), in id order, as the
    /// shared records an answer hands out: what a query or a page of one reads. Every service
    /// it yields has the name, capability or node asked for.
    pub(super) fn index_range<'a>(
        &'a self,
        name: Option<&'a str>,
        capability: Option<&'a str>,
        node: Option<&NodeId>,
        after: Option<Uuid>,
    ) -> Option<Box<dyn Iterator<Item = &'a Arc<ServiceRecord>> + 'a>> {
        let services = &self.state.services;
        Some(match (name, capability, node) {
            (Some(n), _, _) => Box::new(
                self.by_name.range(from(self.text_key(n), after)).map(|(_, r)| r).filter(move |r| r.service.name == n),
            ),
            (None, Some(c), _) => Box::new(
                self.by_capability
                    .range(from(self.text_key(c), after))
                    .filter_map(move |((_, id), _)| services.get(id))
                    .filter(move |r| offers(r, c)),
            ),
            (None, None, Some(node)) => match self.node_ords.get(node) {
                None => Box::new(std::iter::empty()),
                Some(ord) => {
                    Box::new(self.by_node.range(from(*ord, after)).filter_map(move |((_, id), _)| services.get(id)))
                }
            },
            (None, None, None) => return None,
        })
    }

    /// The node's ordinal, assigned now if it has none.
    fn node_ord(&mut self, node: &NodeId) -> u32 {
        match self.node_ords.get(node) {
            Some(ord) => *ord,
            None => {
                // Never removed, so the count is the next unused ordinal.
                let ord = u32::try_from(self.node_ords.len()).unwrap_or(u32::MAX);
                self.node_ords.insert(*node, ord);
                ord
            }
        }
    }

    fn entries(&mut self, record: &ServiceRecord) -> Entries {
        let s = &record.service;
        Entries {
            name: (self.text_key(&s.name), s.service_id),
            node: (self.node_ord(&s.node), s.service_id),
            capabilities: s.capabilities.iter().map(|c| (self.text_key(c), s.service_id)).collect(),
            checked: carries_check(record),
        }
    }

    pub(super) fn index_service(&mut self, record: &Arc<ServiceRecord>) {
        let e = self.entries(record);
        self.by_name.insert(e.name, record.clone());
        self.by_node.insert(e.node, ());
        for c in e.capabilities {
            self.by_capability.insert(c, ());
        }
        if e.checked {
            self.checked.insert(e.node, ());
        }
    }

    pub(super) fn unindex_service(&mut self, record: &ServiceRecord) {
        let s = &record.service;
        self.by_name.remove(&(self.text_key(&s.name), s.service_id));
        if let Some(ord) = self.node_ords.get(&s.node) {
            self.by_node.remove(&(*ord, s.service_id));
            self.checked.remove(&(*ord, s.service_id));
        }
        for c in &s.capabilities {
            self.by_capability.remove(&(self.text_key(c), s.service_id));
        }
    }

    /// Builds the indexes of every service in the state, each with its leaves filled
    /// ([`dense_map`]): about two thirds of the memory inserting them one by one takes.
    pub(super) fn index_all(&mut self) {
        let services: Vec<Arc<ServiceRecord>> = self.state.services.values().cloned().collect();
        let mut by_name = Vec::with_capacity(services.len());
        let mut by_node = Vec::with_capacity(services.len());
        let mut by_capability = Vec::with_capacity(services.len());
        let mut checked = Vec::new();
        for r in &services {
            let e = self.entries(r);
            by_name.push((e.name, r.clone()));
            by_node.push((e.node, ()));
            if e.checked {
                checked.push((e.node, ()));
            }
            by_capability.extend(e.capabilities.into_iter().map(|k| (k, ())));
        }
        self.by_name = dense_map(by_name);
        self.by_node = dense_map(by_node);
        self.by_capability = dense_map(by_capability);
        self.checked = dense_map(checked);
    }
}
