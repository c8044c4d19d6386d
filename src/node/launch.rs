//! Launching a node: opens its ledger, binds its transport, starts Raft and spawns every
//! background task, wired into one running system.

use openraft::async_runtime::WatchReceiver;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::admission::RegistryAdmission;
use super::builder::Backend;
use super::leader::{spawn_anchor_task, spawn_liveness_committer};
use super::provisional::{spawn_provisional_task, ProvisionalWriter};
use super::rpc_server::NodeService;
use super::status::spawn_mode_task;
use super::{io_err, raft_err, ConfigError, Running, SharedModes, SporeSystem, SporeSystemBuilder};
use crate::core::modes::{ModeConfig, ModeMachine};
use crate::core::types::{NodeRole, Timestamp};
use crate::error::Error;
use crate::net::gossip::GossipService;
use crate::net::inproc::InProcNetwork;
use crate::net::liveness::LivenessService;
use crate::net::quic::QuicBackend;
use crate::net::raft_rpc::{NetworkFactory, RaftService};
use crate::net::{LateHandler, NetworkBackend};
use crate::raft::proposer::Proposer;
use crate::raft::{raft_id, Raft};
use crate::store::keyfile;
use crate::store::ledger::LedgerLock;
use crate::store::ledger::{Ledger, LedgerConfig};
use crate::wire::rpc::PeerNode;

