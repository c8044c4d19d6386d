//! Seed spores: signed snapshot files anyone can verify offline.
//!
//! A seed carries a network's identity, a chain head, the projection state at that head and,
//! optionally, the full event range from genesis. Voters sign its digest; a seed signed by a
//! majority of the voters at its head is *quorum-signed*. Format (see `schema/seed.md`):
//!
//! ```text
//! magic        8 bytes  "MYCSEED\0"
//! version      u16 LE   SEED_FORMAT_V1
//! header_len   u32 LE   ≤ SEED_HEADER_BYTES_MAX
//! header       BCS(SeedHeader)
//! state_len    u64 LE
//! state        projection checkpoint record (store::record framing, rkyv)
//! event_count  u64 LE   0, or head.seq + 1
//! events       event_count × (u32 LE length ‖ ledger record)
//! digest       32 bytes blake3(everything above)
//! sig_count    u16 LE   ≤ SEED_SIGNATURES_MAX
//! signatures   sig_count × (signer NodeId 32 ‖ ed25519 64) over DOMAIN_SEED ‖ fingerprint ‖ digest
//! ```
//!
//! Nothing is trusted before the digest and at least one signature check out; the state must
//! match the header's head, and included events must chain to it and replay to the state.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::core::event::{canonical_bytes, network_fingerprint, ChainedEvent};
use crate::core::keys::{NodeKey, PublicKey};
use crate::core::projection::{ChainHead, Projection, ProjectionState};
use crate::core::types::{ChainHash, NetworkFingerprint, NetworkIdentityRecord, NodeId, SignatureBytes};
use crate::store::record::{decode_checkpoint, decode_record, encode_checkpoint, encode_record};

/// File magic.
pub const SEED_MAGIC: &[u8; 8] = b"MYCSEED\0";
/// The format version this code writes and reads.
pub const SEED_FORMAT_V1: u16 = 1;
/// Domain tag of seed signatures.
pub const DOMAIN_SEED_SIGNATURE: &[u8] = b"mycnet-spores/v1/seed-signature\0";
/// Largest header accepted.
pub const SEED_HEADER_BYTES_MAX: usize = 64 * 1024;
/// Most signatures accepted.
pub const SEED_SIGNATURES_MAX: usize = 64;

/// The seed's header (BCS-encoded in the file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedHeader {
    /// The network.
    pub network: NetworkIdentityRecord,
    /// Its fingerprint (checked against `network` and the founder in the state).
    pub fingerprint: NetworkFingerprint,
    /// The chain head the seed captures.
    pub head_seq: u64,
    /// Hash at `head_seq`.
    pub head_hash: ChainHash,
    /// Whether the full event range is included.
    pub includes_events: bool,
}

/// A decoded, verified seed.
#[derive(Clone, Debug)]
pub struct Seed {
    /// The header.
    pub header: SeedHeader,
    /// The projection at the head.
    pub state: ProjectionState,
    /// Events from genesis to the head, if included.
    pub events: Vec<ChainedEvent>,
    /// The digest the signatures cover.
    pub digest: [u8; 32],
    /// Signers whose signatures verified.
    pub signers: Vec<NodeId>,
}

/// Why a seed was refused. Nothing is imported from a refused seed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SeedError {
    /// Not a seed file (bad magic).
    #[error("not a seed file (bad magic)")]
    BadMagic,
    /// A format version this code cannot read.
    #[error("unsupported seed format version {0}")]
    UnsupportedVersion(u16),
    /// The file ends early.
    #[error("truncated seed file: {0}")]
    Truncated(&'static str),
    /// A length field over its limit.
    #[error("{what} of {got} bytes exceeds the limit {max}")]
    TooLarge {
        /// Which part.
        what: &'static str,
        /// Limit.
        max: usize,
        /// Found.
        got: usize,
    },
    /// The header does not decode.
    #[error("corrupt header: {0}")]
    Header(String),
    /// The digest does not match the content (any flipped byte before the signatures).
    #[error("digest mismatch: the seed's content was modified")]
    DigestMismatch,
    /// Bytes after the signatures.
    #[error("{0} trailing bytes after the signatures")]
    Trailing(usize),
    /// A signature that does not verify.
    #[error("signature by {0} does not verify")]
    BadSignature(NodeId),
    /// A signer that is not a voter at the seed's head.
    #[error("signer {0} is not a voter at the seed's head")]
    NotAVoter(NodeId),
    /// No valid signature at all.
    #[error("the seed is unsigned")]
    Unsigned,
    /// Fewer voter signatures than a majority where a quorum is required.
    #[error("signed by {got} of {voters} voters; a quorum needs {needed}")]
    UnderSigned {
        /// Valid voter signatures.
        got: usize,
        /// Voters at the head.
        voters: usize,
        /// Majority.
        needed: usize,
    },
    /// The state does not decode or does not match the header.
    #[error("state does not match the header: {0}")]
    StateMismatch(String),
    /// The seed belongs to another network.
    #[error("seed of network {found}, expected {expected}")]
    WrongNetwork {
        /// Expected.
        expected: NetworkFingerprint,
        /// Found.
        found: NetworkFingerprint,
    },
    /// Included events do not chain or do not replay to the state.
    #[error("event range is invalid at seq {seq}: {reason}")]
    BadEvents {
        /// First bad seq.
        seq: u64,
        /// Why.
        reason: String,
    },
    /// The primary's chain does not pass through the seed's head.
    #[error("the primary does not extend the seed's head at seq {seed_seq} (primary head: {primary_head:?}): {reason}")]
    NotExtended {
        /// The seed's head.
        seed_seq: u64,
        /// The primary's head.
        primary_head: Option<u64>,
        /// What differs.
        reason: String,
    },
    /// The seed is not newer than the ledger it would be imported into.
    #[error("the seed's head (seq {seed_seq}) is not newer than this ledger's head (seq {own_seq}); nothing to import")]
    NotNewer {
        /// The seed's head.
        seed_seq: u64,
        /// The ledger's head.
        own_seq: u64,
    },
    /// The seed's chain and the ledger's differ.
    #[error("the seed's chain differs from this ledger at seq {seq}")]
    Diverges {
        /// Where.
        seq: u64,
    },
    /// The ledger takes part in Raft: importing behind its back would let Raft apply
    /// entries twice.
    #[error("this ledger is a Raft member's; import into a new data dir and form or join from there")]
    RaftManaged,
    /// The operation needs the full event range and the seed carries only the state.
    #[error("this needs a seed that includes its events (export it with events)")]
    EventsRequired,
    /// Filesystem error.
    #[error("I/O error on {path}: {reason}")]
    Io {
        /// File.
        path: String,
        /// OS error.
        reason: String,
    },
}

