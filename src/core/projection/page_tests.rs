//! Unit tests of paged answers: every item once across the pages of a walk, the limit bounding
//! every page, filters composing with paging, `next: None` exactly on the last page.

use uuid::Uuid;

use super::*;
use crate::core::compact::List;
use crate::core::event::{EventBody, NodeAnnouncement, ServiceAnnouncement, SignedEvent};
use crate::core::keys::NodeKey;
use crate::core::types::{Endpoint, NetworkIdentityRecord, NodeRole, Timestamp};

/// A founder and `nodes - 1` more nodes (the last one offline, the one before it trusted
/// 100), each offering `per_node` services named `svc-{i % 3}`, every other one with the
/// `storage` capability.
struct Registry {
    p: Projection,
    keys: Vec<NodeKey>,
    fp: crate::core::types::NetworkFingerprint,
    t: i64,
}

impl Registry {
    fn new(nodes: u8, per_node: u32) -> Registry {
        Registry::build(Projection::new(), nodes, per_node)
    }

    /// As `new`, with every name and capability given the same index key.
    fn colliding(nodes: u8, per_node: u32) -> Registry {
        let mut p = Projection::new();
        p.text_keys.collide = true;
        Registry::build(p, nodes, per_node)
    }

    fn build(mut p: Projection, nodes: u8, per_node: u32) -> Registry {
        let keys: Vec<NodeKey> = (1..=nodes).map(|i| NodeKey::from_seed([i; 32])).collect();
        let announce = |k: &NodeKey, i: usize| NodeAnnouncement {
            node: k.node_id(),
            name: format!("n{i}"),
            role: if i == 0 { NodeRole::Sclerotium } else { NodeRole::Rhizomorph },
            addresses: vec![format!("n{i}:7400")],
            capabilities: if i.is_multiple_of(2) { vec!["even".into()] } else { vec![] },
        };
        let network = NetworkIdentityRecord {
            network_id: Uuid::from_u128(9),
            network_name: "page".into(),
            genesis_timestamp: Timestamp(1),
        };
        let genesis = SignedEvent::genesis(&keys[0], network, announce(&keys[0], 0));
        let fp = genesis.fingerprint;
        p.append(genesis).expect("genesis");
        let mut r = Registry { p, keys, fp, t: 1 };
        for i in 1..r.keys.len() {
            let body = EventBody::NodeJoined(announce(&r.keys[i], i));
            r.commit(0, body);
        }
        let mut n = 0u128;
        for i in 0..r.keys.len() {
            for _ in 0..per_node {
                n += 1;
                // Ids spread over the key space, so index order and registration order differ.
                r.register(i, Uuid::from_u128(n.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)));
            }
        }
        let last = r.keys.len() - 1;
        let (offline, doubted) = (r.keys[last].node_id(), r.keys[last - 1].node_id());
        r.commit(0, EventBody::NodeWentOffline { node: offline, last_seen: Timestamp(2) });
        r.commit(0, EventBody::TrustScoreChanged { node: doubted, score: TrustScore(100), reason: "flaky".into() });
        r
    }

    fn commit(&mut self, author: usize, body: EventBody) {
        self.t += 1;
        let ev = SignedEvent::sign(&self.keys[author], self.fp, Timestamp(self.t), body);
        self.p.append(ev).expect("accepted");
    }

    fn register(&mut self, node: usize, id: Uuid) {
        let k = id.as_u128();
        let service = ServiceAnnouncement {
            service_id: id,
            name: format!("svc-{}", k % 3).into(),
            node: self.keys[node].node_id(),
            capabilities: if k.is_multiple_of(2) { vec!["storage".into()].into() } else { List::new() },
            endpoints: vec![Endpoint { protocol: "tcp".into(), address: "h:1".into() }].into(),
            metadata: vec![].into(),
        };
        self.commit(node, EventBody::ServiceRegistered(service));
    }

    fn deregister(&mut self, id: Uuid) {
        let node = self.p.service(&id).expect("registered").service.node;
        let author = self.keys.iter().position(|k| k.node_id() == node).expect("a key");
        self.commit(author, EventBody::ServiceDeregistered { service_id: id, reason: "gone".into() });
    }
}

