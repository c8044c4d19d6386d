//! Golden vectors: fixed keys and fixed events → the exact bytes that are signed, hashed and
//! stored (`schema/vectors/*.json`). A dependency upgrade that changes any of them fails here
//! instead of silently changing what was signed.
//!
//! After an intentional format change (with its version bump, see `schema/README.md`):
//! `SPORES_REGENERATE_GOLDEN=1 cargo test --test it golden -- --ignored`.

use std::path::PathBuf;

use mycnet_spores::core::event::{
    network_fingerprint, DOMAIN_EVENT_SIGNATURE, DOMAIN_FINGERPRINT, DOMAIN_STATE_DIGEST, SCHEMA_VERSION,
};
use mycnet_spores::core::types::NetworkIdentityRecord;
use mycnet_spores::raft::raft_id;
use mycnet_spores::seed::{self, VerifyPolicy, DOMAIN_SEED_SIGNATURE, SEED_FORMAT_V1};
use mycnet_spores::store::ledger::LEDGER_FORMAT_MARKER;
use mycnet_spores::store::record::{encode_checkpoint, encode_record, seq_key, CHECKPOINT_FORMAT_V1, RECORD_FORMAT_V1};
use mycnet_spores::{
    ChainedEvent, Endpoint, EventBody, Ledger, LedgerConfig, NodeAnnouncement, NodeKey, NodeRole, Projection,
    ServiceAnnouncement, SignedEvent, Timestamp, TrustScore,
};
use serde_json::{json, Value};
use uuid::Uuid;

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schema").join("vectors")
}

const T0: i64 = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z

/// The fixed history: one event of every kind, in an order the rules accept.
fn history() -> (Vec<NodeKey>, Vec<SignedEvent>) {
    let founder = NodeKey::from_seed([0x11; 32]);
    let member = NodeKey::from_seed([0x22; 32]);
    let network = NetworkIdentityRecord {
        network_id: Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
        network_name: "golden-network".into(),
        genesis_timestamp: Timestamp(T0),
    };
    let founder_ann = NodeAnnouncement {
        node: founder.node_id(),
        name: "founder".into(),
        role: NodeRole::Sclerotium,
        addresses: vec!["10.0.0.1:7400".into()],
        capabilities: vec!["relay".into(), "storage".into()],
    };
    let genesis = SignedEvent::genesis(&founder, network.clone(), founder_ann);
    let fp = genesis.fingerprint;
    let service = Uuid::from_u128(0xfeed_0000_0000_4000_8000_0000_0000_0001);
    let m = member.node_id();
    let at = |k: i64| Timestamp(T0 + k * 1_000_000);
    let mut events = vec![genesis];
    let mut push = |key: &NodeKey, t: Timestamp, body: EventBody| events.push(SignedEvent::sign(key, fp, t, body));
    push(
        &founder,
        at(1),
        EventBody::NodeJoined(NodeAnnouncement {
            node: m,
            name: "member".into(),
            role: NodeRole::Rhizomorph,
            addresses: vec!["10.0.0.2:7400".into()],
            capabilities: vec![],
        }),
    );
    push(&member, at(2), EventBody::CapabilitiesChanged { node: m, capabilities: vec!["gpu".into()] });
    push(
        &member,
        at(3),
        EventBody::AddressesChanged { node: m, addresses: vec!["10.0.0.2:7401".into(), "[fd00::2]:7401".into()] },
    );
    push(
        &member,
        at(4),
        EventBody::ServiceRegistered(ServiceAnnouncement {
            service_id: service,
            name: "inference".into(),
            node: m,
            capabilities: vec!["gpu".into()].into(),
            endpoints: vec![Endpoint { protocol: "grpc".into(), address: "10.0.0.2:9000".into() }].into(),
            metadata: vec![("model".into(), "small".into())].into(),
        }),
    );
    push(
        &founder,
        at(5),
        EventBody::TrustScoreChanged { node: m, score: TrustScore(750), reason: "answered reliably".into() },
    );
    push(&founder, at(6), EventBody::NodeWentOffline { node: m, last_seen: at(5) });
    push(&founder, at(7), EventBody::NodeBackOnline { node: m });
    push(&member, at(8), EventBody::NodeUpdated { node: m, name: Some("member-2".into()), role: None });
    push(&member, at(9), EventBody::ServiceDeregistered { service_id: service, reason: "moved".into() });
    (vec![founder, member], events)
}

