//! Checks of what a peer asks of this node's Raft, before openraft sees it.
//!
//! openraft trusts the shape of an AppendEntries: that it comes from a leader (its vote
//! committed) and that its entries follow each other from the one before them. A request
//! that breaks that trips an assertion in openraft's core (a debug build panics the whole
//! Raft; a release build goes on with a vote no quorum granted). openraft-legacy's chunked
//! snapshot receiver writes a chunk wherever its offset says, into a snapshot held in memory:
//! one chunk far past the bytes received would make it allocate the gap, and abort the
//! process. A peer is authenticated and admitted, but its bytes are still input: a request of
//! the wrong shape is refused here.

use openraft_legacy::network_v1::InstallSnapshotRequest;

use super::{AppendRequest, TypeConfig};

/// What has arrived of the snapshot being sent to this node: its id and the end of the bytes
/// received (`None` before the first chunk).
pub type SnapshotHeld = Option<(String, u64)>;

/// The largest snapshot a node takes by default: a quarter of the machine's memory (4 GiB where
/// it cannot be read). A snapshot arrives whole in memory (openraft-legacy's receiver), and
/// installing it decodes every event it holds besides, so a larger one could not be installed
/// anyway; refused chunk by chunk, it costs the sender an error instead of this node its
/// process (a failed allocation aborts).
pub fn default_snapshot_bytes_max() -> u64 {
    const UNKNOWN: u64 = 4 << 30;
    memory_total().map_or(UNKNOWN, |m| m / 4)
}

/// The machine's memory in bytes, from `/proc/meminfo` (Linux); `None` elsewhere.
fn memory_total() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_total(&info)
}

/// `MemTotal:  24576000 kB` → bytes.
fn parse_mem_total(info: &str) -> Option<u64> {
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.trim_start_matches("MemTotal:").trim().trim_end_matches("kB").trim().parse().ok()?;
    kib.checked_mul(1024)
}

/// Where a snapshot chunk may land, given what is `held`: at offset 0 of a new snapshot, or at
/// most at the end of what arrived of the same one (a resent chunk may go back), and never
/// past `bytes_max`. Also checks that it comes from a leader. Returns what is held once the
/// chunk is written.
pub fn check_snapshot_chunk(
    req: &InstallSnapshotRequest<TypeConfig>,
    held: &SnapshotHeld,
    bytes_max: u64,
) -> Result<(String, u64), String> {
    if !req.vote.is_committed() {
        return Err(format!("a snapshot under vote {}, not a leader's", req.vote));
    }
    let end = req
        .offset
        .checked_add(req.data.len() as u64)
        .ok_or_else(|| "a snapshot chunk past the end of the offset range".to_string())?;
    if end > bytes_max {
        return Err(format!(
            "a snapshot of more than {bytes_max} bytes, this node's bound (`Timeouts::snapshot_bytes_max`: \
             snapshots are held in memory); a ledger this large needs retention or a larger bound"
        ));
    }
    let have = match held {
        Some((id, n)) if *id == req.meta.snapshot_id => *n,
        _ => 0,
    };
    if req.offset > have {
        return Err(format!("a snapshot chunk at offset {} leaves a hole after byte {have}", req.offset));
    }
    Ok((req.meta.snapshot_id.clone(), end.max(have)))
}

