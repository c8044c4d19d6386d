//! Who may connect: the [`AdmissionPolicy`] an endpoint checks right after each handshake, the
//! shared updatable [`Admission`] set, and the gate the server applies per protocol.

use std::sync::{Arc, RwLock};

use crate::core::sync;
use crate::core::types::NodeId;

/// Decides whether a node key may connect to this endpoint.
pub type AdmissionPolicy = Arc<dyn Fn(&NodeId) -> bool + Send + Sync>;

/// A ready [`AdmissionPolicy`]: a shared, updatable set of admitted node keys (or everyone).
///
/// Clones share the set, so the owner can keep one clone and feed admitted registry keys into
/// it while the endpoint checks every new connection against the current contents.
#[derive(Clone, Default)]
pub struct Admission {
    inner: Arc<RwLock<AdmissionSet>>,
}

#[derive(Default)]
struct AdmissionSet {
    everyone: bool,
    keys: std::collections::HashSet<NodeId>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = self.read();
        f.debug_struct("Admission").field("everyone", &g.everyone).field("keys", &g.keys.len()).finish()
    }
}

impl Admission {
    /// Admits every key (tests, or a network that authorizes at a higher layer).
    pub fn allow_all() -> Self {
        let a = Admission::default();
        a.write().everyone = true;
        a
    }

    /// Admits exactly `keys` (plus any added later).
    pub fn only(keys: impl IntoIterator<Item = NodeId>) -> Self {
        let a = Admission::default();
        a.write().keys.extend(keys);
        a
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, AdmissionSet> {
        sync::read(&self.inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, AdmissionSet> {
        sync::write(&self.inner)
    }

    /// Admits `key`.
    pub fn allow(&self, key: NodeId) {
        self.write().keys.insert(key);
    }

    /// Stops admitting `key`: new connections are refused, and an established one is closed
    /// at its next request.
    pub fn revoke(&self, key: &NodeId) {
        self.write().keys.remove(key);
    }

    /// Replaces the admitted set with `keys`.
    pub fn replace(&self, keys: impl IntoIterator<Item = NodeId>) {
        let mut g = self.write();
        g.keys = keys.into_iter().collect();
    }

    /// Whether `key` may connect now.
    pub fn is_admitted(&self, key: &NodeId) -> bool {
        let g = self.read();
        g.everyone || g.keys.contains(key)
    }

    /// This set as a policy function.
    pub fn policy(&self) -> AdmissionPolicy {
        let a = self.clone();
        Arc::new(move |k: &NodeId| a.is_admitted(k))
    }
}

impl From<Admission> for AdmissionPolicy {
    fn from(a: Admission) -> Self {
        a.policy()
    }
}

/// Who may read through the admin protocol (`spores-admin/1`: status, queries, watches).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AdminReads {
    /// Any key (a throw-away one is fine): the default for a discovery store, whose registry is
    /// meant to be read.
    #[default]
    Open,
    /// Only keys the node admits (the registry's members and its bootstrap peers).
    Admitted,
    /// Only these keys (and the node itself).
    Keys(Vec<NodeId>),
}

impl AdminReads {
    /// Whether `key` may read, under `gate`'s admission.
    pub(super) fn allows(&self, gate: &Gate, key: &NodeId) -> bool {
        match self {
            AdminReads::Open => true,
            AdminReads::Admitted => gate.admits(key),
            AdminReads::Keys(keys) => *key == gate.me || keys.contains(key),
        }
    }
}

/// Who may use the Raft protocol on this endpoint: this node itself and admitted keys.
#[derive(Clone)]
pub(super) struct Gate {
    pub(super) me: NodeId,
    pub(super) admission: AdmissionPolicy,
}

impl Gate {
    pub(super) fn admits(&self, key: &NodeId) -> bool {
        *key == self.me || (self.admission)(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_sets_are_shared_and_updatable() {
        let a = Admission::only([NodeId([1; 32])]);
        let p = a.policy();
        assert!(p(&NodeId([1; 32])));
        assert!(!p(&NodeId([2; 32])));
        a.allow(NodeId([2; 32]));
        assert!(p(&NodeId([2; 32])));
        a.revoke(&NodeId([1; 32]));
        assert!(!p(&NodeId([1; 32])));
        assert!(Admission::allow_all().is_admitted(&NodeId([9; 32])));
        let gate = Gate { me: NodeId([7; 32]), admission: Admission::only([NodeId([1; 32])]).policy() };
        let (me, admitted, stranger) = (NodeId([7; 32]), NodeId([1; 32]), NodeId([9; 32]));
        assert!(AdminReads::Open.allows(&gate, &stranger));
        assert!(AdminReads::Admitted.allows(&gate, &admitted) && !AdminReads::Admitted.allows(&gate, &stranger));
        let list = AdminReads::Keys(vec![stranger]);
        assert!(list.allows(&gate, &stranger) && list.allows(&gate, &me) && !list.allows(&gate, &admitted));
    }
}
