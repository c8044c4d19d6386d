//! Running one standalone node: its configuration (TOML or flags) and its life cycle.
//!
//! ```toml
//! data_dir = "/var/lib/mycnet-spores/n1"
//! listen = "127.0.0.1:7401"
//! # advertise = "203.0.113.7:7401" # what peers dial, if not `listen` (NAT, a relay)
//! name = "n1"
//! role = "voter"                 # or "latent": out of Raft, keeps the chain by gossip
//! capabilities = ["storage"]
//! timeouts = "lan"               # or "wan": voters 100-150 ms apart, lossy links (Timeouts::wan)
//! # snapshot_bytes_max = 2147483648 # largest Raft snapshot taken (default: a quarter of memory)
//! # http_listen = "127.0.0.1:8500" # the read-only HTTP/JSON endpoint (`mycnet_spores::http`);
//! #                              # loopback unless a token guards it
//! # http_token_file = "/etc/mycnet-spores/http.token" # or http_token = "…": a bearer token
//!
//! [init]                         # form a new network (first voter only)
//! network_name = "demo"
//!
//! # from_seed = "backup.seed"     # or: form the network a seed describes (a voter of it)
//!
//! [join]                         # or: ask a member to add this node
//! via_addr = "127.0.0.1:7400"
//! via_key = "<64 hex chars>"
//! as_voter = true
//! # trust_seed = "backup.seed"   # join only if the member's chain extends this seed's head
//!
//! # admin_reads = "open"          # who may read over QUIC (status, query, watch): "open",
//! #                               # "admitted", or "keys" with admin_keys = ["<64 hex>", ...]
//! # connections_max = 256         # incoming QUIC connections from clients and tools (watches
//! #                               # keep one each); the peers it dials get places beyond it
//!
//! [[peers]]                      # bootstrap peers allowed to connect before admission
//! addr = "127.0.0.1:7400"
//! key = "<64 hex chars>"
//! name = "n0"                    # optional; how the founder admits it
//! role = "voter"                 # optional (default voter)
//!
//! [backup]                       # optional: scheduled backups (node::backup)
//! dir = "/var/backups/spores/n1" # one directory per node; created if missing
//! interval = "1h"                # ms, s, m, h or d (at least 100ms; default 1h)
//! keep = 24                      # newest backups kept (default 24)
//! events = false                 # true: every event from genesis in each seed
//!
//! [retention]                    # optional: archive, then prune old history (node::retention)
//! keep_events = 100000           # keep at least the newest N events, and/or
//! keep_for = "30d"               # at least this much time of events
//! archive_dir = "/var/lib/spores/archive" # verified seed files of what was pruned
//! every = "10m"                  # how often to look (default 10m)
//! ```
//!
//! **Admission.** Over QUIC a node accepts Raft connections only from keys in its registry
//! (admitted, not left) and from its bootstrap peers (`[[peers]]` and the `[join]` member);
//! the node's own upkeep keeps the set in step with the registry. The founder (`[init]`)
//! admits every bootstrap peer into the registry right after forming the network, so nodes
//! listed there can join without another step; a joiner retries while it is not yet admitted.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::core::event::NodeAnnouncement;
use crate::core::types::{NetworkIdentity, NodeId, NodeRole};
use crate::error::Error;
use crate::net::addr::{check_listen_addr, check_peer_addr};
use crate::net::quic::AdminReads;
use crate::node::backup::BackupConfig;
use crate::node::datadir::CreatedDir;
use crate::node::{SporeSystem, SporeSystemBuilder, Timeouts};
use crate::wire::rpc::PeerNode;

mod error;
use error::check_http_token;
pub use error::{parse_node_key, ConfigError, HTTP_TOKEN_BYTES_MAX};

/// The largest `connections_max` a config may ask for (each connection holds buffers and a
/// task; beyond this, a front of several nodes serves clients better).
const CONNECTIONS_MAX_LIMIT: usize = 65536;

/// Voter (Sclerotium) or latent (Rhizomorph).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RoleConfig {
    /// A Raft voter.
    #[default]
    Voter,
    /// A gossip node that does not vote.
    Latent,
}

impl From<RoleConfig> for NodeRole {
    fn from(r: RoleConfig) -> Self {
        match r {
            RoleConfig::Voter => NodeRole::Sclerotium,
            RoleConfig::Latent => NodeRole::Rhizomorph,
        }
    }
}

