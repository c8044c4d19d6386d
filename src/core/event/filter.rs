//! Which committed events a watcher wants: by kind, by the node they are about, by service
//! name. Pure: the node layer feeds it the events of a range, in order.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{ChainedEvent, EventBody};
use crate::core::types::NodeId;

/// A watch filter. Every condition given must hold; the default passes every event.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventFilter {
    /// Only these kinds (`node_joined`, `service_registered`, …; [`EventBody::kind`]).
    pub kinds: Vec<String>,
    /// Only events about this node (the node an event names, or the node a registered
    /// service runs on).
    pub node: Option<NodeId>,
    /// Only events about services with this name: their registration, and the health changes
    /// and deregistration of a service the filter saw registered or that is registered under
    /// the name when the watch (or one page of it) starts.
    pub service_name: Option<String>,
}

impl EventFilter {
    /// Whether every condition is the default one (every event passes).
    pub fn is_empty(&self) -> bool {
        self.kinds.is_empty() && self.node.is_none() && self.service_name.is_none()
    }
}

/// An [`EventFilter`] applied to consecutive events: it remembers the ids of services with
/// the watched name, so their deregistrations (which name only the id) match too.
#[derive(Clone, Debug)]
pub struct FilterState {
    filter: EventFilter,
    named: BTreeSet<Uuid>,
    /// Pass every deregistration a service-name filter cannot place (a node answering one
    /// query of a remote watch, whose watcher knows more ids than it: the watcher filters
    /// exactly).
    lenient: bool,
}

impl FilterState {
    /// Starts `filter`, knowing that `registered` are the ids of services currently
    /// registered under its service name.
    pub fn new(filter: EventFilter, registered: impl IntoIterator<Item = Uuid>) -> Self {
        FilterState { filter, named: registered.into_iter().collect(), lenient: false }
    }

    /// A state that passes a superset of what [`FilterState::new`]'s passes: every service
    /// deregistration whose id it does not know passes a service-name filter too.
    pub fn lenient(filter: EventFilter, registered: impl IntoIterator<Item = Uuid>) -> Self {
        FilterState { lenient: true, ..FilterState::new(filter, registered) }
    }

    /// Learns that `ids` are services registered under the watched name.
    pub fn learn(&mut self, ids: impl IntoIterator<Item = Uuid>) {
        self.named.extend(ids);
    }

    /// Whether `event` passes; call it for every event of the range, in order.
    pub fn matches(&mut self, event: &ChainedEvent) -> bool {
        let body = &event.event.body;
        if let (Some(name), EventBody::ServiceRegistered(s)) = (&self.filter.service_name, body) {
            if &s.name == name {
                self.named.insert(s.service_id);
            }
        }
        if !self.filter.kinds.is_empty() && !self.filter.kinds.iter().any(|k| k == body.kind()) {
            return false;
        }
        if let Some(node) = &self.filter.node {
            if body.subject_node().as_ref() != Some(node) {
                return false;
            }
        }
        if self.filter.service_name.is_some() {
            match (body, body.subject_service()) {
                (_, Some(id)) if self.named.contains(&id) => {}
                (EventBody::ServiceDeregistered { .. } | EventBody::ServiceHealthChanged { .. }, Some(_))
                    if self.lenient => {}
                _ => return false,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::event::{ServiceAnnouncement, SignedEvent};
    use crate::core::keys::NodeKey;
    use crate::core::types::{ChainHash, NetworkFingerprint, Timestamp};

    fn chained(seq: u64, body: EventBody) -> ChainedEvent {
        let key = NodeKey::from_seed([3; 32]);
        let event = SignedEvent::sign(&key, NetworkFingerprint::default(), Timestamp(seq as i64), body);
        ChainedEvent::link(seq, ChainHash::default(), event)
    }

    fn service(id: u128, name: &str, node: NodeId) -> EventBody {
        EventBody::ServiceRegistered(ServiceAnnouncement {
            service_id: Uuid::from_u128(id),
            name: name.into(),
            node,
            capabilities: vec![].into(),
            endpoints: vec![].into(),
            metadata: vec![].into(),
        })
    }

    fn gone(id: u128) -> EventBody {
        EventBody::ServiceDeregistered { service_id: Uuid::from_u128(id), reason: String::new() }
    }

    fn passed(state: &mut FilterState, bodies: Vec<EventBody>) -> Vec<u64> {
        let events: Vec<ChainedEvent> = bodies.into_iter().enumerate().map(|(i, b)| chained(i as u64 + 1, b)).collect();
        events.iter().filter(|e| state.matches(e)).map(|e| e.seq).collect()
    }

    #[test]
    fn a_service_name_follows_its_services_to_their_deregistration() {
        let n = NodeId([1; 32]);
        let filter = EventFilter { service_name: Some("web".into()), ..Default::default() };
        // Service 7 was registered as "web" before the watch started.
        let mut state = FilterState::new(filter, [Uuid::from_u128(7)]);
        let seqs = passed(&mut state, vec![service(1, "web", n), service(2, "db", n), gone(2), gone(1), gone(7)]);
        assert_eq!(seqs, vec![1, 4, 5]);
    }

    #[test]
    fn kinds_and_node_narrow_what_passes() {
        let (n, m) = (NodeId([1; 32]), NodeId([2; 32]));
        let filter = EventFilter { kinds: vec!["service_registered".into()], node: Some(m), ..Default::default() };
        let mut state = FilterState::new(filter, []);
        let seqs = passed(
            &mut state,
            vec![service(1, "web", n), service(2, "web", m), EventBody::NodeBackOnline { node: m }, gone(2)],
        );
        assert_eq!(seqs, vec![2]);
        // A lenient state passes every deregistration a name filter cannot place.
        let named = EventFilter { service_name: Some("web".into()), ..Default::default() };
        let mut lenient = FilterState::lenient(named, []);
        assert_eq!(passed(&mut lenient, vec![service(1, "db", n), gone(1), gone(5)]), vec![2, 3]);
        let mut all = FilterState::new(EventFilter::default(), []);
        assert!(EventFilter::default().is_empty());
        assert_eq!(passed(&mut all, vec![gone(1), gone(2)]), vec![1, 2]);
    }
}
