//! Decoders of untrusted bytes never panic, whatever they are given: random bytes, and valid
//! encodings with random damage (which reach much deeper into each decoder than noise does).
//! What they accept is canonical: it encodes back to exactly the bytes given.

use std::fs;
use std::sync::OnceLock;

use ed25519_dalek::pkcs8::EncodePrivateKey;
use mycnet_spores::core::projection::Projection;
use mycnet_spores::store::keyfile::{self, KeyFileError};
use mycnet_spores::store::record::{decode_checkpoint, decode_record, encode_checkpoint, encode_record};
use mycnet_spores::{ChainHash, EventBody, NetworkFingerprint, NodeId, NodeKey, SignedEvent};
use proptest::prelude::*;

use crate::fixture::history;

/// Valid encodings to damage: one ledger record and one canonical event of each kind, and a
/// projection checkpoint.
struct Valid {
    records: Vec<Vec<u8>>,
    events: Vec<Vec<u8>>,
    checkpoint: Vec<u8>,
}

fn valid() -> &'static Valid {
    static VALID: OnceLock<Valid> = OnceLock::new();
    VALID.get_or_init(|| {
        let mut projection = Projection::new();
        let mut kinds = std::collections::BTreeSet::new();
        let (mut records, mut events) = (Vec::new(), Vec::new());
        let h = history();
        let mut keep = |projection: &mut Projection, ev: &SignedEvent| {
            let chained = projection.append(ev.clone()).expect("valid history");
            if kinds.insert(ev.body.kind()) {
                records.push(encode_record(&chained));
                events.push(ev.canonical_bytes());
            }
        };
        for ev in h.events.iter().take(300) {
            keep(&mut projection, ev);
        }
        // A service goes critical: the health event, and a checkpoint in format 2.
        let service = projection.services().next().expect("the history registers services").service.clone();
        let owner = h.keys.iter().find(|k| k.node_id() == service.node).expect("the owner's key");
        let t = projection.head().expect("head").timestamp;
        let critical = EventBody::ServiceHealthChanged {
            service_id: service.service_id,
            passing: false,
            reason: "tcp connect refused".into(),
        };
        keep(&mut projection, &SignedEvent::sign(owner, h.fingerprint, t, critical));
        let checkpoint = encode_checkpoint(projection.state());
        assert_eq!(checkpoint[0], 2, "a state with a critical service is a format 2 checkpoint");
        Valid { records, events, checkpoint }
    })
}

/// One damage to a valid encoding.
#[derive(Clone, Debug)]
enum Damage {
    /// Overwrite a byte.
    Set(prop::sample::Index, u8),
    /// Flip one bit.
    Flip(prop::sample::Index, u8),
    /// Cut the tail off.
    Truncate(prop::sample::Index),
    /// Insert a byte.
    Insert(prop::sample::Index, u8),
    /// Remove a byte.
    Remove(prop::sample::Index),
    /// Write a little-endian u32 (lengths and relative pointers in rkyv).
    SetU32(prop::sample::Index, u32),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Damage::Set(i, b)),
        (any::<prop::sample::Index>(), 0..8u8).prop_map(|(i, b)| Damage::Flip(i, b)),
        any::<prop::sample::Index>().prop_map(Damage::Truncate),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Damage::Insert(i, b)),
        any::<prop::sample::Index>().prop_map(Damage::Remove),
        (any::<prop::sample::Index>(), prop_oneof![any::<u32>(), Just(u32::MAX), Just(0x7fff_fff0), 0..512u32])
            .prop_map(|(i, v)| Damage::SetU32(i, v)),
    ]
}

