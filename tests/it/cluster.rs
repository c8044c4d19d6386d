//! An in-process cluster of `SporeSystem`s on real fjall data dirs, for Raft tests.

use std::sync::Arc;
use std::time::Duration;

use mycnet_spores::net::inproc::InProcNetwork;
use mycnet_spores::{NetworkIdentity, NodeKey, SporeSystem, Timeouts};

/// The identity of a new network named `name` (a random id, formed now).
pub fn identity(name: &str) -> NetworkIdentity {
    NetworkIdentity {
        network_id: uuid::Uuid::new_v4(),
        network_name: name.into(),
        genesis_timestamp: chrono::Utc::now(),
    }
}

/// Fast timeouts for tests.
pub fn fast_timeouts() -> Timeouts {
    Timeouts {
        heartbeat: Duration::from_millis(50),
        election_min: Duration::from_millis(200),
        election_max: Duration::from_millis(400),
        write: Duration::from_secs(10),
        rpc: Duration::from_secs(1),
        ..Timeouts::default()
    }
}

/// A node of the cluster: its key, address and data dir survive crashes.
pub struct Member {
    pub key: NodeKey,
    pub addr: String,
    pub dir: std::path::PathBuf,
    pub system: Option<Arc<SporeSystem>>,
}

/// N voters on one in-process network.
pub struct Cluster {
    pub net: InProcNetwork,
    pub members: Vec<Member>,
    pub timeouts: Timeouts,
    _root: tempfile::TempDir,
}

impl Cluster {
    /// A latent node (a Rhizomorph kept by gossip) named `name` with `key`, its data dir in
    /// `dir`, bootstrapped from voter `boot`, started and admitted by the leader `leader`.
    pub async fn latent(
        &self,
        dir: &std::path::Path,
        key: NodeKey,
        name: &str,
        boot: usize,
        leader: usize,
        timeouts: Timeouts,
    ) -> SporeSystem {
        let s = SporeSystem::builder()
            .data_dir(dir.join(name))
            .key(key)
            .role(mycnet_spores::NodeRole::Rhizomorph)
            .addr(name)
            .name(name)
            .inproc(&self.net)
            .timeouts(timeouts)
            .gossip(mycnet_spores::net::gossip::GossipConfig {
                interval: Duration::from_millis(100),
                connect_timeout: Duration::from_millis(300),
                ..Default::default()
            })
            .gossip_peers(vec![self.sys(boot).peer().expect("peer")])
            .build();
        s.start().await.expect("start latent node");
        self.sys(leader).admit(s.announcement().expect("announcement")).await.expect("admit");
        s
    }

    fn builder(net: &InProcNetwork, m: &Member, t: &Timeouts) -> mycnet_spores::SporeSystemBuilder {
        SporeSystem::builder()
            .data_dir(&m.dir)
            .key(m.key.clone())
            .addr(m.addr.clone())
            .name(m.addr.clone())
            .inproc(net)
            .timeouts(t.clone())
            // Split-brain tests step each yield themselves.
            .yield_policy(mycnet_spores::node::YieldPolicy::Manual)
    }

    /// Forms a network of `n` voters: node 0 initializes, admits and adds the others.
    pub async fn form(n: usize, seed: u64) -> Cluster {
        Self::form_with(n, seed, fast_timeouts()).await
    }

    /// [`Cluster::form`] with custom timeouts.
    pub async fn form_with(n: usize, seed: u64, timeouts: Timeouts) -> Cluster {
        Self::form_on(InProcNetwork::new(seed), n, seed, timeouts).await
    }

    /// [`Cluster::form_with`] on a network that also carries gossip (the latent tier).
    pub async fn form_with_gossip(n: usize, seed: u64, timeouts: Timeouts) -> Cluster {
        let net = InProcNetwork::new(seed);
        net.enable_gossip();
        Self::form_on(net, n, seed, timeouts).await
    }

    async fn form_on(net: InProcNetwork, n: usize, seed: u64, timeouts: Timeouts) -> Cluster {
        let root = tempfile::tempdir().expect("tempdir");
        let mut members: Vec<Member> = (0..n)
            .map(|i| Member {
                key: NodeKey::from_seed([i as u8 + 1; 32]),
                addr: format!("n{i}"),
                dir: root.path().join(format!("n{i}")),
                system: None,
            })
            .collect();
        let mut systems = Vec::new();
        for m in members.iter() {
            let s = Self::builder(&net, m, &timeouts).build();
            s.start().await.expect("start");
            systems.push(s);
        }
        let identity = NetworkIdentity {
            network_id: uuid::Uuid::from_u128(seed as u128 + 1),
            network_name: format!("test-{seed}"),
            genesis_timestamp: chrono::Utc::now(),
        };
        systems[0].initialize(identity).await.expect("initialize");
        for i in 1..n {
            let ann = systems[i].announcement().expect("announcement");
            let peer = systems[i].peer().expect("peer");
            systems[0].admit(ann).await.expect("admit");
            systems[0].add_member(peer, true).await.expect("add voter");
        }
        for (m, s) in members.iter_mut().zip(systems) {
            m.system = Some(Arc::new(s));
        }
        Cluster { net, members, timeouts, _root: root }
    }

    pub fn sys(&self, i: usize) -> &SporeSystem {
        self.members[i].system.as_ref().expect("node is running")
    }

    /// A shared handle to node `i`, if running.
    pub fn handle(&self, i: usize) -> Option<Arc<SporeSystem>> {
        self.members[i].system.clone()
    }

    /// The index of the current leader, waiting up to `timeout`.
    pub async fn leader(&self, timeout: Duration) -> Option<usize> {
        crate::wait::poll(timeout, || {
            self.members
                .iter()
                .position(|m| m.system.as_ref().is_some_and(|s| s.status().is_ok_and(|st| st.raft_state == "Leader")))
        })
        .await
    }

    /// Crashes node `i`: it disappears from the network and its Raft stops, without a clean
    /// shutdown of its data (what was acknowledged is already durable).
    pub async fn crash(&mut self, i: usize) {
        self.net.crash(&self.members[i].addr);
        if let Some(s) = self.members[i].system.take() {
            if let Ok(raft) = s.raft() {
                let _ = raft.shutdown().await;
            }
            drop(s);
        }
        // A crashed process's file locks go with it; here the dropped system's tasks let go
        // of the ledger as the runtime drops them. Wait for that (bounded), so whatever opens
        // the data dir next does not race them.
        let lock = self.members[i].dir.join("ledger").join("lock");
        let released = || match std::fs::OpenOptions::new().read(true).write(true).open(&lock) {
            Ok(f) => f.try_lock().is_ok().then_some(()),
            Err(_) => Some(()),
        };
        // Past the bound, whoever opens the data dir next reports the lock itself.
        let _ = crate::wait::poll(Duration::from_secs(10), released).await;
    }

    /// Restarts node `i` from its data dir.
    pub async fn restart(&mut self, i: usize) {
        let s = Self::builder(&self.net, &self.members[i], &self.timeouts).build();
        s.start().await.expect("restart");
        self.members[i].system = Some(Arc::new(s));
    }

    /// Waits until every running node has the same head, and returns it.
    pub async fn converged_head(&self, timeout: Duration) -> Option<mycnet_spores::ChainHead> {
        crate::wait::poll(timeout, || {
            let heads: Vec<_> =
                self.members.iter().filter_map(|m| m.system.as_ref()).map(|s| s.head().ok().flatten()).collect();
            let first = heads.first().copied().flatten()?;
            heads.iter().all(|h| *h == Some(first)).then_some(first)
        })
        .await
    }
}
