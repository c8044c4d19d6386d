//! RPC deadlines that follow the link: a smoothed round-trip time per peer, as TCP keeps it.
//!
//! Every completed call of a quick kind (Raft replication and votes, status) is a sample of
//! the time a call to that peer takes: the round trip, any retransmissions the link needed and
//! the peer's service time (a follower's log sync). [`RttEstimator`] keeps SRTT and RTTVAR from
//! those samples exactly as RFC 6298 does, and backs off (doubles) after a call that timed out,
//! since a call that never completed gives no sample (Karn's rule) — without the backoff, a link
//! that got slower than the deadline would never be measured again.
//!
//! A call's deadline is then [`RttEstimator::deadline`]: the caller's timeout is a floor, never
//! cut, and a slow link lengthens it to the larger of `SRTT + 4·RTTVAR` and
//! [`RTT_MULTIPLE_MIN`] round trips, up to [`DEADLINE_MAX`]. The transport may add its own
//! round-trip measure (quinn's `Connection::rtt()`, which excludes retransmissions and service
//! time): the deadline is never shorter than [`RTT_MULTIPLE_MIN`] of either. Pure bookkeeping:
//! the clock is read by the caller.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::core::sync;
use crate::core::types::NodeId;

/// A call's deadline is never shorter than this many smoothed round trips (one round trip for
/// the call, one for a lost packet's retransmission, one for the peer's work and jitter).
pub const RTT_MULTIPLE_MIN: u32 = 3;
/// Longest deadline the round trips can ask for (RFC 6298 allows an upper bound of 60 s or
/// more); the caller's own timeout may be longer.
pub const DEADLINE_MAX: Duration = Duration::from_secs(60);
/// Most consecutive backoffs (doublings) after timed-out calls: a link up to 16 times slower
/// than measured is measured again, while a call to a peer that went silent on a live
/// connection still gives up within seconds (on a 100 ms link: 16 × 3 round trips ≈ 5 s).
pub const BACKOFF_SHIFT_MAX: u32 = 4;
/// Most peers whose estimates a [`RttTable`] keeps; beyond this the oldest-sampled are dropped.
const PEERS_MAX: usize = 1024;

/// Whether a completed `req` is a sample of the link: the calls a peer answers at once
/// (replication and heartbeats, votes, status). Forwarded writes, membership changes,
/// snapshots, reads that wait for a quorum and queries take as long as their work does.
pub fn is_round_trip(req: &super::RpcRequest) -> bool {
    use super::RpcRequest as R;
    matches!(req, R::AppendEntries(_) | R::Vote(_) | R::Status)
}

/// Smoothed round-trip time and its variation, from the samples of one peer (RFC 6298, §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RttEstimator {
    srtt: Duration,
    rttvar: Duration,
    /// Doublings of the deadline after timed-out calls, reset by the next sample.
    backoff: u32,
    samples: u64,
    /// Calls that timed out since the first sample.
    timeouts: u64,
}

/// What the estimator knows of one peer, for status and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RoundTrip {
    /// Smoothed round-trip time (SRTT) of the calls to the peer.
    pub srtt: Duration,
    /// Its variation (RTTVAR).
    pub rttvar: Duration,
    /// Calls it was computed from.
    pub samples: u64,
    /// The deadline a call to the peer gets now, with no floor of the caller's.
    pub deadline: Duration,
    /// Calls to the peer that timed out since it was first measured (a link losing more than
    /// its retransmissions recover, or a peer that stopped answering).
    #[serde(default)]
    pub timeouts: u64,
}

impl RttEstimator {
    /// The state after the first sample `r`: SRTT = R, RTTVAR = R/2 (RFC 6298, §2.2).
    pub fn first(r: Duration) -> Self {
        RttEstimator { srtt: r, rttvar: r / 2, backoff: 0, samples: 1, timeouts: 0 }
    }

    /// Takes a new sample `r`: RTTVAR = ¾·RTTVAR + ¼·|SRTT − R|, then SRTT = ⅞·SRTT + ⅛·R
    /// (RFC 6298, §2.3). A sample ends any backoff.
    pub fn sample(&mut self, r: Duration) {
        let delta = self.srtt.abs_diff(r);
        self.rttvar = (self.rttvar * 3 + delta) / 4;
        self.srtt = (self.srtt * 7 + r) / 8;
        self.backoff = 0;
        self.samples += 1;
    }

    /// A call timed out: the next deadlines double, until a call completes (RFC 6298, §5.5).
    pub fn timed_out(&mut self) {
        self.backoff = (self.backoff + 1).min(BACKOFF_SHIFT_MAX);
        self.timeouts = self.timeouts.saturating_add(1);
    }

    /// Smoothed round-trip time.
    pub fn srtt(&self) -> Duration {
        self.srtt
    }

    /// Round-trip variation.
    pub fn rttvar(&self) -> Duration {
        self.rttvar
    }

    /// How long a call may take before it is given up: `max(floor, SRTT + 4·RTTVAR,
    /// RTT_MULTIPLE_MIN · max(SRTT, link_rtt))`, doubled for each backoff, at most
    /// [`DEADLINE_MAX`] — but never below `floor`, the caller's own timeout.
    pub fn deadline(&self, floor: Duration, link_rtt: Option<Duration>) -> Duration {
        let rtt = self.srtt.max(link_rtt.unwrap_or_default());
        let measured = (self.srtt + self.rttvar * 4).max(rtt * RTT_MULTIPLE_MIN);
        let backed_off = measured.checked_mul(1 << self.backoff).unwrap_or(DEADLINE_MAX);
        backed_off.min(DEADLINE_MAX).max(floor)
    }
}

