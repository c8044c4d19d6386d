//! Batched signature verification of chained events and linked ranges, on all cores for large
//! ranges.

use crate::core::event::ChainedEvent;
use crate::core::keys::{SigningBatch, VerifierCache};
use rayon::prelude::*;

/// Verifies one chunk of chained events' signatures in a batch.
fn verify_chunk(cache: &mut VerifierCache, chunk: &[ChainedEvent]) -> Vec<bool> {
    let mut batch = SigningBatch::with_capacity(chunk.len());
    for c in chunk {
        batch.push_event(&c.event);
    }
    batch.verify(cache)
}

/// Chunk size of batched signature verification.
const VERIFY_CHUNK: usize = 128;

/// Verifies the signatures of chained events, batched on all cores for large ranges.
pub(super) fn verify_chained(cache: &mut VerifierCache, range: &[ChainedEvent]) -> Vec<bool> {
    if range.len() < 2 * VERIFY_CHUNK {
        return range.chunks(VERIFY_CHUNK).flat_map(|c| verify_chunk(cache, c)).collect();
    }
    verify_signatures(range)
}

/// Verifies the signatures of a range on all cores (per-thread key caches), for a caller that
/// verifies the next range while the ledger stores the previous one; hand the verdicts to
/// [`super::Ledger::append_linked_verified`].
pub fn verify_signatures(range: &[ChainedEvent]) -> Vec<bool> {
    range
        .par_chunks(VERIFY_CHUNK)
        .flat_map_iter(|chunk| crate::store::replay::with_thread_cache(|cache| verify_chunk(cache, chunk)))
        .collect()
}

/// Chunk size of batched verification of a linked range: `verify_batch` costs less per
/// signature the larger the batch (instructions per signature with batches of 128, 256, 512
/// and 1024: 166k, 153k, 143k, 133k); a gossip range of 2048 events still makes four chunks
/// to spread over two cores.
const LINKED_VERIFY_CHUNK: usize = 512;

/// [`verify_signatures`] of a linked range, with the signing messages taken from the canonical
/// encodings the range keeps (no second encoding of each event), in chunks of
/// `LINKED_VERIFY_CHUNK`.
pub fn verify_linked_signatures(range: &crate::core::gossip::LinkedRange) -> Vec<bool> {
    let events = range.events();
    // As large as allowed, but at least one chunk per core when there are enough events.
    let size = events.len().div_ceil(rayon::current_num_threads().max(1)).clamp(VERIFY_CHUNK, LINKED_VERIFY_CHUNK);
    let chunk = |(c, evs): (usize, &[ChainedEvent])| {
        crate::store::replay::with_thread_cache(|cache| {
            let base = c * size;
            let mut batch = SigningBatch::with_capacity(evs.len());
            for (i, ce) in evs.iter().enumerate() {
                match range.canonical(base + i) {
                    Some(canonical) => batch.push_canonical(ce.event.author, ce.event.signature, canonical),
                    None => batch.push_event(&ce.event),
                }
            }
            batch.verify(cache)
        })
    };
    if events.len() < 2 * VERIFY_CHUNK {
        return events.chunks(size).enumerate().flat_map(chunk).collect();
    }
    events.par_chunks(size).enumerate().flat_map_iter(chunk).collect()
}