fn compute() -> Value {
    let (keys, signed) = history();
    let mut p = Projection::new();
    let mut chained: Vec<ChainedEvent> = Vec::new();
    for ev in signed {
        chained.push(p.append(ev).expect("the golden history follows the rules"));
    }
    // A checkpoint of the head, then the member leaves: every kind appears once.
    let head = p.head().expect("head");
    let founder = &keys[0];
    let fp = p.fingerprint().expect("fingerprint");
    let t = Timestamp(T0 + 10_000_000);
    chained.push(
        p.append(SignedEvent::sign(founder, fp, t, EventBody::Checkpoint { head_seq: head.seq, head_hash: head.hash }))
            .expect("checkpoint"),
    );
    let m = keys[1].node_id();
    chained.push(
        p.append(SignedEvent::sign(
            &keys[1],
            fp,
            Timestamp(T0 + 11_000_000),
            EventBody::NodeLeft { node: m, reason: "done".into() },
        ))
        .expect("left"),
    );
    // A state checkpoint attests the head and the state there (the state digest vector).
    let head = p.head().expect("head");
    let attested_state = p.state().clone();
    let state_digest = p.state_digest();
    let body = EventBody::StateCheckpoint { head_seq: head.seq, head_hash: head.hash, state_digest };
    chained.push(p.append(SignedEvent::sign(founder, fp, Timestamp(T0 + 12_000_000), body)).expect("state checkpoint"));
    assert_eq!(p.divergence(), None, "the attested state is the state");

    let network = p.network().expect("network").clone();
    assert_eq!(network_fingerprint(&network, &founder.node_id()), fp);
    let disk = on_disk(&chained);
    assert_eq!(disk.meta_format, LEDGER_FORMAT_MARKER, "meta/format on disk");
    let checkpoint_record = encode_checkpoint(p.state());
    assert_eq!(
        hex::encode(&disk.meta_checkpoint[32..]),
        hex::encode(&checkpoint_record),
        "meta/checkpoint on disk is not digest ‖ encode_checkpoint(state)"
    );
    let events: Vec<Value> = chained
        .iter()
        .zip(&disk.records)
        .map(|(c, (key, record))| {
            assert_eq!(hex::encode(key), hex::encode(seq_key(c.seq)), "seq {}: ledger key on disk", c.seq);
            assert_eq!(
                hex::encode(record),
                hex::encode(encode_record(c)),
                "seq {}: record on disk differs from encode_record",
                c.seq
            );
            json!({
                "seq": c.seq,
                "kind": c.event.body.kind(),
                "body_hex": hex::encode(bcs::to_bytes(&c.event.body).expect("bcs body")),
                "canonical_event_hex": hex::encode(c.event.canonical_bytes()),
                "signing_message_hex": hex::encode(c.event.signing_message()),
                "signature_hex": hex::encode(c.event.signature.0),
                "prev_hash_hex": c.prev_hash.to_hex(),
                "hash_hex": c.hash.to_hex(),
                "ledger_key_hex": hex::encode(key),
                "ledger_record_hex": hex::encode(record),
            })
        })
        .collect();
    assert_eq!(disk.records.len(), chained.len(), "records in the ledger keyspace");
    let seed_bytes = seed::build(&p, Some(&chained), &[founder]).expect("seed");
    let parsed = seed::verify(&seed_bytes, VerifyPolicy::default()).expect("the golden seed verifies");
    json!({
        "about": "Golden vectors of mycnet-spores. Regenerate only after an intentional, versioned format change (schema/README.md).",
        "schema_version": SCHEMA_VERSION,
        "record_format": RECORD_FORMAT_V1,
        "checkpoint_format": CHECKPOINT_FORMAT_V1,
        "seed_format": SEED_FORMAT_V1,
        "domains": {
            "event_signature": String::from_utf8_lossy(DOMAIN_EVENT_SIGNATURE),
            "network_fingerprint": String::from_utf8_lossy(DOMAIN_FINGERPRINT),
            "seed_signature": String::from_utf8_lossy(DOMAIN_SEED_SIGNATURE),
            "state_digest": String::from_utf8_lossy(DOMAIN_STATE_DIGEST),
        },
        "state_digest": {
            "about": "the state at the head the state_checkpoint event attests: BCS(ProjectionState), and blake3(domain ‖ BCS)",
            "head_seq": head.seq,
            "state_bcs_hex": hex::encode(bcs::to_bytes(&attested_state).expect("bcs state")),
            "digest_hex": state_digest.to_hex(),
        },
        "keys": keys
            .iter()
            .map(|k| {
                json!({
                    "secret_seed_hex": hex::encode(k.to_seed()),
                    "node_id_hex": k.node_id().to_hex(),
                    "raft_id": raft_id(&k.node_id()),
                })
            })
            .collect::<Vec<_>>(),
        "network": {
            "network_id": network.network_id,
            "network_name": network.network_name,
            "genesis_timestamp_micros": network.genesis_timestamp.0,
            "identity_record_bcs_hex": hex::encode(bcs::to_bytes(&network).expect("bcs identity")),
            "fingerprint_hex": fp.to_hex(),
        },
        "events": events,
        "checkpoint_record_hex": hex::encode(&checkpoint_record),
        "meta": {
            "format": String::from_utf8_lossy(&disk.meta_format),
            "head_hex": hex::encode(&disk.meta_head),
            "checkpoint_digest_hex": hex::encode(&disk.meta_checkpoint[..32]),
        },
        "seed": {
            "file_hex": hex::encode(&seed_bytes),
            "digest_hex": hex::encode(parsed.digest),
            "signers": parsed.signers.iter().map(|s| s.to_hex()).collect::<Vec<_>>(),
        },
    })
}

