//! The node config's unit tests: what the TOML and flags accept, and what they refuse.

use super::*;
use crate::core::keys::PublicKey;

#[test]
fn parses_a_full_config_and_refuses_contradictions() {
    let key = crate::core::keys::NodeKey::from_seed([7; 32]).node_id().to_hex();
    let text = format!(
        "data_dir = \"/tmp/n1\"\nlisten = \"127.0.0.1:7401\"\nrole = \"voter\"\ncapabilities = [\"storage\"]\n\
         [join]\nvia_addr = \"127.0.0.1:7400\"\nvia_key = \"{key}\"\n[[peers]]\naddr = \"127.0.0.1:7400\"\nkey = \"{key}\"\n"
    );
    let c = NodeConfig::from_toml(&text).expect("valid");
    assert_eq!(c.join.as_ref().map(|j| j.as_voter), Some(true));
    assert_eq!(c.peers.len(), 1);
    let both = format!("{text}[init]\nnetwork_name = \"x\"\n");
    assert!(matches!(NodeConfig::from_toml(&both), Err(ConfigError::Invalid(_))));
    assert!(matches!(NodeConfig::from_toml("listen = 1"), Err(ConfigError::Parse(_))));
    assert!(matches!(
        NodeConfig::from_toml("data_dir = \"x\"\nlisten = \"a:1\"\nbogus = 1\n"),
        Err(ConfigError::Parse(_))
    ));
}

/// Addresses and keys are checked when the config is read, naming the setting: nothing
/// malformed reaches a start, a join or the registry.
#[test]
fn refuses_malformed_addresses_and_keys_naming_the_setting() {
    let key = crate::core::keys::NodeKey::from_seed([7; 32]).node_id().to_hex();
    let base = "data_dir = \"/tmp/n1\"\n";
    let with = |rest: &str| NodeConfig::from_toml(&format!("{base}{rest}"));
    let field_of = |r: Result<NodeConfig, ConfigError>| match r {
        Err(ConfigError::BadAddress { field, .. }) | Err(ConfigError::NotANodeKey { field, .. }) => Some(field),
        _ => None,
    };
    assert_eq!(field_of(with("listen = \"not-an-addr\"\n")), Some("listen"));
    assert!(with("listen = \"127.0.0.1:0\"\n").is_ok(), "port 0 listens on any free port");
    let listen = "listen = \"127.0.0.1:7401\"\n";
    assert_eq!(field_of(with(&format!("{listen}addresses = [\"h:70000\"]\n"))), Some("addresses"));
    let join = |addr: &str, k: &str| with(&format!("{listen}[join]\nvia_addr = \"{addr}\"\nvia_key = \"{k}\"\n"));
    assert_eq!(field_of(join("not-an-addr", &key)), Some("join.via_addr"));
    // 32 bytes that do not decompress to an ed25519 point are no node's key.
    let not_a_point =
        (0u8..=255).map(|b| NodeId([b; 32])).find(|id| PublicKey::from_node_id(id).is_none()).expect("a non-point");
    assert_eq!(field_of(join("127.0.0.1:7400", &not_a_point.to_hex())), Some("join.via_key"));
    let peer = |addr: &str| with(&format!("{listen}[[peers]]\naddr = \"{addr}\"\nkey = \"{key}\"\n"));
    assert_eq!(field_of(peer("127.0.0.1:99999")), Some("peers.addr"));
    assert!(peer("127.0.0.1:7400").is_ok());
    let e = peer("127.0.0.1:99999").expect_err("out of range").to_string();
    assert!(e.contains("peers.addr") && e.contains("99999") && e.contains("out of range"), "{e}");
}

