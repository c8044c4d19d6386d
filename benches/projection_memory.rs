//! Projection memory (issue 24, item 2): builds a registry of `SPORES_SCALE` nodes/services
//! (default `10000/100000`, shaped as `benches/scale.rs` shapes it) and prints the heap the
//! projection holds, per node and per service:
//! - live: every node joined and every service registered by applying its signed event, one
//!   at a time, services in the random order of their ids (what a running node holds);
//! - after a restart: the same state decoded from a checkpoint, indexes rebuilt;
//! - by part, for the restart: the service records, the services map, the nodes, the indexes.
//!
//! `benches/scale.rs` gives the figures for a registry built through the whole write path
//! (Raft, the ledger); this one says where the heap goes, in seconds.
//!
//! Run: `cargo bench --bench projection_memory`.

// tests and benches: a panic is the failure report
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, unreachable_pub, unsafe_code)]

use std::sync::Arc;

use mycnet_spores::core::projection::ProjectionState;
use mycnet_spores::core::types::NetworkIdentityRecord;
use mycnet_spores::store::record::{decode_checkpoint, encode_checkpoint};
use mycnet_spores::{EventBody, NodeKey, Projection, ServiceRecord, SignedEvent, Timestamp};

#[path = "common/heap.rs"]
mod heap;
use heap::{chunk, live as now, node, service};

/// Prints the heap taken since `before`, per `per` items; returns the count now.
fn report(what: &str, before: (usize, usize), per: usize) -> (usize, usize) {
    let after = now();
    println!(
        "{what:<44} {:>7.1} B asked  {:>7.1} B in chunks",
        (after.0 - before.0) as f64 / per as f64,
        (after.1 - before.1) as f64 / per as f64
    );
    after
}

fn main() {
    let (nodes, services) = heap::scale((10_000, 100_000));
    let names = services.min(1_000);
    let keys = heap::keys(nodes);
    // Service ids in a random order, as v4 ids arrive in a live registry.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut rand = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let ids: Vec<uuid::Uuid> = (0..services).map(|_| uuid::Uuid::from_u64_pair(rand(), rand())).collect();
    println!("{nodes} nodes, {services} services");

    // Live: each event applied as a node applies it. Events are signed one at a time inside
    // the count (what the projection keeps of one is all that stays allocated).
    let network = NetworkIdentityRecord {
        network_id: uuid::Uuid::from_u128(1),
        network_name: "memory".into(),
        genesis_timestamp: Timestamp(1_700_000_000_000_000),
    };
    let t0 = now();
    let genesis = SignedEvent::genesis(&keys[0], network, node(0, &keys[0]));
    let fp = genesis.fingerprint;
    let mut live = Projection::new();
    live.append(genesis).expect("genesis");
    let mut t = 1_700_000_000_000_000i64;
    let mut commit = |p: &mut Projection, key: &NodeKey, body: EventBody| {
        t += 1;
        p.append(SignedEvent::sign(key, fp, Timestamp(t), body)).expect("accepted");
    };
    for (i, k) in keys.iter().enumerate().skip(1) {
        commit(&mut live, &keys[0], EventBody::NodeJoined(node(i, k)));
    }
    let t1 = report("live: per node (its record, the nodes map)", t0, nodes);
    for (i, id) in ids.iter().enumerate() {
        let k = &keys[i % nodes];
        commit(&mut live, k, EventBody::ServiceRegistered(service(i, *id, k.node_id(), names)));
    }
    let _ = report("live: per service (record, map, indexes)", t1, services);
    let _ = report("live: whole projection, per service", t0, services);

    // After a restart: the state decoded from a checkpoint, the indexes rebuilt.
    let bytes = encode_checkpoint(live.state());
    let state: ProjectionState = live.state().clone();
    drop(live);
    let t2 = now();
    let restarted = Projection::from_state(decode_checkpoint(&bytes).expect("decodes"));
    let _ = report("restarted: whole projection, per service", t2, services);
    drop(restarted);
    drop(bytes);

    // By part, after a restart: the records alone, then maps of them.
    let t3 = now();
    let records: Vec<Arc<ServiceRecord>> = state.services.values().map(|r| Arc::new(ServiceRecord::clone(r))).collect();
    let vec_bytes = (records.capacity() * 8, chunk(records.capacity() * 8));
    let t4 = report("  service records", (t3.0 + vec_bytes.0, t3.1 + vec_bytes.1), services);
    let services_map = mycnet_spores::core::projection::dense_map(
        records.iter().map(|r| (r.service.service_id, r.clone())).collect::<Vec<_>>(),
    );
    let t5 = report("  services map", t4, services);
    let nodes_map = mycnet_spores::core::projection::dense_map(
        state.nodes.iter().map(|(id, r)| (*id, Arc::new(mycnet_spores::NodeRecord::clone(r)))).collect::<Vec<_>>(),
    );
    let t6 = report("  nodes (records and map), per node", t5, nodes);
    let parts = ProjectionState { services: services_map, nodes: nodes_map, ..Default::default() };
    let projection = Projection::from_state(parts);
    let _ = report("  indexes", t6, services);
    drop(records);
    drop(projection);
}