/// What a real ledger wrote: every `ledger` key/value and the `meta` values, read back raw.
struct OnDisk {
    records: Vec<(Vec<u8>, Vec<u8>)>,
    meta_format: Vec<u8>,
    meta_head: Vec<u8>,
    meta_checkpoint: Vec<u8>,
}

/// Appends the history to a fresh fjall ledger, writes a checkpoint, and reads the raw bytes.
fn on_disk(chained: &[ChainedEvent]) -> OnDisk {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ledger = Ledger::open(dir.path(), LedgerConfig::default()).expect("open ledger");
    for c in chained {
        let out = ledger.append(vec![c.event.clone()]).expect("append");
        let got = out.into_iter().next().expect("one outcome").expect("accepted");
        assert_eq!(got, *c, "seq {}: the ledger chained the event differently from Projection::append", c.seq);
    }
    ledger.write_checkpoint().expect("checkpoint");
    let meta = |k: &[u8]| {
        ledger.meta_get(k).expect("meta").unwrap_or_else(|| panic!("meta/{} missing", String::from_utf8_lossy(k)))
    };
    let (meta_format, meta_head, meta_checkpoint) = (meta(b"format"), meta(b"head"), meta(b"checkpoint"));
    drop(ledger);
    let db = fjall::Database::builder(dir.path()).open().expect("reopen fjall");
    let ks = db.keyspace("ledger", fjall::KeyspaceCreateOptions::default).expect("ledger keyspace");
    let records = ks
        .iter()
        .map(|g| {
            let (k, v) = g.into_inner().expect("read");
            (k.to_vec(), v.to_vec())
        })
        .collect();
    OnDisk { records, meta_format, meta_head, meta_checkpoint }
}