/// Encodes a seed's unsigned content (everything the digest covers).
pub fn encode_unsigned(header: &SeedHeader, state: &ProjectionState, events: &[ChainedEvent]) -> Vec<u8> {
    let records: Vec<Vec<u8>> = events.iter().map(encode_record).collect();
    encode_unsigned_raw(header, state, &records)
}

/// [`encode_unsigned`] from ledger records as stored (copied verbatim).
pub fn encode_unsigned_raw<R: AsRef<[u8]>>(header: &SeedHeader, state: &ProjectionState, records: &[R]) -> Vec<u8> {
    let hdr = canonical_bytes(header);
    let st = encode_checkpoint(state);
    let body: usize = records.iter().map(|r| r.as_ref().len() + 4).sum();
    let mut out = Vec::with_capacity(64 + hdr.len() + st.len() + body);
    out.extend_from_slice(SEED_MAGIC);
    out.extend_from_slice(&SEED_FORMAT_V1.to_le_bytes());
    out.extend_from_slice(&(hdr.len() as u32).to_le_bytes());
    out.extend_from_slice(&hdr);
    out.extend_from_slice(&(st.len() as u64).to_le_bytes());
    out.extend_from_slice(&st);
    out.extend_from_slice(&(records.len() as u64).to_le_bytes());
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

/// Exports a seed of a ledger at its current head to `path`, signed by `signer`, while the
/// ledger stays writable: the projection is copied under a short read lock, then the events
/// (when `include_events`) are read page by page up to that head, each page under its own
/// short lock. Written crash-safely ([`write_atomically`]). Returns the seed's head.
#[tracing::instrument(level = "info", skip(ledger, signer), fields(path = %path.display()))]
pub fn export(
    ledger: &std::sync::RwLock<crate::store::ledger::Ledger>,
    signer: &NodeKey,
    path: &Path,
    include_events: bool,
) -> Result<ChainHead, SeedError> {
    let io = |e: std::io::Error| SeedError::Io { path: path.display().to_string(), reason: e.to_string() };
    let poisoned = || SeedError::Io { path: path.display().to_string(), reason: "ledger lock poisoned".into() };
    let projection = ledger.read().map_err(|_| poisoned())?.projection().clone();
    let head = projection.head().ok_or(SeedError::StateMismatch("empty ledger: nothing to seed".into()))?;
    let network = projection.network().cloned().ok_or(SeedError::StateMismatch("no genesis".into()))?;
    let fingerprint = projection.fingerprint().ok_or(SeedError::StateMismatch("no fingerprint".into()))?;
    let header = SeedHeader { network, fingerprint, head_seq: head.seq, head_hash: head.hash, includes_events: include_events };

    // Streamed into a temporary file next to `path`: this thread reads the records verbatim
    // (the canonical bytes the chain hashes cover, checked when they were stored and again by
    // whoever verifies the seed) into 4 MiB chunks, while a second thread hashes and writes
    // them, so reading overlaps hashing and writing and nothing is buffered whole.
    const CHUNK: usize = 4 << 20;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    let empty: [&[u8]; 0] = [];
    let mut prefix = encode_unsigned_raw(&header, projection.state(), &empty);
    let count = if include_events { head.seq + 1 } else { 0 };
    let n = prefix.len();
    prefix[n - 8..].copy_from_slice(&count.to_le_bytes());
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
    let (hasher, tmp, read_result) = std::thread::scope(|scope| {
        let writer = scope.spawn(move || -> std::io::Result<(blake3::Hasher, tempfile::NamedTempFile)> {
            let mut hasher = blake3::Hasher::new();
            let mut file = tmp;
            for chunk in rx {
                hasher.update(&chunk);
                file.as_file_mut().write_all(&chunk)?;
            }
            Ok((hasher, file))
        });
        let read = (|| -> Result<(), SeedError> {
            let mut buf = prefix;
            buf.reserve(CHUNK);
            if include_events {
                let page = 16 * crate::core::limits::REPLAY_CHUNK_EVENTS as u64;
                let mut from = 0u64;
                while from <= head.seq {
                    let to = (from + page - 1).min(head.seq);
                    let visited = ledger
                        .read()
                        .map_err(|_| poisoned())?
                        .visit_raw_range(from, to, |_, rec| {
                            buf.extend_from_slice(&(rec.len() as u32).to_le_bytes());
                            buf.extend_from_slice(rec);
                            if buf.len() >= CHUNK {
                                let full = std::mem::replace(&mut buf, Vec::with_capacity(CHUNK + 4096));
                                tx.send(full).map_err(|_| std::io::Error::other("seed writer stopped"))?;
                            }
                            Ok(())
                        })
                        .map_err(|e| SeedError::Io { path: path.display().to_string(), reason: format!("reading the ledger: {e}") })?;
                    if visited != to - from + 1 {
                        return Err(SeedError::BadEvents { seq: from, reason: "the ledger changed under the export (reset by a snapshot)".into() });
                    }
                    from = to + 1;
                }
            }
            if !buf.is_empty() {
                tx.send(buf).map_err(|_| io(std::io::Error::other("seed writer stopped")))?;
            }
            Ok(())
        })();
        drop(tx);
        let written = writer.join().map_err(|_| io(std::io::Error::other("seed writer panicked")));
        match written {
            Ok(Ok((h, f))) => Ok((h, f, read)),
            Ok(Err(e)) => Err(io(e)),
            Err(e) => Err(e),
        }
    })?;
    read_result?;
    let digest = *hasher.finalize().as_bytes();
    let mut tail = digest.to_vec();
    append_signatures(&mut tail, &fingerprint, &digest, &[signer]);
    let mut tmp = tmp;
    tmp.as_file_mut().write_all(&tail).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    let size = tmp.as_file().metadata().map(|m| m.len()).unwrap_or(0);
    tmp.persist(path).map_err(|e| io(e.error))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    tracing::info!(seq = head.seq, bytes = size, "seed exported");
    Ok(head)
}

/// Imports a verified seed's events into `ledger`: all of them into an empty ledger, or the
/// ones after its head when the seed extends it. Each event is re-verified and re-chained by
/// the ledger; the result must land exactly on the seed's head. A **state-only** seed (no
/// events) loads into an empty ledger as its state and head, with the history below to be
/// backfilled by gossip ([`Ledger::load_state_only`](crate::store::ledger::Ledger::load_state_only)).
/// Refused, with nothing written: a state-only seed into a non-empty ledger, one not newer
/// than the ledger, one whose chain differs from the ledger's, another network's, and any
/// ledger that Raft manages.
#[tracing::instrument(level = "info", skip_all, fields(seed_seq = seed.header.head_seq))]
pub fn import(ledger: &mut crate::store::ledger::Ledger, seed: &Seed) -> Result<ChainHead, SeedError> {
    let path = ledger.path().display().to_string();
    let io = |e: crate::error::LedgerError| SeedError::Io { path: path.clone(), reason: e.to_string() };
    if ledger.meta_get(b"raft_applied").map_err(io)?.is_some() {
        return Err(SeedError::RaftManaged);
    }
    if !seed.header.includes_events {
        if ledger.head().is_some() {
            return Err(SeedError::EventsRequired);
        }
        if seed.state.head.map(|h| (h.seq, h.hash)) != Some((seed.header.head_seq, seed.header.head_hash)) {
            return Err(SeedError::StateMismatch("the state is not at the seed's head".into()));
        }
        let head = ledger.load_state_only(seed.state.clone()).map_err(io)?;
        ledger.set_imported(true).map_err(io)?;
        ledger.set_seed_anchor(Some(crate::core::types::ChainPoint { seq: head.seq, hash: head.hash })).map_err(io)?;
        return Ok(head);
    }
    let start = match ledger.head() {
        None => 0,
        Some(own) => {
            if ledger.fingerprint() != Some(seed.header.fingerprint) {
                return Err(SeedError::WrongNetwork { expected: ledger.fingerprint().unwrap_or_default(), found: seed.header.fingerprint });
            }
            if own.seq >= seed.header.head_seq {
                return Err(SeedError::NotNewer { seed_seq: seed.header.head_seq, own_seq: own.seq });
            }
            let at = usize::try_from(own.seq).map_err(|_| SeedError::Diverges { seq: own.seq })?;
            if seed.events.get(at).map(|e| e.hash) != Some(own.hash) {
                return Err(SeedError::Diverges { seq: own.seq });
            }
            at + 1
        }
    };
    for chunk in seed.events[start..].chunks(crate::core::limits::APPEND_BATCH_MAX) {
        let outcomes = ledger.append(chunk.iter().map(|c| c.event.clone()).collect()).map_err(io)?;
        if let Some((i, r)) = outcomes.iter().enumerate().find_map(|(i, o)| o.as_ref().err().map(|r| (i, r))) {
            return Err(SeedError::BadEvents { seq: chunk[i].seq, reason: r.to_string() });
        }
    }
    let head = ledger.head().ok_or(SeedError::StateMismatch("nothing imported".into()))?;
    if (head.seq, head.hash) != (seed.header.head_seq, seed.header.head_hash) {
        return Err(SeedError::StateMismatch("the imported events did not reproduce the seed's head".into()));
    }
    ledger.write_checkpoint().map_err(io)?;
    ledger.set_imported(true).map_err(io)?;
    ledger.set_seed_anchor(Some(crate::core::types::ChainPoint { seq: head.seq, hash: head.hash })).map_err(io)?;
    Ok(head)
}

/// Builds a seed from a projection (and optionally the events up to its head), signed by
/// `signers`. Returns the file bytes.
pub fn build(projection: &Projection, events: Option<&[ChainedEvent]>, signers: &[&NodeKey]) -> Result<Vec<u8>, SeedError> {
    let records: Option<Vec<Vec<u8>>> = events.map(|e| e.iter().map(encode_record).collect());
    build_raw(projection, records.as_deref(), signers)
}

/// [`build`] from ledger records as stored (copied verbatim, not re-encoded).
pub fn build_raw<R: AsRef<[u8]>>(projection: &Projection, records: Option<&[R]>, signers: &[&NodeKey]) -> Result<Vec<u8>, SeedError> {
    let head = projection.head().ok_or(SeedError::StateMismatch("empty ledger: nothing to seed".into()))?;
    let network = projection.network().cloned().ok_or(SeedError::StateMismatch("no genesis".into()))?;
    let fingerprint = projection.fingerprint().ok_or(SeedError::StateMismatch("no fingerprint".into()))?;
    let header = SeedHeader { network, fingerprint, head_seq: head.seq, head_hash: head.hash, includes_events: records.is_some() };
    let mut out = encode_unsigned_raw::<R>(&header, projection.state(), records.unwrap_or(&[]));
    let digest = *blake3::hash(&out).as_bytes();
    out.extend_from_slice(&digest);
    append_signatures(&mut out, &fingerprint, &digest, signers);
    Ok(out)
}

fn append_signatures(out: &mut Vec<u8>, fingerprint: &NetworkFingerprint, digest: &[u8; 32], signers: &[&NodeKey]) {
    let msg = seed_signing_message(fingerprint, digest);
    out.extend_from_slice(&(signers.len() as u16).to_le_bytes());
    for k in signers {
        out.extend_from_slice(k.node_id().as_bytes());
        out.extend_from_slice(&k.sign(&msg).0);
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], SeedError> {
        let end = self.pos.checked_add(n).ok_or(SeedError::Truncated(what))?;
        let s = self.bytes.get(self.pos..end).ok_or(SeedError::Truncated(what))?;
        self.pos = end;
        Ok(s)
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, SeedError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, SeedError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, SeedError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
}

/// How much a verification demands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerifyPolicy {
    /// Require signatures by a majority of the voters at the seed's head.
    pub require_quorum: bool,
    /// Require this network.
    pub expected_network: Option<NetworkFingerprint>,
}

/// A seed checked up to its signatures: framing, digest, header, state and signers.
struct Attested<'a> {
    /// Where the digest ends and the signature list begins.
    sigs_at: usize,
    header: SeedHeader,
    state: ProjectionState,
    records: Vec<&'a [u8]>,
    count: u64,
    digest: [u8; 32],
    signers: Vec<NodeId>,
}