fn ids(found: &[FoundService]) -> Vec<Uuid> {
    found.iter().map(|f| f.record.service.service_id).collect()
}

/// Walks every page of `filter` with `limit`, checking each page's bound; the items in order.
fn walk(p: &Projection, filter: &ServiceFilter, limit: u32) -> Vec<Uuid> {
    let mut out = Vec::new();
    let mut page = Page::first(limit);
    for _ in 0..10_000 {
        let got = p.find_services_page(filter, &page);
        assert!(got.items.len() <= page.limit(), "a page holds at most its limit");
        out.extend(ids(&got.items));
        match got.next {
            Some(next) => page = Page::after(limit, next),
            None => return out,
        }
    }
    panic!("the walk did not end");
}

#[test]
fn a_walk_returns_what_find_services_returns_once_for_every_filter_and_limit() {
    let r = Registry::new(5, 40);
    let p = &r.p;
    let filters = [
        ServiceFilter::default(),
        ServiceFilter::name("svc-1"),
        ServiceFilter::capability("storage"),
        ServiceFilter { node: Some(r.keys[1].node_id()), ..Default::default() },
        ServiceFilter::name("svc-2").include_unavailable(),
        ServiceFilter::capability("storage").min_trust(TrustScore(101)),
        ServiceFilter { name: Some("svc-0".into()), capability: Some("storage".into()), ..Default::default() },
        ServiceFilter::name("nothing"),
    ];
    for filter in &filters {
        let all = ids(&p.find_services(filter));
        for limit in [1, 2, 7, 1000] {
            assert_eq!(walk(p, filter, limit), all, "{filter:?} by {limit}");
        }
    }
}

/// Names and capabilities are indexed by a hash: when every text hashes alike, every lookup,
/// query and page still answers exactly the services that carry the text asked for.
#[test]
fn index_keys_that_collide_change_no_answer() {
    let (mut r, mut c) = (Registry::new(4, 30), Registry::colliding(4, 30));
    let named_before = r.p.services_by_name("svc-1").count();
    let gone: Vec<Uuid> = r.p.services_by_name("svc-1").map(|s| s.service.service_id).take(5).collect();
    for id in gone {
        r.deregister(id);
        c.deregister(id);
    }
    assert_eq!(r.p, c.p);
    let by = |it: &mut dyn Iterator<Item = &ServiceRecord>| it.map(|s| s.service.service_id).collect::<Vec<_>>();
    for text in ["svc-0", "svc-1", "svc-2", "storage", "even", "nothing"] {
        let named = by(&mut r.p.services_by_name(text));
        assert_eq!(by(&mut c.p.services_by_name(text)), named, "by name {text}");
        assert!(named.iter().all(|id| r.p.service(id).is_some_and(|s| s.service.name == text)));
        let offering = by(&mut r.p.services_by_capability(text));
        assert_eq!(by(&mut c.p.services_by_capability(text)), offering, "by capability {text}");
        for filter in [
            ServiceFilter::name(text),
            ServiceFilter::capability(text),
            ServiceFilter { name: Some("svc-0".into()), capability: Some(text.into()), ..Default::default() },
        ] {
            let all = ids(&r.p.find_services(&filter));
            assert_eq!(ids(&c.p.find_services(&filter)), all, "{filter:?}");
            assert_eq!(walk(&c.p, &filter, 3), all, "{filter:?} by pages");
        }
    }
    assert_eq!(by(&mut c.p.services_by_name("svc-1")).len(), named_before - 5, "5 of svc-1 deregistered");
}

