//! Applying committed entries to the ledger: each event's signature verdict, chaining and
//! projection update in ledger-sized batches, each batch written with the applied mark of its
//! last whole entry; and where an apply runs (on the state machine's task or a blocking
//! thread).

use std::io;

use openraft::EntryPayload;

use super::{Entry, LogId, SporeRequest, SporeResponse, StoredMembership};
use crate::core::event::SignedEvent;
use crate::core::keys::VerifierCache;
use crate::core::projection::Rejection;
use crate::core::provisional::ProvisionalEvent;
use crate::store::ledger::Ledger;
use crate::store::verified::{PreVerified, VerifiedEvents};

pub(super) const META_APPLIED: &[u8] = b"raft_applied";
pub(super) const META_MEMBERSHIP: &[u8] = b"raft_membership";

pub(super) fn sm_read(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("reading the ledger state machine: {e}"))
}
pub(super) fn sm_write(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("writing the ledger state machine: {e}"))
}

/// The last log id the ledger holds the effects of, and the membership applied with it.
pub(super) fn read_applied(ledger: &Ledger) -> Result<(Option<LogId>, StoredMembership), io::Error> {
    let applied = match ledger.meta_get(META_APPLIED).map_err(sm_read)? {
        Some(b) => postcard::from_bytes::<Option<LogId>>(&b).map_err(sm_read)?,
        None => None,
    };
    let membership = match ledger.meta_get(META_MEMBERSHIP).map_err(sm_read)? {
        Some(b) => postcard::from_bytes(&b).map_err(sm_read)?,
        None => StoredMembership::default(),
    };
    Ok((applied, membership))
}

/// What apply keeps from one call to the next: the verifying keys it decoded, and the applied
/// mark and membership the ledger holds, as apply last wrote them (or read them: `None` makes
/// the next apply read them from the ledger). Reading and decoding both from the ledger took
/// a fifth of a one-event apply's CPU (`perf` of `latency_breakdown`, session 20), on every
/// replica and on the leader's commit path. Only the state machine writes them: it clears
/// `applied` when a snapshot install rewrites them, and apply leaves it `None` after a
/// failure.
#[derive(Default)]
pub(super) struct ApplyState {
    /// Decoded verifying keys.
    pub(super) verifiers: VerifierCache,
    /// The ledger's applied log id and membership, if known.
    pub(super) applied: Option<(Option<LogId>, StoredMembership)>,
}

/// Most events an apply runs on the state machine's task whatever else holds: a few events
/// cost less than the hop to a blocking thread and back (one write's commit latency waits on
/// it), even if their signatures are still being checked.
const INLINE_EVENTS_MAX: usize = 8;
/// Most events an apply runs on the state machine's task when nothing can block it: every
/// signature already checked and found valid by the log store (not merely none being checked:
/// a node that restarted re-applies entries it never pre-verified), the ledger's lock free
/// and no journal sync running (fjall holds the journal's lock through a sync, and the
/// apply's ledger write would wait for it). Such an apply is CPU alone (~6 µs per event here,
/// so under a millisecond at this size), and skipping the hop saves two thread wake-ups per
/// apply and a thread competing for the cores (64 writers on three voters in process:
/// `benches/README.md`, session 16).
pub(super) const INLINE_SETTLED_EVENTS_MAX: usize = 128;

/// Where an apply of some entries may run.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Placement {
    /// On the state machine's task, whatever else holds (a few events).
    Inline,
    /// On the state machine's task if every signature was checked and found valid, the
    /// ledger's lock is free and no journal sync runs.
    InlineIfSettled,
    /// On a blocking thread.
    Blocking,
}

/// Where the apply of `entries` may run: by their events' count; provisional events read the
/// chain and always go to a blocking thread.
pub(super) fn placement(entries: &[Entry]) -> Placement {
    let mut events = 0usize;
    for e in entries {
        match &e.payload {
            EntryPayload::Blank | EntryPayload::Membership(_) => {}
            EntryPayload::Normal(SporeRequest::Event(_)) => events += 1,
            EntryPayload::Normal(SporeRequest::Batch(b)) => events += b.len(),
            EntryPayload::Normal(SporeRequest::Provisional(_)) => return Placement::Blocking,
        }
    }
    match events {
        n if n <= INLINE_EVENTS_MAX => Placement::Inline,
        n if n <= INLINE_SETTLED_EVENTS_MAX => Placement::InlineIfSettled,
        _ => Placement::Blocking,
    }
}

