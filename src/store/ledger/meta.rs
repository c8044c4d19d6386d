//! The ledger's `meta` keyspace: its keys, the encodings of the head, chain points and
//! projection checkpoints, and the flags kept there (import mark, seed anchor, refused branch).

use std::path::Path;

use super::backfill::Backfill;
use super::storage_error::storage;
use super::Ledger;
use crate::core::projection::{ChainHead, ProjectionState};
use crate::core::types::{ChainHash, ChainPoint};
use crate::store::error::{Corruption, LedgerError};
use crate::store::record::{decode_checkpoint, encode_checkpoint};
use fjall::{Keyspace, PersistMode};

pub(super) const META_FORMAT: &[u8] = b"format";
pub(super) const META_HEAD: &[u8] = b"head";
pub(super) const META_CHECKPOINT: &[u8] = b"checkpoint";
/// Set by a seed import into a ledger Raft does not manage yet; see [`Ledger::is_imported`].
pub(super) const META_IMPORTED: &[u8] = b"imported";
/// The newest checkpoint event held (seq u64 BE ‖ hash 32 B), written with the batch that
/// appends it: how far this chain is anchored by a voter (see [`Ledger::anchor`]).
pub(super) const META_ANCHOR: &[u8] = b"anchor";
/// The head of the verified seed this ledger was imported from (seq u64 BE ‖ hash 32 B):
/// everything up to it has Seed authority (see [`Ledger::seed_anchor`]).
pub(super) const META_SEED_ANCHOR: &[u8] = b"seed_anchor";
/// The first event of a branch this node yielded in a split-brain (seq u64 BE ‖ hash 32 B):
/// ranges that carry it are refused (see [`Ledger::refuse_branch`]).
pub(super) const META_REFUSED_BRANCH: &[u8] = b"refused_branch";
/// The Raft members of the cluster whose branch this node yielded (32-byte node ids, one after
/// another): see [`Ledger::refuse_branch`].
const META_REFUSED_PEERS: &[u8] = b"refused_peers";
/// `backfill` = seq u64 BE ‖ hash: the lowest point whose hash the ledger knows but whose
/// history below it does not hold (a ledger loaded from a state-only seed; removed once the
/// history reaches genesis). Records are held for `seq + 1 ..= head`.
pub(super) const META_BACKFILL: &[u8] = b"backfill";
/// `backfill_base` = the state-only seed's projection at its head (digest ‖ checkpoint record,
/// like `checkpoint`): where a replay of the held events starts while the history is
/// incomplete. Removed with `backfill`.
pub(super) const META_BACKFILL_BASE: &[u8] = b"backfill_base";
/// `pruned` = postcard `Vec<String>`: the archive files of the history a retention policy
/// pruned, oldest first; present with `backfill` (whose point is then the last pruned event).
pub(super) const META_PRUNED: &[u8] = b"pruned";
/// The value of the `format` marker.
pub const LEDGER_FORMAT_MARKER: &[u8] = b"mycnet-spores ledger v1";

/// Reads the backfill point and base state from `meta` (`None`: the history is complete).
pub(crate) fn read_backfill(meta: &Keyspace, path: &Path) -> Result<Option<Backfill>, LedgerError> {
    let Some((seq, hash)) = read_point(meta, path, META_BACKFILL, "backfill")? else { return Ok(None) };
    let corrupt = |detail: String| LedgerError::Corrupt {
        path: path.to_path_buf(),
        seq,
        corruption: Box::new(Corruption::Undecodable { reason: detail }),
    };
    let bytes = meta
        .get(META_BACKFILL_BASE)
        .map_err(storage("read backfill base", path))?
        .ok_or_else(|| corrupt("a backfill point without its base state".into()))?;
    let base = decode_meta_checkpoint(&bytes).map_err(|e| corrupt(format!("backfill base state: {e}")))?;
    if base.head.is_none_or(|h| h.seq < seq) {
        return Err(corrupt("the backfill base state is below the backfill point".into()));
    }
    let archives: Vec<String> = match meta.get(META_PRUNED).map_err(storage("read pruned", path))? {
        None => Vec::new(),
        Some(b) => postcard::from_bytes(&b).map_err(|e| corrupt(format!("archive list: {e}")))?,
    };
    let archives: Vec<std::path::PathBuf> = archives.into_iter().map(std::path::PathBuf::from).collect();
    Ok(Some(Backfill { point: ChainPoint { seq, hash }, base: std::sync::Arc::new(base), archives: archives.into() }))
}