#[test]
fn next_is_none_exactly_on_the_last_page() {
    let r = Registry::new(3, 10);
    let all = r.p.find_services(&ServiceFilter::default());
    assert_eq!(all.len(), 20, "the offline node's 10 are left out");
    let exact = r.p.find_services_page(&ServiceFilter::default(), &Page::first(20));
    assert_eq!((exact.items.len(), exact.next), (20, None), "a full last page says it is the last");
    let short = r.p.find_services_page(&ServiceFilter::default(), &Page::first(19));
    assert_eq!(short.next, Some(all[18].record.service.service_id), "the cursor is the last key returned");
    // The offline node's services sort after the last active one or not: either way a page
    // that ends with the last admitted service has no next, whatever follows it unadmitted.
    let last = r.p.find_services_page(&ServiceFilter::default(), &Page::after(5, all[18].record.service.service_id));
    assert_eq!((ids(&last.items), last.next), (vec![all[19].record.service.service_id], None));
}

#[test]
fn a_walk_under_concurrent_writes_returns_every_lasting_service_once() {
    let mut r = Registry::new(3, 30);
    let filter = ServiceFilter::default().include_unavailable();
    let lasting: Vec<Uuid> = ids(&r.p.find_services(&filter));
    let mut seen = Vec::new();
    let mut page = Page::first(7);
    let mut added = Vec::new();
    let mut n = 1_000_000u128;
    loop {
        let got = r.p.find_services_page(&filter, &page);
        seen.extend(ids(&got.items));
        // Between pages: one new service (before and after the cursor alike), and one of the
        // new ones removed again.
        n += 1;
        let id = Uuid::from_u128(n.wrapping_mul(0x2545_f491_4f6c_dd1d_9e37_79b9_7f4a_7c15));
        r.register(1, id);
        added.push(id);
        if added.len().is_multiple_of(3) {
            let gone = added.remove(0);
            r.deregister(gone);
        }
        match got.next {
            Some(next) => page = Page::after(7, next),
            None => break,
        }
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "nothing returned twice");
    assert!(lasting.iter().all(|id| seen.contains(id)), "every service present for the whole walk");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in service id order");
}

#[test]
fn the_limit_defaults_and_is_clipped() {
    assert_eq!(Page::<Uuid>::first(0).limit(), PAGE_LIMIT_DEFAULT as usize);
    assert_eq!(Page::<Uuid>::first(u32::MAX).limit(), PAGE_LIMIT_MAX as usize);
    assert_eq!(Page::<Uuid>::first(3).limit(), 3);
}

#[test]
fn node_filters_compose_with_paging() {
    let r = Registry::new(6, 0);
    let p = &r.p;
    let walk_nodes = |filter: &NodeFilter, limit: u32| {
        let mut out = Vec::new();
        let mut page = Page::first(limit);
        loop {
            let got = p.nodes_page(filter, &page);
            assert!(got.items.len() <= page.limit());
            out.extend(got.items.iter().map(|n| n.node));
            match got.next {
                Some(next) => page = Page::after(limit, next),
                None => return out,
            }
        }
    };
    let every: Vec<NodeId> = p.nodes().map(|n| n.node).collect();
    assert_eq!(walk_nodes(&NodeFilter::default(), 2), every, "every node, in id order");
    let offline: Vec<NodeId> = p.offline_nodes().map(|n| n.node).collect();
    assert_eq!(walk_nodes(&NodeFilter::status(NodeStatus::Offline), 1), offline);
    let even_active = NodeFilter { capability: Some("even".into()), ..NodeFilter::status(NodeStatus::Active) };
    let want: Vec<NodeId> = p
        .nodes()
        .filter(|n| n.status == NodeStatus::Active && n.capabilities.iter().any(|c| c == "even"))
        .map(|n| n.node)
        .collect();
    assert_eq!(want.len(), 3, "n0, n2, n4 (n5 is the offline one)");
    assert_eq!(walk_nodes(&even_active, 1), want);
    let trusted = NodeFilter { min_trust: Some(TrustScore(101)), ..Default::default() };
    assert_eq!(walk_nodes(&trusted, 4).len(), 5, "all but the doubted node");
    let named = NodeFilter { name: Some("n3".into()), ..Default::default() };
    assert_eq!(walk_nodes(&named, 1), vec![r.keys[3].node_id()]);
}