/// Which [`Timeouts`] profile a node runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TimeoutProfile {
    /// [`Timeouts::default`]: round trips of a few milliseconds.
    #[default]
    Lan,
    /// [`Timeouts::wan`]: round trips of 100-150 ms, with loss.
    Wan,
}

impl TimeoutProfile {
    /// The profile's timeouts.
    pub fn timeouts(self) -> Timeouts {
        match self {
            TimeoutProfile::Lan => Timeouts::default(),
            TimeoutProfile::Wan => Timeouts::wan(),
        }
    }
}

/// Form a new network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitConfig {
    /// The network's name.
    pub network_name: String,
    /// The network's id (random if absent).
    #[serde(default)]
    pub network_id: Option<Uuid>,
}

/// Join a running network through one of its members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinConfig {
    /// A member's address.
    pub via_addr: String,
    /// That member's key (64 hex characters).
    pub via_key: String,
    /// Become a voter once caught up (otherwise a learner).
    #[serde(default = "yes")]
    pub as_voter: bool,
    /// A seed spore as the trust root: join only if the member's chain extends its head.
    #[serde(default)]
    pub trust_seed: Option<PathBuf>,
}

fn yes() -> bool {
    true
}

/// A bootstrap peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Its address.
    pub addr: String,
    /// Its key (64 hex characters).
    pub key: String,
    /// Its name, used when the founder admits it (default: `node-<short key>`).
    #[serde(default)]
    pub name: Option<String>,
    /// Its role, used when the founder admits it.
    #[serde(default)]
    pub role: RoleConfig,
}

/// A node's configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Ledger, Raft log and `node.key` live here.
    pub data_dir: PathBuf,
    /// `host:port` to listen on (QUIC/UDP).
    pub listen: String,
    /// `host:port` peers dial to reach this node, when it is not the listen address (behind a
    /// NAT or a relay); default: the bound listen address.
    #[serde(default)]
    pub advertise: Option<String>,
    /// Human-readable name.
    #[serde(default)]
    pub name: Option<String>,
    /// Voter or latent.
    #[serde(default)]
    pub role: RoleConfig,
    /// Capabilities announced in the registry.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Addresses announced in the registry (default: the listen address).
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Form a network.
    #[serde(default)]
    pub init: Option<InitConfig>,
    /// Join a network.
    #[serde(default)]
    pub join: Option<JoinConfig>,
    /// Form the network a seed spore file describes (this node must be one of its voters).
    #[serde(default)]
    pub from_seed: Option<PathBuf>,
    /// With `from_seed`: require the seed to be signed by a majority of its voters.
    #[serde(default)]
    pub seed_quorum: bool,
    /// Bootstrap peers.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// Write timeout in milliseconds (overrides the profile's).
    #[serde(default)]
    pub write_timeout_ms: Option<u64>,
    /// Timeouts profile: `lan` (default) or `wan`.
    #[serde(default)]
    pub timeouts: TimeoutProfile,
    /// The largest Raft snapshot taken from a leader, in bytes (overrides the default, a
    /// quarter of the machine's memory: [`Timeouts::snapshot_bytes_max`]).
    #[serde(default)]
    pub snapshot_bytes_max: Option<u64>,
    /// Scheduled backups (`[backup]`).
    #[serde(default)]
    pub backup: Option<BackupConfig>,
    /// Archiving and pruning old history (`[retention]`).
    #[serde(default)]
    pub retention: Option<crate::node::RetentionConfig>,
    /// Who may read through the QUIC admin protocol (`spore status`, `query`, `watch`):
    /// `open` (the default: any key), `admitted` (the registry's members and the bootstrap
    /// peers), or `keys` with `admin_keys`.
    #[serde(default)]
    pub admin_reads: AdminReadsConfig,
    /// The keys that may read when `admin_reads = "keys"` (64 hex characters each).
    #[serde(default)]
    pub admin_keys: Vec<String>,
    /// Most incoming QUIC connections at once from clients and tools (a `spore watch` or a
    /// `RemoteWatch` keeps one; default 256). The peers the node dials have places of their own
    /// beyond it (`QuicConfig::peer_connections_reserved`).
    #[serde(default)]
    pub connections_max: Option<usize>,
    /// `host:port` (TCP) of the read-only HTTP/JSON endpoint, served by whoever runs the node
    /// (`spore node` does; the library starts no HTTP by itself: `mycnet_spores::http::serve`).
    /// Loopback (`127.0.0.1:8500`) is the documented default choice.
    #[serde(default)]
    pub http_listen: Option<String>,
    /// The bearer token the HTTP endpoint requires on every route but `/healthz`.
    #[serde(default)]
    pub http_token: Option<String>,
    /// A file holding that token (its first line); excludes `http_token`.
    #[serde(default)]
    pub http_token_file: Option<PathBuf>,
}

