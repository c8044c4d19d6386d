//! `spore demo`: a local network on loopback with embedded defaults.
//!
//! Forms a network of 3 voters, adds 2 latent nodes, registers nodes and services, kills the
//! leader and shows the new one, restarts the old leader and shows it catch up, starts a sixth
//! node from a state-only seed that backfills the history by gossip, then prints the
//! registries and a verified chain head for every node. Cleans up unless `--keep`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mycnet_spores::net::NetworkBackend;
use mycnet_spores::{Endpoint, LedgerReader, NetworkIdentity, NodeKey, NodeRole, SporeSystem, Timeouts, TrustScore};

/// Builds the network attachment of one node (QUIC on loopback in the product).
pub(crate) type BackendFactory = dyn Fn(&NodeKey) -> Arc<dyn NetworkBackend>;

/// Options of the demo.
pub(crate) struct DemoOptions {
    /// Keep the data directories (printed at the end) for the inspector.
    pub keep: bool,
    /// Where to put them (a temporary directory if `None`).
    pub dir: Option<PathBuf>,
}

struct DemoNode {
    name: String,
    key: NodeKey,
    role: NodeRole,
    dir: PathBuf,
    addr: String,
    /// Gossip bootstrap peers (a node kept by gossip instead of Raft).
    gossip_peers: Vec<mycnet_spores::PeerNode>,
    system: Option<SporeSystem>,
}

type DemoResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn timeouts() -> Timeouts {
    Timeouts {
        heartbeat: Duration::from_millis(100),
        election_min: Duration::from_millis(500),
        election_max: Duration::from_millis(1000),
        write: Duration::from_secs(10),
        rpc: Duration::from_secs(2),
        ..Timeouts::default()
    }
}

async fn start(node: &mut DemoNode, backend: &BackendFactory) -> DemoResult<()> {
    let mut b = SporeSystem::builder()
        .data_dir(&node.dir)
        .key(node.key.clone())
        .name(node.name.clone())
        .role(node.role)
        .addr(node.addr.clone())
        .network(backend(&node.key))
        .timeouts(timeouts())
        // Anchors (and with the first, an attested state) within half a second of a write, so
        // the short demo's state-only seed starts from a state the chain attests.
        .anchors(mycnet_spores::node::AnchorPolicy { every: Duration::from_millis(500), ..Default::default() });
    if !node.gossip_peers.is_empty() {
        let gossip =
            mycnet_spores::net::gossip::GossipConfig { interval: Duration::from_millis(200), ..Default::default() };
        b = b.gossip(gossip).gossip_peers(node.gossip_peers.clone());
    }
    let s = b.build();
    s.start().await?;
    node.addr = s.peer()?.addr;
    node.system = Some(s);
    Ok(())
}

fn sys(node: &DemoNode) -> DemoResult<&SporeSystem> {
    node.system.as_ref().ok_or_else(|| format!("{} is not running", node.name).into())
}