/// Framing, digest, header, state, signatures and (if asked) quorum. Never panics.
fn check_attested(bytes: &[u8], policy: VerifyPolicy) -> Result<Attested<'_>, SeedError> {
    let mut r = Reader { bytes, pos: 0 };
    if r.take(8, "magic").map_err(|_| SeedError::BadMagic)? != SEED_MAGIC {
        return Err(SeedError::BadMagic);
    }
    let version = r.u16("version")?;
    if version != SEED_FORMAT_V1 {
        return Err(SeedError::UnsupportedVersion(version));
    }
    let hlen = r.u32("header length")? as usize;
    if hlen > SEED_HEADER_BYTES_MAX {
        return Err(SeedError::TooLarge { what: "header", max: SEED_HEADER_BYTES_MAX, got: hlen });
    }
    let hdr_bytes = r.take(hlen, "header")?;
    let slen = r.u64("state length")?;
    let slen = usize::try_from(slen).map_err(|_| SeedError::Truncated("state"))?;
    let state_bytes = r.take(slen, "state")?;
    let count = r.u64("event count")?;
    let mut records = Vec::new();
    for _ in 0..count {
        let len = r.u32("event length")? as usize;
        if len > crate::core::limits::RECORD_BYTES_MAX {
            return Err(SeedError::TooLarge { what: "event record", max: crate::core::limits::RECORD_BYTES_MAX, got: len });
        }
        records.push(r.take(len, "event")?);
    }
    let content_end = r.pos;
    let digest_bytes = r.take(32, "digest")?;
    let digest = *blake3::hash(&bytes[..content_end]).as_bytes();
    if digest_bytes != digest {
        return Err(SeedError::DigestMismatch);
    }
    let sig_count = r.u16("signature count")? as usize;
    if sig_count > SEED_SIGNATURES_MAX {
        return Err(SeedError::TooLarge { what: "signature list", max: SEED_SIGNATURES_MAX, got: sig_count });
    }
    let mut sigs = Vec::with_capacity(sig_count);
    for _ in 0..sig_count {
        let id = r.take(32, "signer")?;
        let sig = r.take(64, "signature")?;
        let mut a = [0u8; 32];
        a.copy_from_slice(id);
        let mut s = [0u8; 64];
        s.copy_from_slice(sig);
        sigs.push((NodeId(a), SignatureBytes(s)));
    }
    if r.pos != bytes.len() {
        return Err(SeedError::Trailing(bytes.len() - r.pos));
    }

    // Content: header, state, events.
    let header: SeedHeader = bcs::from_bytes_with_limit(hdr_bytes, crate::core::limits::BCS_CONTAINER_DEPTH_MAX)
        .map_err(|e| SeedError::Header(e.to_string()))?;
    if let Some(expected) = policy.expected_network {
        if expected != header.fingerprint {
            return Err(SeedError::WrongNetwork { expected, found: header.fingerprint });
        }
    }
    let state = decode_checkpoint(state_bytes).map_err(|e| SeedError::StateMismatch(e.to_string()))?;
    let head = state.head.ok_or(SeedError::StateMismatch("state has no head".into()))?;
    if (head.seq, head.hash) != (header.head_seq, header.head_hash) {
        return Err(SeedError::StateMismatch(format!("state is at seq {}, header says {}", head.seq, header.head_seq)));
    }
    if state.network.as_ref() != Some(&header.network) || state.fingerprint != Some(header.fingerprint) {
        return Err(SeedError::StateMismatch("network identity differs between header and state".into()));
    }
    let founder = state
        .nodes
        .values()
        .find(|n| n.joined_seq == 0)
        .map(|n| n.node)
        .ok_or(SeedError::StateMismatch("no founder in state".into()))?;
    if network_fingerprint(&header.network, &founder) != header.fingerprint {
        return Err(SeedError::StateMismatch("fingerprint does not match identity and founder".into()));
    }

    // Signatures: valid, and by voters at the head.
    let msg = seed_signing_message(&header.fingerprint, &digest);
    let voters = voters_of(&state);
    let mut signers = Vec::new();
    for (id, sig) in &sigs {
        let ok = PublicKey::from_node_id(id).is_some_and(|k| k.verify_msg(&msg, sig));
        if !ok {
            return Err(SeedError::BadSignature(*id));
        }
        if !voters.contains(id) {
            return Err(SeedError::NotAVoter(*id));
        }
        if !signers.contains(id) {
            signers.push(*id);
        }
    }
    if signers.is_empty() {
        return Err(SeedError::Unsigned);
    }
    let needed = quorum_of(voters.len());
    if policy.require_quorum && signers.len() < needed {
        return Err(SeedError::UnderSigned { got: signers.len(), voters: voters.len(), needed });
    }
    Ok(Attested { sigs_at: content_end + 32, header, state, records, count, digest, signers })
}

