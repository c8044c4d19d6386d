//! Who may reach a node whose QUIC transport the library runs itself (a builder given an
//! address and no network): the members of its registry that have not left, plus the peers
//! it was told of — bootstrap keys, the node it joins through and that node's Raft members.
//!
//! The set the endpoint checks is a cache ([`Admission`]). A key it does not hold is looked up
//! in the registry at once, so a node admitted a moment ago can connect before the next
//! refresh; the node's upkeep ([`super::upkeep`]) replaces the cache with the registry's
//! members every tick, which is how a node that left loses its connections.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use crate::core::projection::NodeStatus;
use crate::core::types::NodeId;
use crate::net::quic::{Admission, AdmissionPolicy};
use crate::store::ledger::{LedgerLock, SharedLedger};

/// The registry-fed admission of one node. Clones share the sets.
#[derive(Clone)]
pub(crate) struct RegistryAdmission {
    /// What the endpoint checks first: the registry's members at the last refresh, and the
    /// extra keys.
    cache: Admission,
    /// Keys admitted whatever the registry says (bootstrap peers, the node joined through).
    extra: Arc<Mutex<BTreeSet<NodeId>>>,
    ledger: SharedLedger,
}

impl RegistryAdmission {
    /// For the node whose registry is in `ledger`, admitting `extra` keys too.
    pub(crate) fn new(ledger: SharedLedger, extra: impl IntoIterator<Item = NodeId>) -> Self {
        let a = RegistryAdmission {
            cache: Admission::default(),
            extra: Arc::new(Mutex::new(extra.into_iter().collect())),
            ledger,
        };
        a.refresh();
        a
    }

    /// The policy the QUIC endpoint checks every connection and request against.
    pub(crate) fn policy(&self) -> AdmissionPolicy {
        let me = self.clone();
        Arc::new(move |key: &NodeId| me.admits(key))
    }

    fn admits(&self, key: &NodeId) -> bool {
        if self.cache.is_admitted(key) {
            return true;
        }
        // Admitted since the last refresh? A miss is rare (a new member, or a key that is no
        // member at all), so reading the registry here costs little.
        let member = self.ledger.read_ledger().is_ok_and(|l| is_member(l.projection(), key));
        if member {
            self.cache.allow(*key);
        }
        member
    }

    /// Admits `keys` from now on, whatever the registry says.
    pub(crate) fn allow(&self, keys: impl IntoIterator<Item = NodeId>) {
        let keys: Vec<NodeId> = keys.into_iter().collect();
        crate::core::sync::lock(&self.extra).extend(keys.iter().copied());
        for k in keys {
            self.cache.allow(k);
        }
    }

    /// Replaces the cache with the registry's members and the extra keys: a node that left is
    /// refused from now on, even on a connection it holds.
    pub(crate) fn refresh(&self) {
        let members: Vec<NodeId> = match self.ledger.read_ledger() {
            Ok(l) => l.projection().nodes().filter(|n| n.status != NodeStatus::Left).map(|n| n.node).collect(),
            // A poisoned ledger stops the node anyway; keep admitting whom it admitted.
            Err(_) => return,
        };
        let extra = crate::core::sync::lock(&self.extra).clone();
        self.cache.replace(members.into_iter().chain(extra));
    }
}

fn is_member(p: &crate::core::projection::Projection, key: &NodeId) -> bool {
    p.node(key).is_some_and(|n| n.status != NodeStatus::Left)
}
