//! The winner rule of `schema/split-brain.md` (*The decision*), computed by the tests from the
//! branches themselves and not through the library's `core::authority`, so a split-brain test
//! names the side that must lose before the nodes decide, and fails if the other one does.

use std::time::Duration;

use mycnet_spores::{ChainHash, ChainedEvent, EventBody, NodeStatus, SporeSystem};

/// `active_nodes` counts nodes heard from within one hour (event time) of the branch head.
const ACTIVITY_WINDOW_MICROS: i64 = 3_600 * 1_000_000;

/// What the rule weighs of one branch (the automatic resolver weighs no seed, so a branch is
/// Primary or Latent).
#[derive(Debug, Clone, PartialEq)]
pub struct BranchFacts {
    /// The branch holds a checkpoint attesting a head at or after the fork.
    pub primary: bool,
    /// Active nodes of its registry heard from within the window of its head's timestamp.
    pub active: u32,
    /// The chain hash of its event at the fork.
    pub first: ChainHash,
    /// Its head when read.
    pub head_seq: u64,
}

/// Reads the branch of `s`'s chain from `fork_seq` to its current head.
pub async fn branch_of(s: &SporeSystem, fork_seq: u64) -> BranchFacts {
    let (head, active) = s
        .with_projection(|p| {
            let head = p.head().expect("a chain");
            let since = head.timestamp.0.saturating_sub(ACTIVITY_WINDOW_MICROS);
            let active =
                p.nodes().filter(|n| n.status == NodeStatus::Active && n.last_activity.0 >= since).count() as u32;
            (head, active)
        })
        .expect("projection");
    assert!(head.seq >= fork_seq, "the branch reaches the fork: head {} < fork {fork_seq}", head.seq);
    let mut sub = s.subscribe(fork_seq).expect("subscribe");
    let mut events: Vec<ChainedEvent> = Vec::new();
    while events.last().is_none_or(|e| e.seq < head.seq) {
        let ev = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("events flow")
            .expect("open")
            .expect("event");
        events.push(ev);
    }
    assert_eq!(events.last().map(|e| e.hash), Some(head.hash), "the events read end at the projection's head");
    let primary = events.iter().any(|e| matches!(e.event.body, EventBody::Checkpoint { head_seq, .. } | EventBody::StateCheckpoint { head_seq, .. } if head_seq >= fork_seq));
    BranchFacts { primary, active, first: events[0].hash, head_seq: head.seq }
}

/// Which of two branches wins (0: `a`, 1: `b`) and the rule that decided, as
/// `split_brain_resolved` names it: higher authority, then more active nodes, then the
/// smaller hash of the event at the fork.
pub fn winner(a: &BranchFacts, b: &BranchFacts) -> (usize, &'static str) {
    assert_ne!(a.first, b.first, "two branches of one fork start with different events");
    if a.primary != b.primary {
        (if a.primary { 0 } else { 1 }, "authority")
    } else if a.active != b.active {
        (if a.active > b.active { 0 } else { 1 }, "activity")
    } else {
        (if a.first.as_bytes() < b.first.as_bytes() { 0 } else { 1 }, "tie-break")
    }
}

/// Which of `nodes` have been in split-brain resolution (have seen the second chain).
pub fn fork_seen(nodes: &[SporeSystem]) -> Vec<bool> {
    let seen = |s: &SporeSystem| {
        s.mode_history()
            .is_ok_and(|h| h.iter().any(|t| t.to == mycnet_spores::core::modes::OperationalMode::SplitBrainResolution))
    };
    nodes.iter().map(seen).collect()
}