fn apply(mut bytes: Vec<u8>, damages: &[Damage]) -> Vec<u8> {
    for d in damages {
        if bytes.is_empty() {
            break;
        }
        match d {
            Damage::Set(i, b) => {
                let at = i.index(bytes.len());
                bytes[at] = *b;
            }
            Damage::Flip(i, bit) => {
                let at = i.index(bytes.len());
                bytes[at] ^= 1 << bit;
            }
            Damage::Truncate(i) => bytes.truncate(i.index(bytes.len())),
            Damage::Insert(i, b) => {
                let at = i.index(bytes.len() + 1);
                bytes.insert(at, *b);
            }
            Damage::Remove(i) => {
                let at = i.index(bytes.len());
                bytes.remove(at);
            }
            Damage::SetU32(i, v) => {
                if bytes.len() >= 4 {
                    let at = i.index(bytes.len() - 3);
                    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
    bytes
}

/// One of `valid`, damaged 1 to 6 times.
fn damaged(valid: &'static [Vec<u8>]) -> impl Strategy<Value = Vec<u8>> {
    (prop::sample::select((0..valid.len()).collect::<Vec<_>>()), prop::collection::vec(damage(), 1..6))
        .prop_map(move |(i, ds)| apply(valid[i].clone(), &ds))
}

/// Random bytes, half of them behind the right format tag so they reach rkyv's validation.
fn noise(tag: u8, len_max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..len_max),
        prop::collection::vec(any::<u8>(), 0..len_max).prop_map(move |mut v| {
            v.insert(0, tag);
            v
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn record_decoder_never_panics_on_noise(bytes in noise(1, 1024)) {
        if let Ok(ev) = decode_record(&bytes) {
            prop_assert_eq!(encode_record(&ev), bytes);
        }
    }

    #[test]
    fn record_decoder_never_panics_on_damaged_records(bytes in damaged(&valid().records)) {
        if let Ok(ev) = decode_record(&bytes) {
            prop_assert_eq!(encode_record(&ev), bytes, "only canonical records are accepted");
        }
    }

    #[test]
    fn checkpoint_decoder_never_panics_on_noise(bytes in noise(1, 2048), v2 in any::<bool>()) {
        let mut bytes = bytes;
        if v2 && !bytes.is_empty() {
            bytes[0] = 2;
        }
        let _ = decode_checkpoint(&bytes);
    }

    #[test]
    fn checkpoint_decoder_never_panics_on_damaged_checkpoints(
        bytes in damaged(std::slice::from_ref(&valid().checkpoint))
    ) {
        let _ = decode_checkpoint(&bytes);
    }

    #[test]
    fn event_decoder_never_panics_on_noise(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        if let Ok(ev) = SignedEvent::from_canonical_bytes(&bytes) {
            prop_assert_eq!(ev.canonical_bytes(), bytes);
        }
    }

    #[test]
    fn event_decoder_never_panics_on_damaged_events(bytes in damaged(&valid().events)) {
        if let Ok(ev) = SignedEvent::from_canonical_bytes(&bytes) {
            prop_assert_eq!(ev.canonical_bytes(), bytes, "only canonical encodings are accepted");
        }
    }

    #[test]
    fn hex_ids_parse_exactly_64_hex_digits(
        s in prop_oneof![any::<String>(), "[0-9a-fA-F]{62,66}", "[ \t]{0,2}[0-9a-f]{64}[ \t\n]{0,2}", "[0-9a-fA-Fg-z]{64}"]
    ) {
        let node = NodeId::from_hex(&s);
        let digits = s.trim();
        let valid = digits.len() == 64 && digits.bytes().all(|b| b.is_ascii_hexdigit());
        prop_assert_eq!(node.is_ok(), valid, "{:?}", s);
        if let Ok(id) = node {
            prop_assert_eq!(id.to_hex(), digits.to_ascii_lowercase());
        }
        prop_assert_eq!(ChainHash::from_hex(&s).is_ok(), valid);
        prop_assert_eq!(NetworkFingerprint::from_hex(&s).is_ok(), valid);
    }
}

/// A huge length prefix anywhere in an event is refused without allocating it (an attempt
/// to allocate 4 GiB per length would abort the test binary).
#[test]
fn event_decoder_refuses_huge_lengths_without_allocating() {
    for valid in &valid().events {
        for cut in 0..valid.len() {
            let mut bytes = valid[..cut].to_vec();
            bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]); // ULEB128 u32::MAX
            bytes.extend_from_slice(&[0u8; 16]);
            // Where the splice lands in a fixed-size field (the signature) it can be valid.
            if let Ok(ev) = SignedEvent::from_canonical_bytes(&bytes) {
                assert_eq!(ev.canonical_bytes(), bytes, "cut at {cut}");
            }
        }
    }
    let too_long = vec![0u8; 64 * 1024 + 1];
    assert!(SignedEvent::from_canonical_bytes(&too_long).is_err());
}

/// Standard base64 (for PEM armour around damaged DER).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
        for _ in chunk.len()..3 {
            out.push('=');
        }
    }
    out
}

/// PEM armour (RFC 7468: base64 in lines of 64 characters).
fn pem(der: &[u8]) -> Vec<u8> {
    let b64 = base64(der);
    let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|l| std::str::from_utf8(l).expect("ascii")).collect();
    format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", lines.join("\n")).into_bytes()
}

