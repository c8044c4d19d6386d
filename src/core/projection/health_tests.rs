//! The rules and the state of service health (`schema/rules.md`, *Health*): who may flip a
//! service, that only transitions are events, the check a service carries and its bounds,
//! what queries leave out, and that a state without a critical service keeps its old digest.

use uuid::Uuid;

use super::*;
use crate::core::event::{EventBody, NodeAnnouncement, ServiceAnnouncement, SignedEvent};
use crate::core::health::{CheckSpec, CHECK_METADATA_KEY};
use crate::core::keys::NodeKey;
use crate::core::limits;
use crate::core::types::{NetworkFingerprint, NetworkIdentityRecord, NodeRole, Timestamp};

struct Net {
    p: Projection,
    fp: NetworkFingerprint,
    founder: NodeKey,
    owner: NodeKey,
    other: NodeKey,
    t: i64,
}

impl Net {
    fn new() -> Net {
        let [founder, owner, other] = [1u8, 2, 3].map(|i| NodeKey::from_seed([i; 32]));
        let ann = |k: &NodeKey, name: &str, role| NodeAnnouncement {
            node: k.node_id(),
            name: name.into(),
            role,
            addresses: vec![format!("{name}:7400")],
            capabilities: vec![],
        };
        let network = NetworkIdentityRecord {
            network_id: Uuid::from_u128(9),
            network_name: "health".into(),
            genesis_timestamp: Timestamp(1),
        };
        let genesis = SignedEvent::genesis(&founder, network, ann(&founder, "founder", NodeRole::Sclerotium));
        let fp = genesis.fingerprint;
        let mut p = Projection::new();
        p.append(genesis).expect("genesis");
        let mut net = Net { p, fp, t: 1, founder, owner, other };
        for (k, name) in [(net.owner.clone(), "owner"), (net.other.clone(), "other")] {
            let founder = net.founder.clone();
            net.commit(&founder, EventBody::NodeJoined(ann(&k, name, NodeRole::Rhizomorph))).expect("joined");
        }
        net
    }

    fn commit(&mut self, key: &NodeKey, body: EventBody) -> Result<(), Rejection> {
        self.t += 1;
        self.p.append(SignedEvent::sign(key, self.fp, Timestamp(self.t), body)).map(|_| ())
    }

    fn register(&mut self, id: u128, metadata: Vec<(String, String)>) -> Result<(), Rejection> {
        let owner = self.owner.clone();
        let s = ServiceAnnouncement {
            service_id: Uuid::from_u128(id),
            name: "web".into(),
            node: owner.node_id(),
            capabilities: vec![].into(),
            endpoints: vec![].into(),
            metadata: metadata.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
        };
        self.commit(&owner, EventBody::ServiceRegistered(s))
    }
}

fn flip(id: u128, passing: bool) -> EventBody {
    EventBody::ServiceHealthChanged { service_id: Uuid::from_u128(id), passing, reason: "probe".into() }
}

#[test]
fn only_transitions_by_the_owner_or_an_authority_are_events() {
    let mut n = Net::new();
    n.register(1, vec![CheckSpec::tcp("10.0.0.5:80").metadata_entry()]).expect("registered");
    let (owner, other, founder) = (n.owner.clone(), n.other.clone(), n.founder.clone());
    assert_eq!(
        n.commit(&owner, flip(1, true)),
        Err(Rejection::HealthUnchanged { service: Uuid::from_u128(1), passing: true }),
        "a service starts passing"
    );
    assert!(matches!(n.commit(&other, flip(1, false)), Err(Rejection::NotAuthorized { .. })));
    assert_eq!(n.commit(&owner, flip(2, false)), Err(Rejection::UnknownService(Uuid::from_u128(2))));
    n.commit(&owner, flip(1, false)).expect("owner: critical");
    let h = n.p.service_health(&Uuid::from_u128(1)).expect("critical");
    assert_eq!((h.since_seq, h.reason.as_str()), (n.p.head().expect("head").seq, "probe"));
    assert!(matches!(n.commit(&owner, flip(1, false)), Err(Rejection::HealthUnchanged { passing: false, .. })));
    n.commit(&founder, flip(1, true)).expect("an authority may flip it back");
    assert!(n.p.service_health(&Uuid::from_u128(1)).is_none());
}