/// The voters of a seed's state: its authorities that have not left.
fn voters_of(state: &ProjectionState) -> Vec<NodeId> {
    state
        .nodes
        .values()
        .filter(|n| n.role.is_authority() && n.status != crate::core::projection::NodeStatus::Left)
        .map(|n| n.node)
        .collect()
}

/// Signatures a quorum of `voters` needs: a majority.
fn quorum_of(voters: usize) -> usize {
    voters / 2 + 1
}

impl Seed {
    /// Whether a majority of the voters at the seed's head signed it (a verified seed has at
    /// least one voter's signature; only a quorum-signed one has Seed authority in a
    /// split-brain resolution).
    pub fn is_quorum_signed(&self) -> bool {
        let voters = voters_of(&self.state);
        self.signers.iter().filter(|s| voters.contains(s)).count() >= quorum_of(voters.len())
    }
}

/// Decodes and verifies a seed. Never panics on any input. See the module doc for what is
/// checked; `policy` adds a quorum and network requirement.
pub fn verify(bytes: &[u8], policy: VerifyPolicy) -> Result<Seed, SeedError> {
    let Attested { header, state, records, count, digest, signers, .. } = check_attested(bytes, policy)?;
    // Events: decode, chain from genesis, replay to exactly the state.
    let mut events = Vec::with_capacity(records.len());
    if header.includes_events {
        if count != header.head_seq + 1 {
            return Err(SeedError::BadEvents { seq: count, reason: format!("{count} events for head seq {}", header.head_seq) });
        }
        let mut p = Projection::new();
        for (i, rec) in records.iter().enumerate() {
            let seq = i as u64;
            let ev = decode_record(rec).map_err(|e| SeedError::BadEvents { seq, reason: e.to_string() })?;
            if !ev.hash_is_valid() {
                return Err(SeedError::BadEvents { seq, reason: "hash mismatch".into() });
            }
            p.apply(&ev).map_err(|e| SeedError::BadEvents { seq, reason: e.to_string() })?;
            events.push(ev);
        }
        if p.state() != &state {
            return Err(SeedError::BadEvents { seq: header.head_seq, reason: "events do not replay to the seed's state".into() });
        }
        // Every event's own signature too, batched on all cores: a seed that carries events
        // must verify offline down to each author, not only on its signers' word.
        if let Some(seq) = first_bad_signature(&events) {
            return Err(SeedError::BadEvents { seq, reason: "event signature does not verify".into() });
        }
    } else if count != 0 {
        return Err(SeedError::BadEvents { seq: 0, reason: "events present but the header says none".into() });
    }
    Ok(Seed { header, state, events, digest, signers })
}

