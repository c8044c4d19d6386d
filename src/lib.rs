//! # mycnet-spores
//!
//! The node-discovery store of the Mycelium Network: who is in a peer-to-peer network, what
//! they can do, how far they are trusted and which services they offer — kept as an
//! **event-sourced ledger with a replayable log**.
//!
//! Every spore change is a signed (ed25519), blake3-chained [`SignedEvent`] appended to a
//! fjall [`Ledger`]; every registry (nodes, capabilities, trust, services, activity) is a
//! [`Projection`] derived by replaying that log. Authority between the three spore tiers is
//! **Primary > Seed > Latent** ([`SporeType`]).
//!
//! What it is not: a general key-value store, a service mesh, or a health checker. It keeps
//! verifiable discovery data and nothing else.
//!
//! ## The ledger
//!
//! ```
//! use mycnet_spores::{Ledger, LedgerConfig, NodeKey, SignedEvent, EventBody, NodeAnnouncement,
//!                     NodeRole, NetworkIdentity, Timestamp};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let founder = NodeKey::generate()?;
//! let identity = NetworkIdentity {
//!     network_id: uuid::Uuid::new_v4(),
//!     network_name: "my-network".to_string(),
//!     genesis_timestamp: chrono::Utc::now(),
//! };
//! let genesis = SignedEvent::genesis(&founder, identity.to_record(), NodeAnnouncement {
//!     node: founder.node_id(),
//!     name: "founder".into(),
//!     role: NodeRole::Sclerotium,
//!     addresses: vec!["127.0.0.1:7000".into()],
//!     capabilities: vec!["storage".into()],
//! });
//! let fingerprint = genesis.fingerprint;
//! let mut ledger = Ledger::open(dir.path(), LedgerConfig::default())?;
//! ledger.append(vec![genesis])?;
//! let change = SignedEvent::sign(&founder, fingerprint, Timestamp::now(),
//!     EventBody::CapabilitiesChanged { node: founder.node_id(), capabilities: vec!["gpu".into()] });
//! let outcome = ledger.append(vec![change])?;
//! assert!(outcome[0].is_ok());
//! assert_eq!(ledger.projection().nodes_with_capability("gpu").count(), 1);
//! # Ok(()) }
//! ```
//!
//! See `ARCHITECTURE.md` for the module map and `schema/` for every format.

pub mod core;
pub mod error;
pub mod forensics;
pub mod http;
pub mod net;
pub mod node;
pub mod raft;
pub mod seed;
pub mod store;
pub mod wire;

pub use crate::core::compact::{List, Str};
pub use crate::core::event::{ChainedEvent, EventBody, NodeAnnouncement, ServiceAnnouncement, SignedEvent};
pub use crate::core::keys::NodeKey;
pub use crate::core::projection::{
    ChainHead, FoundService, NodeFilter, NodeRecord, NodeStatus, Page, Paged, Projection, Rejection, ServiceFilter,
    ServiceRecord,
};
pub use crate::core::types::{
    ChainHash, Endpoint, NetworkFingerprint, NetworkIdentity, NodeId, NodeRole, SporeType, Timestamp, TrustScore,
};
pub use crate::error::{Corruption, Error, LedgerError};
pub use crate::forensics::{Branch, ForensicsError};
pub use crate::node::{Consistency, OperationalMode, SporeSystem, SporeSystemBuilder, Subscription, Timeouts};
pub use crate::raft::ChainPoint;
pub use crate::store::inspect::{LedgerReader, VerifyReport};
pub use crate::store::ledger::{Ledger, LedgerConfig};
pub use crate::store::replay::{ReplayOptions, ReplayStats, StopAt};
pub use crate::wire::rpc::PeerNode;
pub use crate::wire::status::{PeerLag, SporeStatus};
