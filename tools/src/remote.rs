//! `spore node` (run one node over QUIC), `spore status` (read a running node over the
//! read-only admin protocol; `spore query` is `querycmd`'s), `spore keygen`. Writes are
//! `service`'s.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mycnet_spores::http::{self, HttpOptions, HttpServer};
use mycnet_spores::net::addr::{check_listen_addr, check_peer_addr};
use mycnet_spores::net::quic::{self};
use mycnet_spores::node::{self, NodeConfig, NodeEvent};
use mycnet_spores::raft::{RpcRequest, RpcResponse};
use mycnet_spores::store::keyfile;
use mycnet_spores::{NodeId, SporeStatus};
use serde_json::json;

use crate::output::{CliError, CliResult, Out};

/// `spore keygen`: creates (or shows) the node key of a data dir.
pub(crate) fn keygen(data_dir: &Path, o: &mut Out) -> CliResult {
    std::fs::create_dir_all(data_dir).map_err(|e| CliError::io(data_dir, e))?;
    let path = data_dir.join(keyfile::KEY_FILE_NAME);
    let existed = path.exists();
    let key = keyfile::load_or_generate(&path).map_err(|e| CliError::Io(e.to_string()))?;
    let id = key.node_id();
    if o.json {
        o.json_line(&json!({ "node_id": id, "key_file": path, "created": !existed }))
    } else {
        o.line(id.to_hex())
    }
}

/// `spore node`: runs until SIGINT or SIGTERM, then shuts down cleanly. A start that fails
/// removes the data dir if this run created it (an existing one is kept as it was).
pub(crate) async fn run_node(config: NodeConfig, o: &mut Out) -> CliResult {
    config.validate().map_err(|e| CliError::usage(e.to_string()))?;
    tracing::info!(listen = %config.listen, data_dir = %config.data_dir.display(), "starting node");
    // The node runs its own QUIC endpoint and upkeep (admission from the registry, yielding a
    // lost split-brain); this command only adds the config, the signals and the logs. A start
    // that fails removes a data dir it created.
    let system = node::start_node(&config, None).await.map_err(|e| match e {
        mycnet_spores::Error::Config(c) => CliError::usage(c.to_string()),
        e => CliError::Io(e.to_string()),
    })?;
    let http = match start_http(&system, &config).await {
        Ok(http) => http,
        Err(e) => {
            if let Err(stop) = system.shutdown().await {
                tracing::warn!(error = %stop, "could not stop the node");
            }
            return Err(e);
        }
    };
    let http_addr = http.as_ref().map(|h| h.local_addr().to_string());
    let st = system.status().map_err(|e| CliError::Io(e.to_string()))?;
    if o.json {
        o.json_line(&json!({ "event": "ready", "node_id": st.node, "addr": st.addr, "head": st.head, "timeouts": config.timeouts, "http": http_addr }))?;
    } else {
        o.line(format!("node {} ready on {} ({}, {:?} timeouts)", st.node, st.addr, st.raft_state, config.timeouts))?;
        if let Some(a) = &http_addr {
            o.line(format!("http endpoint on http://{a}/v1/status"))?;
        }
    }
    o.flush()?;

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| CliError::Io(e.to_string()))?;
    let mut events = system.events();
    // A node that halted before we subscribed reports it in its status.
    let mut halted = system.status().ok().and_then(|st| st.halted);
    while halted.is_none() {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            event = events.recv() => match event {
                // A storage error the node cannot survive (a full disk): stop, and let a
                // supervisor restart it once the cause is fixed.
                Ok(NodeEvent::Halted { reason }) => halted = Some(reason),
                // The node logs the rest itself.
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
        }
    }
    if let Some(h) = http {
        if let Err(e) = h.shutdown().await {
            tracing::warn!(error = %e, "the http endpoint did not stop cleanly");
        }
    }
    system.shutdown().await.map_err(|e| CliError::Io(e.to_string()))?;
    if let Some(why) = halted {
        tracing::error!(reason = %why, "halted; stopped");
        return Err(CliError::Io(format!("node halted: {why}")));
    }
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Serves the read-only HTTP endpoint of the running node when the config asks for it
/// (`http_listen`, `--http`); the library starts none by itself.
async fn start_http(system: &mycnet_spores::SporeSystem, config: &NodeConfig) -> Result<Option<HttpServer>, CliError> {
    let Some(addr) = &config.http_listen else { return Ok(None) };
    let token = config.http_token().map_err(|e| CliError::usage(e.to_string()))?;
    let listener = tokio::net::TcpListener::bind(addr.as_str())
        .await
        .map_err(|e| CliError::Io(format!("--http {addr}: cannot listen: {e}")))?;
    let bound = listener.local_addr().map_err(|e| CliError::Io(e.to_string()))?;
    if !bound.ip().is_loopback() && token.is_none() {
        tracing::warn!(%bound, "the http endpoint listens beyond loopback without a token: anyone who reaches it reads the registry");
    }
    let options = HttpOptions { token, ..HttpOptions::default() };
    let server = http::serve(system.clone(), listener, options).map_err(|e| CliError::Io(e.to_string()))?;
    Ok(Some(server))
}

