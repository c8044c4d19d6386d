//! Seed framing: the bytes a seed's digest covers, its signatures, whole seeds built in memory,
//! and the crash-safe file write.

use std::io::Write;
use std::path::Path;

use super::{SeedError, SeedHeader, DOMAIN_SEED_SIGNATURE, SEED_FORMAT_V1, SEED_FORMAT_V2, SEED_MAGIC};
use crate::core::event::{canonical_bytes, ChainedEvent};
use crate::core::keys::NodeKey;
use crate::core::projection::{Projection, ProjectionState};
use crate::core::types::NetworkFingerprint;
use crate::store::record::{encode_checkpoint, encode_record};

/// The format version of a seed with this header and event count: 2 for a state-only seed that
/// carries events (the tail after its attested state), 1 otherwise.
pub(crate) fn format_of(header: &SeedHeader, event_count: u64) -> u16 {
    if !header.includes_events && event_count > 0 {
        SEED_FORMAT_V2
    } else {
        SEED_FORMAT_V1
    }
}

/// Encodes a seed's unsigned content (everything the digest covers).
pub fn encode_unsigned(header: &SeedHeader, state: &ProjectionState, events: &[ChainedEvent]) -> Vec<u8> {
    let records: Vec<Vec<u8>> = events.iter().map(encode_record).collect();
    encode_unsigned_raw(header, state, &records)
}

/// [`encode_unsigned`] from ledger records as stored (copied verbatim). The version follows
/// from the header and the records ([`SEED_FORMAT_V2`] for a state-only seed with events).
pub fn encode_unsigned_raw<R: AsRef<[u8]>>(header: &SeedHeader, state: &ProjectionState, records: &[R]) -> Vec<u8> {
    encode_prefix(header, state, records, records.len() as u64)
}

/// The unsigned content with `records` and the event count `count` (which a streaming writer
/// states before it appends the rest of the records).
pub(crate) fn encode_prefix<R: AsRef<[u8]>>(
    header: &SeedHeader,
    state: &ProjectionState,
    records: &[R],
    count: u64,
) -> Vec<u8> {
    let hdr = canonical_bytes(header);
    let st = encode_checkpoint(state);
    let body: usize = records.iter().map(|r| r.as_ref().len() + 4).sum();
    let mut out = Vec::with_capacity(64 + hdr.len() + st.len() + body);
    out.extend_from_slice(SEED_MAGIC);
    out.extend_from_slice(&format_of(header, count).to_le_bytes());
    out.extend_from_slice(&(hdr.len() as u32).to_le_bytes());
    out.extend_from_slice(&hdr);
    out.extend_from_slice(&(st.len() as u64).to_le_bytes());
    out.extend_from_slice(&st);
    out.extend_from_slice(&count.to_le_bytes());
    for rec in records {
        let rec = rec.as_ref();
        out.extend_from_slice(&(rec.len() as u32).to_le_bytes());
        out.extend_from_slice(rec);
    }
    out
}

/// The message a voter signs for a seed.
pub fn seed_signing_message(fingerprint: &NetworkFingerprint, digest: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN_SEED_SIGNATURE.len() + 64);
    m.extend_from_slice(DOMAIN_SEED_SIGNATURE);
    m.extend_from_slice(fingerprint.as_bytes());
    m.extend_from_slice(digest);
    m
}

/// Builds a seed from a projection (and optionally the events up to its head), signed by
/// `signers`. Returns the file bytes.
///
/// Without events this is a **format 1** state-only seed: its state is vouched for by its
/// signers alone, and [`verify`](super::verify) says so ([`StateProof::SignersOnly`](super::StateProof::SignersOnly)).
/// Nodes export format 2 ([`build_state_only`], [`export`](super::export)), whose state the
/// chain attests.
pub fn build(
    projection: &Projection,
    events: Option<&[ChainedEvent]>,
    signers: &[&NodeKey],
) -> Result<Vec<u8>, SeedError> {
    let records: Option<Vec<Vec<u8>>> = events.map(|e| e.iter().map(encode_record).collect());
    build_raw(projection, records.as_deref(), signers)
}