fn valid_key_der() -> &'static [Vec<u8>] {
    static DER: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    DER.get_or_init(|| {
        let key = NodeKey::from_seed([7; 32]);
        vec![key.signing_key().to_pkcs8_der().expect("encode pkcs8").as_bytes().to_vec()]
    })
}

/// Writes `contents` as a key file with mode 0600 and loads it.
fn load_key_file(contents: &[u8]) -> Result<NodeKey, KeyFileError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(keyfile::KEY_FILE_NAME);
    fs::write(&path, contents).expect("write key file");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod 600");
    }
    keyfile::load(&path)
}

#[test]
fn key_file_armour_of_a_valid_key_loads() {
    let key = load_key_file(&pem(&valid_key_der()[0])).expect("the test's PEM armour is right");
    assert_eq!(key.node_id(), NodeKey::from_seed([7; 32]).node_id());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn key_file_of_noise_is_an_error(contents in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        prop::collection::vec(any::<u8>(), 0..128).prop_map(|v| pem(&v)),
    ]) {
        let loaded = load_key_file(&contents);
        let refused = matches!(loaded, Err(KeyFileError::Malformed { .. } | KeyFileError::Io { .. }));
        prop_assert!(refused, "{:?}", loaded.map(|k| k.node_id()));
    }

    /// Damaged DER inside valid armour: an error or (if the damage only hit the secret) some
    /// key, never a panic.
    #[test]
    fn key_file_of_damaged_der_never_panics(der in damaged(valid_key_der())) {
        let loaded = load_key_file(&pem(&der));
        let too_open = matches!(loaded, Err(KeyFileError::TooOpen { .. }));
        prop_assert!(!too_open);
    }
}

// ---------------------------------------------------------------------------------------------
// Seed files and network frames

/// Valid seed files (with and without events, one and two signers) to damage.
fn valid_seeds() -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let h = history();
        let mut p = Projection::new();
        let chained: Vec<_> = h.events.iter().take(40).map(|e| p.append(e.clone()).expect("valid history")).collect();
        let voters: Vec<&NodeKey> = h
            .keys
            .iter()
            .filter(|k| {
                p.node(&k.node_id())
                    .is_some_and(|n| n.role.is_authority() && n.status != mycnet_spores::NodeStatus::Left)
            })
            .collect();
        vec![
            mycnet_spores::seed::build(&p, Some(&chained), &voters).expect("seed with events"),
            mycnet_spores::seed::build(&p, None, &voters[..1]).expect("seed without events"),
            attested_state_only_seed(),
        ]
    })
}

/// A format 2 state-only seed: the state the chain attests and the events after it.
fn attested_state_only_seed() -> Vec<u8> {
    use mycnet_spores::store::synth::{Synth, SynthConfig};
    let mut synth = Synth::new(SynthConfig { seed: 3, nodes: 6, voters: 3, ..Default::default() });
    let mut p = Projection::new();
    let mut chained = Vec::new();
    for _ in 0..6 {
        for ev in synth.next_chunk(60) {
            chained.push(p.append(ev).expect("valid"));
        }
    }
    let at = chained
        .iter()
        .rev()
        .find_map(|e| match e.event.body {
            mycnet_spores::EventBody::StateCheckpoint { head_seq, .. } => Some(head_seq as usize),
            _ => None,
        })
        .expect("a state checkpoint");
    let mut base = Projection::new();
    for e in &chained[..=at] {
        base.apply(e).expect("replay");
    }
    let bytes = mycnet_spores::seed::build_state_only(base.state(), &chained[at + 1..], p.state(), &[&synth.keys()[0]])
        .expect("format 2 seed");
    let seed = mycnet_spores::seed::verify(&bytes, mycnet_spores::seed::VerifyPolicy::default()).expect("it verifies");
    assert_eq!(seed.version, mycnet_spores::seed::SEED_FORMAT_V2);
    bytes
}