/// Applies `--http` and `--http-token-file` over the config (file or flags), checked as the
/// config's own values are.
pub(crate) fn http_from_flags(
    config: &mut NodeConfig,
    http: Option<String>,
    token_file: Option<PathBuf>,
) -> Result<(), CliError> {
    if let Some(a) = http {
        check_listen_addr(&a).map_err(|e| flag_error("--http", &a, e))?;
        config.http_listen = Some(a);
    }
    if let Some(f) = token_file {
        config.http_token = None;
        config.http_token_file = Some(f);
    }
    config.validate().map_err(|e| CliError::usage(e.to_string()))?;
    // A token file that cannot be read is a usage error before anything starts.
    config.http_token().map_err(|e| CliError::usage(e.to_string()))?;
    Ok(())
}

/// Builds a node config from `spore node` flags.
#[allow(clippy::too_many_arguments)]
pub(crate) fn config_from_flags(
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    advertise: Option<String>,
    name: Option<String>,
    role: node::RoleConfig,
    capabilities: Vec<String>,
    init: Option<String>,
    join_addr: Option<String>,
    join_key: Option<String>,
    join_as_learner: bool,
    peers: Vec<String>,
    latent_peers: Vec<String>,
    from_seed: Option<PathBuf>,
    trust_seed: Option<PathBuf>,
) -> Result<NodeConfig, CliError> {
    if trust_seed.is_some() && join_addr.is_none() {
        return Err(CliError::usage("--trust-seed goes with --join-addr"));
    }
    let data_dir = data_dir.ok_or_else(|| CliError::usage("--data-dir is required without --config"))?;
    let listen = listen.ok_or_else(|| CliError::usage("--listen is required without --config"))?;
    check_listen_addr(&listen).map_err(|e| flag_error("--listen", &listen, e))?;
    if let Some(a) = &advertise {
        check_peer_addr(a).map_err(|e| flag_error("--advertise", a, e))?;
    }
    if let Some(a) = &join_addr {
        check_peer_addr(a).map_err(|e| flag_error("--join-addr", a, e))?;
    }
    if let Some(k) = &join_key {
        node::parse_node_key("join.via_key", k).map_err(|e| flag_error("--join-key", k, e))?;
    }
    let join = match (join_addr, join_key) {
        (Some(via_addr), Some(via_key)) => {
            Some(node::JoinConfig { via_addr, via_key, as_voter: !join_as_learner, trust_seed })
        }
        (None, None) => None,
        _ => return Err(CliError::usage("--join-addr and --join-key go together")),
    };
    let tagged = peers
        .into_iter()
        .map(|p| (p, node::RoleConfig::Voter))
        .chain(latent_peers.into_iter().map(|p| (p, node::RoleConfig::Latent)));
    let peers = tagged
        .map(|(p, role)| {
            let flag = if role == node::RoleConfig::Latent { "--latent-peer" } else { "--peer" };
            let (key, addr) =
                p.split_once('@').ok_or_else(|| CliError::usage(format!("{flag} {p}: expected KEY@HOST:PORT")))?;
            node::parse_node_key("peers.key", key).map_err(|e| flag_error(flag, &p, e))?;
            check_peer_addr(addr).map_err(|e| flag_error(flag, &p, e))?;
            Ok(node::PeerConfig { addr: addr.to_string(), key: key.to_string(), name: None, role })
        })
        .collect::<Result<Vec<_>, CliError>>()?;
    let config = NodeConfig {
        data_dir,
        listen,
        advertise,
        name,
        role,
        capabilities,
        addresses: vec![],
        init: init.map(|network_name| node::InitConfig { network_name, network_id: None }),
        join,
        peers,
        from_seed,
        seed_quorum: false,
        write_timeout_ms: None,
        timeouts: node::TimeoutProfile::Lan,
        ..Default::default()
    };
    config.validate().map_err(|e| CliError::usage(e.to_string()))?;
    Ok(config)
}