/// The sequence number of the first event whose signature does not verify.
fn first_bad_signature(events: &[ChainedEvent]) -> Option<u64> {
    use rayon::prelude::*;
    let verdicts: Vec<bool> = events
        .par_chunks(64)
        .flat_map_iter(|chunk| {
            let msgs: Vec<Vec<u8>> = chunk.iter().map(|e| e.event.signing_message()).collect();
            let items: Vec<_> = chunk.iter().zip(&msgs).map(|(e, m)| (e.event.author, m.as_slice(), e.event.signature)).collect();
            crate::store::replay::with_thread_cache(|cache| crate::core::keys::verify_many(cache, &items))
        })
        .collect();
    verdicts.iter().position(|ok| !ok).map(|i| events[i].seq)
}

/// Adds `signer`'s signature to a valid seed (co-signing towards a quorum). The signer must be
/// a voter in the seed's state; signing twice is refused. Returns the new file bytes.
pub fn add_signature(bytes: &[u8], signer: &NodeKey) -> Result<Vec<u8>, SeedError> {
    let a = check_attested(bytes, VerifyPolicy::default())?;
    if a.signers.contains(&signer.node_id()) {
        return Err(SeedError::StateMismatch(format!("{} has signed this seed already", signer.node_id().short())));
    }
    let count = (bytes.len() - a.sigs_at - 2) / 96;
    if count + 1 > SEED_SIGNATURES_MAX {
        return Err(SeedError::TooLarge { what: "signature list", max: SEED_SIGNATURES_MAX, got: count + 1 });
    }
    let mut out = bytes[..a.sigs_at].to_vec();
    out.extend_from_slice(&((count + 1) as u16).to_le_bytes());
    out.extend_from_slice(&bytes[a.sigs_at + 2..]);
    out.extend_from_slice(signer.node_id().as_bytes());
    out.extend_from_slice(&signer.sign(&seed_signing_message(&a.header.fingerprint, &a.digest)).0);
    // The new signature must itself check out (a non-voter is refused here).
    check_attested(&out, VerifyPolicy::default())?;
    Ok(out)
}