/// Where two strings first differ, with a little context (hex values can be kilobytes long).
fn describe_string_difference(a: &str, b: &str) -> String {
    let i = a.bytes().zip(b.bytes()).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
    let ctx = |s: &str| -> String {
        let lo = i.saturating_sub(16);
        let hi = (i + 16).min(s.len());
        format!(
            "{}{}{}",
            if lo > 0 { "…" } else { "" },
            s.get(lo..hi).unwrap_or(""),
            if hi < s.len() { "…" } else { "" }
        )
    };
    format!(
        "first difference at character {i} (byte {} of a hex string); lengths {} vs {}: golden {:?} but computed {:?}",
        i / 2,
        a.len(),
        b.len(),
        ctx(a),
        ctx(b)
    )
}

/// The first place two JSON values differ, as a path.
fn first_difference(path: &str, want: &Value, got: &Value) -> Option<String> {
    match (want, got) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, va) in a {
                match b.get(k) {
                    None => return Some(format!("{path}.{k}: missing from the computed vectors")),
                    Some(vb) => {
                        if let Some(d) = first_difference(&format!("{path}.{k}"), va, vb) {
                            return Some(d);
                        }
                    }
                }
            }
            b.keys().find(|k| !a.contains_key(*k)).map(|k| format!("{path}.{k}: not in the golden file"))
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (va, vb)) in a.iter().zip(b).enumerate() {
                // Name the vector: `$.events[3](addresses_changed).signature_hex`.
                let label = va.get("kind").and_then(Value::as_str).map(|k| format!("({k})")).unwrap_or_default();
                if let Some(d) = first_difference(&format!("{path}[{i}]{label}"), va, vb) {
                    return Some(d);
                }
            }
            (a.len() != b.len())
                .then(|| format!("{path}: {} entries in the golden file, {} computed", a.len(), b.len()))
        }
        (a, b) if a == b => None,
        (Value::String(a), Value::String(b)) => Some(format!("{path}: {}", describe_string_difference(a, b))),
        (a, b) => Some(format!("{path}: golden {a} but computed {b}")),
    }
}

/// Compares `schema/vectors/{file}` with what the code computes now.
fn check_vectors(file: &str, got: Value) {
    let path = vectors_dir().join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (generate it, see the module doc)", path.display()));
    let want: Value = serde_json::from_str(&text).expect("golden file is JSON");
    if let Some(diff) = first_difference("$", &want, &got) {
        panic!("{file}: the encoding changed: {diff}\nIf intended, bump the version and regenerate (see schema/README.md).");
    }
}

#[test]
fn golden_vectors_match_byte_for_byte() {
    check_vectors("v1.json", compute());
}

/// The health vectors (`health.json`), pinned apart from `v1.json`, which stays byte for byte
/// what it was before health checks: a ledger of that history still replays and verifies.
#[test]
fn golden_health_vectors_match_byte_for_byte() {
    check_vectors("health.json", compute_health());
}

