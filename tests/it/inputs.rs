//! Inputs checked at the door (issue 19): addresses given to announce, admit or join through
//! are refused with a typed error before anything is signed or sent; a port that cannot be
//! bound is named as this node's own, with the OS's reason; a start that fails leaves no
//! half-made data dir behind, and never touches one that existed.

use std::sync::Arc;
use std::time::Duration;

use mycnet_spores::net::addr::AddressProblem;
use mycnet_spores::net::quic::{Admission, QuicBackend, QuicConfig};
use mycnet_spores::net::TransportError;
use mycnet_spores::node::{self, InitConfig, NodeConfig};
use mycnet_spores::{Error, NodeAnnouncement, NodeKey, NodeRole, PeerNode, SporeSystem};

fn quic(key: &NodeKey) -> Arc<QuicBackend> {
    let config = QuicConfig { bind_patience: Duration::ZERO, ..QuicConfig::default() };
    Arc::new(QuicBackend::new(key.clone(), Admission::allow_all()).with_config(config))
}

fn config(data_dir: std::path::PathBuf, listen: &str) -> NodeConfig {
    NodeConfig {
        data_dir,
        listen: listen.into(),
        advertise: None,
        name: None,
        role: node::RoleConfig::Voter,
        capabilities: vec![],
        addresses: vec![],
        init: Some(InitConfig { network_name: "inputs".into(), network_id: None }),
        join: None,
        peers: vec![],
        from_seed: None,
        seed_quorum: false,
        write_timeout_ms: Some(2000),
        timeouts: node::TimeoutProfile::Lan,
        ..Default::default()
    }
}

/// Over QUIC, `admit`, `announce`, `join` and `add_member` refuse an address that is not
/// HOST:PORT with `Error::BadAddress`, and the chain does not move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_addresses_are_refused_before_anything_is_committed() {
    let root = tempfile::tempdir().expect("tempdir");
    let key = NodeKey::from_seed([31; 32]);
    let s = SporeSystem::builder()
        .data_dir(root.path().join("n"))
        .key(key.clone())
        .addr("127.0.0.1:0")
        .network(quic(&key))
        .build();
    s.initialize(crate::cluster::identity("inputs")).await.expect("initialize");
    let head = s.head().expect("head");

    let other = NodeKey::from_seed([32; 32]).node_id();
    let ann = |addr: &str| NodeAnnouncement {
        node: other,
        name: "x".into(),
        role: NodeRole::Rhizomorph,
        addresses: vec![addr.into()],
        capabilities: vec![],
    };
    let err = s.admit(ann("127.0.0.1:99999")).await.expect_err("port out of range");
    assert!(
        matches!(&err, Error::BadAddress(e) if e.problem == AddressProblem::PortOutOfRange { port: 99999, min: 1 }),
        "{err:?}"
    );
    assert!(err.to_string().contains("127.0.0.1:99999"), "names the address: {err}");
    assert!(matches!(s.admit(ann("not-an-addr")).await, Err(Error::BadAddress(_))));
    assert!(matches!(s.announce(vec!["[::1:7400".into()], vec![]).await, Err(Error::BadAddress(_))));
    let bad_peer = PeerNode { node: other, addr: "peer:0".into() };
    assert!(matches!(s.add_member(bad_peer.clone(), false).await, Err(Error::BadAddress(_))));
    assert!(matches!(s.join(bad_peer, false).await, Err(Error::BadAddress(_))));
    assert_eq!(s.head().expect("head"), head, "nothing was committed");
    assert!(s.node(&other).expect("registry").is_none());

    // A well-formed address is admitted as before.
    s.admit(ann("127.0.0.1:7409")).await.expect("a good address is admitted");
    let admitted = s.node(&other).expect("registry").expect("admitted");
    assert_eq!(admitted.addresses[..], ["127.0.0.1:7409"]);
    s.shutdown().await.expect("shutdown");
}

/// Addresses to announce given to the builder are checked before the node binds or opens
/// its ledger; the failed start leaves no data dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_announced_address_stops_the_start() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("n");
    let key = NodeKey::from_seed([33; 32]);
    let s = SporeSystem::builder()
        .data_dir(&dir)
        .key(key.clone())
        .addr("127.0.0.1:0")
        .addresses(vec!["10.0.0.1:70000".into()])
        .network(quic(&key))
        .build();
    assert!(matches!(s.start().await, Err(Error::BadAddress(_))));
    assert!(!dir.exists(), "the data dir the failed start created is gone");
}

/// Listening on a port another socket holds fails naming the local address and the OS's
/// reason (not "peer ... is unreachable"), and removes the data dir the start created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bind_failure_names_the_local_address_and_leaves_no_data_dir() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("fresh/n");
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").expect("take a port");
    let addr = taken.local_addr().expect("addr").to_string();
    let key = NodeKey::from_seed([34; 32]);
    let s = SporeSystem::builder().data_dir(&dir).key(key.clone()).addr(addr.as_str()).network(quic(&key)).build();
    let err = s.start().await.expect_err("the port is taken");
    match &err {
        Error::Transport(TransportError::Bind { addr: a, cause }) => {
            assert_eq!(a, &addr);
            assert!(cause.contains("in use"), "the OS's reason: {cause}");
        }
        other => panic!("expected a bind error, got {other:?}"),
    }
    assert_eq!(err.to_string().split(':').next(), Some("cannot listen on 127.0.0.1"), "{err}");
    assert!(!root.path().join("fresh").exists(), "every directory the failed start created is gone");
    assert!(root.path().is_dir());

    // An address not on this host.
    let s = SporeSystem::builder().data_dir(&dir).key(key.clone()).addr("192.0.2.1:7400").network(quic(&key)).build();
    let err = s.start().await.expect_err("not a local address");
    assert!(matches!(&err, Error::Transport(TransportError::Bind { .. })), "{err:?}");
    assert!(err.to_string().starts_with("cannot listen on 192.0.2.1:7400: "), "{err}");
}

/// `node::start_node` removes the data dir it created when a later step fails (here the seed
/// to form from does not exist), after stopping what it started; a data dir that existed is
/// kept with everything in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_node_start_removes_only_the_data_dir_it_created() {
    let root = tempfile::tempdir().expect("tempdir");
    // The node's key is made in its data dir, so the backend must take any key.
    let net =
        || Arc::new(mycnet_spores::net::inproc::InProcNetwork::new(35)) as Arc<dyn mycnet_spores::net::NetworkBackend>;
    let missing_seed = root.path().join("no-such.seed");

    let fresh = root.path().join("fresh");
    let mut c = config(fresh.clone(), "127.0.0.1:0");
    c.init = None;
    c.from_seed = Some(missing_seed.clone());
    let err = node::start_node(&c, Some(net())).await.err().expect("no seed file");
    assert!(matches!(err, Error::Seed(_)), "{err:?}");
    assert!(!fresh.exists(), "the data dir this start created is gone");

    let existing = root.path().join("existing");
    std::fs::create_dir(&existing).expect("mkdir");
    std::fs::write(existing.join("operator-notes"), b"keep me").expect("write");
    let mut c = config(existing.clone(), "127.0.0.1:0");
    c.init = None;
    c.from_seed = Some(missing_seed);
    assert!(node::start_node(&c, Some(net())).await.is_err());
    assert_eq!(std::fs::read(existing.join("operator-notes")).expect("kept"), b"keep me");

    // A config that does not validate is refused before anything is created.
    let never = root.path().join("never");
    let c = config(never.clone(), "127.0.0.1:99999");
    assert!(matches!(node::start_node(&c, Some(net())).await, Err(Error::Config(_))));
    assert!(!never.exists());
}
