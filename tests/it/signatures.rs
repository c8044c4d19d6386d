//! One signature validity rule everywhere (`schema/encoding.md`, *Signature validity*):
//! a signature's verdict never depends on which other signatures share its batch, and the live
//! apply, replay, `verify`, gossip ranges and seeds all reach the same verdict.
//!
//! The edge cases are signatures an admitted author crafts with their own key
//! ([`super::crafted`]); their verdicts are pinned in `schema/vectors/signatures.json`
//! (`SPORES_REGENERATE_GOLDEN=1 cargo test --test it signatures -- --ignored` rewrites it).

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use mycnet_spores::core::keys::{verify_many, PublicKey, VerifierCache};
use mycnet_spores::core::types::SignatureBytes;
use mycnet_spores::seed::{self, VerifyPolicy};
use mycnet_spores::{EventBody, Ledger, NodeId, NodeKey, SignedEvent, Timestamp};
use proptest::prelude::*;
use serde_json::{json, Value};

use super::cluster::Cluster;
use super::crafted;
use super::fixture::{self, history};

/// Every batch size the code uses (apply pre-verification 128, replay/gossip/seed parts 512),
/// their neighbours, and a signature alone.
const BATCH_SIZES: [usize; 10] = [1, 2, 3, 63, 64, 127, 128, 129, 511, 512];

fn vectors_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schema").join("vectors").join("signatures.json")
}

/// One edge case: author, message, signature and the verdict the rule gives it.
struct Case {
    name: &'static str,
    author: NodeId,
    msg: Vec<u8>,
    sig: SignatureBytes,
    valid: bool,
}

fn cases() -> Vec<Case> {
    let key = NodeKey::from_seed([0x33; 32]);
    let msg = b"mycnet-spores/v1 signature vector".to_vec();
    let honest = key.sign(&msg);
    let mut flipped = honest;
    flipped.0[40] ^= 0x01;
    // The identity is the simplest small-order key: `[8]A` vanishes, so with R = identity and
    // s = 0 the cofactored equation holds for any message. The key rule refuses it.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let mut weak_sig = [0u8; 64];
    weak_sig[..32].copy_from_slice(&identity);
    let c = |name, author, sig, valid| Case { name, author, msg: msg.clone(), sig, valid };
    vec![
        c("honest", key.node_id(), honest, true),
        c("torsion_component_in_r", key.node_id(), crafted::torsioned(&key, &msg), true),
        c("non_canonical_r_encoding", key.node_id(), crafted::non_canonical_r(&key, &msg), true),
        c("non_canonical_s", key.node_id(), crafted::non_canonical_s(honest), false),
        c("flipped_byte_in_s", key.node_id(), flipped, false),
        c("small_order_author_key", NodeId(identity), SignatureBytes(weak_sig), false),
    ]
}

fn compute_vectors() -> Value {
    let cases: Vec<Value> = cases()
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "author_hex": hex::encode(c.author.as_bytes()),
                "message_hex": hex::encode(&c.msg),
                "signature_hex": hex::encode(c.sig.0),
                "valid": c.valid,
            })
        })
        .collect();
    json!({
        "rule": "ZIP-215 (cofactored, s canonical, any encoding of a curve point for R and A) and the author key is not of small order",
        "cases": cases,
    })
}

/// Honest signatures to surround a crafted one with (distinct authors, as on a live network).
fn honest() -> &'static Vec<(NodeId, Vec<u8>, SignatureBytes)> {
    static HONEST: OnceLock<Vec<(NodeId, Vec<u8>, SignatureBytes)>> = OnceLock::new();
    HONEST.get_or_init(|| {
        (0..512u32)
            .map(|i| {
                let mut seed = [7u8; 32];
                seed[..4].copy_from_slice(&i.to_le_bytes());
                let k = NodeKey::from_seed(seed);
                let msg = format!("honest message {i}").into_bytes();
                let sig = k.sign(&msg);
                (k.node_id(), msg, sig)
            })
            .collect()
    })
}

