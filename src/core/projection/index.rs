//! The service indexes of a projection (by name, node and capability): lookups, and keeping
//! them in step with the registered services. They are rebuilt from the state, never stored.
//!
//! Each index is one persistent ordered set of `(key, service id)` pairs, so the services of
//! one key are a range of it, a key costs no map of its own, and a snapshot of the projection
//! shares the index with the writer. Names and capabilities are interned: every entry for a
//! name holds the one `Arc<str>` of it (the first entry's). The name index keeps the record
//! itself beside the id, so the hottest lookup (services by name) reads no second map. The
//! node index is keyed by a 4-byte ordinal of the node instead of its 32-byte id (a third of
//! that index's memory).

use std::ops::RangeInclusive;
use std::sync::Arc;

use uuid::Uuid;

use super::{Projection, ServiceRecord};
use crate::core::types::NodeId;

/// `(key, id)` pairs for every id of `key`, as a range bound.
fn ids_of<K: Clone>(key: K) -> RangeInclusive<(K, Uuid)> {
    (key.clone(), Uuid::nil())..=(key, Uuid::max())
}

/// The interned copy of `key` already in `set`'s entries, or a new one.
fn intern<V: Clone>(index: &imbl::OrdMap<(Arc<str>, Uuid), V>, key: &str) -> Arc<str> {
    let probe: Arc<str> = Arc::from(key);
    match index.range(ids_of(probe.clone())).next() {
        Some(((k, _), _)) => k.clone(),
        None => probe,
    }
}

impl Projection {
    /// Services with this name.
    pub fn services_by_name<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a ServiceRecord> + 'a {
        self.by_name.range(ids_of(Arc::<str>::from(name))).map(|(_, r)| &**r)
    }

    /// Services offered by this node.
    pub fn services_by_node<'a>(&'a self, node: &NodeId) -> impl Iterator<Item = &'a ServiceRecord> + 'a {
        self.node_ords
            .get(node)
            .into_iter()
            .flat_map(move |ord| self.by_node.range(ids_of(*ord)))
            .filter_map(move |((_, id), _)| self.service(id))
    }

    /// Services that provide this capability.
    pub fn services_by_capability<'a>(&'a self, capability: &str) -> impl Iterator<Item = &'a ServiceRecord> + 'a {
        self.by_capability.range(ids_of(Arc::<str>::from(capability))).filter_map(move |((_, id), _)| self.service(id))
    }

    /// The services a name, capability or node index holds (the first the arguments name, in
    /// that order; `None` if they name none), from `after` on (exclusive), in id order, as the
    /// shared records an answer hands out: what a query or a page of one reads.
    pub(super) fn index_range<'a>(
        &'a self,
        name: Option<&str>,
        capability: Option<&str>,
        node: Option<&NodeId>,
        after: Option<Uuid>,
    ) -> Option<Box<dyn Iterator<Item = &'a Arc<ServiceRecord>> + 'a>> {
        fn start<K>(k: K, after: Option<Uuid>) -> std::ops::Bound<(K, Uuid)> {
            match after {
                Some(id) => std::ops::Bound::Excluded((k, id)),
                None => std::ops::Bound::Included((k, Uuid::nil())),
            }
        }
        let services = &self.state.services;
        Some(match (name, capability, node) {
            (Some(n), _, _) => {
                let k: Arc<str> = Arc::from(n);
                let end = std::ops::Bound::Included((k.clone(), Uuid::max()));
                Box::new(self.by_name.range((start(k, after), end)).map(|(_, r)| r))
            }
            (None, Some(c), _) => {
                let k: Arc<str> = Arc::from(c);
                let end = std::ops::Bound::Included((k.clone(), Uuid::max()));
                Box::new(
                    self.by_capability.range((start(k, after), end)).filter_map(move |((_, id), _)| services.get(id)),
                )
            }
            (None, None, Some(node)) => match self.node_ords.get(node) {
                None => Box::new(std::iter::empty()),
                Some(ord) => {
                    let end = std::ops::Bound::Included((*ord, Uuid::max()));
                    Box::new(
                        self.by_node.range((start(*ord, after), end)).filter_map(move |((_, id), _)| services.get(id)),
                    )
                }
            },
            (None, None, None) => return None,
        })
    }

    pub(super) fn index_service(&mut self, record: &Arc<ServiceRecord>) {
        let s = &record.service;
        let name = intern(&self.by_name, &s.name);
        self.by_name.insert((name, s.service_id), record.clone());
        let ord = match self.node_ords.get(&s.node) {
            Some(ord) => *ord,
            None => {
                // Never removed, so the count is the next unused ordinal.
                let ord = u32::try_from(self.node_ords.len()).unwrap_or(u32::MAX);
                self.node_ords.insert(s.node, ord);
                ord
            }
        };
        self.by_node.insert((ord, s.service_id), ());
        for c in &s.capabilities {
            let c = intern(&self.by_capability, c);
            self.by_capability.insert((c, s.service_id), ());
        }
    }

    pub(super) fn unindex_service(&mut self, record: &ServiceRecord) {
        let s = &record.service;
        self.by_name.remove(&(Arc::<str>::from(s.name.as_str()), s.service_id));
        if let Some(ord) = self.node_ords.get(&s.node) {
            self.by_node.remove(&(*ord, s.service_id));
        }
        for c in &s.capabilities {
            self.by_capability.remove(&(Arc::<str>::from(c.as_str()), s.service_id));
        }
    }
}
