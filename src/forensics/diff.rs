//! How two branches differ: where they part (the fork point), each one's events after it, and
//! their registries at both heads, entity by entity.

use std::collections::BTreeSet;

use serde::Serialize;
use uuid::Uuid;

use super::branch::{Branch, BranchInfo, EVENTS_PAGE_MAX};
use super::state_at::head_projections;
use super::verdict::{verdict, Verdict};
use super::ForensicsError;
use crate::core::event::ChainedEvent;
use crate::core::projection::{NodeRecord, Projection, ServiceRecord};
use crate::core::types::{ChainHash, ChainPoint, NodeId};

/// One of the two branches compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The first source.
    A,
    /// The second source.
    B,
}

/// How two branches of one network relate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "relation", rename_all = "snake_case")]
pub enum Relation {
    /// Same head: nothing differs.
    Identical {
        /// The shared head.
        head: ChainPoint,
    },
    /// The behind branch's head lies on the ahead branch's chain: one only extends the other.
    Prefix {
        /// The branch with more events.
        ahead: Side,
        /// The behind branch's head, the last common point.
        common: ChainPoint,
    },
    /// The chains split: they agree up to `last_common` and differ from `first_diverging_seq`.
    Diverged {
        /// The last point both chains share (`None` if even genesis differs).
        last_common: Option<ChainPoint>,
        /// The first seq whose hashes differ (`last_common.seq + 1`).
        first_diverging_seq: u64,
    },
    /// Only bounds can be proven, because a seed without events names just its head and its
    /// last checkpoint.
    Unresolved {
        /// The latest point known to be shared, if any.
        last_common_known: Option<ChainPoint>,
        /// A seq at which the chains are known to differ (the fork is at or before it).
        diverged_at_or_before: Option<u64>,
        /// What is missing to decide.
        reason: String,
    },
}

impl Relation {
    /// The seq after which each branch's own events begin: the last common seq (`None` when
    /// nothing is known to be shared: list from genesis).
    pub fn last_common_seq(&self) -> Option<u64> {
        match self {
            Relation::Identical { head } => Some(head.seq),
            Relation::Prefix { common, .. } => Some(common.seq),
            Relation::Diverged { last_common, .. } => last_common.map(|p| p.seq),
            Relation::Unresolved { last_common_known, .. } => last_common_known.map(|p| p.seq),
        }
    }
}

/// The outcome of [`fork_point`]: both branches and how they relate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ForkPoint {
    /// The first branch.
    pub a: BranchInfo,
    /// The second branch.
    pub b: BranchInfo,
    /// How they relate.
    pub relation: Relation,
}

/// Finds where two branches of one network part. Errors with
/// [`ForensicsError::DifferentNetworks`] when the fingerprints differ. See the module doc for
/// the search and what a seed without events allows.
#[tracing::instrument(level = "debug", skip_all, fields(a = %a.info.path.display(), b = %b.info.path.display()))]
pub fn fork_point(a: &Branch, b: &Branch) -> Result<ForkPoint, ForensicsError> {
    if a.info.fingerprint != b.info.fingerprint {
        return Err(ForensicsError::DifferentNetworks {
            a_path: a.info.path.clone(),
            a: a.info.fingerprint,
            b_path: b.info.path.clone(),
            b: b.info.fingerprint,
        });
    }
    let relation = if a.has_events() && b.has_events() { search_fork(a, b)? } else { compare_known_points(a, b)? };
    tracing::debug!(?relation, "fork point");
    Ok(ForkPoint { a: a.info.clone(), b: b.info.clone(), relation })
}

fn side_ahead(a: &Branch, b: &Branch) -> Side {
    if a.head().seq > b.head().seq {
        Side::A
    } else {
        Side::B
    }
}

/// Both branches know every hash up to their heads: binary search for the last equal one.
fn search_fork(a: &Branch, b: &Branch) -> Result<Relation, ForensicsError> {
    let m = a.head().seq.min(b.head().seq);
    let equal_at = |seq: u64| -> Result<Option<ChainHash>, ForensicsError> {
        let ha = a.hash_at(seq)?;
        Ok(if ha.is_some() && ha == b.hash_at(seq)? { ha } else { None })
    };
    if let Some(hash) = equal_at(m)? {
        let common = ChainPoint { seq: m, hash };
        return Ok(if a.head() == b.head() {
            Relation::Identical { head: common }
        } else {
            Relation::Prefix { ahead: side_ahead(a, b), common }
        });
    }
    // Invariant: the hashes differ at `hi`; they are equal at `lo` (None: before genesis).
    let (mut lo, mut hi): (Option<ChainPoint>, u64) = (None, m);
    let mut steps = 0u32;
    loop {
        let start = lo.map_or(0, |p| p.seq + 1);
        if start >= hi {
            break;
        }
        let mid = start + (hi - start) / 2;
        match equal_at(mid)? {
            Some(hash) => lo = Some(ChainPoint { seq: mid, hash }),
            None => hi = mid,
        }
        steps += 1;
        debug_assert!(steps <= 65, "a binary search over u64 ends within 65 steps");
    }
    tracing::debug!(steps, "fork search");
    Ok(Relation::Diverged { last_common: lo, first_diverging_seq: hi })
}

