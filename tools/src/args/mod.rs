//! The command line as clap parses it: every command, its flags and their help. `main.rs`
//! dispatches them.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::{forensics, inspect, service};

mod node;

pub(crate) use node::{LogFormat, NodeArgs, Profile, Role};

#[derive(Parser)]
#[command(
    name = "spore",
    version,
    about = "Inspect, run and demo mycnet-spores: a signed, chained node-discovery ledger"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
    /// Read from running nodes as this node key (a PKCS#8 PEM key file), for nodes whose
    /// admin reads admit only some keys (`admin_reads` in the node TOML); a throw-away key
    /// otherwise.
    #[arg(long, global = true)]
    pub(crate) client_key_file: Option<PathBuf>,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Write a valid synthetic network history (deterministic for a seed) into a new ledger.
    Generate {
        /// The ledger directory to create (must not exist or be empty).
        #[arg(long)]
        out: PathBuf,
        /// How many events (a history of every kind of change).
        #[arg(long, required_unless_present = "services", conflicts_with = "services")]
        events: Option<u64>,
        /// Build a registry instead: every node joins, then this many services are registered
        /// (nothing leaves or changes), e.g. `--nodes 10000 --services 100000`.
        #[arg(long)]
        services: Option<usize>,
        /// How many distinct nodes take part.
        #[arg(long, default_value_t = 16)]
        nodes: usize,
        /// Generator seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check every record, link and signature; on damage name the first bad sequence number.
    Verify {
        /// A ledger directory or a node's data dir.
        #[arg(value_parser = inspect::existing_dir)]
        dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print events (JSON Lines with --json).
    Dump {
        /// A ledger directory or a node's data dir.
        #[arg(value_parser = inspect::existing_dir)]
        dir: PathBuf,
        /// First sequence number.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Last sequence number (default: the head).
        #[arg(long)]
        to: Option<u64>,
        /// Print JSON Lines.
        #[arg(long)]
        json: bool,
    },
    /// Counts: events by kind, authors, nodes, services, bytes.
    Stats {
        /// A ledger directory or a node's data dir.
        #[arg(value_parser = inspect::existing_dir)]
        dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The registries (nodes, services) as of a sequence number or a time.
    State {
        /// A ledger directory, a node's data dir, or a seed file (before its head only if it
        /// carries its events).
        #[arg(value_parser = forensics::existing_path)]
        dir: PathBuf,
        /// Stop after this sequence number.
        #[arg(long, conflicts_with = "at_time")]
        at_seq: Option<u64>,
        /// Stop at the last event at or before this time (RFC 3339 or microseconds).
        #[arg(long, value_parser = inspect::parse_time)]
        at_time: Option<mycnet_spores::Timestamp>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Compare two branches of one network: the fork point, each branch's events after it,
    /// and how their registries differ (exit 0 whenever the comparison succeeds).
    Diff {
        /// A ledger directory, a node's data dir, or a seed file.
        #[arg(value_parser = forensics::existing_path)]
        a: PathBuf,
        /// The other branch: a ledger directory, a node's data dir, or a seed file.
        #[arg(value_parser = forensics::existing_path)]
        b: PathBuf,
        /// List at most this many events of each branch after the fork point.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Every event that touched a node or a service: who signed it, when, and how.
    Blame {
        /// A ledger directory, a node's data dir, or a seed file with events.
        #[arg(value_parser = forensics::existing_path)]
        source: PathBuf,
        /// A node id (64 hex, or a unique prefix of at least 4), a service id (UUID) or a
        /// service name.
        target: String,
        /// For a node: also the events it signed about other things.
        #[arg(long)]
        authored: bool,
        /// Keep at most this many entries (the latest).
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replay the whole ledger and report events/s.
    Replay {
        /// A ledger directory or a node's data dir.
        #[arg(value_parser = inspect::existing_dir)]
        dir: PathBuf,
        /// Verify every signature (batched, all cores) instead of trusting ingest.
        #[arg(long)]
        audit: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create the node key of a data dir (if missing) and print its node id.
    Keygen {
        /// The node's data dir.
        #[arg(long)]
        data_dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run one node over QUIC until SIGINT/SIGTERM.
    Node(NodeArgs),
    /// Show a running node's role, leader, term, head and membership.
    Status {
        /// The node's QUIC address.
        #[arg(long)]
        addr: String,
        /// Refuse the node unless it proves this key (64 hex characters).
        #[arg(long)]
        key: Option<String>,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ask a running node for its registries, a page at a time (`--limit`, `--after`, `--all`).
    Query {
        /// The node's QUIC address.
        #[arg(long)]
        addr: String,
        /// What to list.
        what: QueryWhat,
        /// Services (or nodes) with this name.
        #[arg(long)]
        name: Option<String>,
        /// Services (or nodes) with this capability.
        #[arg(long)]
        capability: Option<String>,
        /// Only services offered by this node (64 hex characters).
        #[arg(long, value_parser = service::parse_node_id, conflicts_with = "tiered")]
        node: Option<mycnet_spores::NodeId>,
        /// Only nodes with this status: active, offline or left (`nodes` only).
        #[arg(long, value_parser = parse_status, conflicts_with = "tiered")]
        status: Option<mycnet_spores::NodeStatus>,
        /// Only services (or nodes) of nodes trusted at least this much (0.0 to 1.0, e.g. 0.7).
        #[arg(long, value_parser = service::parse_trust, conflicts_with = "tiered")]
        min_trust: Option<mycnet_spores::TrustScore>,
        /// At most this many items in the page, 1 to 10000 (default 1000).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(mycnet_spores::core::limits::PAGE_LIMIT_MAX)), conflicts_with = "tiered")]
        limit: Option<u32>,
        /// Start after this cursor: the `next:` line (`next` in --json) of the page before.
        #[arg(long, value_name = "CURSOR", conflicts_with = "tiered")]
        after: Option<String>,
        /// Follow the cursors to the last page and print every item.
        #[arg(long, conflicts_with = "tiered")]
        all: bool,
        /// Also list services of nodes committed as offline (each line says the node's status).
        #[arg(long, conflicts_with = "tiered")]
        include_offline: bool,
        /// Also list services whose health check fails (each line says so).
        #[arg(long, conflicts_with = "tiered")]
        include_critical: bool,
        /// Answer from the most authoritative spore tier that has an answer (Primary, then
        /// Seed, then Latent) and say which, instead of from the node's newest view.
        #[arg(long)]
        tiered: bool,
        /// Refuse the node unless it proves this key (64 hex characters).
        #[arg(long)]
        key: Option<String>,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Register or deregister a service, signed with a node's key and sent through a node.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// The Raft membership: list it, remove a node for good, promote a learner, demote a voter.
    #[command(subcommand)]
    Member(MemberCommand),
    /// Follow a running node's committed events as they commit, filtered (until SIGINT).
    Watch {
        /// The node's QUIC address.
        #[arg(long)]
        addr: String,
        /// Start at this sequence number (default: the events from now on are not known yet,
        /// so 0 reads the whole history first).
        #[arg(long, default_value_t = 0)]
        from_seq: u64,
        /// Only this kind of event (repeatable): node_joined, service_registered, …
        #[arg(long = "kind")]
        kinds: Vec<String>,
        /// Only events about services with this name.
        #[arg(long)]
        name: Option<String>,
        /// Only events about this node (64 hex characters).
        #[arg(long, value_parser = service::parse_node_id)]
        node: Option<mycnet_spores::NodeId>,
        /// Refuse the node unless it proves this key (64 hex characters).
        #[arg(long, value_parser = service::parse_node_id)]
        key: Option<mycnet_spores::NodeId>,
        /// Print JSON, one object per line.
        #[arg(long)]
        json: bool,
    },
    /// Seed spores: export, verify and inspect signed snapshot files.
    #[command(subcommand)]
    Seed(SeedCommand),
    /// Load a running network like etcd's benchmark: concurrent clients write signed service
    /// registrations (committed writes/s, latency p50/p90/p99/p99.9/max), then deregister
    /// them unless --keep. Exit 2 for a key the network has not admitted.
    Bench {
        /// Any member's QUIC address (the writes follow the leader).
        #[arg(long)]
        addr: String,
        /// An admitted node's key file (e.g. a voter's DATA_DIR/node.key): the author of every
        /// registration.
        #[arg(long)]
        key_file: PathBuf,
        /// Concurrent clients, each with its own connection and one write in flight.
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Write this many registrations.
        #[arg(long, required_unless_present = "duration", conflicts_with = "duration")]
        events: Option<u64>,
        /// Write for this long (e.g. 30s, 2m).
        #[arg(long, value_parser = parse_duration)]
        duration: Option<std::time::Duration>,
        /// Pad each registration's metadata to about this many bytes of canonical encoding.
        #[arg(long, default_value_t = 256)]
        size: usize,
        /// Leave the registered services in place (default: deregister them afterwards).
        #[arg(long)]
        keep: bool,
        /// How long one write may take, retries included, in milliseconds.
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild a stopped node's damaged ledger from a seed or a peer, keeping its key; the
    /// damaged ledger is kept beside it. Exit 2 when there is nothing to repair.
    Repair {
        /// The node data dir (holds `ledger/` and `node.key`).
        #[arg(long)]
        data_dir: PathBuf,
        /// Rebuild from this seed file.
        #[arg(long, conflicts_with = "from_peer", required_unless_present = "from_peer")]
        from_seed: Option<PathBuf>,
        /// Rebuild from the chain of the member at this QUIC address.
        #[arg(long)]
        from_peer: Option<String>,
        /// Rebuild even a ledger that verifies.
        #[arg(long)]
        force: bool,
        /// Per-request timeout when copying from a peer.
        #[arg(long, default_value_t = 5_000)]
        timeout_ms: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a local network on loopback: 3 voters, 2 latent nodes, a leader kill and a restart.
    Demo {
        /// Keep the data dirs for the inspector.
        #[arg(long)]
        keep: bool,
        /// Put the data dirs here (implies --keep).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub(crate) enum SeedCommand {
    /// Write a seed: of a stopped node's data dir (--data-dir), or by a running node at its
    /// committed head while writes continue (--addr with that node's --key-file; the file is
    /// written on the node's host). Signed with the node's key.
    Export {
        /// A stopped node's data dir.
        #[arg(long, required_unless_present = "addr", conflicts_with = "addr")]
        data_dir: Option<PathBuf>,
        /// A running node's QUIC address (on this host).
        #[arg(long, requires = "key_file")]
        addr: Option<String>,
        /// That node's key file (only the node's own key may ask it to export).
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// The seed file to write (atomically; with --addr, a path on the node's host).
        #[arg(long)]
        out: PathBuf,
        /// Include every event from genesis (a full, offline-verifiable backup).
        #[arg(long)]
        events: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Verify a seed file: exit 0 if it verifies, 1 saying exactly what failed.
    Verify {
        /// The seed file.
        file: PathBuf,
        /// Require this network fingerprint (64 hex characters).
        #[arg(long)]
        network: Option<mycnet_spores::NetworkFingerprint>,
        /// Require signatures by a majority of the voters at the seed's head.
        #[arg(long)]
        quorum: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Verify a seed and import its events into a new data dir (for `spore node --from-seed`
    /// or the inspector). Refuses a Raft member's data dir, an older seed, a diverging one.
    Import {
        /// The data dir to import into (created if missing).
        #[arg(long)]
        data_dir: PathBuf,
        /// The seed file.
        file: PathBuf,
        /// Require this network fingerprint.
        #[arg(long)]
        network: Option<mycnet_spores::NetworkFingerprint>,
        /// Require signatures by a majority of the seed's voters.
        #[arg(long)]
        quorum: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add a voter's signature to a seed (co-signing towards a quorum); rewrites it atomically.
    Sign {
        /// The seed file.
        file: PathBuf,
        /// The signing voter's key file.
        #[arg(long)]
        key_file: PathBuf,
        /// Write the signed seed here instead of replacing FILE.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a seed's header, head, counts and signers.
    Inspect {
        /// The seed file.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Every seed file in a directory (a node's backups, say), newest first: head, size,
    /// signers and whether it verifies. Exit 1 if any does not.
    List {
        /// The directory.
        dir: PathBuf,
        /// Print JSON (one array).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum MemberCommand {
    /// Every node with its place in the Raft membership (voter, learner, or outside Raft).
    List {
        /// Any node's QUIC address.
        #[arg(long)]
        addr: String,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a node for good (its host is gone): out of the membership and recorded as left.
    Remove(MemberChange),
    /// Make a learner a voter (it must be a Sclerotium in the registry).
    Promote(MemberChange),
    /// Make a voter a learner (it keeps the chain; refused for the last voter).
    Demote(MemberChange),
}

/// What a membership change needs.
#[derive(clap::Args)]
pub(crate) struct MemberChange {
    /// The node's key (64 hex characters).
    #[arg(value_parser = service::parse_node_id)]
    pub(crate) node: mycnet_spores::NodeId,
    /// An admitted authority's key file (e.g. a voter's DATA_DIR/node.key).
    #[arg(long)]
    pub(crate) key_file: PathBuf,
    /// Any member's QUIC address (the change follows the leader).
    #[arg(long)]
    pub(crate) addr: String,
    /// Why (recorded with a removal).
    #[arg(long, default_value = "removed by an operator")]
    pub(crate) reason: String,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 15_000)]
    pub(crate) timeout_ms: u64,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Subcommand)]
pub(crate) enum ServiceCommand {
    /// Register a service offered by the key's node.
    Register {
        /// The node key that signs (an admitted node's `node.key`, e.g. DATA_DIR/node.key).
        #[arg(long)]
        key_file: PathBuf,
        /// Any member's QUIC address (the write follows the leader).
        #[arg(long)]
        addr: String,
        /// The service name.
        #[arg(long)]
        name: String,
        /// An endpoint PROTOCOL://ADDRESS (repeatable).
        #[arg(long = "endpoint", value_parser = service::parse_endpoint)]
        endpoints: Vec<mycnet_spores::Endpoint>,
        /// A capability the service provides (repeatable).
        #[arg(long = "capability")]
        capabilities: Vec<String>,
        /// Metadata KEY=VALUE (repeatable).
        #[arg(long = "meta", value_parser = service::parse_meta)]
        metadata: Vec<(String, String)>,
        /// A health check the service's node runs: `tcp HOST:PORT`, `http http://HOST:PORT/PATH`
        /// or `ttl 30s`, with options `interval=10s timeout=2s flips=3` (quote it). Only
        /// transitions between passing and critical are committed.
        #[arg(long, value_parser = service::parse_check)]
        check: Option<mycnet_spores::core::health::CheckSpec>,
        /// Give up after this many milliseconds. Retries within it re-send the same signed
        /// event, which commits at most once (a retry of a committed event answers where it
        /// committed). A write that timed out after an attempt reached a node may still commit;
        /// the message then says so.
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Deregister a service.
    Deregister {
        /// The node key that signs.
        #[arg(long)]
        key_file: PathBuf,
        /// Any member's QUIC address.
        #[arg(long)]
        addr: String,
        /// The service id.
        #[arg(long)]
        id: uuid::Uuid,
        /// Why, for the audit trail.
        #[arg(long, default_value = "deregistered by operator")]
        reason: String,
        /// Give up after this many milliseconds (see `service register --help`: retries
        /// re-send the same signed event, which commits at most once).
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// A node status as `--status` takes it: `active`, `offline` or `left`.
fn parse_status(s: &str) -> Result<mycnet_spores::NodeStatus, String> {
    mycnet_spores::http::params::parse_status(s).ok_or_else(|| format!("{s:?}: expected active, offline or left"))
}

/// A duration as `--duration` takes it: `300ms`, `30s`, `5m`, `1h`.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    mycnet_spores::node::parse_duration(s).ok_or_else(|| format!("{s:?}: expected a duration such as 30s, 5m or 1h"))
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum QueryWhat {
    Nodes,
    Services,
    Offline,
}
