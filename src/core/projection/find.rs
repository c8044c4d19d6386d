//! Discovery queries with the liveness and trust of each service's node: what a user asks a
//! discovery store ("the `object-store` instances I can use now"), answered from one
//! projection.
//!
//! By default an answer lists only services whose node is [`NodeStatus::Active`]: the
//! services of a node the leader committed as offline stay registered (it may come back), but
//! offer nothing a caller can reach now ([`ServiceFilter::include_unavailable`] lists them
//! too, each with its node's status). A node that leaves takes its services with it. A
//! service whose health check fails (critical, `schema/rules.md`, *Health*) is left out too
//! unless [`ServiceFilter::include_critical`] asks for it. A minimum trust leaves out services
//! of nodes trusted less (`schema/rules.md`, *Trust*).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{NodeStatus, Projection, ServiceHealth, ServiceRecord};
use crate::core::types::{NodeId, TrustScore};

/// Which services a discovery query returns. The default lists every passing service of an
/// active node; each field narrows it (all given conditions must hold).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceFilter {
    /// Only services with this name.
    pub name: Option<String>,
    /// Only services that provide this capability.
    pub capability: Option<String>,
    /// Only services offered by this node.
    pub node: Option<NodeId>,
    /// Also list services of nodes that are offline or left (each answer says which).
    pub include_unavailable: bool,
    /// Also list services whose health check fails (each answer says so).
    pub include_critical: bool,
    /// Only services of nodes trusted at least this much.
    pub min_trust: Option<TrustScore>,
}

impl ServiceFilter {
    /// Services named `name`.
    pub fn name(name: impl Into<String>) -> Self {
        ServiceFilter { name: Some(name.into()), ..Default::default() }
    }
    /// Services that provide `capability`.
    pub fn capability(capability: impl Into<String>) -> Self {
        ServiceFilter { capability: Some(capability.into()), ..Default::default() }
    }
    /// Narrowed to nodes trusted at least `min`.
    pub fn min_trust(mut self, min: TrustScore) -> Self {
        self.min_trust = Some(min);
        self
    }
    /// Also listing services of nodes that are offline or left.
    pub fn include_unavailable(mut self) -> Self {
        self.include_unavailable = true;
        self
    }
    /// Also listing services whose health check fails.
    pub fn include_critical(mut self) -> Self {
        self.include_critical = true;
        self
    }
}

/// One service in a discovery answer, with what the registry says of its node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FoundService {
    /// The service as registered (shared with the projection it was read from: an answer
    /// copies no record).
    pub record: Arc<ServiceRecord>,
    /// Its node's status (`None`: the node is not in the registry, which the rules do not let
    /// happen for a registered service; kept rather than dropped so nothing is hidden).
    pub node_status: Option<NodeStatus>,
    /// Its node's trust score.
    pub node_trust: TrustScore,
    /// Why it is critical, and since when; `None` while it passes.
    pub critical: Option<ServiceHealth>,
}

impl FoundService {
    /// Whether a caller can use it now: its node is active and it passes its health check.
    pub fn is_available(&self) -> bool {
        self.node_status == Some(NodeStatus::Active) && self.critical.is_none()
    }
}

impl Projection {
    /// The services `filter` selects, in service id order, each with its node's status and
    /// trust. Starts from the narrowest index the filter names (name, then capability, then
    /// node), so a named query costs what the plain lookup costs plus one node lookup per
    /// service.
    pub fn find_services(&self, filter: &ServiceFilter) -> Vec<FoundService> {
        let rest = self.unindexed(filter);
        self.candidates(filter).filter_map(|record| self.admit(record, &rest)).collect()
    }

    /// The records [`Projection::find_services`] answers, without what it says of each
    /// service's node: shared, nothing copied (what `services_by_name` hands out).
    pub fn find_records(&self, filter: &ServiceFilter) -> Vec<Arc<ServiceRecord>> {
        let rest = self.unindexed(filter);
        self.candidates(filter).filter(|record| self.verdict(record, &rest).is_some()).cloned().collect()
    }

