//! The service indexes of a projection (by name, node and capability): lookups, and keeping
//! them in step with the registered services. They are rebuilt from the state, never stored.

use std::collections::BTreeSet;

use uuid::Uuid;

use super::{HashMap, Projection, ServiceRecord};
use crate::core::event::ServiceAnnouncement;
use crate::core::types::NodeId;

impl Projection {
    fn lookup<'a>(&'a self, ids: Option<&'a BTreeSet<Uuid>>) -> impl Iterator<Item = &'a ServiceRecord> + 'a {
        ids.into_iter().flatten().filter_map(move |id| self.state.services.get(id))
    }

    /// Services with this name.
    pub fn services_by_name<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a ServiceRecord> + 'a {
        self.lookup(self.by_name.get(name))
    }

    /// Services offered by this node.
    pub fn services_by_node<'a>(&'a self, node: &NodeId) -> impl Iterator<Item = &'a ServiceRecord> + 'a {
        self.lookup(self.by_node.get(node))
    }

    /// Services that provide this capability.
    pub fn services_by_capability<'a>(&'a self, capability: &str) -> impl Iterator<Item = &'a ServiceRecord> + 'a {
        self.lookup(self.by_capability.get(capability))
    }

    pub(super) fn index_service(&mut self, s: &ServiceAnnouncement) {
        // Most names and capabilities are already indexed: look up by `&str` first and only
        // allocate a key for a new one.
        fn add(m: &mut HashMap<String, BTreeSet<Uuid>>, k: &str, id: Uuid) {
            match m.get_mut(k) {
                Some(set) => {
                    set.insert(id);
                }
                None => {
                    m.insert(k.to_string(), BTreeSet::from([id]));
                }
            }
        }
        add(&mut self.by_name, &s.name, s.service_id);
        self.by_node.entry(s.node).or_default().insert(s.service_id);
        for c in &s.capabilities {
            add(&mut self.by_capability, c, s.service_id);
        }
    }

    pub(super) fn unindex_service(&mut self, s: &ServiceAnnouncement) {
        fn drop_from<K: std::hash::Hash + Eq>(m: &mut HashMap<K, BTreeSet<Uuid>>, k: &K, id: &Uuid) {
            if let Some(set) = m.get_mut(k) {
                set.remove(id);
                if set.is_empty() {
                    m.remove(k);
                }
            }
        }
        drop_from(&mut self.by_name, &s.name, &s.service_id);
        drop_from(&mut self.by_node, &s.node, &s.service_id);
        for c in &s.capabilities {
            drop_from(&mut self.by_capability, c, &s.service_id);
        }
    }
}
