//! Scrubbing and repair: damage to stored records after open is found by the scrub at its seq,
//! and repaired only with the chain's own records.

use mycnet_spores::store::record::encode_record;
use mycnet_spores::store::scrub::{repair, scrub_step, RepairError, ScrubCursor, ScrubStep};
use mycnet_spores::{ChainedEvent, Corruption, EventBody, Ledger, SignedEvent, Timestamp};

use crate::fixture::{build_ledger, config, history, HISTORY_LEN};

/// Scrubs a whole pass in pages of `page`; returns the first damage found.
fn scrub_pass(ledger: &Ledger, page: u64) -> Option<(u64, Corruption)> {
    let mut cursor = ScrubCursor::default();
    let mut checked = 0;
    while cursor.passes == 0 {
        match scrub_step(ledger, &mut cursor, page).expect("scrub step") {
            ScrubStep::Clean(n) => checked += n,
            ScrubStep::Damaged { seq, corruption } => return Some((seq, corruption)),
        }
        assert!(checked <= 10 * HISTORY_LEN as u64, "the scrub never finished its pass");
    }
    assert_eq!(checked, HISTORY_LEN as u64, "a pass checks every record once");
    None
}

#[test]
fn the_scrub_finds_damage_after_open_and_repair_takes_only_the_chains_records() {
    let h = history();
    let dir = tempfile::tempdir().expect("tempdir");
    build_ledger(dir.path(), &h.events, config(0), 200);
    let mut ledger = Ledger::open(dir.path(), config(0)).expect("open");
    assert_eq!(scrub_pass(&ledger, 128), None, "an intact ledger scrubs clean");

    // A flipped byte in record 250, after open (bit rot under a running node).
    let original: ChainedEvent = ledger.read_range(250, 250).expect("read").remove(0);
    let mut bytes = encode_record(&original);
    let at = bytes.len() - 10;
    bytes[at] ^= 0x20;
    ledger.damage_record_for_tests(250, &bytes).expect("damage");
    let (seq, _) = scrub_pass(&ledger, 128).expect("the scrub finds it");
    assert_eq!(seq, 250);

    // A peer offering another record (valid hash and signature, but not this chain's) is refused.
    let founder = &h.keys[0];
    let other = SignedEvent::sign(
        founder,
        h.fingerprint,
        Timestamp(original.event.timestamp.0 + 1),
        EventBody::CapabilitiesChanged { node: founder.node_id(), capabilities: vec!["forged".into()] },
    );
    let forged = ChainedEvent::link(250, original.prev_hash, other);
    assert!(matches!(repair(&mut ledger, &[forged]), Err(RepairError::NotTheChain { seq: 250, .. })));
    assert!(scrub_pass(&ledger, 128).is_some(), "nothing was written");

    // The chain's own record repairs it.
    assert_eq!(repair(&mut ledger, std::slice::from_ref(&original)).expect("repair"), 1);
    assert_eq!(scrub_pass(&ledger, 128), None, "repaired");
    drop(ledger);
    let report = crate::fixture::verify(dir.path());
    assert!(report.is_ok(), "{:?}", report.first_error);
}

/// A running node's scrub finds a record damaged under it and repairs it from a peer by
/// itself; status says what it did, and the ledger verifies afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_node_repairs_a_damaged_record_from_its_peers() {
    use std::time::Duration;
    let mut c = crate::cluster::Cluster::form(3, 0x5c).await;
    let leader = c.leader(Duration::from_secs(10)).await.expect("leader");
    for i in 0..20 {
        c.sys(leader).register_service(&format!("svc-{i}"), vec![], vec![], vec![]).await.expect("write");
    }
    c.converged_head(Duration::from_secs(10)).await.expect("converged");
    let victim = (leader + 1) % 3;
    c.sys(victim).damage_record_for_tests(5, b"\x01not a record").expect("damage");
    crate::wait::until(
        "the scrub to repair the record (its status)",
        Duration::from_secs(30),
        || c.sys(victim).status().expect("status").scrub,
        |st| st.repaired >= 1 && st.damage.is_none(),
    )
    .await;
    let dir = c.members[victim].dir.clone();
    c.crash(victim).await;
    let report = crate::fixture::verify(&dir);
    assert!(report.is_ok(), "{:?}", report.first_error);
}