/// The estimators of every peer a node calls. Shared by the node's calls; cheap to lock.
#[derive(Debug, Default)]
pub struct RttTable {
    peers: Mutex<HashMap<NodeId, RttEstimator>>,
}

impl RttTable {
    fn peers(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, RttEstimator>> {
        sync::lock(&self.peers)
    }

    /// A call to `peer` completed after `r`.
    pub fn sample(&self, peer: NodeId, r: Duration) {
        let mut peers = self.peers();
        if peers.len() >= PEERS_MAX && !peers.contains_key(&peer) {
            // Forget the least measured peers first (a bound, not a cache policy).
            let fewest = peers.values().map(|e| e.samples).min().unwrap_or(0);
            peers.retain(|_, e| e.samples > fewest);
        }
        match peers.get_mut(&peer) {
            Some(e) => e.sample(r),
            None => {
                peers.insert(peer, RttEstimator::first(r));
            }
        }
    }

    /// A call to `peer` timed out (no sample; the next deadlines back off).
    pub fn timed_out(&self, peer: &NodeId) {
        if let Some(e) = self.peers().get_mut(peer) {
            e.timed_out();
        }
    }

    /// The deadline of a call to `peer` whose caller asked for at least `floor`; `link_rtt` is
    /// the transport's own measure, if it has one. Without samples or measure: `floor`.
    pub fn deadline(&self, peer: &NodeId, floor: Duration, link_rtt: Option<Duration>) -> Duration {
        match (self.peers().get(peer), link_rtt) {
            (Some(e), _) => e.deadline(floor, link_rtt),
            (None, Some(rtt)) => (rtt * RTT_MULTIPLE_MIN).min(DEADLINE_MAX).max(floor),
            (None, None) => floor,
        }
    }

    /// What is known of `peer`.
    pub fn round_trip(&self, peer: &NodeId, link_rtt: Option<Duration>) -> Option<RoundTrip> {
        self.peers().get(peer).map(|e| RoundTrip {
            srtt: e.srtt,
            rttvar: e.rttvar,
            samples: e.samples,
            deadline: e.deadline(Duration::ZERO, link_rtt),
            timeouts: e.timeouts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn follows_rfc_6298() {
        let mut e = RttEstimator::first(100 * MS);
        assert_eq!((e.srtt(), e.rttvar()), (100 * MS, 50 * MS));
        e.sample(200 * MS);
        // RTTVAR = 3/4·50 + 1/4·100 = 62.5; SRTT = 7/8·100 + 1/8·200 = 112.5
        assert_eq!(e.rttvar(), Duration::from_micros(62_500));
        assert_eq!(e.srtt(), Duration::from_micros(112_500));
    }

    #[test]
    fn the_deadline_is_never_shorter_than_the_floor_or_three_round_trips() {
        let mut e = RttEstimator::first(100 * MS);
        for _ in 0..100 {
            e.sample(100 * MS);
        }
        // A steady link: RTTVAR → 0, so the multiple of the round trip decides.
        assert_eq!(e.deadline(Duration::ZERO, None), 300 * MS);
        // The caller's floor wins when it is longer.
        assert_eq!(e.deadline(2000 * MS, None), 2000 * MS);
        // quinn's own measure counts too.
        assert_eq!(e.deadline(Duration::ZERO, Some(150 * MS)), 450 * MS);
        // A jittery link: SRTT + 4·RTTVAR.
        let mut j = RttEstimator::first(100 * MS);
        j.sample(300 * MS);
        assert!(j.deadline(Duration::ZERO, None) > j.srtt() * 3);
        assert_eq!(j.deadline(Duration::ZERO, None), j.srtt() + j.rttvar() * 4);
    }

    #[test]
    fn timeouts_back_off_until_a_call_completes() {
        let mut e = RttEstimator::first(100 * MS);
        let d = e.deadline(Duration::ZERO, None);
        e.timed_out();
        assert_eq!(e.deadline(Duration::ZERO, None), d * 2);
        e.timed_out();
        assert_eq!(e.deadline(Duration::ZERO, None), d * 4);
        for _ in 0..100 {
            e.timed_out();
        }
        assert_eq!(e.deadline(Duration::ZERO, None), (d * (1 << BACKOFF_SHIFT_MAX)).min(DEADLINE_MAX));
        e.sample(100 * MS);
        assert!(e.deadline(Duration::ZERO, None) <= d);
        let huge = RttEstimator::first(Duration::from_secs(100));
        assert_eq!(huge.deadline(Duration::ZERO, None), DEADLINE_MAX);
    }

    #[test]
    fn a_table_keeps_one_estimate_per_peer() {
        let t = RttTable::default();
        let (a, b) = (NodeId([1; 32]), NodeId([2; 32]));
        assert_eq!(t.deadline(&a, 100 * MS, None), 100 * MS, "nothing known: the floor");
        assert_eq!(t.deadline(&a, 100 * MS, Some(200 * MS)), 600 * MS, "the link's own measure");
        t.sample(a, 400 * MS);
        assert_eq!(t.round_trip(&a, None).map(|r| r.srtt), Some(400 * MS));
        assert_eq!(t.deadline(&b, 100 * MS, None), 100 * MS);
        assert!(t.deadline(&a, 100 * MS, None) >= 1200 * MS);
        t.timed_out(&b); // unknown peer: nothing to back off
        assert!(t.round_trip(&b, None).is_none());
        // Timeouts are counted, and a completed call that ends the backoff does not undo them.
        t.timed_out(&a);
        t.timed_out(&a);
        t.sample(a, 400 * MS);
        assert_eq!(t.round_trip(&a, None).map(|r| (r.timeouts, r.samples)), Some((2, 2)));
    }
}