/// Valid RPC request frames (postcard) to damage.
fn valid_frames() -> &'static [Vec<u8>] {
    static FRAMES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    FRAMES.get_or_init(|| {
        use mycnet_spores::raft::RpcRequest;
        use mycnet_spores::wire::query::Query;
        let ev = history().events[3].clone();
        [
            RpcRequest::Forward(ev),
            RpcRequest::Status,
            RpcRequest::ReadIndex,
            RpcRequest::Query(Query::ServicesByCapability("gpu".into())),
            RpcRequest::Query(Query::ChainAt(12)),
            RpcRequest::Query(Query::Watch {
                from: 3,
                filter: mycnet_spores::core::event::EventFilter {
                    kinds: vec!["service_registered".into()],
                    node: None,
                    service_name: Some("web".into()),
                },
                max: 64,
                wait_ms: 5000,
            }),
            RpcRequest::SetVoter { node: mycnet_spores::NodeId([7; 32]), voter: false },
            RpcRequest::AppendStream,
            RpcRequest::Query(Query::Find(
                mycnet_spores::ServiceFilter::name("web").min_trust(mycnet_spores::TrustScore(700)),
            )),
            RpcRequest::Query(Query::Tiered(mycnet_spores::wire::query::RegistryQuery::ServicesByName("web".into()))),
            RpcRequest::ExportSeed { path: "/tmp/x.seed".into(), include_events: true },
            RpcRequest::Query(Query::FindPage {
                filter: mycnet_spores::ServiceFilter::capability("gpu").include_critical(),
                limit: 100,
                after: Some(uuid::Uuid::from_u128(0x1234_5678)),
            }),
            RpcRequest::Query(Query::NodesPage {
                filter: mycnet_spores::NodeFilter {
                    name: Some("n1".into()),
                    capability: Some("gpu".into()),
                    status: Some(mycnet_spores::NodeStatus::Offline),
                    min_trust: Some(mycnet_spores::TrustScore(500)),
                },
                limit: 0,
                after: Some(mycnet_spores::NodeId([9; 32])),
            }),
        ]
        .iter()
        .map(|r| postcard::to_stdvec(r).expect("encode"))
        .collect()
    })
}

/// Valid RPC answer frames (postcard) of the paged queries to damage: a page of services and
/// a page of nodes, each with its next cursor.
fn valid_answers() -> &'static [Vec<u8>] {
    static FRAMES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    FRAMES.get_or_init(|| {
        use mycnet_spores::raft::RpcResponse;
        use mycnet_spores::wire::query::QueryAnswer;
        use mycnet_spores::{NodeFilter, Page, ServiceFilter};
        let mut p = Projection::new();
        for ev in history().events.iter().take(300) {
            p.append(ev.clone()).expect("valid history");
        }
        let services = p.find_services_page(&ServiceFilter::default().include_unavailable(), &Page::first(3));
        let nodes = p.nodes_page(&NodeFilter::default(), &Page::first(2));
        assert!(!services.items.is_empty() && !nodes.items.is_empty(), "the history has services and nodes");
        [
            RpcResponse::Query(Ok(QueryAnswer::FoundPage { items: services.items, next: services.next })),
            RpcResponse::Query(Ok(QueryAnswer::NodesPage { items: nodes.items, next: nodes.next })),
        ]
        .iter()
        .map(|r| postcard::to_stdvec(r).expect("encode"))
        .collect()
    })
}