/// Reads the durable head from `meta`.
pub(crate) fn read_head(meta: &Keyspace, path: &Path) -> Result<Option<(u64, ChainHash)>, LedgerError> {
    read_point(meta, path, META_HEAD, "head")
}

/// Reads the newest checkpoint event recorded in `meta` (`anchor`), as `(seq, hash)`.
pub(crate) fn read_anchor(meta: &Keyspace, path: &Path) -> Result<Option<(u64, ChainHash)>, LedgerError> {
    read_point(meta, path, META_ANCHOR, "anchor")
}

/// The stored projection checkpoint: `None` when there is none, `Some(Err(reason))` when its
/// digest or record does not check.
pub(crate) fn read_stored_checkpoint(
    meta: &Keyspace,
    path: &Path,
) -> Result<Option<Result<ProjectionState, String>>, LedgerError> {
    let Some(bytes) = meta.get(META_CHECKPOINT).map_err(storage("read checkpoint", path))? else { return Ok(None) };
    Ok(Some(decode_meta_checkpoint(&bytes)))
}

/// Reads a `seq ‖ hash` value from `meta`.
pub(super) fn read_point(
    meta: &Keyspace,
    path: &Path,
    key: &[u8],
    name: &str,
) -> Result<Option<(u64, ChainHash)>, LedgerError> {
    let Some(v) = meta.get(key).map_err(storage("read chain point", path))? else { return Ok(None) };
    let bytes: &[u8] = v.as_ref();
    if bytes.len() != 40 {
        return Err(LedgerError::Corrupt {
            path: path.to_path_buf(),
            seq: 0,
            corruption: Box::new(Corruption::Metadata {
                key: name.into(),
                reason: format!("{} bytes, expected 40", bytes.len()),
            }),
        });
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&bytes[..8]);
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&bytes[8..]);
    Ok(Some((u64::from_be_bytes(seq), ChainHash(hash))))
}

/// The `meta` value of a projection checkpoint: `blake3(record) ‖ record`.
///
/// Opening loads the checkpoint instead of replaying the events it covers, and unlike a ledger
/// record nothing else (no chain hash) covers its bytes, so it carries its own digest: a
/// flipped bit anywhere in it makes it unreadable rather than silently changing the state.
pub(super) fn encode_meta_checkpoint(state: &ProjectionState) -> Vec<u8> {
    let record = encode_checkpoint(state);
    let mut out = Vec::with_capacity(CHECKPOINT_DIGEST_BYTES + record.len());
    out.extend_from_slice(blake3::hash(&record).as_bytes());
    out.extend_from_slice(&record);
    out
}

/// Checks the digest of a `meta` checkpoint value and decodes it.
pub(super) fn decode_meta_checkpoint(bytes: &[u8]) -> Result<ProjectionState, String> {
    if bytes.len() < CHECKPOINT_DIGEST_BYTES {
        return Err(format!("{} bytes, shorter than its digest", bytes.len()));
    }
    let (digest, record) = bytes.split_at(CHECKPOINT_DIGEST_BYTES);
    if blake3::hash(record).as_bytes().as_slice() != digest {
        return Err("digest mismatch".into());
    }
    decode_checkpoint(record).map_err(|e| e.to_string())
}

const CHECKPOINT_DIGEST_BYTES: usize = 32;

pub(super) fn encode_head(head: &ChainHead) -> [u8; 40] {
    encode_point(head.seq, &head.hash)
}

pub(super) fn encode_point(seq: u64, hash: &ChainHash) -> [u8; 40] {
    let mut out = [0u8; 40];
    out[..8].copy_from_slice(&seq.to_be_bytes());
    out[8..].copy_from_slice(hash.as_bytes());
    out
}

