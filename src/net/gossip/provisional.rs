//! Provisional events on the gossip side: held when they check, and remembered once
//! committed so a peer that lags behind does not hand them over again.

use super::GossipService;
use crate::core::keys::verify_many;
use crate::core::limits;
use crate::core::provisional::{EventId, ProvisionalError, ProvisionalEvent};
use crate::core::sync;

/// Most ids of committed provisional events a node remembers (to not hold them again).
const COMMITTED_IDS_MAX: usize = 4096;

impl GossipService {
    /// Notes that the event `id` is in the chain (committed): it is not held again when a
    /// peer that has not caught up hands it over once more.
    pub fn note_committed(&self, id: EventId) {
        let mut c = sync::lock(&self.committed);
        if c.0.insert(id) {
            c.1.push_back(id);
            if c.1.len() > COMMITTED_IDS_MAX {
                if let Some(old) = c.1.pop_front() {
                    c.0.remove(&old);
                }
            }
        }
    }

    fn known_committed(&self, id: &EventId) -> bool {
        sync::lock(&self.committed).0.contains(id)
    }

    /// Keeps the provisional events that check (statement and event signed by the author,
    /// this network, within the size limit) and that are neither held already nor in the
    /// chain since their statement's point; returns how many checked.
    pub fn hold_provisional(&self, list: &[ProvisionalEvent]) -> usize {
        let Ok(l) = self.ledger.read() else { return 0 };
        let fp = l.fingerprint();
        let head = l.head().map(|h| h.seq);
        let mut ok = 0;
        for p in list {
            let id = p.id();
            if self.known_committed(&id) || crate::store::provisional::contains(&l, &id).unwrap_or(false) {
                ok += 1;
                continue;
            }
            let event_ok = fp == Some(p.event.fingerprint)
                && p.event.encoded_len() <= limits::EVENT_BYTES_MAX
                && p.verify_statement().is_ok()
                && {
                    let m = p.event.signing_message();
                    let mut cache = sync::lock(&self.cache);
                    verify_many(&mut cache, &[(p.event.author, m.as_slice(), p.event.signature)]).first() == Some(&true)
                };
            if !event_ok {
                continue;
            }
            ok += 1;
            match p.scan_range(head) {
                // Too old for any committer: its author re-issues it.
                Err(ProvisionalError::TooOld { .. }) => continue,
                // Our chain lags the statement: keep it, a committer decides.
                Err(_) | Ok(None) => {}
                Ok(Some((from, to))) => match crate::store::provisional::find_committed(&l, p, from, to) {
                    Ok(Some(_)) => {
                        self.note_committed(id);
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the chain to check a provisional event");
                        continue;
                    }
                },
            }
            match crate::store::provisional::put(&l, p) {
                Ok(true) => {
                    tracing::info!(id = %id.short(), author = %p.event.author.short(), kind = p.event.body.kind(), "holding a provisional event")
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "cannot hold a provisional event"),
            }
        }
        ok
    }
}