impl SporeSystem {
    pub(super) async fn launch(
        cfg: SporeSystemBuilder,
        fence: Arc<crate::node::resolve::YieldFence>,
        backups: crate::node::backup::SharedBackups,
    ) -> Result<Running, Error> {
        // The network is decided, and addresses to announce are checked, before anything is
        // opened or bound.
        if let (Backend::Private, Some(addr)) = (&cfg.backend, &cfg.addr) {
            return Err(ConfigError::PrivateWithAddress { addr: addr.clone() }.into());
        }
        if let Some(policy) = &cfg.backups {
            policy.check()?;
        }
        if let Some(settings) = &cfg.retention {
            settings.check()?;
        }
        let own_quic = cfg.listens_on_quic();
        if let Some(addr) = cfg.addr.as_deref().filter(|_| own_quic) {
            crate::net::addr::check_listen_addr(addr)?;
        }
        cfg.check_addresses(cfg.addresses.iter().map(String::as_str))?;
        let (data_dir, tempdir) = match &cfg.data_dir {
            Some(d) => (d.clone(), None),
            None => {
                let t =
                    tempfile::Builder::new().prefix("mycnet-spores-").tempdir().map_err(io_err(Path::new("/tmp")))?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        std::fs::create_dir_all(&data_dir).map_err(io_err(&data_dir))?;
        let key = match cfg.key {
            Some(k) => k,
            None => keyfile::load_or_generate(&data_dir.join(keyfile::KEY_FILE_NAME))?,
        };
        let node = key.node_id();
        let ledger_dir = data_dir.join(crate::store::inspect::LEDGER_SUBDIR);
        let ledger_cfg = LedgerConfig {
            create: true,
            checkpoint_interval: cfg.checkpoint_interval,
            durable: false,
            expected_network: None,
            metrics: cfg.metrics,
        };
        let ledger = tokio::task::spawn_blocking(move || Ledger::open(ledger_dir, ledger_cfg))
            .await
            .map_err(|source| Error::Task { what: "ledger open", source })??;
        let (log_store, sm) = crate::raft::open_stores(ledger, key.clone())?;
        let ledger = sm.ledger().clone();
        let head_rx = sm.subscribe_head();
        let head_publisher = sm.clone();
        let checks = sm.pre_verified().clone();

        let (backend, admission): (Arc<dyn NetworkBackend>, _) = match cfg.backend {
            Backend::Shared(b) => (b, None),
            // An address and no network: this node's own QUIC endpoint, admitting the
            // registry's members and the keys it was given.
            Backend::Default if own_quic => {
                let admission = RegistryAdmission::new(ledger.clone(), cfg.admit.iter().copied());
                (
                    Arc::new(
                        QuicBackend::new(key.clone(), admission.policy())
                            .with_config(quic_config(&cfg.admin_reads, cfg.connections_max)),
                    ) as Arc<dyn NetworkBackend>,
                    Some(admission),
                )
            }
            Backend::Default | Backend::Private => (Arc::new(InProcNetwork::new(0)) as Arc<dyn NetworkBackend>, None),
        };
        let want_addr = cfg.addr.unwrap_or_else(|| format!("node-{}", node.short()));
        let late = Arc::new(LateHandler::default());
        let binding = backend.bind(&PeerNode { node, addr: want_addr }, late.clone()).await?;
        let bound_on = backend.clone();
        let me = PeerNode { node, addr: cfg.advertise.clone().unwrap_or_else(|| binding.addr.clone()) };
        let transport = binding.transport.clone();

        let raft_config = openraft::Config {
            cluster_name: "mycnet-spores".into(),
            heartbeat_interval: cfg.timeouts.heartbeat.as_millis() as u64,
            election_timeout_min: cfg.timeouts.election_min.as_millis() as u64,
            election_timeout_max: cfg.timeouts.election_max.as_millis() as u64,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(cfg.timeouts.snapshot_every),
            max_in_snapshot_log_to_keep: cfg.timeouts.logs_kept_after_snapshot,
            purge_batch_size: (cfg.timeouts.snapshot_every / 4).clamp(1, 256),
            max_payload_entries: crate::raft::proposer::PAYLOAD_ENTRIES_MAX,
            // A follower whose disk was wiped (or restored from an older backup) rejoins with
            // a shorter log than the leader remembers: let the leader send it again (0.9's
            // `loosen-follower-log-revert`).
            allow_log_reversion: Some(true),
            // Replication reads an entry as soon as the leader's append returns, and the core
            // turns to ready notifications (a follower's flush, say) after each client write
            // rather than after draining them all. openraft leaves it off because its own
            // batches of client writes may shrink; ours are made by the proposer before Raft.
            // 64 writers in process, `primary_profile`: 0.569 → 0.581 of 2V/3 (four alternated
            // pairs), applied everywhere 0.584 → 0.599 (three); one writer 575 → 559 µs (five
            // pairs); over QUIC within noise (benches/README, session 18).
            broadcast_submitted_on_append: Some(true),
            ..Default::default()
        }
        .validate()
        .map_err(raft_err)?;
        let stored_vote = {
            use openraft::RaftLogReader;
            let mut ls = log_store.clone();
            ls.read_vote().await.map_err(|e| {
                raft_err(openraft::StorageError::<crate::raft::TypeConfig>::from_io_error(
                    openraft::ErrorSubject::Vote,
                    openraft::ErrorVerb::Read,
                    e,
                ))
            })?
        };
        let raft = Raft::new(
            raft_id(&node),
            Arc::new(raft_config),
            NetworkFactory::new(transport.clone(), cfg.timeouts.rpc),
            log_store,
            sm,
        )
        .await
        .map_err(raft_err)?;
        // Status must never show a term older than the one on disk: wait for Raft to load it.
        if let Some(v) = stored_vote {
            raft.wait(Some(Duration::from_secs(10)))
                .metrics(|m| m.vote >= v, "stored vote loaded")
                .await
                .map_err(raft_err)?;
        }
        let proposer =
            Proposer::spawn_idempotent(raft.clone(), ledger.clone(), checks.clone(), cfg.timeouts.batches_in_flight);
        let mut tasks = Vec::new();
        let gossip = transport.gossip_dialer().map(|dialer| {
            let my_id = raft_id(&node);
            let member = {
                let raft = raft.clone();
                move || {
                    raft.metrics().borrow_watched().membership_config.membership().nodes().any(|(id, _)| *id == my_id)
                }
            };
            let member2 = member.clone();
            // Only a Rhizomorph outside the Raft membership stores what gossip brings; Raft
            // writes every member's ledger.
            let latent = cfg.role == NodeRole::Rhizomorph;
            let svc = Arc::new(GossipService::new(
                me.clone(),
                ledger.clone(),
                cfg.gossip.clone(),
                move || latent && !member(),
                member2,
            ));
            svc.add_bootstrap(cfg.gossip_peers.clone());
            // Ranges gossip stores reach `subscribe` like the ones Raft applies.
            svc.on_stored(Arc::new(move || head_publisher.publish_head()));
            tasks.push(svc.spawn_driver(dialer));
            svc
        });
        tasks.push(spawn_anchor_task(raft.clone(), proposer.clone(), ledger.clone(), key.clone(), cfg.anchors));
        let writer = ProvisionalWriter {
            raft: raft.clone(),
            transport: transport.clone(),
            ledger: ledger.clone(),
            gossip: gossip.clone(),
            me: me.clone(),
            key: key.clone(),
            timeouts: cfg.timeouts.clone(),
        };
        tasks.push(spawn_provisional_task(writer.clone()));
        let liveness = transport.swim_link().map(|link| {
            let cands = gossip.clone();
            let (svc, task) = LivenessService::spawn(me.clone(), cfg.liveness.clone(), link, move || {
                cands.as_ref().map(|g| g.candidates()).unwrap_or_default()
            });
            tasks.push(task);
            tasks.push(spawn_liveness_committer(
                raft.clone(),
                proposer.clone(),
                ledger.clone(),
                key.clone(),
                svc.clone(),
            ));
            svc
        });
        let modes: SharedModes =
            Arc::new(std::sync::Mutex::new(ModeMachine::new(ModeConfig::default(), Timestamp::now())));
        let resolver = Arc::new(crate::node::resolve::ResolverState::default());
        if let Some(g) = &gossip {
            tasks.push(
                crate::node::resolve::Resolver {
                    raft: raft.clone(),
                    proposer: proposer.clone(),
                    transport: transport.clone(),
                    ledger: ledger.clone(),
                    gossip: g.clone(),
                    me: me.clone(),
                    key: key.clone(),
                    rpc_timeout: cfg.timeouts.rpc,
                    data_dir: data_dir.clone(),
                    state: resolver.clone(),
                    modes: modes.clone(),
                }
                .spawn(),
            );
        }
        let tier_views = Arc::new(crate::node::tiers::TierViews::default());
        // A node that yielded a split-brain keeps refusing the losing cluster's Raft across
        // restarts (the members are kept with the refused branch).
        let refused_peers = ledger.read_ledger()?.refused_peers()?;
        if !refused_peers.is_empty() {
            fence.fence(refused_peers);
        }
        tasks.push(spawn_mode_task(raft.clone(), ledger.clone(), me.clone(), gossip.clone(), modes.clone()));
        let scrub: crate::node::scrubber::SharedScrub = Arc::default();
        let (health, view) = {
            let l = ledger.read_ledger()?;
            (l.health(), l.view())
        };
        tasks.push(crate::node::scrubber::spawn(
            ledger.clone(),
            raft.clone(),
            me.clone(),
            transport.clone(),
            cfg.scrub,
            scrub.clone(),
            cfg.timeouts.rpc,
        ));
        late.set(Arc::new(NodeService {
            raft_service: RaftService::new(
                raft.clone(),
                me.clone(),
                proposer.clone(),
                ledger.clone(),
                cfg.timeouts.snapshot_bytes_max,
            ),
            raft: raft.clone(),
            ledger: ledger.clone(),
            me: me.clone(),
            key: key.clone(),
            gossip: gossip.clone(),
            liveness: liveness.clone(),
            modes: modes.clone(),
            tier_views: tier_views.clone(),
            fence,
            provisional: (cfg.role == NodeRole::Rhizomorph).then(|| writer.clone()),
            scrub: scrub.clone(),
            health: health.clone(),
            head_rx: head_rx.clone(),
            backups,
        }));
        tracing::info!(node = %node, addr = %me.addr, data_dir = %data_dir.display(), "spore system started");
        Ok(Running {
            writer,
            key,
            name: cfg.name.unwrap_or_else(|| format!("node-{}", node.short())),
            role: cfg.role,
            addresses: cfg.addresses,
            capabilities: cfg.capabilities,
            me,
            raft,
            proposer,
            checks,
            ledger,
            head_rx,
            transport,
            backend: bound_on,
            bound_addr: binding.addr.clone(),
            binding: std::sync::Mutex::new(binding),
            admission,
            timeouts: cfg.timeouts,
            gossip,
            liveness,
            modes,
            data_dir,
            resolver,
            tier_views,
            scrub,
            health,
            view,
            fingerprint: std::sync::OnceLock::new(),
            tasks: std::sync::Mutex::new(tasks),
            tempdir: std::sync::Mutex::new(tempdir),
        })
    }
}

/// The limits of the node's own QUIC endpoint: the defaults, with what the builder set.
fn quic_config(
    admin_reads: &crate::net::quic::AdminReads,
    connections_max: Option<usize>,
) -> crate::net::quic::QuicConfig {
    let mut q = crate::net::quic::QuicConfig { admin_reads: admin_reads.clone(), ..Default::default() };
    if let Some(n) = connections_max {
        q.connections_max = n;
    }
    q
}