/// A seed signed by a majority of its voters, with its event records kept as the exact bytes
/// they signed (not decoded): what a trusted bulk import needs. See [`verify_quorum`].
#[derive(Debug)]
pub struct QuorumSeed<'a> {
    /// The header.
    pub header: SeedHeader,
    /// The projection at the head.
    pub state: ProjectionState,
    /// The ledger records from genesis to the head, verbatim.
    pub records: Vec<&'a [u8]>,
    /// The digest the signatures cover.
    pub digest: [u8; 32],
    /// Signers whose signatures verified (a majority of the voters).
    pub signers: Vec<NodeId>,
}

/// Verifies a seed that must be **quorum-signed** and carry its events, without decoding or
/// re-verifying each event: a majority of the network's voters signed the digest over their
/// exact bytes, the same authority that commits them through Raft. Framing, digest, header,
/// state, the voters' signatures and the quorum are checked as in [`verify`]; of the events,
/// their count and that the last one is the head. Every record is still checked (decoded,
/// linked, hashed) whenever a ledger reads it.
pub fn verify_quorum(bytes: &[u8], expected_network: Option<NetworkFingerprint>) -> Result<QuorumSeed<'_>, SeedError> {
    let a = check_attested(bytes, VerifyPolicy { require_quorum: true, expected_network })?;
    if !a.header.includes_events {
        return Err(SeedError::EventsRequired);
    }
    if a.count != a.header.head_seq + 1 {
        return Err(SeedError::BadEvents { seq: a.count, reason: format!("{} events for head seq {}", a.count, a.header.head_seq) });
    }
    let last = a.records.last().ok_or(SeedError::BadEvents { seq: 0, reason: "no events".into() })?;
    let ev = decode_record(last).map_err(|e| SeedError::BadEvents { seq: a.header.head_seq, reason: e.to_string() })?;
    if ev.seq != a.header.head_seq || ev.hash != a.header.head_hash || !ev.hash_is_valid() {
        return Err(SeedError::BadEvents { seq: a.header.head_seq, reason: "the last event is not the seed's head".into() });
    }
    Ok(QuorumSeed { header: a.header, state: a.state, records: a.records, digest: a.digest, signers: a.signers })
}

/// Bulk-imports a quorum-signed seed into an **empty** ledger that Raft does not manage: the
/// records verbatim and the seed's state as projection and checkpoint, synced once.
#[tracing::instrument(level = "info", skip_all, fields(seed_seq = seed.header.head_seq))]
pub fn import_quorum(ledger: &mut crate::store::ledger::Ledger, seed: &QuorumSeed<'_>) -> Result<ChainHead, SeedError> {
    let path = ledger.path().display().to_string();
    let io = |e: crate::error::LedgerError| SeedError::Io { path: path.clone(), reason: e.to_string() };
    if ledger.meta_get(b"raft_applied").map_err(io)?.is_some() {
        return Err(SeedError::RaftManaged);
    }
    if let Some(own) = ledger.head() {
        return Err(if own.seq >= seed.header.head_seq {
            SeedError::NotNewer { seed_seq: seed.header.head_seq, own_seq: own.seq }
        } else {
            SeedError::StateMismatch("a bulk import needs an empty ledger; use `import` to extend one".into())
        });
    }
    let head = ledger.load_attested(&seed.records, seed.state.clone()).map_err(io)?;
    ledger.set_imported(true).map_err(io)?;
    ledger.set_seed_anchor(Some(crate::core::types::ChainPoint { seq: head.seq, hash: head.hash })).map_err(io)?;
    Ok(head)
}

impl Seed {
    /// The seed's head.
    pub fn head(&self) -> ChainHead {
        ChainHead { seq: self.header.head_seq, hash: self.header.head_hash, timestamp: self.state.head.map(|h| h.timestamp).unwrap_or_default() }
    }

    /// The projection at the head.
    pub fn projection(&self) -> Projection {
        Projection::from_state(self.state.clone())
    }
}

