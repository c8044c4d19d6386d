//! The stored projection checkpoint, checked against the state the chain attests.
//!
//! A stored checkpoint is a cache: opening may start from it only when the chain itself vouches
//! for it. It is written at a state the chain attests (right before a state checkpoint event,
//! [`crate::core::event::EventBody::StateCheckpoint`]), and on open it is used only if the
//! record after it is that event: attesting its seq, carrying its digest, with a valid
//! signature. Anything else (an older ledger, a checkpoint written elsewhere, a forged state
//! with a recomputed storage digest) is ignored in favour of a replay from genesis.

use std::path::Path;

use fjall::Keyspace;

use super::ledger::storage;
use super::record::{decode_record, seq_key};
use crate::core::attest::state_digest;
use crate::core::event::EventBody;
use crate::core::keys::PublicKey;
use crate::core::projection::ProjectionState;
use crate::store::error::LedgerError;

/// Whether the record after `state`'s head is a state checkpoint event that attests exactly
/// this state (its seq, its head hash and its digest), signed by its author. A missing or
/// undecodable record is "not attested" (the replay that follows reports damage, if any).
pub(crate) fn is_attested(ledger: &Keyspace, path: &Path, state: &ProjectionState) -> Result<bool, LedgerError> {
    let Some(head) = state.head else { return Ok(false) };
    let Some(bytes) = ledger.get(seq_key(head.seq + 1)).map_err(storage("read attesting record", path))? else {
        return Ok(false);
    };
    let Ok(next) = decode_record(&bytes) else { return Ok(false) };
    let EventBody::StateCheckpoint { head_seq, head_hash, state_digest: attested } = next.event.body else {
        return Ok(false);
    };
    if head_seq != head.seq || head_hash != head.hash || next.prev_hash != head.hash {
        return Ok(false);
    }
    let signed = PublicKey::from_node_id(&next.event.author)
        .is_some_and(|k| k.verify_msg(&next.event.signing_message(), &next.event.signature));
    Ok(signed && attested == state_digest(state))
}

/// Why an open did not start from the stored checkpoint (for the log).
#[derive(Debug)]
pub(crate) enum Unused {
    /// Its digest or record does not check.
    Unreadable(String),
    /// It is beyond the head, or below where the held history starts.
    OutOfRange,
    /// The chain does not attest it (see [`is_attested`]).
    NotAttested,
}
