//! The sets the generator picks nodes and services from, kept in step with its planning
//! projection, so picking costs O(log n) in the nodes and O(√n) in the services.

use uuid::Uuid;

use crate::core::event::EventBody;
use crate::core::keys::NodeKey;
use crate::core::projection::{NodeStatus, Projection};
use crate::core::types::NodeId;

/// The sets [`Synth`] picks from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Pool {
    /// Active authorities (they sign admissions, trust and offline changes).
    Authorities,
    /// Admitted and not left.
    Present,
    /// Admitted and active.
    Active,
    /// Committed as offline.
    Offline,
    /// Active, and not one of the first `voters` keys.
    ActiveNonVoters,
    /// Present, and not one of the first `voters` keys.
    PresentNonVoters,
    /// Never admitted, or left (by key index).
    Absent,
}

/// Who can be picked for what, kept in step with the planning projection: after every event
/// it accepts, [`Pools::observe`] updates the node and services that event touched. Each set
/// is in the order the projection lists its members (nodes by id, services by id; absent
/// nodes by key index), so the `k`-th member is the node or service the `k`-th entry of a
/// scan of the projection would have been, and a history is the same event for event as one
/// planned by scanning.
#[derive(Clone, Debug)]
pub(super) struct Pools {
    /// Position of each key (by index) in node id order.
    pub(super) rank: Vec<usize>,
    /// Key index at each position in node id order.
    pub(super) by_rank: Vec<usize>,
    /// Key index of each node id.
    pub(super) index: std::collections::HashMap<NodeId, usize>,
    pub(super) voters: usize,
    pub(super) authorities: RankSet,
    pub(super) present: RankSet,
    pub(super) active: RankSet,
    pub(super) offline: RankSet,
    pub(super) active_non_voters: RankSet,
    pub(super) present_non_voters: RankSet,
    pub(super) absent: RankSet,
    pub(super) services: ServicePool,
}

impl Pools {
    pub(super) fn new(keys: &[NodeKey], voters: usize) -> Self {
        let ids: Vec<NodeId> = keys.iter().map(|k| k.node_id()).collect();
        let mut by_rank: Vec<usize> = (0..ids.len()).collect();
        by_rank.sort_by(|a, b| ids[*a].cmp(&ids[*b]));
        let mut rank = vec![0; ids.len()];
        for (r, i) in by_rank.iter().enumerate() {
            rank[*i] = r;
        }
        let n = ids.len();
        let mut absent = RankSet::new(n);
        for i in 0..n {
            absent.set(i, true);
        }
        Pools {
            rank,
            by_rank,
            index: ids.iter().enumerate().map(|(i, id)| (*id, i)).collect(),
            voters,
            authorities: RankSet::new(n),
            present: RankSet::new(n),
            active: RankSet::new(n),
            offline: RankSet::new(n),
            active_non_voters: RankSet::new(n),
            present_non_voters: RankSet::new(n),
            absent,
            services: ServicePool::default(),
        }
    }

    pub(super) fn set(&self, which: Pool) -> &RankSet {
        match which {
            Pool::Authorities => &self.authorities,
            Pool::Present => &self.present,
            Pool::Active => &self.active,
            Pool::Offline => &self.offline,
            Pool::ActiveNonVoters => &self.active_non_voters,
            Pool::PresentNonVoters => &self.present_non_voters,
            Pool::Absent => &self.absent,
        }
    }

    /// `p` has just accepted `body`; `dropped` are the services it removed with a node that
    /// left.
    pub(super) fn observe(&mut self, p: &Projection, body: &EventBody, dropped: &[Uuid]) {
        match body {
            EventBody::Genesis { founder, .. } => self.refresh(p, &founder.node),
            EventBody::NodeJoined(a) => self.refresh(p, &a.node),
            EventBody::NodeUpdated { node, .. }
            | EventBody::NodeLeft { node, .. }
            | EventBody::NodeWentOffline { node, .. }
            | EventBody::NodeBackOnline { node } => self.refresh(p, node),
            EventBody::ServiceRegistered(s) => self.services.insert(s.service_id, self.index.get(&s.node).copied()),
            EventBody::ServiceDeregistered { service_id, .. } => self.services.remove(service_id),
            _ => {}
        }
        for id in dropped {
            self.services.remove(id);
        }
    }

