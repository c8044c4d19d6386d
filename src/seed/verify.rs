//! Seed verification: framing, digest, header, state, signatures, quorum and events, in that
//! order (`schema/seed.md`, *Verification*). Never panics on any input.

use std::path::Path;

use super::encode::{format_of, seed_signing_message};
use super::{
    Seed, SeedError, SeedHeader, StateProof, SEED_FORMAT_V1, SEED_FORMAT_V2, SEED_HEADER_BYTES_MAX, SEED_MAGIC,
    SEED_SIGNATURES_MAX,
};
use crate::core::attest::state_digest;
use crate::core::event::{network_fingerprint, ChainedEvent, EventBody};
use crate::core::keys::{NodeKey, PublicKey};
use crate::core::projection::{Projection, ProjectionState};
use crate::core::types::{NetworkFingerprint, NodeId, SignatureBytes};
use crate::store::record::{decode_checkpoint, decode_record};

/// How much a verification demands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerifyPolicy {
    /// Require signatures by a majority of the voters at the seed's head.
    pub require_quorum: bool,
    /// Require this network.
    pub expected_network: Option<NetworkFingerprint>,
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
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], SeedError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, SeedError> {
        self.array(what).map(u16::from_le_bytes)
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, SeedError> {
        self.array(what).map(u32::from_le_bytes)
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, SeedError> {
        self.array(what).map(u64::from_le_bytes)
    }
}

/// A seed checked up to its signatures: framing, digest, header, state, signers and, for a
/// format 2 state-only seed, the attestation of its state and the replay of its tail.
struct Attested<'a> {
    version: u16,
    /// Where the digest ends and the signature list begins.
    sigs_at: usize,
    header: SeedHeader,
    /// The state at the head.
    state: ProjectionState,
    /// A format 2 seed's attested state and its decoded tail.
    base: Option<(ProjectionState, Vec<ChainedEvent>)>,
    proof: StateProof,
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
    if version != SEED_FORMAT_V1 && version != SEED_FORMAT_V2 {
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
            return Err(SeedError::TooLarge {
                what: "event record",
                max: crate::core::limits::RECORD_BYTES_MAX,
                got: len,
            });
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
        let id = NodeId(r.array("signer")?);
        sigs.push((id, SignatureBytes(r.array("signature")?)));
    }
    if r.pos != bytes.len() {
        return Err(SeedError::Trailing(bytes.len() - r.pos));
    }

    // Content: header, state, and for a state-only seed of format 2, its attested tail.
    let header: SeedHeader = bcs::from_bytes_with_limit(hdr_bytes, crate::core::limits::BCS_CONTAINER_DEPTH_MAX)
        .map_err(|e| SeedError::Header(e.to_string()))?;
    if let Some(expected) = policy.expected_network {
        if expected != header.fingerprint {
            return Err(SeedError::WrongNetwork { expected, found: header.fingerprint });
        }
    }
    if header.includes_events && count != header.head_seq.saturating_add(1) {
        return Err(SeedError::BadEvents {
            seq: count,
            reason: format!("{count} events for head seq {}", header.head_seq),
        });
    }
    if format_of(&header, count) != version {
        return Err(SeedError::BadEvents {
            seq: 0,
            reason: format!(
                "format {version} does not carry {count} events with includes_events = {}",
                header.includes_events
            ),
        });
    }
    let stored = decode_checkpoint(state_bytes).map_err(|e| SeedError::StateMismatch(e.to_string()))?;
    if stored.network.as_ref() != Some(&header.network) || stored.fingerprint != Some(header.fingerprint) {
        return Err(SeedError::StateMismatch("network identity differs between header and state".into()));
    }
    let founder = stored
        .nodes
        .values()
        .find(|n| n.joined_seq == 0)
        .map(|n| n.node)
        .ok_or(SeedError::StateMismatch("no founder in state".into()))?;
    if network_fingerprint(&header.network, &founder) != header.fingerprint {
        return Err(SeedError::StateMismatch("fingerprint does not match identity and founder".into()));
    }
    let (state, base, proof) = if version == SEED_FORMAT_V2 {
        let (tail, head_state, proof) = replay_attested_tail(&stored, &records)?;
        (head_state, Some((stored, tail)), proof)
    } else {
        let proof = if header.includes_events { StateProof::FullHistory } else { StateProof::SignersOnly };
        (stored, None, proof)
    };
    let head = state.head.ok_or(SeedError::StateMismatch("state has no head".into()))?;
    if (head.seq, head.hash) != (header.head_seq, header.head_hash) {
        return Err(SeedError::StateMismatch(format!(
            "state is at seq {} {}, header says {} {}",
            head.seq, head.hash, header.head_seq, header.head_hash
        )));
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
    Ok(Attested { version, sigs_at: content_end + 32, header, state, base, proof, records, count, digest, signers })
}

/// A format 2 seed's tail, checked against the chain: the first event is the state checkpoint
/// that attests `base` (its seq, its hash and its digest, signed by its author, who the rules
/// require to be a voter), and every event replays from there under the rules, linked and
/// hashed, with any later state checkpoint agreeing too. Returns the events, the state at the
/// head and the proof. Event signatures past the first are checked by [`verify`].
fn replay_attested_tail(
    base: &ProjectionState,
    records: &[&[u8]],
) -> Result<(Vec<ChainedEvent>, ProjectionState, StateProof), SeedError> {
    let at = base.head.ok_or(SeedError::StateMismatch("the attested state has no head".into()))?;
    let mut p = Projection::from_state(base.clone());
    let mut tail = Vec::with_capacity(records.len());
    for (i, rec) in records.iter().enumerate() {
        let seq = at.seq.saturating_add(1).saturating_add(i as u64);
        let ev = decode_record(rec).map_err(|e| SeedError::BadEvents { seq, reason: e.to_string() })?;
        if !ev.hash_is_valid() {
            return Err(SeedError::BadEvents { seq, reason: "hash mismatch".into() });
        }
        if i == 0 {
            let EventBody::StateCheckpoint { head_seq, head_hash, state_digest: attested } = ev.event.body else {
                return Err(SeedError::NotAttested(format!(
                    "the event after the state (seq {seq}) is not a state checkpoint"
                )));
            };
            if head_seq != at.seq || head_hash != at.hash || ev.prev_hash != at.hash {
                return Err(SeedError::NotAttested(format!(
                    "the state checkpoint at seq {seq} attests seq {head_seq}, not the state's seq {}",
                    at.seq
                )));
            }
            if attested != state_digest(base) {
                return Err(SeedError::NotAttested(format!(
                    "the chain attests state {} at seq {}; the seed carries another",
                    attested.short(),
                    at.seq
                )));
            }
            let signed = PublicKey::from_node_id(&ev.event.author)
                .is_some_and(|k| k.verify_msg(&ev.event.signing_message(), &ev.event.signature));
            if !signed {
                return Err(SeedError::BadEvents { seq, reason: "event signature does not verify".into() });
            }
        }
        p.apply(&ev).map_err(|e| SeedError::BadEvents { seq, reason: e.to_string() })?;
        tail.push(ev);
    }
    if let Some(d) = p.divergence() {
        return Err(SeedError::NotAttested(d.to_string()));
    }
    let by = tail.first().map(|e| e.event.author).ok_or(SeedError::NotAttested("no state checkpoint event".into()))?;
    Ok((tail, p.state().clone(), StateProof::AttestedAt { seq: at.seq, by }))
}

/// The voters of a seed's state: its authorities that have not left.
pub(super) fn voters_of(state: &ProjectionState) -> Vec<NodeId> {
    state
        .nodes
        .values()
        .filter(|n| n.role.is_authority() && n.status != crate::core::projection::NodeStatus::Left)
        .map(|n| n.node)
        .collect()
}

/// Signatures a quorum of `voters` needs: a majority.
pub(super) fn quorum_of(voters: usize) -> usize {
    voters / 2 + 1
}

/// Decodes and verifies a seed. Never panics on any input. See the module doc for what is
/// checked; `policy` adds a quorum and network requirement. [`Seed::proof`] says what the
/// state rests on.
pub fn verify(bytes: &[u8], policy: VerifyPolicy) -> Result<Seed, SeedError> {
    let Attested { version, header, state, base, proof, records, digest, signers, .. } = check_attested(bytes, policy)?;
    if let Some((base, tail)) = base {
        // The tail's own signatures, down to each author.
        if let Some(seq) = first_bad_signature(&tail) {
            return Err(SeedError::BadEvents { seq, reason: "event signature does not verify".into() });
        }
        return Ok(Seed { version, header, state, base: Some(base), proof, events: tail, digest, signers });
    }
    // Events: decode, chain from genesis, replay to exactly the state.
    let mut events = Vec::with_capacity(records.len());
    if header.includes_events {
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
            return Err(SeedError::BadEvents {
                seq: header.head_seq,
                reason: "events do not replay to the seed's state".into(),
            });
        }
        // Every event's own signature too, batched on all cores: a seed that carries events
        // must verify offline down to each author, not only on its signers' word.
        if let Some(seq) = first_bad_signature(&events) {
            return Err(SeedError::BadEvents { seq, reason: "event signature does not verify".into() });
        }
    }
    Ok(Seed { version, header, state, base: None, proof, events, digest, signers })
}