/// The events of `entries` whose signatures apply checks (for [`PreVerified::all_verified`]).
pub(super) fn events_of(entries: &[Entry]) -> impl Iterator<Item = &SignedEvent> {
    entries.iter().flat_map(|e| {
        let (one, many): (Option<&SignedEvent>, &[SignedEvent]) = match &e.payload {
            EntryPayload::Normal(SporeRequest::Event(ev)) => (Some(ev), &[]),
            EntryPayload::Normal(SporeRequest::Batch(b)) => (None, b.as_slice()),
            EntryPayload::Normal(SporeRequest::Provisional(p)) => (Some(&p.event), &[]),
            _ => (None, &[]),
        };
        one.into_iter().chain(many)
    })
}

/// Applies `entries` to the ledger `l` (its write guard held) and answers each entry: a
/// batch's answers in its order. The membership is written only in the batch of the entry
/// that changes it (the applied mark with every batch).
pub(super) fn apply_entries(
    l: &mut Ledger,
    entries: &[Entry],
    state: &mut ApplyState,
    pre_verified: &PreVerified,
) -> Result<Vec<SporeResponse>, io::Error> {
    let (applied, mut membership) = match state.applied.take() {
        Some(known) => known,
        None => read_applied(l)?,
    };
    let cache = &mut state.verifiers;
    // Whether `membership` changed since it was last written to the ledger.
    let mut membership_new = false;
    // A node restored from a seed served it while joining; Raft now brings the whole
    // history from the start of its log, so the import goes first: nothing twice.
    if applied.is_none() && l.is_imported().map_err(sm_read)? {
        tracing::info!(head = ?l.head().map(|h| h.seq), "Raft replays from the start; discarding the seed import it supersedes");
        l.reset().map_err(sm_write)?;
    }
    // The last entry whose effects are wholly in the ledger.
    let mut last = applied;
    let mut events: Vec<&SignedEvent> = Vec::new();
    // Which response slot (entry, position in its batch) each event fills.
    let mut slots: Vec<(usize, Option<usize>)> = Vec::new();
    let mut responses = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        match &entry.payload {
            EntryPayload::Blank => responses.push(SporeResponse::None),
            EntryPayload::Membership(m) => {
                membership = StoredMembership::new(Some(entry.log_id), m.clone());
                membership_new = true;
                responses.push(SporeResponse::None);
            }
            EntryPayload::Normal(SporeRequest::Event(ev)) => {
                if events.len() + 1 > crate::core::limits::APPEND_BATCH_MAX {
                    let before = applied_meta(last, &membership, &mut membership_new)?;
                    flush(l, cache, pre_verified, &mut events, &mut slots, &mut responses, before)?;
                }
                events.push(ev);
                slots.push((i, None));
                responses.push(SporeResponse::None);
            }
            EntryPayload::Normal(SporeRequest::Batch(batch)) => {
                // Ledger batches end at entry boundaries, each written with the applied
                // mark of its last whole entry: a crash between two of them re-applies
                // only entries whose events are not stored yet.
                if !events.is_empty() && events.len() + batch.len() > crate::core::limits::APPEND_BATCH_MAX {
                    let before = applied_meta(last, &membership, &mut membership_new)?;
                    flush(l, cache, pre_verified, &mut events, &mut slots, &mut responses, before)?;
                }
                responses.push(SporeResponse::Batch(vec![SporeResponse::None; batch.len()]));
                for (k, ev) in batch.iter().enumerate() {
                    events.push(ev);
                    slots.push((i, Some(k)));
                }
            }
            EntryPayload::Normal(SporeRequest::Provisional(p)) => {
                responses.push(SporeResponse::None);
                let author = p.event.author;
                // The duplicate check reads the chain as it stands before this entry:
                // what came before it is stored first (with the applied mark of the
                // entry before it, so a crash in between re-applies nothing twice).
                let before = applied_meta(last, &membership, &mut membership_new)?;
                flush(l, cache, pre_verified, &mut events, &mut slots, &mut responses, before)?;
                let answer = match check_provisional(l, p) {
                    Err(rejection) => SporeResponse::Rejected(rejection),
                    Ok(()) => {
                        let meta = applied_meta(Some(entry.log_id), &membership, &mut membership_new)?;
                        let (verified, _) = VerifiedEvents::verify_with(vec![&p.event], cache, pre_verified);
                        match l.append_verified_points(verified, meta).map_err(sm_write)?.pop() {
                            Some(Ok(point)) => SporeResponse::Applied(point),
                            Some(Err(r)) => SporeResponse::Rejected(r),
                            None => SporeResponse::None,
                        }
                    }
                };
                if let SporeResponse::Rejected(r) = &answer {
                    tracing::info!(author = %author.short(), reason = %r, "provisional event not applied");
                }
                responses[i] = answer;
            }
        }
        last = Some(entry.log_id);
    }
    let meta = applied_meta(last, &membership, &mut membership_new)?;
    flush(l, cache, pre_verified, &mut events, &mut slots, &mut responses, meta)?;
    state.applied = Some((last, membership));
    Ok(responses)
}