/// The HTTP endpoint's settings are checked when read: its address, a token only with an
/// address, one of `http_token` and `http_token_file`, a token a header can carry.
#[test]
fn http_settings_are_checked_when_read() {
    let base = "data_dir = \"x\"\nlisten = \"127.0.0.1:1\"\n";
    let with = |rest: &str| NodeConfig::from_toml(&format!("{base}{rest}"));
    let c = with("http_listen = \"127.0.0.1:8500\"\nhttp_token = \"s3cret\"\n").expect("valid");
    assert_eq!(c.http_token().expect("token").as_deref(), Some("s3cret"));
    assert!(matches!(with("http_listen = \"nope\"\n"), Err(ConfigError::BadAddress { field: "http_listen", .. })));
    assert!(matches!(with("http_token = \"t\"\n"), Err(ConfigError::Invalid(_))), "a token without an address");
    assert!(matches!(
        with("http_listen = \"127.0.0.1:8500\"\nhttp_token = \"a b\"\n"),
        Err(ConfigError::BadToken { .. })
    ));
    assert!(matches!(
        with("http_listen = \"127.0.0.1:8500\"\nhttp_token = \"t\"\nhttp_token_file = \"f\"\n"),
        Err(ConfigError::Invalid(_))
    ));
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("token");
    std::fs::write(&file, "from-a-file\n").expect("write");
    let c = with(&format!("http_listen = \"127.0.0.1:0\"\nhttp_token_file = \"{}\"\n", file.display())).expect("valid");
    assert_eq!(c.http_token().expect("token").as_deref(), Some("from-a-file"));
    std::fs::write(&file, "\n").expect("write");
    assert!(matches!(c.http_token(), Err(ConfigError::BadToken { .. })), "an empty token file");
    let missing = with("http_listen = \"127.0.0.1:0\"\nhttp_token_file = \"/no/such/file\"\n").expect("valid");
    assert!(matches!(missing.http_token(), Err(ConfigError::TokenFile { .. })));
}

#[test]
fn the_timeouts_profile_is_lan_unless_wan_is_asked_for() {
    let base = "data_dir = \"x\"\nlisten = \"a:1\"\n";
    let heartbeat = |c: &NodeConfig| {
        c.builder(Some(std::sync::Arc::new(crate::net::inproc::InProcNetwork::new(0)))).timeouts_ref().heartbeat
    };
    let lan = NodeConfig::from_toml(base).expect("valid");
    assert_eq!(lan.timeouts, TimeoutProfile::Lan);
    assert_eq!(heartbeat(&lan), Timeouts::default().heartbeat);
    let wan = NodeConfig::from_toml(&format!("{base}timeouts = \"wan\"\n")).expect("valid");
    assert_eq!(heartbeat(&wan), Timeouts::wan().heartbeat);
    assert!(Timeouts::wan().election_min >= Timeouts::wan().heartbeat * 10);
    assert!(matches!(NodeConfig::from_toml(&format!("{base}timeouts = \"moon\"\n")), Err(ConfigError::Parse(_))));
}

#[test]
fn the_snapshot_bound_is_a_quarter_of_memory_unless_set() {
    let base = "data_dir = \"x\"\nlisten = \"a:1\"\n";
    let bound = |c: &NodeConfig| {
        c.builder(Some(std::sync::Arc::new(crate::net::inproc::InProcNetwork::new(0))))
            .timeouts_ref()
            .snapshot_bytes_max
    };
    let default = NodeConfig::from_toml(base).expect("valid");
    assert_eq!(bound(&default), crate::raft::inbound::default_snapshot_bytes_max());
    let set = NodeConfig::from_toml(&format!("{base}snapshot_bytes_max = 2147483648\n")).expect("valid");
    assert_eq!(bound(&set), 2 << 30);
    assert!(matches!(NodeConfig::from_toml(&format!("{base}snapshot_bytes_max = -1\n")), Err(ConfigError::Parse(_))));
}

/// `connections_max` reaches the node's QUIC endpoint; nonsense is refused when read.
#[test]
fn connections_max_is_read_and_bounded() {
    let base = "data_dir = \"/tmp/n1\"\nlisten = \"127.0.0.1:7401\"\n";
    let c = NodeConfig::from_toml(&format!("{base}connections_max = 1024\n")).expect("valid");
    assert_eq!(c.connections_max, Some(1024));
    assert_eq!(NodeConfig::from_toml(base).expect("valid").connections_max, None, "the endpoint's default");
    for bad in ["0", "65537"] {
        assert!(
            matches!(NodeConfig::from_toml(&format!("{base}connections_max = {bad}\n")), Err(ConfigError::Invalid(_))),
            "{bad}"
        );
    }
    assert!(matches!(NodeConfig::from_toml(&format!("{base}connections_max = -1\n")), Err(ConfigError::Parse(_))));
}
