//! Bounds on everything that comes from outside. Every loop, queue and field has one.

/// Largest canonical encoding of one signed event, in bytes.
pub const EVENT_BYTES_MAX: usize = 64 * 1024;
/// Largest on-disk record (format tag + rkyv archive), in bytes.
pub const RECORD_BYTES_MAX: usize = 2 * EVENT_BYTES_MAX;
/// Deepest container nesting BCS decoding accepts.
pub const BCS_CONTAINER_DEPTH_MAX: usize = 16;
/// Longest node, service or network name, in bytes.
pub const NAME_BYTES_MAX: usize = 128;
/// Longest free-form text (reasons), in bytes.
pub const TEXT_BYTES_MAX: usize = 1024;
/// Most addresses per node.
pub const ADDRESSES_MAX: usize = 16;
/// Longest address or endpoint address, in bytes.
pub const ADDRESS_BYTES_MAX: usize = 256;
/// Most capabilities per node or service.
pub const CAPABILITIES_MAX: usize = 64;
/// Longest capability tag, in bytes.
pub const CAPABILITY_BYTES_MAX: usize = 64;
/// Most endpoints per service.
pub const ENDPOINTS_MAX: usize = 16;
/// Most metadata entries per service.
pub const METADATA_ENTRIES_MAX: usize = 32;
/// Longest metadata key or value, in bytes.
pub const METADATA_BYTES_MAX: usize = 512;
/// Most services with a health check one node may offer (the rules refuse the next).
pub const CHECKED_SERVICES_PER_NODE_MAX: usize = 1_000;
/// Most events appended in one durable ledger batch.
pub const APPEND_BATCH_MAX: usize = 4096;
/// Most records read per replay chunk (bounds replay memory independently of log length).
pub const REPLAY_CHUNK_EVENTS: usize = 2048;
/// Largest projection checkpoint accepted on load, in bytes.
pub const CHECKPOINT_BYTES_MAX: usize = 1 << 30;

/// Most events in one gossip range batch.
pub const GOSSIP_BATCH_EVENTS_MAX: usize = 4096;
/// Record bytes a gossip range batch may carry (a batch stops before it would exceed this;
/// a single record is always sent).
pub const GOSSIP_BATCH_BYTES_MAX: usize = 1 << 20;
/// Most bytes (canonical event encoding) a session collects towards one backfill range before
/// it can check it; past that it asks for shorter ranges.
pub const GOSSIP_BACKFILL_BYTES_MAX: usize = 8 * GOSSIP_BATCH_BYTES_MAX;
/// Largest gossip frame, in bytes (a batch plus its framing).
pub const GOSSIP_FRAME_BYTES_MAX: usize = GOSSIP_BATCH_BYTES_MAX + RECORD_BYTES_MAX + 64 * 1024;
/// Most provisional events handed over in one gossip session.
pub const GOSSIP_PROVISIONAL_MAX: usize = 64;
/// Most fork evidence records in one gossip message.
pub const GOSSIP_FORKS_MAX: usize = 4;
/// Most peers advertised in one gossip hello.
pub const GOSSIP_PEERS_MAX: usize = 16;

const _: () = assert!(EVENT_BYTES_MAX < RECORD_BYTES_MAX);
const _: () = assert!(GOSSIP_BATCH_EVENTS_MAX <= APPEND_BATCH_MAX);
const _: () = assert!(ADDRESSES_MAX * ADDRESS_BYTES_MAX < EVENT_BYTES_MAX);
const _: () = assert!(REPLAY_CHUNK_EVENTS <= APPEND_BATCH_MAX);
/// Events a ledger remembers by id, so that a retried submit of a committed signed event
/// answers where it committed instead of committing it again (the newest this many seqs).
pub const RECENT_EVENTS_WINDOW: u64 = 65_536;

/// Items a list query answers when it names no limit (`schema/http.md`, *Paging*): services
/// (`find_services_page`, `Query::FindPage`, `/v1/services`, `spore query services`) and
/// nodes (`nodes_page`, `Query::NodesPage`, `/v1/nodes`, `spore query nodes`).
pub const PAGE_LIMIT_DEFAULT: u32 = 1_000;
/// Most items one page of a list query holds; a larger limit is clipped to it (the wire) or
/// refused (HTTP, the CLI). The unpaged wire queries (`Query::Nodes`, `Services`,
/// `ServicesByName`, `ServicesByCapability`, `OfflineNodes`, `Find`, `Tiered`) answer at most
/// this many too, the first in key order; the paged queries read the rest.
pub const PAGE_LIMIT_MAX: u32 = 10_000;
/// Most candidates one page looks at: a filter that no index serves (liveness, health, trust)
/// and that leaves most candidates out ends the page early, with a `next` cursor, rather than
/// scanning the whole registry for one request.
pub const PAGE_SCAN_MAX: usize = 100_000;

const _: () = assert!(PAGE_LIMIT_DEFAULT <= PAGE_LIMIT_MAX);
const _: () = assert!(PAGE_LIMIT_MAX as usize <= PAGE_SCAN_MAX);