/// Who may read through the QUIC admin protocol, as the node TOML says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AdminReadsConfig {
    /// Any key.
    #[default]
    Open,
    /// Admitted keys only.
    Admitted,
    /// The keys in `admin_keys` only.
    Keys,
}

impl NodeConfig {
    /// Parses and validates TOML.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let c: NodeConfig = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    /// Checks the combination of settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if [self.init.is_some(), self.join.is_some(), self.from_seed.is_some()].iter().filter(|b| **b).count() > 1 {
            return Err(ConfigError::Invalid("`init`, `join` and `from_seed` exclude each other"));
        }
        if self.from_seed.is_some() && self.role == RoleConfig::Latent {
            return Err(ConfigError::Invalid("only a voter can form a network from a seed"));
        }
        if self.init.is_some() && self.role == RoleConfig::Latent {
            return Err(ConfigError::Invalid("only a voter can form a network"));
        }
        let bad = |field| move |source| ConfigError::BadAddress { field, source };
        check_listen_addr(&self.listen).map_err(bad("listen"))?;
        if let Some(a) = &self.advertise {
            check_peer_addr(a).map_err(bad("advertise"))?;
        }
        for a in &self.addresses {
            check_peer_addr(a).map_err(bad("addresses"))?;
        }
        if let Some(j) = &self.join {
            parse_node_key("join.via_key", &j.via_key)?;
            check_peer_addr(&j.via_addr).map_err(bad("join.via_addr"))?;
        }
        for p in &self.peers {
            parse_node_key("peers.key", &p.key)?;
            check_peer_addr(&p.addr).map_err(bad("peers.addr"))?;
        }
        if let Some(b) = &self.backup {
            b.policy()?;
        }
        if let Some(r) = &self.retention {
            r.settings()?;
        }
        if let Some(a) = &self.http_listen {
            check_listen_addr(a).map_err(bad("http_listen"))?;
        }
        if self.http_token.is_some() && self.http_token_file.is_some() {
            return Err(ConfigError::Invalid("`http_token` and `http_token_file` exclude each other"));
        }
        if (self.http_token.is_some() || self.http_token_file.is_some()) && self.http_listen.is_none() {
            return Err(ConfigError::Invalid("an HTTP token goes with `http_listen`"));
        }
        if let Some(t) = &self.http_token {
            check_http_token("http_token", t)?;
        }
        self.admin_reads()?;
        if self.connections_max.is_some_and(|n| !(1..=CONNECTIONS_MAX_LIMIT).contains(&n)) {
            return Err(ConfigError::Invalid("`connections_max` must be between 1 and 65536"));
        }
        Ok(())
    }

    /// The admin read policy: `admin_reads` with `admin_keys` (given exactly when it is `keys`).
    pub fn admin_reads(&self) -> Result<AdminReads, ConfigError> {
        match (self.admin_reads, self.admin_keys.is_empty()) {
            (AdminReadsConfig::Open, true) => Ok(AdminReads::Open),
            (AdminReadsConfig::Admitted, true) => Ok(AdminReads::Admitted),
            (AdminReadsConfig::Keys, false) => Ok(AdminReads::Keys(
                self.admin_keys.iter().map(|k| parse_node_key("admin_keys", k)).collect::<Result<_, _>>()?,
            )),
            (AdminReadsConfig::Keys, true) => Err(ConfigError::Invalid("`admin_reads = \"keys\"` needs `admin_keys`")),
            (_, false) => Err(ConfigError::Invalid("`admin_keys` is only read with `admin_reads = \"keys\"`")),
        }
    }

    /// The HTTP endpoint's bearer token: `http_token`, or the first line of `http_token_file`
    /// (read now, and checked like the other), or none.
    pub fn http_token(&self) -> Result<Option<String>, ConfigError> {
        if let Some(t) = &self.http_token {
            check_http_token("http_token", t)?;
            return Ok(Some(t.clone()));
        }
        let Some(path) = &self.http_token_file else { return Ok(None) };
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::TokenFile { path: path.clone(), source })?;
        let token = text.lines().next().unwrap_or("").trim().to_string();
        check_http_token(&format!("http_token_file {}", path.display()), &token)?;
        Ok(Some(token))
    }

    /// Keys trusted before admission: the bootstrap peers and the `[join]` member.
    pub fn bootstrap_keys(&self) -> Result<Vec<NodeId>, ConfigError> {
        let mut keys: Vec<NodeId> = self.bootstrap_peers()?.into_iter().map(|p| p.node).collect();
        if let Some(j) = &self.join {
            keys.push(NodeId::from_hex(&j.via_key)?);
        }
        Ok(keys)
    }

    /// The bootstrap peers, parsed.
    pub fn bootstrap_peers(&self) -> Result<Vec<PeerNode>, ConfigError> {
        self.peers.iter().map(|p| Ok(PeerNode { node: NodeId::from_hex(&p.key)?, addr: p.addr.clone() })).collect()
    }

    /// A builder for this node: on `backend`, or (`None`) on its own QUIC endpoint at
    /// `listen`, admitting the registry's members and the bootstrap peers.
    pub fn builder(&self, backend: Option<std::sync::Arc<dyn crate::net::NetworkBackend>>) -> SporeSystemBuilder {
        let mut t = self.timeouts.timeouts();
        if let Some(ms) = self.write_timeout_ms {
            t.write = Duration::from_millis(ms);
        }
        if let Some(bytes) = self.snapshot_bytes_max {
            t.snapshot_bytes_max = bytes;
        }
        let mut b = SporeSystem::builder()
            .data_dir(&self.data_dir)
            .addr(self.listen.clone())
            .role(self.role.into())
            .capabilities(self.capabilities.clone())
            .addresses(self.addresses.clone())
            .admit(self.bootstrap_keys().unwrap_or_default())
            .admin_reads(self.admin_reads().unwrap_or(AdminReads::Admitted))
            .timeouts(t);
        if let Some(n) = self.connections_max {
            b = b.connections_max(n);
        }
        if let Some(backend) = backend {
            b = b.network(backend);
        }
        if let Some(n) = &self.name {
            b = b.name(n.clone());
        }
        if let Some(a) = &self.advertise {
            b = b.advertise(a.clone());
        }
        // Checked by `validate`; a launch checks the policy again.
        if let Some(policy) = self.backup.as_ref().and_then(|c| c.policy().ok()) {
            b = b.backups(policy);
        }
        if let Some(settings) = self.retention.as_ref().and_then(|c| c.settings().ok()) {
            b = b.retention(settings);
        }
        // Gossip starts from the bootstrap peers and the member to join.
        let mut gossip_peers = self.bootstrap_peers().unwrap_or_default();
        if let Some(j) = &self.join {
            if let Ok(node) = NodeId::from_hex(&j.via_key) {
                gossip_peers.push(PeerNode { node, addr: j.via_addr.clone() });
            }
        }
        b.gossip_peers(gossip_peers)
    }
}