impl Ledger {
    /// Marks (or unmarks) the content as imported from a seed outside Raft. A node restored
    /// from a seed serves it at once; when Raft then starts applying from the beginning of its
    /// log on this ledger, the import is discarded first so no event is applied twice. A
    /// network formed from the seed adopts the import as its base (and unmarks it).
    #[tracing::instrument(level = "debug", skip(self), fields(path = %self.path.display()))]
    pub fn set_imported(&mut self, imported: bool) -> Result<(), LedgerError> {
        let r = if imported { self.meta.insert(META_IMPORTED, b"1") } else { self.meta.remove(META_IMPORTED) };
        r.map_err(storage("mark import", &self.path))?;
        self.db.persist(PersistMode::SyncData).map_err(storage("sync import mark", &self.path))
    }

    /// Records the head of the verified seed this ledger's content was imported from (or
    /// clears it), durably.
    #[tracing::instrument(level = "debug", skip(self), fields(path = %self.path.display()))]
    pub fn set_seed_anchor(&mut self, point: Option<ChainPoint>) -> Result<(), LedgerError> {
        let r = match point {
            Some(p) => self.meta.insert(META_SEED_ANCHOR, encode_point(p.seq, &p.hash).to_vec()),
            None => self.meta.remove(META_SEED_ANCHOR),
        };
        r.map_err(storage("write seed anchor", &self.path))?;
        self.db.persist(PersistMode::SyncData).map_err(storage("sync seed anchor", &self.path))
    }

    /// Refuses, from now on and across restarts, every range ([`Ledger::append_range`] and
    /// the gossip appends) that carries the event at `first`: the first event of a branch
    /// this node yielded in a split-brain, so it cannot sync the losing chain back from a
    /// peer that has not yielded yet. Raft-committed appends are not affected; `peers`, the
    /// members of the losing Raft cluster, are kept for the node to refuse their Raft traffic
    /// until they are members of its own cluster ([`Ledger::refused_peers`]).
    #[tracing::instrument(skip(self, peers), fields(path = %self.path.display()))]
    pub fn refuse_branch(
        &mut self,
        first: ChainPoint,
        peers: &[crate::core::types::NodeId],
    ) -> Result<(), LedgerError> {
        let ids: Vec<u8> = peers.iter().flat_map(|p| p.as_bytes().to_vec()).collect();
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        batch.insert(&self.meta, META_REFUSED_BRANCH, encode_point(first.seq, &first.hash).to_vec());
        batch.insert(&self.meta, META_REFUSED_PEERS, ids);
        batch.commit().map_err(storage("write refused branch", &self.path))?;
        self.refused = Some(first);
        Ok(())
    }

    /// The members of the Raft cluster whose branch this node yielded ([`Ledger::refuse_branch`]).
    pub fn refused_peers(&self) -> Result<Vec<crate::core::types::NodeId>, LedgerError> {
        let Some(bytes) = self.meta.get(META_REFUSED_PEERS).map_err(storage("read refused peers", &self.path))? else {
            return Ok(Vec::new());
        };
        if bytes.len() % 32 != 0 {
            return Err(LedgerError::Corrupt {
                path: self.path.clone(),
                seq: 0,
                corruption: Box::new(Corruption::Metadata {
                    key: "refused_peers".into(),
                    reason: format!("{} bytes, not a list of 32-byte ids", bytes.len()),
                }),
            });
        }
        Ok(bytes
            .chunks_exact(32)
            .map(|c| {
                let mut id = [0u8; 32];
                id.copy_from_slice(c);
                crate::core::types::NodeId(id)
            })
            .collect())
    }

    /// The head of the verified seed this ledger was imported from, if any: events up to it
    /// carry Seed authority.
    pub fn seed_anchor(&self) -> Result<Option<ChainPoint>, LedgerError> {
        Ok(read_point(&self.meta, &self.path, META_SEED_ANCHOR, "seed_anchor")?
            .map(|(seq, hash)| ChainPoint { seq, hash }))
    }

    /// Whether the content was imported from a seed and not yet adopted by Raft.
    pub fn is_imported(&self) -> Result<bool, LedgerError> {
        Ok(self.meta.get(META_IMPORTED).map_err(storage("read import mark", &self.path))?.is_some())
    }
}