/// Valid frames of an append stream (postcard) to damage: a request carrying a batch of
/// events, and every kind of answer.
fn valid_append_frames() -> &'static [Vec<u8>] {
    static FRAMES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    FRAMES.get_or_init(|| {
        use mycnet_spores::raft::{AppendReply, AppendRequest, LogId, SporeRequest};
        use openraft::impls::leader_id_adv::LeaderId;
        use openraft::raft::StreamAppendError;
        let log_id = |index| LogId::new(LeaderId { term: 3, node_id: 2 }, index);
        let vote = openraft::impls::Vote::new(3, 2);
        let batch = std::sync::Arc::new(history().events[..4].to_vec());
        let entry =
            openraft::Entry { log_id: log_id(9), payload: openraft::EntryPayload::Normal(SporeRequest::Batch(batch)) };
        let request =
            AppendRequest { vote, prev_log_id: Some(log_id(8)), leader_commit: Some(log_id(7)), entries: vec![entry] };
        let answers: [AppendReply; 5] = [
            Ok(Ok(Some(log_id(9)))),
            Ok(Ok(None)),
            Ok(Err(StreamAppendError::Conflict(log_id(8)))),
            Ok(Err(StreamAppendError::HigherVote(openraft::impls::Vote::new(4, 1)))),
            Err(openraft::error::Fatal::Stopped),
        ];
        let mut frames = vec![postcard::to_stdvec(&request).expect("encode")];
        frames.extend(answers.iter().map(|a| postcard::to_stdvec(a).expect("encode")));
        frames
    })
}

#[test]
fn append_stream_frames_round_trip() {
    use mycnet_spores::raft::{AppendReply, AppendRequest};
    let frames = valid_append_frames();
    let request: AppendRequest = postcard::from_bytes(&frames[0]).expect("the request decodes");
    assert_eq!(request.entries.len(), 1);
    assert_eq!(postcard::to_stdvec(&request).expect("encode"), frames[0]);
    for frame in &frames[1..] {
        let answer: AppendReply = postcard::from_bytes(frame).expect("an answer decodes");
        assert_eq!(&postcard::to_stdvec(&answer).expect("encode"), frame);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    /// What a QUIC peer sends on an append stream is decoded with postcard: noise and damaged
    /// frames never panic.
    #[test]
    fn append_stream_decoders_never_panic(bytes in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..1024),
        damaged(valid_append_frames()),
    ]) {
        // What decodes is then checked before openraft sees it: that never panics either.
        if let Ok(req) = postcard::from_bytes::<mycnet_spores::raft::AppendRequest>(&bytes) {
            let _ = mycnet_spores::raft::inbound::check_append(&req);
        }
        let _ = postcard::from_bytes::<mycnet_spores::raft::AppendReply>(&bytes);
    }

    /// Anything but the exact signed bytes is refused; nothing panics.
    #[test]
    fn seed_verifiers_never_panic_and_accept_only_the_signed_bytes(bytes in damaged(valid_seeds())) {
        use mycnet_spores::seed::{verify, verify_quorum, VerifyPolicy};
        if verify(&bytes, VerifyPolicy::default()).is_ok() || verify_quorum(&bytes, None).is_ok() {
            prop_assert!(valid_seeds().contains(&bytes), "a damaged seed was accepted");
        }
    }

    #[test]
    fn seed_verifiers_never_panic_on_noise(bytes in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..2048),
        prop::collection::vec(any::<u8>(), 0..2048).prop_map(|mut v| {
            let mut b = b"MYCSEED\0\x01\x00".to_vec();
            b.append(&mut v);
            b
        }),
    ]) {
        use mycnet_spores::seed::{verify, verify_quorum, VerifyPolicy};
        prop_assert!(verify(&bytes, VerifyPolicy::default()).is_err());
        prop_assert!(verify_quorum(&bytes, None).is_err());
    }

    /// What a QUIC peer sends is decoded with postcard: noise and damaged frames never panic.
    #[test]
    fn rpc_frame_decoders_never_panic(bytes in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..1024),
        damaged(valid_frames()),
        damaged(valid_answers()),
    ]) {
        let _ = postcard::from_bytes::<mycnet_spores::raft::RpcRequest>(&bytes);
        let _ = postcard::from_bytes::<mycnet_spores::raft::RpcResponse>(&bytes);
    }
}