async fn wait_for_leader(nodes: &[DemoNode], timeout: Duration) -> DemoResult<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        for (i, n) in nodes.iter().enumerate() {
            if let Some(s) = &n.system {
                if s.status()?.raft_state == "Leader" {
                    return Ok(i);
                }
            }
        }
        if Instant::now() > deadline {
            return Err("no leader was elected in time".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_converged(nodes: &[DemoNode], timeout: Duration) -> DemoResult<mycnet_spores::ChainHead> {
    let deadline = Instant::now() + timeout;
    loop {
        let heads: Vec<_> = nodes.iter().filter_map(|n| n.system.as_ref()).map(|s| s.head().ok().flatten()).collect();
        if let Some(Some(first)) = heads.first() {
            if heads.iter().all(|h| h.as_ref() == Some(first)) {
                return Ok(*first);
            }
        }
        if Instant::now() > deadline {
            return Err("nodes did not converge on one head in time".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every running node holds one head and keeps it for `quiet`. The chain's length
/// at the end varies from run to run (20 or 21 events): an event from the nodes' own upkeep
/// can land a moment after they first agree, and must not land while they stop one by one.
async fn wait_settled(nodes: &[DemoNode], quiet: Duration, timeout: Duration) -> DemoResult<mycnet_spores::ChainHead> {
    let deadline = Instant::now() + timeout;
    loop {
        let head = wait_converged(nodes, deadline.saturating_duration_since(Instant::now())).await?;
        tokio::time::sleep(quiet).await;
        if wait_converged(nodes, Duration::ZERO).await.ok() == Some(head) {
            return Ok(head);
        }
        if Instant::now() > deadline {
            return Err("the nodes' head kept moving".into());
        }
    }
}

fn print_status(out: &mut dyn Write, nodes: &[DemoNode]) -> DemoResult<()> {
    writeln!(out, "  {:<6} {:<11} {:<10} {:>5} {:>6}  {:<12} address", "node", "role", "raft", "term", "head", "hash")?;
    for n in nodes {
        match &n.system {
            None => writeln!(out, "  {:<6} {:<11} {:<10}", n.name, n.role.to_string(), "(down)")?,
            Some(s) => {
                let st = s.status()?;
                let (seq, hash) = st.head.map_or(("-".into(), "-".into()), |h| (h.seq.to_string(), h.hash.short()));
                writeln!(
                    out,
                    "  {:<6} {:<11} {:<10} {:>5} {:>6}  {:<12} {}",
                    n.name,
                    n.role.to_string(),
                    st.raft_state,
                    st.term,
                    seq,
                    hash,
                    st.addr
                )?;
            }
        }
    }
    Ok(())
}

fn step(out: &mut dyn Write, text: &str) -> DemoResult<()> {
    writeln!(out, "\n==> {text}")?;
    out.flush()?;
    Ok(())
}

/// Runs the demo, writing a readable account to `out`.
pub(crate) async fn run(options: DemoOptions, backend: &BackendFactory, out: &mut dyn Write) -> DemoResult<()> {
    let started = Instant::now();
    // Without --keep or --dir the data lives in a temporary directory removed on exit.
    let mut tmp = None;
    let root: PathBuf = match (&options.dir, options.keep) {
        (Some(d), _) => d.clone(),
        (None, true) => {
            let d = std::env::temp_dir().join(format!("spore-demo-{}", std::process::id()));
            std::fs::create_dir_all(&d)?;
            d
        }
        (None, false) => {
            let t = tempfile::Builder::new().prefix("spore-demo-").tempdir()?;
            let p = t.path().to_path_buf();
            tmp = Some(t);
            p
        }
    };
    let mut nodes: Vec<DemoNode> = (0..5)
        .map(|i| {
            let voter = i < 3;
            let name = if voter { format!("v{i}") } else { format!("l{}", i - 3) };
            DemoNode {
                name: name.clone(),
                key: NodeKey::generate().unwrap_or_else(|_| NodeKey::from_seed([i as u8 + 1; 32])),
                role: if voter { NodeRole::Sclerotium } else { NodeRole::Rhizomorph },
                dir: root.join(&name),
                addr: "127.0.0.1:0".into(),
                gossip_peers: Vec::new(),
                system: None,
            }
        })
        .collect();

    // Each data dir holds its node's key file, so a kept dir is a complete node data dir
    // (`spore seed export --data-dir` signs with it).
    for n in &nodes {
        std::fs::create_dir_all(&n.dir)?;
        mycnet_spores::store::keyfile::save(&n.dir.join(mycnet_spores::store::keyfile::KEY_FILE_NAME), &n.key)?;
    }
    step(out, "Starting 3 voters (Sclerotia) and 2 Rhizomorphs on 127.0.0.1")?;
    for n in nodes.iter_mut() {
        start(n, backend).await?;
        writeln!(out, "  {} listening on {}  key {}", n.name, n.addr, n.key.node_id().short())?;
    }

    step(out, "v0 forms the network \"demo-network\"")?;
    let identity = NetworkIdentity {
        network_id: uuid::Uuid::new_v4(),
        network_name: "demo-network".into(),
        genesis_timestamp: chrono::Utc::now(),
    };
    nodes[0].system.as_mut().ok_or("v0 down")?.initialize(identity).await?;

    step(out, "v0 admits the others; v1, v2 join as voters, l0, l1 as learners")?;
    for i in 1..nodes.len() {
        let (ann, peer) = {
            let s = sys(&nodes[i])?;
            (s.announcement()?, s.peer()?)
        };
        let v0 = sys(&nodes[0])?;
        v0.admit(ann).await?;
        v0.add_member(peer, nodes[i].role == NodeRole::Sclerotium).await?;
    }
    wait_converged(&nodes, Duration::from_secs(10)).await?;
    print_status(out, &nodes)?;

    step(out, "Nodes announce capabilities and register services (writes on followers are forwarded)")?;
    sys(&nodes[1])?.announce(vec![nodes[1].addr.clone()], vec!["storage".into(), "ssd".into()]).await?;
    sys(&nodes[1])?
        .register_service(
            "object-store",
            vec![Endpoint { protocol: "quic".into(), address: nodes[1].addr.clone().into() }],
            vec!["storage".into()],
            vec![("tier".into(), "hot".into())],
        )
        .await?;
    sys(&nodes[2])?
        .register_service(
            "dns",
            vec![Endpoint { protocol: "udp".into(), address: "127.0.0.1:5353".into() }],
            vec!["dns".into()],
            vec![],
        )
        .await?;
    sys(&nodes[3])?.announce(vec![nodes[3].addr.clone()], vec!["gpu".into()]).await?;
    let inference = sys(&nodes[3])?
        .register_service(
            "inference",
            vec![Endpoint { protocol: "grpc".into(), address: "127.0.0.1:9000".into() }],
            vec!["gpu".into()],
            vec![],
        )
        .await?;
    sys(&nodes[4])?
        .register_service(
            "relay",
            vec![Endpoint { protocol: "quic".into(), address: nodes[4].addr.clone().into() }],
            vec!["relay".into()],
            vec![],
        )
        .await?;
    let l1 = nodes[4].key.node_id();
    sys(&nodes[0])?.set_trust(l1, TrustScore(850), "relayed reliably").await?;
    let head = wait_converged(&nodes, Duration::from_secs(10)).await?;
    writeln!(out, "  committed up to seq {} ({})", head.seq, head.hash.short())?;

    let leader = wait_for_leader(&nodes, Duration::from_secs(10)).await?;
    step(out, &format!("Killing the leader {}", nodes[leader].name))?;
    if let Some(s) = nodes[leader].system.take() {
        s.shutdown().await?;
    }
    let t = Instant::now();
    let new_leader = wait_for_leader(&nodes, Duration::from_secs(15)).await?;
    writeln!(out, "  new leader: {} (elected in {} ms)", nodes[new_leader].name, t.elapsed().as_millis())?;

    step(out, "Writing while the old leader is down")?;
    sys(&nodes[3])?.deregister_service(inference, "moved to a bigger GPU").await?;
    sys(&nodes[3])?
        .register_service(
            "inference",
            vec![Endpoint { protocol: "grpc".into(), address: "127.0.0.1:9001".into() }],
            vec!["gpu".into()],
            vec![],
        )
        .await?;
    let offline = nodes[4].key.node_id();
    sys(&nodes[new_leader])?.mark_offline(offline, mycnet_spores::Timestamp::now()).await?;
    print_status(out, &nodes)?;

    step(out, &format!("Restarting {} from its data dir", nodes[leader].name))?;
    start(&mut nodes[leader], backend).await?;
    let head = wait_converged(&nodes, Duration::from_secs(15)).await?;
    writeln!(out, "  {} caught up to seq {} ({})", nodes[leader].name, head.seq, head.hash.short())?;
    print_status(out, &nodes)?;

    step(out, "A sixth node, g0, starts from a state-only seed of v0 and backfills the history by gossip")?;
    let seed_path = root.join("v0-state.seed");
    let at = sys(&nodes[0])?.export_seed(&seed_path, false).await?;
    let seed_bytes = std::fs::metadata(&seed_path)?.len();
    let mut g0 = DemoNode {
        name: "g0".into(),
        key: NodeKey::generate().unwrap_or_else(|_| NodeKey::from_seed([6; 32])),
        role: NodeRole::Rhizomorph,
        dir: root.join("g0"),
        addr: "127.0.0.1:0".into(),
        gossip_peers: vec![sys(&nodes[0])?.peer()?],
        system: None,
    };
    std::fs::create_dir_all(&g0.dir)?;
    mycnet_spores::store::keyfile::save(&g0.dir.join(mycnet_spores::store::keyfile::KEY_FILE_NAME), &g0.key)?;
    {
        let seed = mycnet_spores::seed::read_file(&seed_path, mycnet_spores::seed::VerifyPolicy::default())?;
        let mut ledger = mycnet_spores::Ledger::open(g0.dir.join("ledger"), mycnet_spores::LedgerConfig::default())?;
        mycnet_spores::seed::import(&mut ledger, &seed)?;
        let carried = match seed.proof {
            mycnet_spores::seed::StateProof::AttestedAt { seq, .. } => {
                format!(
                    "the registries at seq {seq}, which the chain attests, and the {} events after it",
                    seed.events.len()
                )
            }
            _ => format!("all {} events (no state attested in the chain yet)", seed.events.len()),
        };
        writeln!(out, "  v0's seed at head seq {} in {seed_bytes} bytes carries {carried}; g0 imported it (history held from seq {})", at.seq, ledger.history_from())?;
    }
    let announcement = mycnet_spores::NodeAnnouncement {
        node: g0.key.node_id(),
        name: "g0".into(),
        role: NodeRole::Rhizomorph,
        addresses: vec![],
        capabilities: vec![],
    };
    sys(&nodes[new_leader])?.admit(announcement).await?;
    let t = Instant::now();
    start(&mut g0, backend).await?;
    let answered = sys(&g0)?.services_by_capability("gpu")?.len();
    writeln!(out, "  g0 answers at once from the seed's state: {answered} gpu service(s), before it holds the history below the seed")?;
    nodes.push(g0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let g = nodes.len() - 1;
    while sys(&nodes[g])?.status()?.history_from > 0 {
        if Instant::now() > deadline {
            return Err("g0 did not backfill its history in time".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let head = wait_converged(&nodes, Duration::from_secs(15)).await?;
    writeln!(
        out,
        "  g0 followed the chain to seq {} and backfilled everything below the seed down to genesis by gossip in {} ms",
        head.seq,
        t.elapsed().as_millis()
    )?;

    step(out, "The registries (as every node sees them)")?;
    let v0 = sys(&nodes[0])?;
    writeln!(out, "  {:<6} {:<11} {:<8} {:>5}  capabilities", "node", "role", "status", "trust")?;
    for n in v0.nodes()? {
        let status = n.status.to_string();
        writeln!(
            out,
            "  {:<6} {:<11} {:<8} {:>5}  {}",
            n.name,
            n.role.to_string(),
            status,
            n.trust.to_string(),
            n.capabilities.join(",")
        )?;
    }
    writeln!(out, "\n  {:<13} {:<6} {:<28} capabilities", "service", "node", "endpoints")?;
    let names: std::collections::BTreeMap<_, _> = v0.nodes()?.into_iter().map(|n| (n.node, n.name)).collect();
    for s in v0.with_projection(|p| p.services().cloned().collect::<Vec<_>>())? {
        let eps: Vec<String> = s.service.endpoints.iter().map(|e| format!("{}://{}", e.protocol, e.address)).collect();
        let owner = names.get(&s.service.node).cloned().unwrap_or_default();
        writeln!(
            out,
            "  {:<13} {:<6} {:<28} {}",
            s.service.name,
            owner,
            eps.join(" "),
            s.service.capabilities.join(",")
        )?;
    }

    wait_settled(&nodes, Duration::from_millis(500), Duration::from_secs(15)).await?;
    step(out, "Stopping every node and verifying each ledger from genesis (every link and signature)")?;
    for n in nodes.iter_mut() {
        if let Some(s) = n.system.take() {
            s.shutdown().await?;
        }
    }
    let mut heads = Vec::new();
    for n in &nodes {
        let report = LedgerReader::open(&n.dir)?.verify(&|_| {})?;
        match &report.first_error {
            None => {
                let (seq, hash) = report.recorded_head.ok_or("empty ledger")?;
                writeln!(
                    out,
                    "  {:<6} verified {:>4} events, {:>4} signatures  head {} {}",
                    n.name,
                    report.events_verified,
                    report.signatures_verified,
                    seq,
                    hash.short()
                )?;
                heads.push((seq, hash));
            }
            Some((seq, c)) => return Err(format!("{}: ledger damaged at seq {seq}: {c}", n.name).into()),
        }
    }
    heads.dedup();
    if heads.len() != 1 {
        return Err(format!("nodes ended on different heads: {heads:?}").into());
    }
    writeln!(
        out,
        "\nAll {} nodes hold the same verified chain. Finished in {:.1} s.",
        nodes.len(),
        started.elapsed().as_secs_f64()
    )?;
    match tmp {
        Some(t) => t.close()?,
        None => writeln!(out, "Data kept in {} (try: spore verify {})", root.display(), root.join("v0").display())?,
    }
    Ok(())
}
