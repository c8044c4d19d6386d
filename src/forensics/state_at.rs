//! The registries of a branch as of a seq or a time, and at the heads of two branches (a prefix
//! two ledgers share replayed once).

use super::branch::{Branch, Inner};
use super::diff::Relation;
use super::ForensicsError;
use crate::core::limits::REPLAY_CHUNK_EVENTS;
use crate::core::projection::Projection;
use crate::seed::SeedError;
use crate::store::replay::{ReplayOptions, StopAt};

impl Branch {
    /// The registries as of `stop`: a ledger is replayed from genesis (chunked, memory bounded
    /// by the registry); a seed answers at its head from its state, and before its head by
    /// replaying its events — a seed without events cannot, and says so.
    #[tracing::instrument(level = "debug", skip(self, progress), fields(path = %self.info.path.display()))]
    pub fn projection(&self, stop: StopAt, progress: &(dyn Fn(u64) + Sync)) -> Result<Projection, ForensicsError> {
        match &self.inner {
            Inner::Ledger(r) => Ok(r.replay(&ReplayOptions { audit: true, stop }, progress)?.0),
            Inner::Seed(s) => {
                let head = self.info.head;
                let at_head = match stop {
                    StopAt::End => true,
                    StopAt::Seq(q) => q >= head.seq,
                    // Without events the seed knows no event after its head's time; with them,
                    // replay so a timestamp out of order is treated exactly as a ledger would.
                    StopAt::Time(t) => !s.header.includes_events && t >= self.info.head_time,
                };
                if at_head {
                    return Ok(s.projection());
                }
                if !s.header.includes_events {
                    let asked = match stop {
                        StopAt::Seq(q) => format!("the state at seq {q}"),
                        StopAt::Time(t) => format!("the state at {t}"),
                        StopAt::End => "the state at its head".into(),
                    };
                    return Err(self.without_events(asked));
                }
                let mut p = Projection::new();
                for (i, ev) in s.events.iter().enumerate() {
                    match stop {
                        StopAt::Seq(q) if ev.seq > q => break,
                        StopAt::Time(t) if ev.event.timestamp > t => break,
                        _ => {}
                    }
                    p.apply(ev).map_err(|r| ForensicsError::Seed {
                        path: self.info.path.clone(),
                        source: SeedError::BadEvents { seq: ev.seq, reason: r.to_string() },
                    })?;
                    if i % REPLAY_CHUNK_EVENTS == 0 {
                        progress(i as u64);
                    }
                }
                Ok(p)
            }
        }
    }
}

/// Events [`head_projections`] replays: a shared ledger prefix once, then each tail (a
/// seed's state is read, not replayed). For a progress bar's length.
pub fn head_projections_work(a: &Branch, b: &Branch, relation: &Relation) -> u64 {
    match shared_ledger_prefix(a, b, relation) {
        Some(c) => a.head().seq + b.head().seq + 1 - c,
        None => replayed_alone(a) + replayed_alone(b),
    }
}

/// Events replayed for a branch's head projection on its own.
fn replayed_alone(br: &Branch) -> u64 {
    match br.inner {
        Inner::Ledger(_) => br.head().seq + 1,
        Inner::Seed(_) => 0,
    }
}

/// The last common seq when both branches are ledgers that share a proven prefix.
fn shared_ledger_prefix(a: &Branch, b: &Branch, relation: &Relation) -> Option<u64> {
    match (&a.inner, &b.inner, relation) {
        (Inner::Ledger(_), Inner::Ledger(_), Relation::Diverged { last_common, .. }) => last_common.map(|p| p.seq),
        (Inner::Ledger(_), Inner::Ledger(_), Relation::Prefix { common, .. }) => Some(common.seq),
        _ => None,
    }
}

/// The registries at both heads. When both branches are ledgers that share a prefix (equal
/// hashes at its end prove equal prefixes), the prefix is replayed once and its projection
/// carried onto each branch's tail — whose first record must link to it. `progress` counts
/// events replayed, cumulatively, up to [`head_projections_work`].
pub fn head_projections(
    a: &Branch,
    b: &Branch,
    relation: &Relation,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(Projection, Projection), ForensicsError> {
    let (Some(c), Inner::Ledger(ra), Inner::Ledger(rb)) = (shared_ledger_prefix(a, b, relation), &a.inner, &b.inner)
    else {
        let pa = a.projection(StopAt::End, progress)?;
        let done = replayed_alone(a);
        let pb = b.projection(StopAt::End, &|n| progress(done + n))?;
        return Ok((pa, pb));
    };
    let mut pa = ra.replay(&ReplayOptions { audit: true, stop: StopAt::Seq(c) }, progress)?.0;
    let mut pb = pa.clone();
    let tail_a = a.head().seq - c;
    // Forensics never answers from records that fail their checks: every replay audits.
    let audit = ReplayOptions { audit: true, stop: StopAt::End };
    ra.replay_onto(&mut pa, &audit, &|n| progress(c + 1 + n))?;
    rb.replay_onto(&mut pb, &audit, &|n| progress(c + 1 + tail_a + n))?;
    Ok((pa, pb))
}