    /// `filter` without the condition [`Projection::candidates`] (and a page's `index_range`,
    /// which picks the same index) reads an index for: every candidate meets it already, and
    /// comparing it again reads each record's strings.
    pub(super) fn unindexed(&self, filter: &ServiceFilter) -> ServiceFilter {
        let mut rest = filter.clone();
        if rest.name.take().is_none() && rest.capability.take().is_none() {
            rest.node = None;
        }
        rest
    }

    /// The services of the narrowest index the filter names (name, then capability, then
    /// node), or every service.
    fn candidates<'a>(&'a self, filter: &'a ServiceFilter) -> Box<dyn Iterator<Item = &'a Arc<ServiceRecord>> + 'a> {
        self.index_range(filter.name.as_deref(), filter.capability.as_deref(), filter.node.as_ref(), None)
            .unwrap_or_else(|| Box::new(self.state.services.values()))
    }

    pub(super) fn admit(&self, record: &Arc<ServiceRecord>, filter: &ServiceFilter) -> Option<FoundService> {
        let (node_status, node_trust, critical) = self.verdict(record, filter)?;
        Some(FoundService {
            record: record.clone(),
            node_status,
            node_trust,
            critical: critical.map(|c| (**c).clone()),
        })
    }

    /// Whether `filter` admits `record`, and if so its node's status and trust and its health.
    #[allow(clippy::type_complexity)]
    fn verdict(
        &self,
        record: &ServiceRecord,
        filter: &ServiceFilter,
    ) -> Option<(Option<NodeStatus>, TrustScore, Option<&Arc<ServiceHealth>>)> {
        let s = &record.service;
        if filter.name.as_ref().is_some_and(|n| &s.name != n)
            || filter.capability.as_ref().is_some_and(|c| !s.capabilities.iter().any(|x| x == c))
            || filter.node.is_some_and(|n| s.node != n)
        {
            return None;
        }
        let node = self.node(&s.node);
        let node_status = node.map(|n| n.status);
        let node_trust = node.map_or(TrustScore(0), |n| n.trust);
        if !filter.include_unavailable && node_status != Some(NodeStatus::Active) {
            return None;
        }
        if filter.min_trust.is_some_and(|min| node_trust < min) {
            return None;
        }
        let critical = self.state.critical.get(&s.service_id);
        if !filter.include_critical && critical.is_some() {
            return None;
        }
        Some((node_status, node_trust, critical))
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::core::event::{EventBody, NodeAnnouncement, ServiceAnnouncement, SignedEvent};
    use crate::core::keys::NodeKey;
    use crate::core::types::{Endpoint, NetworkIdentityRecord, NodeRole, Timestamp};

    fn announce(key: &NodeKey, name: &str, role: NodeRole) -> NodeAnnouncement {
        NodeAnnouncement {
            node: key.node_id(),
            name: name.into(),
            role,
            addresses: vec![format!("{name}:7400")],
            capabilities: vec![],
        }
    }

    /// A founder (authority) and three more nodes, each offering one `object-store` (with the
    /// `storage` capability) and one `cache`; then `offline` went offline, `gone` left and
    /// `doubted` has trust 100.
    fn registry() -> (Projection, [NodeId; 4]) {
        let keys: Vec<NodeKey> = (1..=4u8).map(|i| NodeKey::from_seed([i; 32])).collect();
        let network = NetworkIdentityRecord {
            network_id: Uuid::from_u128(7),
            network_name: "find".into(),
            genesis_timestamp: Timestamp(1),
        };
        let genesis = SignedEvent::genesis(&keys[0], network, announce(&keys[0], "founder", NodeRole::Sclerotium));
        let fp = genesis.fingerprint;
        let mut p = Projection::new();
        p.append(genesis).expect("genesis");
        let mut t = 1;
        let mut commit = |p: &mut Projection, key: &NodeKey, body: EventBody| {
            t += 1;
            p.append(SignedEvent::sign(key, fp, Timestamp(t), body)).expect("accepted");
        };
        for (i, name) in ["offline", "gone", "doubted"].iter().enumerate() {
            commit(&mut p, &keys[0], EventBody::NodeJoined(announce(&keys[i + 1], name, NodeRole::Rhizomorph)));
        }
        for (i, key) in keys.iter().enumerate() {
            for (j, (name, caps)) in
                [("object-store", vec!["storage".to_string()]), ("cache", vec![])].iter().enumerate()
            {
                let service = ServiceAnnouncement {
                    service_id: Uuid::from_u128((i * 10 + j) as u128 + 1),
                    name: (*name).into(),
                    node: key.node_id(),
                    capabilities: caps.iter().map(|c: &String| c.as_str().into()).collect(),
                    endpoints: vec![Endpoint { protocol: "tcp".into(), address: "h:1".into() }].into(),
                    metadata: vec![].into(),
                };
                commit(&mut p, key, EventBody::ServiceRegistered(service));
            }
        }
        let ids = [keys[0].node_id(), keys[1].node_id(), keys[2].node_id(), keys[3].node_id()];
        commit(&mut p, &keys[0], EventBody::NodeWentOffline { node: ids[1], last_seen: Timestamp(2) });
        commit(&mut p, &keys[2], EventBody::NodeLeft { node: ids[2], reason: "done".into() });
        commit(
            &mut p,
            &keys[0],
            EventBody::TrustScoreChanged { node: ids[3], score: TrustScore(100), reason: "flaky".into() },
        );
        (p, ids)
    }

    fn nodes(found: &[FoundService]) -> Vec<NodeId> {
        found.iter().map(|f| f.record.service.node).collect()
    }

    #[test]
    fn services_of_offline_or_left_nodes_are_left_out_unless_asked_for() {
        let (p, [founder, offline, gone, doubted]) = registry();
        let live = p.find_services(&ServiceFilter::name("object-store"));
        let mut want = vec![founder, doubted];
        want.sort_by_key(|n| p.services_by_node(n).next().map(|s| s.service.service_id));
        assert_eq!(nodes(&live), want);
        assert!(live.iter().all(|f| f.node_status == Some(NodeStatus::Active)));
        // A node that leaves takes its services with it (the rules deregister them); an
        // offline node's stay registered, and the plain lookup still lists them.
        assert_eq!(p.services_by_name("object-store").count(), 3);
        let all = p.find_services(&ServiceFilter::name("object-store").include_unavailable());
        let status = |n: NodeId| all.iter().find(|f| f.record.service.node == n).and_then(|f| f.node_status);
        assert_eq!(all.len(), 3);
        assert_eq!(status(offline), Some(NodeStatus::Offline));
        assert_eq!(status(gone), None, "left with its services");
    }

    #[test]
    fn a_minimum_trust_leaves_out_nodes_trusted_less() {
        let (p, [founder, _, _, doubted]) = registry();
        let trusted = p.find_services(&ServiceFilter::capability("storage").min_trust(TrustScore(101)));
        assert_eq!(nodes(&trusted), vec![founder]);
        assert_eq!(trusted[0].node_trust, TrustScore::MAX, "the founder's trust");
        let any = p.find_services(&ServiceFilter::capability("storage").min_trust(TrustScore(100)));
        assert!(nodes(&any).contains(&doubted), "trust 100 meets a minimum of 100");
    }

    #[test]
    fn every_condition_given_must_hold() {
        let (p, [founder, ..]) = registry();
        let f = ServiceFilter { name: Some("cache".into()), capability: Some("storage".into()), ..Default::default() };
        assert!(p.find_services(&f).is_empty(), "no cache provides storage");
        let mine = ServiceFilter { node: Some(founder), ..Default::default() };
        assert_eq!(p.find_services(&mine).len(), 2);
        let unknown = ServiceFilter::name("nothing-by-this-name");
        assert!(p.find_services(&unknown).is_empty());
        assert_eq!(p.find_services(&ServiceFilter::default()).len(), 4, "two services on each of two active nodes");
    }
}