/// At least one branch is a seed without events: compare at the points both know.
fn compare_known_points(a: &Branch, b: &Branch) -> Result<Relation, ForensicsError> {
    let mut seqs: BTreeSet<u64> = BTreeSet::new();
    for br in [a, b] {
        if !br.has_events() {
            seqs.extend(br.known_points().iter().map(|p| p.seq));
        }
    }
    let m = a.head().seq.min(b.head().seq);
    let mut last_common: Option<ChainPoint> = None;
    let mut first_differs: Option<u64> = None;
    for &seq in seqs.range(..=m) {
        let (Some(ha), Some(hb)) = (a.hash_at(seq)?, b.hash_at(seq)?) else {
            continue;
        };
        if ha == hb {
            last_common = Some(ChainPoint { seq, hash: ha });
        } else if first_differs.is_none() {
            first_differs = Some(seq);
        }
    }
    if let Some(common) = last_common.filter(|p| p.seq == m) {
        return Ok(if a.head() == b.head() {
            Relation::Identical { head: common }
        } else {
            Relation::Prefix { ahead: side_ahead(a, b), common }
        });
    }
    let bare: Vec<String> = [a, b]
        .iter()
        .filter(|br| !br.has_events())
        .map(|br| {
            let pts: Vec<String> = br.known_points().iter().map(|p| p.seq.to_string()).collect();
            format!("{} is a seed without events and names only seq {}", br.info.path.display(), pts.join(" and "))
        })
        .collect();
    let reason = match first_differs {
        Some(d) => format!("{}; the chains differ at seq {d}, so the fork is at or before it, but not exactly where", bare.join("; ")),
        None => format!(
            "{}; the branches end at seq {} and {}, and no point both know tells them apart, so whether one extends the other cannot be told",
            bare.join("; "),
            a.head().seq,
            b.head().seq
        ),
    };
    Ok(Relation::Unresolved { last_common_known: last_common, diverged_at_or_before: first_differs, reason })
}

/// A branch's events after a point, cut at a limit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BranchEvents {
    /// Events listed have `seq > after_seq` (`None`: from genesis).
    pub after_seq: Option<u64>,
    /// How many events the branch has after that point (known from its head).
    pub total: u64,
    /// Whether the source carries them (a seed without events does not; then `events` is
    /// empty and `more == total`).
    pub available: bool,
    /// The first events after the point, at most the limit asked for.
    pub events: Vec<ChainedEvent>,
    /// How many were left out: `total - events.len()`.
    pub more: u64,
}

/// `branch`'s events with `seq > after` (all from genesis when `after` is `None`), at most
/// `limit` of them, read page by page; `total` and `more` count the rest without reading it.
#[tracing::instrument(level = "debug", skip(branch), fields(path = %branch.info.path.display()))]
pub fn events_after(branch: &Branch, after: Option<u64>, limit: usize) -> Result<BranchEvents, ForensicsError> {
    let from = after.map_or(0, |s| s + 1);
    let head = branch.head().seq;
    let total = if from > head { 0 } else { head - from + 1 };
    if !branch.has_events() {
        return Ok(BranchEvents { after_seq: after, total, available: false, events: Vec::new(), more: total });
    }
    let want = total.min(limit as u64);
    let mut events = Vec::with_capacity(want.min(EVENTS_PAGE_MAX as u64) as usize);
    let mut at = from;
    while (events.len() as u64) < want {
        let to = from + want - 1;
        let page = branch.events(at, to)?;
        let Some(last) = page.last() else { break };
        at = last.seq + 1;
        events.extend(page);
    }
    let more = total - events.len() as u64;
    Ok(BranchEvents { after_seq: after, total, available: true, events, more })
}

/// A node present on both sides whose registry fields differ.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeChange {
    /// The node.
    pub node: NodeId,
    /// Which fields differ, among `name`, `role`, `status`, `trust`, `capabilities`,
    /// `addresses` (activity times and sequence bookkeeping are not compared).
    pub fields: Vec<&'static str>,
    /// The record on side A.
    pub a: NodeRecord,
    /// The record on side B.
    pub b: NodeRecord,
}

/// A service present on both sides whose announcement differs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceChange {
    /// The service.
    pub service_id: Uuid,
    /// Which fields differ, among `name`, `node`, `capabilities`, `endpoints`, `metadata`,
    /// `registered_by`.
    pub fields: Vec<&'static str>,
    /// The record on side A.
    pub a: ServiceRecord,
    /// The record on side B.
    pub b: ServiceRecord,
}

/// Per-entity differences of two projections (A and B are branches, not before and after).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EntityDiff {
    /// Nodes only A's registry has.
    pub nodes_only_in_a: Vec<NodeRecord>,
    /// Nodes only B's registry has.
    pub nodes_only_in_b: Vec<NodeRecord>,
    /// Nodes on both sides with differing fields.
    pub nodes_changed: Vec<NodeChange>,
    /// Services only A has registered.
    pub services_only_in_a: Vec<ServiceRecord>,
    /// Services only B has registered.
    pub services_only_in_b: Vec<ServiceRecord>,
    /// Services on both sides with differing announcements.
    pub services_changed: Vec<ServiceChange>,
}

