//! What the memory benches (`scale`, `projection_memory`) share: a global allocator that counts
//! the bytes live, as asked of malloc and as glibc's chunks (each bench that includes this
//! module counts its whole process), the registry size they read from `SPORES_SCALE`, and the
//! shape of the registry's nodes and services.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use mycnet_spores::{Endpoint, NodeAnnouncement, NodeKey, NodeRole, ServiceAnnouncement};

/// Forwards to the system allocator and counts sizes.
pub struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
/// The same, each allocation counted as the chunk glibc's malloc gives it (8 bytes of header,
/// 16-byte steps, 32 at least): what the bytes cost in resident memory.
static CHUNKS: AtomicUsize = AtomicUsize::new(0);

/// The glibc chunk an allocation of `size` bytes takes.
pub fn chunk(size: usize) -> usize {
    ((size + 8 + 15) & !15).max(32)
}

// SAFETY: forwards every call to the system allocator unchanged; only counts sizes.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Relaxed);
        CHUNKS.fetch_add(chunk(l.size()), Relaxed);
        // SAFETY: the caller's layout, passed on.
        unsafe { std::alloc::System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        LIVE.fetch_sub(l.size(), Relaxed);
        CHUNKS.fetch_sub(chunk(l.size()), Relaxed);
        // SAFETY: allocated by `alloc` above with this layout.
        unsafe { std::alloc::System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new, Relaxed);
        LIVE.fetch_sub(l.size(), Relaxed);
        CHUNKS.fetch_add(chunk(new), Relaxed);
        CHUNKS.fetch_sub(chunk(l.size()), Relaxed);
        // SAFETY: as for `dealloc`.
        unsafe { std::alloc::System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Heap bytes live now: as asked of malloc, and in glibc chunks.
pub fn live() -> (usize, usize) {
    (LIVE.load(Relaxed), CHUNKS.load(Relaxed))
}

/// The registry size `SPORES_SCALE=NODES/SERVICES` asks for, else `default`.
pub fn scale(default: (usize, usize)) -> (usize, usize) {
    std::env::var("SPORES_SCALE")
        .ok()
        .and_then(|v| {
            let (a, b) = v.split_once('/')?;
            Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?))
        })
        .unwrap_or(default)
}

/// The keys of the registry's `n` nodes (node 0 is the founder in `projection_memory`).
pub fn keys(n: usize) -> Vec<NodeKey> {
    (0..n)
        .map(|i| {
            let mut seed = [7u8; 32];
            seed[..8].copy_from_slice(&(i as u64).to_be_bytes());
            NodeKey::from_seed(seed)
        })
        .collect()
}

/// Service `i` of the registry, offered by `node`.
pub fn service(i: usize, id: uuid::Uuid, node: mycnet_spores::NodeId, names: usize) -> ServiceAnnouncement {
    ServiceAnnouncement {
        service_id: id,
        name: format!("svc-{}", i % names).into(),
        node,
        capabilities: vec![format!("cap-{}", i % 8).into()].into(),
        endpoints: vec![Endpoint {
            protocol: "tcp".into(),
            address: format!("10.{}.{}.{}:{}", i >> 16 & 255, i >> 8 & 255, i & 255, 9000 + i % 100).into(),
        }]
        .into(),
        metadata: vec![("zone".into(), format!("z{}", i % 4).into())].into(),
    }
}

/// Node `i`'s announcement.
pub fn node(i: usize, key: &NodeKey) -> NodeAnnouncement {
    NodeAnnouncement {
        node: key.node_id(),
        name: format!("node-{i}"),
        role: if i == 0 { NodeRole::Sclerotium } else { NodeRole::Rhizomorph },
        addresses: vec![format!("10.{}.{}.{}:7400", i >> 16 & 255, i >> 8 & 255, i & 255)],
        capabilities: vec![format!("cap-{}", i % 8)],
    }
}