/// A flag whose value does not parse: a usage error naming the flag and the value.
fn flag_error(flag: &str, value: &str, e: impl std::fmt::Display) -> CliError {
    // The library's messages start with the config file's wording; the flag says it here.
    let why = e.to_string();
    let why = why.strip_prefix("invalid node config: ").unwrap_or(&why);
    CliError::usage(format!("{flag} {value}: {why}"))
}

/// Reads a TOML node config.
pub(crate) fn config_from_file(path: &Path) -> Result<NodeConfig, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| CliError::io(path, e))?;
    NodeConfig::from_toml(&text).map_err(|e| CliError::usage(format!("{}: {e}", path.display())))
}

pub(crate) async fn call(
    addr: &str,
    key: Option<&str>,
    req: RpcRequest,
    timeout: Duration,
) -> Result<(NodeId, RpcResponse), CliError> {
    let expected = key.map(NodeId::from_hex).transpose().map_err(|e| CliError::usage(e.to_string()))?;
    admin(addr, expected, req, timeout).await
}

/// The key `--client-key-file` gave, set once at start.
static CLIENT_KEY: std::sync::OnceLock<mycnet_spores::NodeKey> = std::sync::OnceLock::new();

/// Loads the `--client-key-file` key every read from a running node presents.
pub(crate) fn set_client_key(path: &Path) -> CliResult {
    let key = keyfile::load(path).map_err(|e| CliError::usage(format!("--client-key-file: {e}")))?;
    let _ = CLIENT_KEY.set(key);
    Ok(())
}

/// The key set by `--client-key-file`, if any.
pub(crate) fn client_key() -> Option<mycnet_spores::NodeKey> {
    CLIENT_KEY.get().cloned()
}

/// One read-only call to the node at `addr` over the admin protocol, as the
/// `--client-key-file` key if one was given.
pub(crate) async fn admin(
    addr: &str,
    expected: Option<NodeId>,
    req: RpcRequest,
    timeout: Duration,
) -> Result<(NodeId, RpcResponse), CliError> {
    match CLIENT_KEY.get() {
        Some(key) => quic::admin_call_as(key, addr, expected, req, timeout).await,
        None => quic::admin_call(addr, expected, req, timeout).await,
    }
    .map_err(|e| CliError::Io(e.to_string()))
}