impl EntityDiff {
    /// True when the registries agree on every compared field.
    pub fn is_empty(&self) -> bool {
        self.nodes_only_in_a.is_empty()
            && self.nodes_only_in_b.is_empty()
            && self.nodes_changed.is_empty()
            && self.services_only_in_a.is_empty()
            && self.services_only_in_b.is_empty()
            && self.services_changed.is_empty()
    }
}

fn node_fields(a: &NodeRecord, b: &NodeRecord) -> Vec<&'static str> {
    let mut f = Vec::new();
    let checks: [(&'static str, bool); 6] = [
        ("name", a.name != b.name),
        ("role", a.role != b.role),
        ("status", a.status != b.status),
        ("trust", a.trust != b.trust),
        ("capabilities", a.capabilities != b.capabilities),
        ("addresses", a.addresses != b.addresses),
    ];
    f.extend(checks.iter().filter(|(_, differs)| *differs).map(|(name, _)| *name));
    f
}

fn service_fields(a: &ServiceRecord, b: &ServiceRecord) -> Vec<&'static str> {
    let (x, y) = (&a.service, &b.service);
    let checks: [(&'static str, bool); 6] = [
        ("name", x.name != y.name),
        ("node", x.node != y.node),
        ("capabilities", x.capabilities != y.capabilities),
        ("endpoints", x.endpoints != y.endpoints),
        ("metadata", x.metadata != y.metadata),
        ("registered_by", a.registered_by != b.registered_by),
    ];
    checks.iter().filter(|(_, differs)| *differs).map(|(name, _)| *name).collect()
}

/// Compares two projections entity by entity (a merge walk over both id-ordered registries).
pub fn entity_diff(a: &Projection, b: &Projection) -> EntityDiff {
    let mut d = EntityDiff::default();
    let (only_a, only_b, changed) = diff_maps(&a.state().nodes, &b.state().nodes, node_fields);
    (d.nodes_only_in_a, d.nodes_only_in_b) = (only_a, only_b);
    d.nodes_changed = changed.into_iter().map(|(node, fields, a, b)| NodeChange { node, fields, a, b }).collect();
    let (only_a, only_b, changed) = diff_maps(&a.state().services, &b.state().services, service_fields);
    (d.services_only_in_a, d.services_only_in_b) = (only_a, only_b);
    d.services_changed =
        changed.into_iter().map(|(service_id, fields, a, b)| ServiceChange { service_id, fields, a, b }).collect();
    d
}

/// One registry against another: records only in `a`, only in `b`, and in both with the
/// fields `fields` finds different (in id order).
#[allow(clippy::type_complexity)]
fn diff_maps<K: Ord + Copy, V: Clone>(
    a: &crate::core::projection::SharedMap<K, V>,
    b: &crate::core::projection::SharedMap<K, V>,
    fields: fn(&V, &V) -> Vec<&'static str>,
) -> (Vec<V>, Vec<V>, Vec<(K, Vec<&'static str>, V, V)>) {
    let (mut only_a, mut changed) = (Vec::new(), Vec::new());
    for (id, ra) in a {
        match b.get(id) {
            None => only_a.push((**ra).clone()),
            // Shared records are equal without a look at their fields.
            Some(rb) if std::sync::Arc::ptr_eq(ra, rb) => {}
            Some(rb) => {
                let f = fields(ra, rb);
                if !f.is_empty() {
                    changed.push((*id, f, (**ra).clone(), (**rb).clone()));
                }
            }
        }
    }
    let only_b = b.iter().filter(|(id, _)| !a.contains_key(*id)).map(|(_, r)| (**r).clone()).collect();
    (only_a, only_b, changed)
}

/// Everything `spore diff` reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DiffReport {
    /// Both branches and how they relate.
    pub fork: ForkPoint,
    /// A's events after the last common point.
    pub a_events: BranchEvents,
    /// B's events after the last common point.
    pub b_events: BranchEvents,
    /// The registries at both heads, compared.
    pub entities: EntityDiff,
    /// Which branch a split-brain resolution would keep, and why.
    pub verdict: Verdict,
}

/// [`fork_point`], each branch's events after it (at most `limit` each) and [`entity_diff`]
/// of the projections at both heads. `progress` counts events replayed.
pub fn diff(
    a: &Branch,
    b: &Branch,
    limit: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<DiffReport, ForensicsError> {
    let fork = fork_point(a, b)?;
    let after = fork.relation.last_common_seq();
    let a_events = events_after(a, after, limit)?;
    let b_events = events_after(b, after, limit)?;
    let entities = if matches!(fork.relation, Relation::Identical { .. }) {
        EntityDiff::default()
    } else {
        let (pa, pb) = head_projections(a, b, &fork.relation, progress)?;
        entity_diff(&pa, &pb)
    };
    let verdict = verdict(a, b, &fork.relation)?;
    Ok(DiffReport { fork, a_events, b_events, entities, verdict })
}
