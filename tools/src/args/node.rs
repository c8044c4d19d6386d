//! The flags of `spore node`: a node from flags or from a TOML file, and what overrides the file.

use std::path::PathBuf;

use clap::ValueEnum;

#[derive(clap::Args)]
pub(crate) struct NodeArgs {
    /// A TOML config file (see the docs of `mycnet_spores::node::config`); excludes the other flags.
    #[arg(long, conflicts_with_all = ["data_dir", "listen", "advertise", "init", "join_addr", "peer", "latent_peer", "from_seed"])]
    pub(crate) config: Option<PathBuf>,
    /// Ledger, Raft log and node.key live here.
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// host:port to listen on (UDP).
    #[arg(long)]
    pub(crate) listen: Option<String>,
    /// host:port peers dial to reach this node, when not --listen (behind a NAT or a relay).
    #[arg(long)]
    pub(crate) advertise: Option<String>,
    /// A human-readable name.
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// voter, or latent (stays out of Raft and keeps the chain by gossip).
    #[arg(long, value_enum, default_value_t = Role::Voter)]
    pub(crate) role: Role,
    /// A capability to announce (repeatable).
    #[arg(long = "capability")]
    pub(crate) capabilities: Vec<String>,
    /// Form a new network with this name (first voter only).
    #[arg(long, conflicts_with = "join_addr")]
    pub(crate) init: Option<String>,
    /// Join through the member at this address.
    #[arg(long, requires = "join_key")]
    pub(crate) join_addr: Option<String>,
    /// That member's key.
    #[arg(long, requires = "join_addr")]
    pub(crate) join_key: Option<String>,
    /// Join as a learner rather than a voter.
    #[arg(long)]
    pub(crate) learner: bool,
    /// A bootstrap peer KEY@HOST:PORT (repeatable); the founder admits these as voters.
    #[arg(long = "peer")]
    pub(crate) peer: Vec<String>,
    /// A bootstrap peer KEY@HOST:PORT that is a latent node (repeatable); the founder admits
    /// these as Rhizomorphs.
    #[arg(long = "latent-peer")]
    pub(crate) latent_peer: Vec<String>,
    /// Form the network this seed file describes (this node must be one of its voters).
    #[arg(long, conflicts_with_all = ["init", "join_addr"])]
    pub(crate) from_seed: Option<PathBuf>,
    /// With --join-addr: join only if that member's chain extends this seed's head.
    #[arg(long, requires = "join_addr")]
    pub(crate) trust_seed: Option<PathBuf>,
    /// Timeouts profile: lan (default; round trips of milliseconds) or wan (voters 100-150 ms
    /// apart, lossy links). Overrides `timeouts` in --config.
    #[arg(long, value_enum)]
    pub(crate) timeouts: Option<Profile>,
    /// Serve the read-only HTTP/JSON endpoint (status, registry, events, SSE watch, seed,
    /// /healthz, /readyz, /metrics) on this TCP host:port, e.g. 127.0.0.1:8500 (keep it on
    /// loopback unless a token guards it). Overrides `http_listen` in --config.
    #[arg(long, value_name = "ADDR")]
    pub(crate) http: Option<String>,
    /// A file whose first line is the bearer token the HTTP endpoint requires (every route but
    /// /healthz). Overrides `http_token` / `http_token_file` in --config.
    #[arg(long, value_name = "PATH")]
    pub(crate) http_token_file: Option<PathBuf>,
    /// Incoming QUIC connections from clients and tools at once (each watch and each `spore
    /// bench` client keeps one; default 256). The voters this node dials keep places of their
    /// own beyond it. Overrides `connections_max` in --config.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub(crate) connections_max: Option<u32>,
    /// How the node logs to stderr: `text` (default) or `json` (one JSON object per line, for
    /// journald, Loki and the like).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Profile {
    Lan,
    Wan,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Role {
    Voter,
    Latent,
}