/// Why an AppendEntries is refused, or `Ok` for one openraft may take.
pub fn check_append(req: &AppendRequest) -> Result<(), String> {
    if !req.vote.is_committed() {
        return Err(format!("its vote {} is not a leader's (not committed)", req.vote));
    }
    // Indexes near the end of u64 would overflow openraft's `index + 1`: refused.
    let first = match &req.prev_log_id {
        Some(prev) => prev.index.checked_add(1),
        None => Some(0),
    };
    let last = first.and_then(|f| f.checked_add(req.entries.len() as u64));
    let (Some(first), Some(_)) = (first, last) else {
        return Err("its log indexes run past the end of the index range".into());
    };
    let mut leader = req.prev_log_id.as_ref().map(|l| *l.committed_leader_id());
    // `first + i` stays in range: `first + len` was checked above.
    for (next, entry) in req.entries.iter().enumerate().map(|(i, e)| (first + i as u64, e)) {
        let id = entry.log_id;
        if id.index != next {
            return Err(format!("entry {} is not the one after {}", id.index, next.saturating_sub(1)));
        }
        if leader.is_some_and(|l| id.leader_id < l) || id.leader_id > *req.vote.leader_id() {
            return Err(format!("entry {} has leader {}, out of order or beyond the sender's", id.index, id.leader_id));
        }
        leader = Some(id.leader_id);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use openraft::impls::leader_id_adv::LeaderId;
    use openraft::impls::Vote;
    use openraft::{Entry, EntryPayload, LogId};

    use super::*;

    fn id(term: u64, index: u64) -> LogId<LeaderId<u64, u64>> {
        LogId::new(LeaderId { term, node_id: 1 }, index)
    }

    fn req(vote: Vote<LeaderId<u64, u64>>, prev: Option<u64>, entries: &[(u64, u64)]) -> AppendRequest {
        AppendRequest {
            vote,
            prev_log_id: prev.map(|i| id(2, i)),
            leader_commit: None,
            entries: entries.iter().map(|&(t, i)| Entry { log_id: id(t, i), payload: EntryPayload::Blank }).collect(),
        }
    }

    fn chunk(id: &str, offset: u64, len: usize, vote: Vote<LeaderId<u64, u64>>) -> InstallSnapshotRequest<TypeConfig> {
        InstallSnapshotRequest {
            vote,
            meta: openraft_legacy::network_v1::SnapshotMeta {
                last_log_id: Some(id_at(4)),
                last_membership: Default::default(),
                snapshot_id: id.into(),
            },
            offset,
            data: vec![7; len],
            done: false,
        }
    }

    fn id_at(index: u64) -> LogId<LeaderId<u64, u64>> {
        id(2, index)
    }

    #[test]
    fn snapshot_chunks_land_only_where_bytes_arrived() {
        const MAX: u64 = u64::MAX;
        let leader = Vote::new_committed(3, 1);
        let held = check_snapshot_chunk(&chunk("a", 0, 100, leader), &None, MAX).expect("the first chunk");
        assert_eq!(held, ("a".to_string(), 100));
        let held = Some(held);
        assert_eq!(check_snapshot_chunk(&chunk("a", 100, 50, leader), &held, MAX), Ok(("a".into(), 150)));
        assert_eq!(check_snapshot_chunk(&chunk("a", 40, 10, leader), &held, MAX), Ok(("a".into(), 100)), "resent");
        // A hole (the receiver would allocate it), a new snapshot not from 0, an offset at the
        // end of the range, a candidate's vote.
        assert!(check_snapshot_chunk(&chunk("a", 1 << 40, 1, leader), &held, MAX).is_err());
        assert!(check_snapshot_chunk(&chunk("b", 100, 1, leader), &held, MAX).is_err());
        assert!(check_snapshot_chunk(&chunk("b", u64::MAX, 1, leader), &None, MAX).is_err());
        assert!(check_snapshot_chunk(&chunk("a", 0, 1, Vote::new(3, 1)), &None, MAX).is_err());
    }

    /// Contiguous chunks are taken up to the bound and refused past it, whatever came before.
    #[test]
    fn a_snapshot_past_the_bound_is_refused() {
        let leader = Vote::new_committed(3, 1);
        let held = Some(check_snapshot_chunk(&chunk("a", 0, 100, leader), &None, 150).expect("within"));
        let held = Some(check_snapshot_chunk(&chunk("a", 100, 50, leader), &held, 150).expect("up to the bound"));
        let past = check_snapshot_chunk(&chunk("a", 150, 1, leader), &held, 150).expect_err("past the bound");
        assert!(past.contains("more than 150 bytes") && past.contains("snapshot_bytes_max"), "{past}");
        assert!(check_snapshot_chunk(&chunk("b", 0, 151, leader), &None, 150).is_err(), "one chunk too large");
    }

    #[test]
    fn the_default_bound_is_a_quarter_of_the_memory() {
        assert_eq!(parse_mem_total("MemTotal:       24576000 kB\nMemFree: 1 kB\n"), Some(24_576_000 * 1024));
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(parse_mem_total("MemTotal: lots kB\n"), None);
        let bound = default_snapshot_bytes_max();
        assert!(bound >= 1 << 20, "{bound}");
        if let Some(total) = memory_total() {
            assert_eq!(bound, total / 4);
        }
    }

    #[test]
    fn a_leaders_consecutive_entries_pass_and_anything_else_is_refused() {
        let leader = Vote::new_committed(3, 1);
        assert_eq!(check_append(&req(leader, Some(4), &[(2, 5), (3, 6), (3, 7)])), Ok(()));
        assert_eq!(check_append(&req(leader, None, &[(3, 0)])), Ok(()), "the first entry of a log is index 0");
        assert_eq!(check_append(&req(leader, Some(4), &[])), Ok(()), "a heartbeat");
        // A candidate's vote, not a leader's: openraft's core would assert on it.
        assert!(check_append(&req(Vote::new(3, 1), Some(4), &[])).is_err());
        // A gap, a repeat, a step back in terms, an entry of a later leader than the sender.
        assert!(check_append(&req(leader, Some(4), &[(3, 6)])).is_err());
        assert!(check_append(&req(leader, Some(4), &[(3, 5), (3, 5)])).is_err());
        assert!(check_append(&req(leader, Some(4), &[(3, 5), (2, 6)])).is_err());
        assert!(check_append(&req(leader, Some(4), &[(4, 5)])).is_err());
        assert!(check_append(&req(leader, Some(4), &[(1, 5)])).is_err(), "older than the entry before it");
        // Indexes at the end of the range, which openraft's `index + 1` would overflow.
        assert!(check_append(&req(leader, Some(u64::MAX), &[])).is_err());
        assert!(check_append(&req(leader, Some(u64::MAX - 1), &[(3, u64::MAX)])).is_err());
        assert_eq!(check_append(&req(leader, Some(u64::MAX - 2), &[(3, u64::MAX - 1)])), Ok(()));
    }
}