    /// Puts the node in the sets its record in `p` belongs to.
    pub(super) fn refresh(&mut self, p: &Projection, node: &NodeId) {
        let Some(&i) = self.index.get(node) else { return };
        let record = p.node(node).map(|n| (n.status, n.role.is_authority()));
        let present = record.is_some_and(|(s, _)| s != NodeStatus::Left);
        let active = record.is_some_and(|(s, _)| s == NodeStatus::Active);
        let non_voter = i >= self.voters;
        let r = self.rank[i];
        self.absent.set(i, !present);
        self.present.set(r, present);
        self.active.set(r, active);
        self.authorities.set(r, active && record.is_some_and(|(_, authority)| authority));
        self.offline.set(r, record.is_some_and(|(s, _)| s == NodeStatus::Offline));
        self.active_non_voters.set(r, active && non_voter);
        self.present_non_voters.set(r, present && non_voter);
    }
}

/// A set of positions `0..n` with O(log n) insert, remove and k-th smallest (a Fenwick tree
/// over membership bits).
#[derive(Clone, Debug)]
pub(super) struct RankSet {
    pub(super) member: Vec<bool>,
    /// `tree[i]` counts the members in `(i - lowbit(i), i]`, 1-based.
    pub(super) tree: Vec<u32>,
    pub(super) len: usize,
}

impl RankSet {
    pub(super) fn new(n: usize) -> Self {
        RankSet { member: vec![false; n], tree: vec![0; n + 1], len: 0 }
    }

    pub(super) fn set(&mut self, pos: usize, on: bool) {
        if self.member[pos] == on {
            return;
        }
        self.member[pos] = on;
        let mut i = pos + 1;
        while i < self.tree.len() {
            if on {
                self.tree[i] += 1;
            } else {
                self.tree[i] -= 1;
            }
            i += i & i.wrapping_neg();
        }
        if on {
            self.len += 1;
        } else {
            self.len -= 1;
        }
    }

    /// The `k`-th smallest member, counting from 0 (`k < len`).
    pub(super) fn nth(&self, k: usize) -> usize {
        // Descend the tree: the largest prefix holding at most `k` members ends just before it.
        let mut pos = 0;
        let mut rest = k as u32;
        let mut step = (self.tree.len() - 1).checked_ilog2().map_or(0, |b| 1usize << b);
        while step > 0 {
            let next = pos + step;
            if next < self.tree.len() && self.tree[next] <= rest {
                pos = next;
                rest -= self.tree[next];
            }
            step >>= 1;
        }
        pos
    }
}

/// Registered services by id (the projection's order) with their owner's key index; insert,
/// remove and k-th in O(√n): sorted blocks of at most `2 * SERVICE_BLOCK`.
#[derive(Clone, Debug, Default)]
pub(super) struct ServicePool {
    pub(super) blocks: Vec<Vec<(Uuid, Option<usize>)>>,
    pub(super) len: usize,
}

/// Half the largest block (small under test, so that tests split and drop blocks).
pub(super) const SERVICE_BLOCK: usize = if cfg!(test) { 16 } else { 256 };

impl ServicePool {
    /// The block that holds `id`, or would: the first whose last id is not below it.
    pub(super) fn block_of(&self, id: &Uuid) -> usize {
        self.blocks
            .partition_point(|b| b.last().is_some_and(|(last, _)| last < id))
            .min(self.blocks.len().saturating_sub(1))
    }

    pub(super) fn insert(&mut self, id: Uuid, owner: Option<usize>) {
        if self.blocks.is_empty() {
            self.blocks.push(Vec::with_capacity(2 * SERVICE_BLOCK + 1));
        }
        let b = self.block_of(&id);
        let block = &mut self.blocks[b];
        match block.binary_search_by(|(x, _)| x.cmp(&id)) {
            Ok(i) => block[i].1 = owner,
            Err(i) => {
                block.insert(i, (id, owner));
                self.len += 1;
                if block.len() > 2 * SERVICE_BLOCK {
                    let upper = block.split_off(SERVICE_BLOCK);
                    self.blocks.insert(b + 1, upper);
                }
            }
        }
    }

    pub(super) fn remove(&mut self, id: &Uuid) {
        if self.blocks.is_empty() {
            return;
        }
        let b = self.block_of(id);
        let block = &mut self.blocks[b];
        if let Ok(i) = block.binary_search_by(|(x, _)| x.cmp(id)) {
            block.remove(i);
            self.len -= 1;
            if block.is_empty() && self.blocks.len() > 1 {
                self.blocks.remove(b);
            }
        }
    }

    /// The `k`-th service by id, counting from 0, and its owner (`None` if `k >= len`).
    pub(super) fn nth(&self, mut k: usize) -> Option<(Uuid, Option<usize>)> {
        for block in &self.blocks {
            if k < block.len() {
                return Some(block[k]);
            }
            k -= block.len();
        }
        None
    }
}