#[test]
fn critical_services_are_left_out_of_answers_unless_asked_for() {
    let mut n = Net::new();
    n.register(1, vec![]).expect("no check: flipped by hand");
    n.register(2, vec![]).expect("second");
    let owner = n.owner.clone();
    n.commit(&owner, flip(1, false)).expect("critical");
    let found = n.p.find_services(&ServiceFilter::name("web"));
    assert_eq!(found.iter().map(|f| f.record.service.service_id).collect::<Vec<_>>(), vec![Uuid::from_u128(2)]);
    assert!(found[0].is_available() && found[0].critical.is_none());
    let all = n.p.find_services(&ServiceFilter::name("web").include_critical());
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].critical.as_ref().map(|c| c.reason.as_str()), Some("probe"));
    assert!(!all[0].is_available());
    assert!(!n.p.is_available(n.p.service(&Uuid::from_u128(1)).expect("registered")));
    // Deregistered, or its node gone: no health entry is left behind.
    n.commit(&owner, EventBody::ServiceDeregistered { service_id: Uuid::from_u128(1), reason: "gone".into() })
        .expect("deregistered");
    assert!(n.p.state().critical.is_empty());
}

#[test]
fn a_state_without_critical_services_keeps_its_digest() {
    let mut n = Net::new();
    n.register(1, vec![]).expect("registered");
    let before = n.p.state_digest();
    // The encoding without the map is the one every earlier version hashed.
    let mut legacy = Vec::new();
    bcs::serialize_into(&mut legacy, n.p.state()).expect("bcs");
    let mut full = legacy.clone();
    full.push(0); // an empty map, had the field always been encoded
    assert_ne!(legacy, full);
    let owner = n.owner.clone();
    n.commit(&owner, flip(1, false)).expect("critical");
    let critical = n.p.state_digest();
    assert_ne!(critical, before);
    n.commit(&owner, flip(1, true)).expect("passing");
    let mut again = Vec::new();
    bcs::serialize_into(&mut again, n.p.state()).expect("bcs");
    assert_eq!(again.len(), legacy.len(), "back to the encoding without the map");
}

#[test]
fn a_service_check_must_parse_and_a_node_has_a_bounded_number() {
    let mut n = Net::new();
    let bad = vec![(CHECK_METADATA_KEY.to_string(), "tcp h:1 interval=1ms".to_string())];
    assert!(matches!(n.register(1, bad), Err(Rejection::BadCheck(_))));
    let two = vec![CheckSpec::tcp("h:1").metadata_entry(), CheckSpec::ttl(5_000).metadata_entry()];
    assert!(matches!(n.register(1, two), Err(Rejection::BadCheck(_))));
    let max = limits::CHECKED_SERVICES_PER_NODE_MAX;
    for i in 0..max {
        n.register(i as u128 + 10, vec![CheckSpec::ttl(30_000).metadata_entry()]).expect("within the bound");
    }
    assert_eq!(
        n.register(5, vec![CheckSpec::tcp("h:1").metadata_entry()]),
        Err(Rejection::LimitExceeded { what: "checked services of one node".into(), max, got: max + 1 })
    );
    n.register(6, vec![]).expect("a service without a check is not bounded by it");
    // The bound counts the node's checked services (its own index), not all its services.
    let owner = n.owner.node_id();
    assert_eq!(n.p.checked_services_by_node(&owner).count(), max);
    assert_eq!(n.p.services_by_node(&owner).count(), max + 1);
    assert_eq!(n.p.checked_services_by_node(&n.other.node_id()).count(), 0);
    // A checked service gone frees its place; the restarted projection counts the same.
    let key = n.owner.clone();
    n.commit(&key, EventBody::ServiceDeregistered { service_id: Uuid::from_u128(10), reason: "gone".into() })
        .expect("deregistered");
    assert_eq!(n.p.checked_services_by_node(&owner).count(), max - 1);
    let restarted = Projection::from_state(n.p.state().clone());
    let ids = |p: &Projection| p.checked_services_by_node(&owner).map(|r| r.service.service_id).collect::<Vec<_>>();
    assert_eq!(ids(&restarted), ids(&n.p));
    n.register(5, vec![CheckSpec::tcp("h:1").metadata_entry()]).expect("a place again");
    assert_eq!(n.p.checked_services_by_node(&owner).count(), max);
}