/// The sequence number of the first event whose signature does not verify.
fn first_bad_signature(events: &[ChainedEvent]) -> Option<u64> {
    use rayon::prelude::*;
    let verdicts: Vec<bool> = events
        .par_chunks(64)
        .flat_map_iter(|chunk| {
            let msgs: Vec<Vec<u8>> = chunk.iter().map(|e| e.event.signing_message()).collect();
            let items: Vec<_> =
                chunk.iter().zip(&msgs).map(|(e, m)| (e.event.author, m.as_slice(), e.event.signature)).collect();
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
    let last = a.records.last().ok_or(SeedError::BadEvents { seq: 0, reason: "no events".into() })?;
    let ev = decode_record(last).map_err(|e| SeedError::BadEvents { seq: a.header.head_seq, reason: e.to_string() })?;
    if ev.seq != a.header.head_seq || ev.hash != a.header.head_hash || !ev.hash_is_valid() {
        return Err(SeedError::BadEvents {
            seq: a.header.head_seq,
            reason: "the last event is not the seed's head".into(),
        });
    }
    debug_assert_eq!(a.count, a.header.head_seq + 1);
    Ok(QuorumSeed { header: a.header, state: a.state, records: a.records, digest: a.digest, signers: a.signers })
}

/// Reads and verifies a seed file.
pub fn read_file(path: &Path, policy: VerifyPolicy) -> Result<Seed, SeedError> {
    let bytes =
        std::fs::read(path).map_err(|e| SeedError::Io { path: path.display().to_string(), reason: e.to_string() })?;
    verify(&bytes, policy)
}