/// The verdict of `case` at position `at` of a batch of `size` (the rest honest).
fn verdict_in_batch(case: &Case, size: usize, at: usize) -> bool {
    let mut items: Vec<(NodeId, &[u8], SignatureBytes)> =
        honest()[..size - 1].iter().map(|(a, m, s)| (*a, m.as_slice(), *s)).collect();
    items.insert(at, (case.author, case.msg.as_slice(), case.sig));
    let verdicts = verify_many(&mut VerifierCache::default(), &items);
    for (i, v) in verdicts.iter().enumerate() {
        if i != at {
            assert!(*v, "an honest signature beside {} was refused", case.name);
        }
    }
    verdicts[at]
}

#[test]
fn signature_vectors_match_and_each_gets_one_verdict_alone_and_in_every_batch() {
    let want: Value =
        serde_json::from_slice(&std::fs::read(vectors_path()).expect("read schema/vectors/signatures.json"))
            .expect("vectors are JSON");
    assert_eq!(want, compute_vectors(), "schema/vectors/signatures.json differs from what the crafted signatures give");
    for case in cases() {
        let alone = PublicKey::from_node_id(&case.author).is_some_and(|k| k.verify_msg(&case.msg, &case.sig));
        assert_eq!(alone, case.valid, "{}: single verification", case.name);
        for size in BATCH_SIZES {
            for at in [0, size / 2, size - 1] {
                assert_eq!(verdict_in_batch(&case, size, at), case.valid, "{} at {at} of a batch of {size}", case.name);
            }
        }
    }
}

#[test]
#[ignore = "rewrites schema/vectors/signatures.json; run with SPORES_REGENERATE_GOLDEN=1"]
fn regenerate_signature_vectors() {
    if std::env::var("SPORES_REGENERATE_GOLDEN").as_deref() != Ok("1") {
        eprintln!("set SPORES_REGENERATE_GOLDEN=1 to rewrite schema/vectors/signatures.json");
        return;
    }
    let text = serde_json::to_string_pretty(&compute_vectors()).expect("json") + "\n";
    std::fs::write(vectors_path(), text).expect("write vectors");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random batch compositions: honest signatures, some tampered, one or more crafted
    /// torsioned signatures at random places. Every verdict equals the verdict alone.
    #[test]
    fn batch_verdicts_equal_single_verdicts(
        size in 1usize..300,
        crafted_at in proptest::collection::vec(any::<prop::sample::Index>(), 1..4),
        tampered_at in proptest::collection::vec(any::<prop::sample::Index>(), 0..3),
    ) {
        let key = NodeKey::from_seed([0x44; 32]);
        let crafted_msgs: Vec<Vec<u8>> = (0..crafted_at.len()).map(|i| format!("crafted {i}").into_bytes()).collect();
        let mut items: Vec<(NodeId, &[u8], SignatureBytes)> =
            honest()[..size].iter().map(|(a, m, s)| (*a, m.as_slice(), *s)).collect();
        for idx in &tampered_at {
            let i = idx.index(items.len());
            items[i].2 .0[33] ^= 0x40;
        }
        for (idx, msg) in crafted_at.iter().zip(&crafted_msgs) {
            let at = idx.index(items.len() + 1);
            items.insert(at, (key.node_id(), msg.as_slice(), crafted::torsioned(&key, msg)));
        }
        let batched = verify_many(&mut VerifierCache::default(), &items);
        for (i, (author, msg, sig)) in items.iter().enumerate() {
            let alone = PublicKey::from_node_id(author).is_some_and(|k| k.verify_msg(msg, sig));
            prop_assert_eq!(batched[i], alone, "item {} of {}", i, items.len());
        }
    }
}

/// `n` events by the shared history's founder continuing it, valid by every rule; every one
/// whose index is not a multiple of 3 carries a torsioned signature.
fn founder_events(n: usize) -> Vec<SignedEvent> {
    let h = history();
    let founder = &h.keys[0];
    let last = h.events.last().expect("history").timestamp;
    (0..n)
        .map(|i| {
            let body =
                EventBody::CapabilitiesChanged { node: founder.node_id(), capabilities: vec![format!("crafted-{i}")] };
            let mut ev = SignedEvent::sign(founder, h.fingerprint, Timestamp(last.0 + 1 + i as i64), body);
            if i % 3 != 0 {
                ev.signature = crafted::torsioned(founder, &ev.signing_message());
            }
            ev
        })
        .collect()
}