/// Ledger meta entries, as (key, value) pairs.
type MetaEntries = Vec<(Vec<u8>, Vec<u8>)>;

/// The ledger meta that marks `last` applied, with `membership` if it is `new` (then no longer
/// new: the caller writes these entries).
fn applied_meta(last: Option<LogId>, membership: &StoredMembership, new: &mut bool) -> Result<MetaEntries, io::Error> {
    let mut meta = vec![(META_APPLIED.to_vec(), postcard::to_stdvec(&last).map_err(sm_write)?)];
    if std::mem::take(new) {
        meta.push((META_MEMBERSHIP.to_vec(), postcard::to_stdvec(&membership).map_err(sm_write)?));
    }
    Ok(meta)
}

/// Appends the pending `events` (in ledger-sized chunks, `meta` written with the last) and
/// fills each one's response slot. The events stay where they are, in the entries' batches:
/// they are read, never copied.
#[allow(clippy::too_many_arguments)]
fn flush(
    l: &mut Ledger,
    cache: &mut VerifierCache,
    pre_verified: &PreVerified,
    events: &mut Vec<&SignedEvent>,
    slots: &mut Vec<(usize, Option<usize>)>,
    responses: &mut [SporeResponse],
    meta: Vec<(Vec<u8>, Vec<u8>)>,
) -> Result<(), io::Error> {
    let events = std::mem::take(events);
    let mut chunks: Vec<&[&SignedEvent]> = events.chunks(crate::core::limits::APPEND_BATCH_MAX).collect();
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    let n = chunks.len();
    let mut outcomes = Vec::with_capacity(events.len());
    let mut meta = Some(meta);
    for (k, chunk) in chunks.into_iter().enumerate() {
        let m = if k + 1 == n { meta.take().unwrap_or_default() } else { Vec::new() };
        // Signatures the log store already verified (for exactly these events) are not
        // verified again; the rest are, here.
        let (verified, _) = VerifiedEvents::verify_with(chunk.to_vec(), cache, pre_verified);
        outcomes.extend(l.append_verified_points(verified, m).map_err(sm_write)?);
    }
    for ((slot, pos), outcome) in std::mem::take(slots).into_iter().zip(outcomes) {
        let answer = match outcome {
            Ok(point) => SporeResponse::Applied(point),
            Err(r) => SporeResponse::Rejected(r),
        };
        match (pos, &mut responses[slot]) {
            (Some(k), SporeResponse::Batch(v)) => v[k] = answer,
            (_, r) => *r = answer,
        }
    }
    Ok(())
}