/// Valid gossip frame bodies (without their length prefix) of every kind, to damage.
fn valid_gossip_frames() -> &'static [Vec<u8>] {
    static FRAMES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    FRAMES.get_or_init(|| {
        use mycnet_spores::core::gossip::{Digest, GossipMessage, PeerAddr};
        use mycnet_spores::net::gossip::LedgerRecords;
        use mycnet_spores::wire::gossip::encode_frame;
        let mut projection = Projection::new();
        let chained: Vec<_> =
            history().events.iter().take(5).map(|e| projection.append(e.clone()).expect("valid")).collect();
        let head = chained.last().map(|c| mycnet_spores::ChainPoint { seq: c.seq, hash: c.hash });
        let digest = Digest {
            fingerprint: Some(history().fingerprint),
            head,
            anchor: head,
            peers: vec![PeerAddr { node: history().keys[1].node_id(), addr: "127.0.0.1:7400".into() }],
            primary: true,
        };
        let author = history().keys.iter().find(|k| k.node_id() == history().events[3].author).expect("author's key");
        let provisional =
            mycnet_spores::core::provisional::ProvisionalEvent::new(author, history().events[3].clone(), Some(2));
        [
            GossipMessage::Hello(digest),
            GossipMessage::Request { from: 3, max_events: 64 },
            GossipMessage::Range(chained.clone()),
            GossipMessage::Bye,
            GossipMessage::Provisional(vec![provisional]),
            GossipMessage::Forks(vec![mycnet_spores::core::gossip::ForkEvidence {
                ours: chained[4].clone(),
                theirs: mycnet_spores::ChainedEvent::link(4, chained[3].hash, history().events[5].clone()),
            }]),
        ]
        .iter()
        .map(|m| encode_frame::<LedgerRecords>(m)[4..].to_vec())
        .collect()
    })
}

#[test]
fn gossip_frames_round_trip() {
    use mycnet_spores::net::gossip::LedgerRecords;
    use mycnet_spores::wire::gossip::{decode_frame, encode_frame};
    for body in valid_gossip_frames() {
        let msg = decode_frame::<LedgerRecords>(body).expect("a valid frame decodes");
        assert_eq!(&encode_frame::<LedgerRecords>(&msg)[4..], body.as_slice(), "{}", msg.kind());
    }
    // A range count that promises more than the frame holds is refused without allocating it.
    let mut huge = vec![3u8];
    huge.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(decode_frame::<LedgerRecords>(&huge).is_err());
    // The same request with an overlong varint (5 as 0x85 0x00) is another frame for one
    // message: refused, so every accepted frame is the one encoding of its message.
    let request =
        encode_frame::<LedgerRecords>(&mycnet_spores::core::gossip::GossipMessage::Request { from: 5, max_events: 7 })
            [4..]
            .to_vec();
    assert_eq!(request[1..], [5, 7]);
    let overlong = [request[0], 0x85, 0x00, 7];
    assert!(decode_frame::<LedgerRecords>(&request).is_ok());
    assert!(decode_frame::<LedgerRecords>(&overlong).is_err(), "an overlong varint is not accepted");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    /// What a gossip peer sends never panics the decoder; whatever it accepts is canonical.
    #[test]
    fn gossip_frame_decoder_never_panics(bytes in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..2048),
        (1u8..=4, prop::collection::vec(any::<u8>(), 0..2048)).prop_map(|(t, mut v)| { v.insert(0, t); v }),
        damaged(valid_gossip_frames()),
    ]) {
        use mycnet_spores::net::gossip::LedgerRecords;
        use mycnet_spores::wire::gossip::{decode_frame, encode_frame};
        if let Ok(msg) = decode_frame::<LedgerRecords>(&bytes) {
            // Ranges re-encode their records; other messages must be byte-exact.
            if !matches!(msg, mycnet_spores::core::gossip::GossipMessage::Range(_)) {
                prop_assert_eq!(&encode_frame::<LedgerRecords>(&msg)[4..], bytes.as_slice());
            }
        }
    }
}