/// `spore status --addr`.
pub(crate) async fn status(addr: &str, key: Option<&str>, timeout: Duration, o: &mut Out) -> CliResult {
    let (node, resp) = call(addr, key, RpcRequest::Status, timeout).await?;
    let st: SporeStatus = match resp {
        RpcResponse::Status(Ok(st)) => st,
        RpcResponse::Status(Err(e)) => return Err(CliError::Io(format!("{addr} could not answer: {e:?}"))),
        other => return Err(CliError::Io(format!("{addr} answered with {}", kind_of(&other)))),
    };
    if st.node != node {
        return Err(CliError::BadData(format!("{addr} proved key {node} but reports itself as {}", st.node)));
    }
    if o.json {
        return o.json_line(&st);
    }
    o.line(format!("node         {}", st.node))?;
    o.line(format!("address      {}", st.addr))?;
    let confirmed = match st.leader_confirmed {
        Some(false) => ", UNCONFIRMED: no majority heard within an election timeout; answers may be stale",
        _ => "",
    };
    o.line(format!("raft         {} (term {}){confirmed}", st.raft_state, st.term))?;
    if let Some(d) = &st.state_divergence {
        o.line(format!("DIVERGENCE   {d}; no writes until an operator clears it"))?;
    }
    o.line(format!("leader       {}", st.leader.map_or("unknown".into(), |l| l.to_hex())))?;
    o.line(format!(
        "head         {}",
        st.head.map_or("-".into(), |h| format!("{} {} ({})", h.seq, h.hash, h.timestamp))
    ))?;
    o.line(format!("applied      {}", st.last_applied.map_or("-".into(), |a| a.to_string())))?;
    o.line(format!("network      {}", st.fingerprint.map_or("-".into(), |f| f.to_hex())))?;
    o.line(format!("mode         {} (since {})", st.mode, st.mode_since))?;
    if let Some(reason) = &st.mode_reason {
        o.line(format!("  why        {reason}"))?;
    }
    o.line(format!(
        "tier         {:?}{}",
        st.spore_type,
        if st.raft_member { " (Raft member)" } else { " (latent: kept by gossip)" }
    ))?;
    let reach = |r: Option<u64>| r.map_or("-".to_string(), |s| format!("≤{s}"));
    o.line(format!(
        "tiers        primary {}  seed {}  latent {}",
        reach(st.reach.primary),
        reach(st.reach.seed),
        reach(st.reach.latent)
    ))?;
    o.line(format!("anchor       {}", st.anchor.map_or("-".into(), |a| format!("{} {}", a.seq, a.hash))))?;
    o.line(format!(
        "gossip       {}",
        st.last_gossip_ms.map_or("no session yet".into(), |ms| format!("last session {ms} ms ago"))
    ))?;
    if st.history_from > 0 {
        o.line(format!(
            "history      held from seq {} (older events pruned under retention and archived, or not yet backfilled after a state-only seed)",
            st.history_from
        ))?;
    }
    if st.provisional > 0 {
        o.line(format!("provisional  {} write(s) held until a voter is reachable", st.provisional))?;
    }
    if st.forks > 0 {
        o.line(format!(
            "FORKS        {} piece(s) of fork evidence stored: two chains of this network exist",
            st.forks
        ))?;
    }
    if let Some(b) = &st.backup {
        print_backup(o, b)?;
    }
    o.line(format!("raft log     {}", st.last_log.map_or("-".into(), |l| l.to_string())))?;
    o.line(format!("voters       {}", st.voters.iter().map(|v| v.short()).collect::<Vec<_>>().join(" ")))?;
    o.line(format!("learners     {}", st.learners.iter().map(|v| v.short()).collect::<Vec<_>>().join(" ")))?;
    o.line("peers:")?;
    for p in &st.peers {
        let lag = match p.lag {
            Some(l) => format!("{l} entries behind"),
            None if st.raft_state == "Leader" => "not heard from".into(),
            None => "(lag known by the leader)".into(),
        };
        o.line(format!(
            "  {:<12} {:<22} {:<7} {lag}",
            p.node.short(),
            p.addr,
            if p.voter { "voter" } else { "learner" }
        ))?;
    }
    Ok(())
}

/// The `backup` lines of `spore status`: the policy, the last success and the last failure.
fn print_backup(o: &mut Out, b: &mycnet_spores::wire::status::BackupStatus) -> CliResult {
    let what = if b.events { "with every event" } else { "state-only" };
    o.line(format!(
        "backup       every {} ms into {}, newest {} kept, {what}; {} written, {} failed since start",
        b.interval_ms, b.dir, b.keep, b.succeeded, b.failed
    ))?;
    match &b.last_success {
        Some(s) => o.line(format!("  last ok    {} seq {} {}", s.at, s.head_seq, s.path))?,
        None => o.line("  last ok    none yet")?,
    }
    if let Some(f) = &b.last_failure {
        o.line(format!("  FAILED     {} {}", f.at, f.error))?;
    }
    Ok(())
}

pub(crate) fn kind_of(r: &RpcResponse) -> &'static str {
    match r {
        RpcResponse::Status(_) => "a status",
        RpcResponse::Query(_) => "a query answer",
        _ => "an unexpected response",
    }
}