/// The state machine's check of a provisional event: its author's statement verifies and the
/// chain after the statement's point does not hold the event already. Deterministic: every
/// replica reads the same chain here.
fn check_provisional(l: &Ledger, p: &ProvisionalEvent) -> Result<(), Rejection> {
    p.verify_statement().map_err(|e| Rejection::ProvisionalRefused(e.to_string().into()))?;
    let head = l.head().map(|h| h.seq);
    let Some((from, to)) = p.scan_range(head).map_err(|e| Rejection::ProvisionalRefused(e.to_string().into()))? else {
        return Ok(());
    };
    // A ledger that cannot read its own committed range refuses rather than guesses.
    match crate::store::provisional::find_committed(l, p, from, to) {
        Ok(None) => Ok(()),
        Ok(Some(point)) => Err(Rejection::ProvisionalDuplicate(point)),
        Err(e) => Err(Rejection::ProvisionalRefused(format!("cannot read the chain to check: {e}").into())),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use openraft::impls::leader_id_adv::LeaderId;

    use super::*;

    fn events(n: usize) -> Vec<SignedEvent> {
        crate::store::verified::test_events(5, n)
    }

    type Payload = <crate::raft::TypeConfig as openraft::RaftTypeConfig>::Payload;

    fn entry(index: u64, payload: Payload) -> Entry {
        Entry { log_id: LogId::new(LeaderId { term: 1, node_id: 1 }, index), payload }
    }

    fn batch(index: u64, n: usize) -> Entry {
        entry(index, EntryPayload::Normal(SporeRequest::Batch(Arc::new(events(n)))))
    }

    /// A few events apply on the state machine's task; up to the second bound, only if nothing
    /// can block it; more, or a provisional event (which reads the chain), on a blocking thread.
    /// The bound counts every event of every entry applied together.
    #[test]
    fn an_apply_runs_inline_only_where_it_cannot_block() {
        assert_eq!(placement(&[]), Placement::Inline);
        assert_eq!(placement(&[entry(1, EntryPayload::Blank)]), Placement::Inline);
        assert_eq!(placement(&[batch(1, INLINE_EVENTS_MAX)]), Placement::Inline);
        assert_eq!(placement(&[batch(1, INLINE_EVENTS_MAX + 1)]), Placement::InlineIfSettled);
        assert_eq!(placement(&[batch(1, 60)]), Placement::InlineIfSettled);
        assert_eq!(placement(&[batch(1, INLINE_SETTLED_EVENTS_MAX)]), Placement::InlineIfSettled);
        assert_eq!(placement(&[batch(1, INLINE_SETTLED_EVENTS_MAX + 1)]), Placement::Blocking);
        assert_eq!(placement(&[batch(1, 100), batch(2, 100)]), Placement::Blocking);
        let one = events(1).remove(0);
        let single = entry(1, EntryPayload::Normal(SporeRequest::Event(one.clone())));
        assert_eq!(placement(std::slice::from_ref(&single)), Placement::Inline);
        let p = ProvisionalEvent {
            event: one,
            absent_through: None,
            signature: crate::core::types::SignatureBytes([0; 64]),
        };
        assert_eq!(placement(&[entry(1, EntryPayload::Normal(SporeRequest::Provisional(p)))]), Placement::Blocking);
    }

    /// The membership reaches the ledger with the entry that changes it, the applied mark with
    /// every apply; an apply that starts from what the last one kept, and one that starts
    /// afresh (a restart) and reads them from the ledger, leave the same there.
    #[test]
    fn the_ledger_holds_the_applied_mark_and_membership_whatever_apply_kept() {
        let (_dir, mut ledger) = crate::store::ledger::scratch();
        let key = crate::core::keys::NodeKey::from_seed([9; 32]);
        let peer = crate::wire::rpc::PeerNode { node: key.node_id(), addr: "n1".into() };
        let m = openraft::Membership::new(
            vec![std::collections::BTreeSet::from([1u64])],
            std::collections::BTreeMap::from([(1u64, peer)]),
        )
        .expect("membership");
        let evs = events(3);
        let one = |k: usize| SporeRequest::Batch(Arc::new(vec![evs[k].clone()]));
        let pre = PreVerified::default();
        let mut kept = ApplyState::default();
        let first = [entry(1, EntryPayload::Membership(m.clone())), entry(2, EntryPayload::Normal(one(0)))];
        apply_entries(&mut ledger, &first, &mut kept, &pre).expect("apply 1-2");
        let expected_membership = StoredMembership::new(Some(first[0].log_id), m);
        let on_disk = |l: &Ledger| read_applied(l).expect("read");
        assert_eq!(kept.applied, Some((Some(first[1].log_id), expected_membership.clone())));
        assert_eq!(on_disk(&ledger), (Some(first[1].log_id), expected_membership.clone()));
        let third = entry(3, EntryPayload::Normal(one(1)));
        apply_entries(&mut ledger, std::slice::from_ref(&third), &mut kept, &pre).expect("apply 3");
        assert_eq!(on_disk(&ledger), (Some(third.log_id), expected_membership.clone()));
        let mut afresh = ApplyState::default();
        let fourth = entry(4, EntryPayload::Normal(one(2)));
        apply_entries(&mut ledger, std::slice::from_ref(&fourth), &mut afresh, &pre).expect("apply 4");
        assert_eq!(on_disk(&ledger), (Some(fourth.log_id), expected_membership.clone()));
        assert_eq!(afresh.applied, Some((Some(fourth.log_id), expected_membership)));
    }

    /// `events_of` yields every event apply checks, in order, across entries of every kind.
    #[test]
    fn events_of_covers_every_entry_kind() {
        let evs = events(4);
        let entries = vec![
            entry(1, EntryPayload::Blank),
            entry(2, EntryPayload::Normal(SporeRequest::Event(evs[0].clone()))),
            entry(3, EntryPayload::Normal(SporeRequest::Batch(Arc::new(evs[1..3].to_vec())))),
            entry(4, EntryPayload::Normal(SporeRequest::Event(evs[3].clone()))),
        ];
        let seen: Vec<&SignedEvent> = events_of(&entries).collect();
        assert_eq!(seen, evs.iter().collect::<Vec<_>>());
    }
}