/// A service with a check goes critical, a state checkpoint attests that state, and it passes
/// again: the `service_health_changed` event's bytes, and the state and checkpoint formats
/// with a critical service (`schema/records.md`, format 2; `schema/encoding.md`, *State
/// digest*).
fn compute_health() -> Value {
    let founder = NodeKey::from_seed([0x11; 32]);
    let network = NetworkIdentityRecord {
        network_id: Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
        network_name: "golden-health".into(),
        genesis_timestamp: Timestamp(T0),
    };
    let ann = NodeAnnouncement {
        node: founder.node_id(),
        name: "founder".into(),
        role: NodeRole::Sclerotium,
        addresses: vec!["10.0.0.1:7400".into()],
        capabilities: vec![],
    };
    let genesis = SignedEvent::genesis(&founder, network, ann);
    let fp = genesis.fingerprint;
    let service_id = Uuid::from_u128(0xfeed_0000_0000_4000_8000_0000_0000_0002);
    let check = mycnet_spores::core::health::CheckSpec::parse("tcp 10.0.0.1:5432 interval=5s timeout=1s flips=2")
        .expect("check");
    let at = |k: i64| Timestamp(T0 + k * 1_000_000);
    let mut p = Projection::new();
    let mut chained = vec![p.append(genesis).expect("genesis")];
    let push = |p: &mut Projection, chained: &mut Vec<ChainedEvent>, t, body| {
        chained.push(p.append(SignedEvent::sign(&founder, fp, t, body)).expect("the health history follows the rules"))
    };
    let service = ServiceAnnouncement {
        service_id,
        name: "db".into(),
        node: founder.node_id(),
        capabilities: vec![].into(),
        endpoints: vec![Endpoint { protocol: "tcp".into(), address: "10.0.0.1:5432".into() }].into(),
        metadata: [check.metadata_entry()].into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
    };
    push(&mut p, &mut chained, at(1), EventBody::ServiceRegistered(service));
    let reason = "tcp 10.0.0.1:5432: Connection refused (os error 111)".to_string();
    push(&mut p, &mut chained, at(2), EventBody::ServiceHealthChanged { service_id, passing: false, reason });
    let head = p.head().expect("head");
    let critical_state = p.state().clone();
    let state_digest = p.state_digest();
    let body = EventBody::StateCheckpoint { head_seq: head.seq, head_hash: head.hash, state_digest };
    push(&mut p, &mut chained, at(3), body);
    assert_eq!(p.divergence(), None);
    let disk = on_disk(&chained);
    let checkpoint_record = encode_checkpoint(p.state());
    assert_eq!(checkpoint_record[0], 2, "a state with a critical service is a format 2 checkpoint");
    assert_eq!(hex::encode(&disk.meta_checkpoint[32..]), hex::encode(&checkpoint_record));
    push(
        &mut p,
        &mut chained,
        at(4),
        EventBody::ServiceHealthChanged { service_id, passing: true, reason: "tcp: connected".into() },
    );
    let passing_record = encode_checkpoint(p.state());
    let events: Vec<Value> = chained
        .iter()
        .map(|c| {
            json!({
                "seq": c.seq,
                "kind": c.event.body.kind(),
                "body_hex": hex::encode(bcs::to_bytes(&c.event.body).expect("bcs body")),
                "canonical_event_hex": hex::encode(c.event.canonical_bytes()),
                "signature_hex": hex::encode(c.event.signature.0),
                "hash_hex": c.hash.to_hex(),
                "ledger_record_hex": hex::encode(encode_record(c)),
            })
        })
        .collect();
    for (c, (_, record)) in chained.iter().zip(&disk.records) {
        assert_eq!(hex::encode(record), hex::encode(encode_record(c)), "seq {}: record on disk", c.seq);
    }
    json!({
        "about": "Golden vectors of service health (schema/rules.md, Health). Regenerate only after an intentional, versioned format change.",
        "check_metadata": check.metadata_entry(),
        "events": events,
        "critical_state": {
            "head_seq": head.seq,
            "state_bcs_hex": hex::encode(bcs::to_bytes(&critical_state).expect("bcs state")),
            "digest_hex": state_digest.to_hex(),
        },
        "checkpoint_record_format_2_hex": hex::encode(&checkpoint_record),
        "checkpoint_record_passing_again_hex": hex::encode(&passing_record),
    })
}

#[test]
#[ignore = "rewrites schema/vectors; run with SPORES_REGENERATE_GOLDEN=1"]
fn regenerate_golden_vectors() {
    if std::env::var("SPORES_REGENERATE_GOLDEN").as_deref() != Ok("1") {
        eprintln!("set SPORES_REGENERATE_GOLDEN=1 to rewrite schema/vectors/*.json");
        return;
    }
    std::fs::create_dir_all(vectors_dir()).expect("mkdir");
    for (file, vectors) in [("v1.json", compute()), ("health.json", compute_health())] {
        let text = serde_json::to_string_pretty(&vectors).expect("json") + "\n";
        std::fs::write(vectors_dir().join(file), text).expect("write");
    }
}