/// [`build`] from ledger records as stored (copied verbatim, not re-encoded).
pub fn build_raw<R: AsRef<[u8]>>(
    projection: &Projection,
    records: Option<&[R]>,
    signers: &[&NodeKey],
) -> Result<Vec<u8>, SeedError> {
    let header = header_of(projection.state(), records.is_some())?;
    Ok(sign(
        encode_unsigned_raw::<R>(&header, projection.state(), records.unwrap_or(&[])),
        &header.fingerprint,
        signers,
    ))
}

/// Builds a **format 2** state-only seed: `base` is a state the chain attests (the first of
/// `tail` is the state checkpoint event at `base`'s seq + 1 that attests it) and `tail` the
/// events from there to the head, whose state `head` is. Signed by `signers`.
pub fn build_state_only(
    base: &ProjectionState,
    tail: &[ChainedEvent],
    head: &ProjectionState,
    signers: &[&NodeKey],
) -> Result<Vec<u8>, SeedError> {
    if tail.is_empty() {
        return Err(SeedError::NotAttested(
            "a state-only seed needs the state checkpoint event that attests its state".into(),
        ));
    }
    let header = header_of(head, false)?;
    Ok(sign(encode_unsigned(&header, base, tail), &header.fingerprint, signers))
}

/// The header of a seed whose state at the head is `head`.
pub(crate) fn header_of(head: &ProjectionState, includes_events: bool) -> Result<SeedHeader, SeedError> {
    let at = head.head.ok_or(SeedError::StateMismatch("empty ledger: nothing to seed".into()))?;
    let network = head.network.clone().ok_or(SeedError::StateMismatch("no genesis".into()))?;
    let fingerprint = head.fingerprint.ok_or(SeedError::StateMismatch("no fingerprint".into()))?;
    Ok(SeedHeader { network, fingerprint, head_seq: at.seq, head_hash: at.hash, includes_events })
}

/// Appends the digest of `content` and the signatures over it.
fn sign(mut content: Vec<u8>, fingerprint: &NetworkFingerprint, signers: &[&NodeKey]) -> Vec<u8> {
    let digest = *blake3::hash(&content).as_bytes();
    content.extend_from_slice(&digest);
    append_signatures(&mut content, fingerprint, &digest, signers);
    content
}

/// Appends the signature count and each signer's `NodeId ‖ signature` over the digest.
pub(crate) fn append_signatures(
    out: &mut Vec<u8>,
    fingerprint: &NetworkFingerprint,
    digest: &[u8; 32],
    signers: &[&NodeKey],
) {
    let msg = seed_signing_message(fingerprint, digest);
    out.extend_from_slice(&(signers.len() as u16).to_le_bytes());
    for k in signers {
        out.extend_from_slice(k.node_id().as_bytes());
        out.extend_from_slice(&k.sign(&msg).0);
    }
}

/// Writes `bytes` to `path` crash-safely: temp file in the same directory, fsync, rename,
/// fsync the directory. A crash never leaves a half seed under the final name.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), SeedError> {
    let io = |e: std::io::Error| SeedError::Io { path: path.display().to_string(), reason: e.to_string() };
    let mut tmp = tempfile::NamedTempFile::new_in(parent_dir(path)).map_err(io)?;
    tmp.write_all(bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    persist_synced(tmp, path).map_err(io)
}

/// The directory `path` is in (`.` for a bare file name): where its temporary file goes.
pub(crate) fn parent_dir(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Renames a temporary file, written and synced, to `path`, then syncs the directory so the
/// rename survives a crash (before it, the old file under `path` stays whole).
pub(crate) fn persist_synced(tmp: tempfile::NamedTempFile, path: &Path) -> std::io::Result<()> {
    tmp.persist(path).map_err(|e| e.error)?;
    if let Ok(d) = std::fs::File::open(parent_dir(path)) {
        let _ = d.sync_all();
    }
    Ok(())
}