/// The crafted events are accepted by the live append alone and in batches of the sizes the
/// code uses, and the replay of `verify`, a reopening replay, a gossip range check and a seed
/// with events all reach the same verdict.
#[test]
fn a_torsioned_event_signature_gets_one_verdict_in_append_replay_gossip_and_seed() {
    let h = history();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("l");
    fixture::build_ledger(&dir, &h.events, fixture::config(0), 600);
    let sizes = [2usize, 1, 64, 128, 512];
    let mut events = founder_events(sizes.iter().sum()).into_iter();
    let mut ledger = Ledger::open(&dir, fixture::config(0)).expect("open");
    for size in sizes {
        let batch: Vec<SignedEvent> = events.by_ref().take(size).collect();
        let outcome = ledger.append(batch).expect("append");
        assert!(outcome.iter().all(|o| o.is_ok()), "batch of {size}: {outcome:?}");
    }
    let head = ledger.head().expect("head");
    let events = ledger.read_range(0, head.seq).expect("read");

    // Gossip: a range holding the crafted events passes the range check.
    let verdicts = mycnet_spores::store::ledger::verify_signatures(&events[h.events.len()..]);
    assert!(verdicts.iter().all(|v| *v), "gossip verification refused a crafted event");

    // Seed with events: verifies, signature by signature.
    let bytes = seed::build(ledger.projection(), Some(&events), &[&h.keys[0]]).expect("build seed");
    seed::verify(&bytes, VerifyPolicy::default()).expect("the seed's events verify");
    drop(ledger);

    // Replay: `verify` (what `spore verify` runs) and a reopening replay from genesis.
    let report = fixture::verify(&dir);
    assert!(report.first_error.is_none(), "verify reports damage that is not there: {:?}", report.first_error);
    assert_eq!(report.events_verified, head.seq + 1);
    let reopened = Ledger::open(&dir, fixture::config(0)).expect("reopen replays");
    assert_eq!(reopened.head(), Some(head));
}

/// Three replicas apply crafted events submitted beside honest ones (pre-verification batches
/// of every composition) and all reach one chain that every ledger verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_apply_torsioned_events_alike_and_their_ledgers_verify() {
    let mut c = Cluster::form(3, 0x18).await;
    let leader = c.leader(Duration::from_secs(10)).await.expect("leader");
    let founder = c.members[0].key.clone();
    let fp = c.sys(0).with_projection(|p| p.fingerprint()).expect("projection").expect("formed");
    let sys = c.handle(leader).expect("leader runs");
    let mut tasks = Vec::new();
    for i in 0..40u32 {
        let sys = sys.clone();
        let founder = founder.clone();
        tasks.push(tokio::spawn(async move {
            let body = EventBody::ServiceRegistered(mycnet_spores::ServiceAnnouncement {
                service_id: uuid::Uuid::from_u128(0x5160_0000 + u128::from(i)),
                name: format!("svc-{i}").into(),
                node: founder.node_id(),
                capabilities: vec![].into(),
                endpoints: vec![mycnet_spores::Endpoint {
                    protocol: "tcp".into(),
                    address: format!("127.0.0.1:{}", 9000 + i).into(),
                }]
                .into(),
                metadata: vec![].into(),
            });
            let mut ev = SignedEvent::sign(&founder, fp, Timestamp::now(), body);
            if i % 3 != 0 {
                ev.signature = crafted::torsioned(&founder, &ev.signing_message());
            }
            sys.submit(ev).await
        }));
    }
    for t in tasks {
        t.await.expect("task").expect("every event, crafted or honest, is committed");
    }
    let head = c.converged_head(Duration::from_secs(20)).await.expect("replicas converge");
    for i in 0..3 {
        let n = c.sys(i).with_projection(|p| p.services_by_name("svc-7").count()).expect("projection");
        assert_eq!(n, 1, "replica {i} holds the crafted registration");
    }
    drop(sys);
    for i in 0..3 {
        c.crash(i).await;
    }
    for m in &c.members {
        let report = fixture::verify(&m.dir);
        assert!(report.first_error.is_none(), "{}: {:?}", m.addr, report.first_error);
        assert_eq!(report.recorded_head.map(|(s, _)| s), Some(head.seq));
    }
}