/// Starts a node from its config: resumes from its data dir, forms the network if asked (and
/// not formed yet; then admits the bootstrap peers), or asks to join (retrying while not yet
/// admitted, for at most `join_patience`). Returns the running system.
///
/// The config is validated first ([`Error::Config`]). If the start fails at any step, the
/// system is shut down and a data dir this call created is removed; an existing one is kept.
///
/// `backend` is `None` for the node's own QUIC endpoint at `listen` (what `spore node` runs),
/// whose admission follows the registry by itself.
#[tracing::instrument(skip_all, fields(listen = %config.listen, data_dir = %config.data_dir.display()))]
pub async fn start_node(
    config: &NodeConfig,
    backend: Option<std::sync::Arc<dyn crate::net::NetworkBackend>>,
) -> Result<SporeSystem, Error> {
    config.validate()?;
    let created = CreatedDir::create(&config.data_dir)?;
    let system = config.builder(backend).build();
    match bring_up(&system, config).await {
        Ok(()) => Ok(system),
        Err(e) => {
            if let Err(stop) = system.shutdown().await {
                tracing::warn!(error = %stop, "could not stop the node whose start failed");
            }
            crate::node::discard_failed_start(created).await;
            Err(e)
        }
    }
}

/// The steps of [`start_node`] after the system is built.
async fn bring_up(system: &SporeSystem, config: &NodeConfig) -> Result<(), Error> {
    system.start().await?;
    if let Some(path) = &config.from_seed {
        let policy = crate::seed::VerifyPolicy { require_quorum: config.seed_quorum, expected_network: None };
        system.form_from_seed(path, policy).await?;
        admit_bootstrap_peers(system, config).await?;
    } else if let Some(init) = &config.init {
        let formed = system.head()?.is_some();
        if !formed {
            system
                .initialize(NetworkIdentity {
                    network_id: init.network_id.unwrap_or_else(Uuid::new_v4),
                    network_name: init.network_name.clone(),
                    genesis_timestamp: chrono::Utc::now(),
                })
                .await?;
        }
        admit_bootstrap_peers(system, config).await?;
    } else if let (Some(join), RoleConfig::Latent) = (&config.join, config.role) {
        // A latent node stays out of Raft: it learns the chain by gossip, starting from the
        // member it was pointed at (a gossip bootstrap peer, see `NodeConfig::builder`).
        tracing::info!(via = %join.via_addr, "latent node: keeping the chain by gossip");
    } else if let Some(join) = &config.join {
        let already_member = system.status()?.voters.contains(&system.node_id()?)
            || system.status()?.learners.contains(&system.node_id()?);
        if !already_member {
            let via_key = parse_node_key("join.via_key", &join.via_key)?;
            let via = PeerNode { node: via_key, addr: join.via_addr.clone() };
            let deadline = std::time::Instant::now() + JOIN_PATIENCE;
            loop {
                let attempt = match &join.trust_seed {
                    Some(seed) => {
                        system
                            .join_with_seed(via.clone(), join.as_voter, seed, crate::seed::VerifyPolicy::default())
                            .await
                    }
                    None => system.join(via.clone(), join.as_voter).await,
                };
                match attempt {
                    Ok(()) => break,
                    Err(e @ Error::NotAdmitted { .. }) if std::time::Instant::now() < deadline => {
                        tracing::info!(reason = %e, "not admitted yet; retrying the join");
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        announce_if_changed(system, config).await?;
    }
    Ok(())
}

/// How long a joiner retries while the network has not admitted it yet.
pub const JOIN_PATIENCE: Duration = Duration::from_secs(60);

/// The founder admits every bootstrap peer that the registry does not know yet.
async fn admit_bootstrap_peers(system: &SporeSystem, config: &NodeConfig) -> Result<(), Error> {
    for p in &config.peers {
        let node = parse_node_key("peers.key", &p.key)?;
        if node == system.node_id()? || system.node(&node)?.is_some() {
            continue;
        }
        let name = p.name.clone().unwrap_or_else(|| format!("node-{}", node.short()));
        tracing::info!(peer = %node.short(), %name, "admitting a bootstrap peer");
        system
            .admit(NodeAnnouncement {
                node,
                name,
                role: p.role.into(),
                addresses: vec![p.addr.clone()],
                capabilities: vec![],
            })
            .await?;
    }
    Ok(())
}

/// A joiner announces its configured addresses and capabilities when the registry differs.
async fn announce_if_changed(system: &SporeSystem, config: &NodeConfig) -> Result<(), Error> {
    let me = system.node_id()?;
    let Some(record) = system.node(&me)? else { return Ok(()) };
    let addresses = if config.addresses.is_empty() { vec![system.peer()?.addr] } else { config.addresses.clone() };
    let mut capabilities = config.capabilities.clone();
    capabilities.sort();
    capabilities.dedup();
    if !record.addresses.iter().eq(&addresses) || !record.capabilities.iter().eq(&capabilities) {
        system.announce(addresses, capabilities).await?;
    }
    if let Some(name) = &config.name {
        if &record.name != name {
            system.rename(name).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