/// Writes `bytes` to `path` crash-safely: temp file in the same directory, fsync, rename,
/// fsync the directory. A crash never leaves a half seed under the final name.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), SeedError> {
    let io = |e: std::io::Error| SeedError::Io { path: path.display().to_string(), reason: e.to_string() };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    tmp.write_all(bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads and verifies a seed file.
pub fn read_file(path: &Path, policy: VerifyPolicy) -> Result<Seed, SeedError> {
    let bytes = std::fs::read(path).map_err(|e| SeedError::Io { path: path.display().to_string(), reason: e.to_string() })?;
    verify(&bytes, policy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::synth::{Synth, SynthConfig};

    fn sample() -> (Synth, Vec<ChainedEvent>) {
        let mut s = Synth::new(SynthConfig { seed: 5, nodes: 8, voters: 3, ..Default::default() });
        let mut p = Projection::new();
        let mut chained = Vec::new();
        for ev in s.next_chunk(300) {
            chained.push(p.append(ev).expect("valid"));
        }
        (s, chained)
    }

    /// A seed whose events are consistent (linked, replaying to its state) and signed by a
    /// voter, but one of whose events carries a forged signature, is refused at that event.
    #[test]
    fn a_forged_event_signature_inside_a_signed_seed_is_refused() {
        let (s, events) = sample();
        let voter = s.keys().iter().find(|k| s.projection().node(&k.node_id()).is_some_and(|n| n.role.is_authority())).expect("voter");
        let forged_at = 123usize;
        let mut p = Projection::new();
        let mut tampered: Vec<ChainedEvent> = Vec::new();
        for (i, ce) in events.iter().enumerate() {
            let mut ev = ce.event.clone();
            if i == forged_at {
                ev.signature.0[10] ^= 0x01;
            }
            let linked = ChainedEvent::link(i as u64, p.head_hash(), ev);
            p.apply(&linked).expect("the rules do not look at signatures");
            tampered.push(linked);
        }
        let bytes = build(&p, Some(&tampered), &[voter]).expect("build");
        match verify(&bytes, VerifyPolicy::default()) {
            Err(SeedError::BadEvents { seq, reason }) => {
                assert_eq!(seq, forged_at as u64);
                assert!(reason.contains("signature"), "{reason}");
            }
            other => panic!("expected the forged event to be refused, got {other:?}"),
        }
        // The same seed without its events has nothing forged in it.
        let bytes = build(&p, None, &[voter]).expect("build");
        assert!(verify(&bytes, VerifyPolicy::default()).is_ok());
    }

    #[test]
    fn import_extends_a_ledger_and_refuses_older_diverging_or_raft_managed_ones() {
        use crate::store::ledger::{Ledger, LedgerConfig};
        let (s, events) = sample();
        let founder = &s.keys()[0];
        let bytes = build(s.projection(), Some(&events), &[founder]).expect("build");
        let seed = verify(&bytes, VerifyPolicy::default()).expect("verify");
        let cfg = LedgerConfig { durable: false, ..LedgerConfig::default() };
        let dir = tempfile::tempdir().expect("tempdir");

        // Empty → everything; a prefix → the rest; at or past the head → NotNewer.
        let mut empty = Ledger::open(dir.path().join("empty"), cfg.clone()).expect("open");
        assert_eq!(import(&mut empty, &seed).expect("import").hash, seed.header.head_hash);
        assert!(matches!(import(&mut empty, &seed), Err(SeedError::NotNewer { .. })));
        let mut prefix = Ledger::open(dir.path().join("prefix"), cfg.clone()).expect("open");
        prefix.append(events[..100].iter().map(|e| e.event.clone()).collect()).expect("append");
        assert_eq!(import(&mut prefix, &seed).expect("extend").seq, seed.header.head_seq);

        // A ledger whose event 100 differs: refused, and it keeps its own head.
        let mut fork = Ledger::open(dir.path().join("fork"), cfg.clone()).expect("open");
        fork.append(events[..100].iter().map(|e| e.event.clone()).collect()).expect("append");
        let head = fork.head().expect("head");
        let fp = fork.fingerprint().expect("fingerprint");
        let body = crate::core::event::EventBody::Checkpoint { head_seq: head.seq, head_hash: head.hash };
        let other = crate::core::event::SignedEvent::sign(founder, fp, crate::core::types::Timestamp(head.timestamp.0 + 1), body);
        fork.append(vec![other]).expect("append").remove(0).expect("valid");
        let forked_head = fork.head();
        assert!(matches!(import(&mut fork, &seed), Err(SeedError::Diverges { seq: 100 })));
        assert_eq!(fork.head(), forked_head, "nothing imported");

        // A ledger Raft manages.
        let mut managed = Ledger::open(dir.path().join("managed"), cfg).expect("open");
        managed.append_with_meta(vec![events[0].event.clone()], vec![(b"raft_applied".to_vec(), vec![0])]).expect("append");
        assert!(matches!(import(&mut managed, &seed), Err(SeedError::RaftManaged)));
    }

    #[test]
    fn co_signed_seeds_become_quorum_signed_and_bulk_import_verbatim() {
        use crate::store::ledger::{Ledger, LedgerConfig};
        let (s, events) = sample();
        let p = s.projection();
        let voters: Vec<&NodeKey> =
            s.keys().iter().filter(|k| p.node(&k.node_id()).is_some_and(|n| n.role.is_authority() && n.status != crate::core::projection::NodeStatus::Left)).collect();
        assert!(voters.len() >= 2, "the sample has several voters");
        let one = build(p, Some(&events), &voters[..1]).expect("build");
        assert!(matches!(verify_quorum(&one, None), Err(SeedError::UnderSigned { .. })));
        assert!(add_signature(&one, voters[0]).is_err(), "signing twice is refused");
        let outsider = s.keys().iter().find(|k| !voters.iter().any(|v| v.node_id() == k.node_id())).expect("a non-voter");
        assert!(matches!(add_signature(&one, outsider), Err(SeedError::NotAVoter(_))));
        let mut bytes = one;
        for v in &voters[1..] {
            bytes = add_signature(&bytes, v).expect("co-sign");
        }
        let q = verify_quorum(&bytes, p.fingerprint()).expect("quorum-signed now");
        assert_eq!(q.signers.len(), voters.len());

        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = LedgerConfig { durable: false, ..LedgerConfig::default() };
        let mut ledger = Ledger::open(dir.path().join("l"), cfg.clone()).expect("open");
        let head = import_quorum(&mut ledger, &q).expect("bulk import");
        assert_eq!((head.seq, head.hash), (q.header.head_seq, q.header.head_hash));
        assert!(matches!(import_quorum(&mut ledger, &q), Err(SeedError::NotNewer { .. })));
        drop(ledger);
        // What was loaded verbatim is a ledger every check accepts, with the seed's state.
        let report = crate::store::inspect::LedgerReader::open(&dir.path().join("l")).expect("reader").verify(&|_| {}).expect("verify");
        assert!(report.is_ok(), "{:?}", report.first_error);
        let reopened = Ledger::open(dir.path().join("l"), cfg).expect("reopen");
        assert_eq!(reopened.projection().state(), p.state());
    }

    /// Properly signed seeds that must still be refused: a header whose head is not its
    /// state's, and a signer that is not a voter.
    #[test]
    fn a_head_not_matching_its_state_or_a_non_voter_signer_is_refused() {
        let (s, events) = sample();
        let p = s.projection();
        let founder = &s.keys()[0];
        let head = p.head().expect("head");
        let header = SeedHeader {
            network: p.network().cloned().expect("network"),
            fingerprint: p.fingerprint().expect("fingerprint"),
            head_seq: head.seq,
            head_hash: ChainHash([7; 32]),
            includes_events: false,
        };
        let mut bytes = encode_unsigned(&header, p.state(), &[]);
        let digest = *blake3::hash(&bytes).as_bytes();
        bytes.extend_from_slice(&digest);
        append_signatures(&mut bytes, &header.fingerprint, &digest, &[founder]);
        assert!(matches!(verify(&bytes, VerifyPolicy::default()), Err(SeedError::StateMismatch(_))));

        let outsider = s.keys().iter().find(|k| p.node(&k.node_id()).is_none_or(|n| !n.role.is_authority())).expect("a non-voter");
        let bytes = build(p, Some(&events), &[outsider]).expect("build");
        assert!(matches!(verify(&bytes, VerifyPolicy::default()), Err(SeedError::NotAVoter(id)) if id == outsider.node_id()));
    }

    /// The streaming export writes exactly the bytes `build` makes from the same ledger.
    #[test]
    fn streamed_export_equals_build() {
        use crate::store::ledger::{Ledger, LedgerConfig};
        let (s, events) = sample();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut l = Ledger::open(dir.path().join("l"), LedgerConfig { durable: false, ..LedgerConfig::default() }).expect("open");
        l.append(events.iter().map(|e| e.event.clone()).collect()).expect("append");
        let key = &s.keys()[0];
        let lock = std::sync::RwLock::new(l);
        for include in [true, false] {
            let path = dir.path().join(format!("s-{include}.seed"));
            export(&lock, key, &path, include).expect("export");
            let want = build(s.projection(), include.then_some(events.as_slice()), &[key]).expect("build");
            assert!(std::fs::read(&path).expect("read") == want, "export with events = {include} differs from build");
        }
    }

    #[test]
    fn round_trip_with_and_without_events() {
        let (s, events) = sample();
        let voter_ids: Vec<NodeId> = s.projection().active_nodes().filter(|n| n.role.is_authority()).map(|n| n.node).collect();
        let voters: Vec<&NodeKey> = s.keys().iter().filter(|k| voter_ids.contains(&k.node_id())).collect();
        assert!(!voters.is_empty());
        for include in [false, true] {
            let bytes = build(s.projection(), include.then_some(events.as_slice()), &voters).expect("build");
            let seed = verify(&bytes, VerifyPolicy { require_quorum: true, expected_network: s.projection().fingerprint() }).expect("verify");
            assert_eq!(seed.head().seq, s.projection().head().expect("head").seq);
            assert_eq!(seed.events.len(), if include { events.len() } else { 0 });
            assert_eq!(&seed.state, s.projection().state());
        }
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let (s, _) = sample();
        let voters: Vec<&NodeKey> = s.keys().iter().take(1).collect();
        let bytes = build(s.projection(), None, &voters).expect("build");
        for i in (0..bytes.len()).step_by(7) {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert!(verify(&b, VerifyPolicy::default()).is_err(), "flip at {i} accepted");
        }
        for n in [0, 5, 20, bytes.len() - 1] {
            assert!(verify(&bytes[..n], VerifyPolicy::default()).is_err(), "truncation to {n} accepted");
        }
    }
}
