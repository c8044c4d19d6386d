//! Checks of what a peer asks of this node's Raft, before openraft sees it.
//!
//! openraft trusts the shape of an AppendEntries: that it comes from a leader (its vote
//! committed) and that its entries follow each other from the one before them. A request
//! that breaks that trips an assertion in openraft's core (a debug build panics the whole
//! Raft; a release build goes on with a vote no quorum granted). A peer is authenticated and
//! admitted, but its bytes are still input: a request of the wrong shape is refused here.

use super::AppendRequest;

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
