//! Prometheus metrics of one node ([`SporeSystem::metrics_text`], served as `/metrics`).
//!
//! Most figures are read when scraped, from what the node already keeps (its status, Raft's
//! metrics, the checks, SWIM's view): nothing is recorded on the write path for them. The
//! counters a scrape cannot rebuild live in [`NodeMetrics`], kept by the system across a
//! yield's restart. Names follow Prometheus' conventions: a `spores_` prefix, base units
//! (`_seconds`, `_bytes`), `_total` on counters, labels of low cardinality (the peer label is a
//! voter's short id: a handful). The list is in `schema/metrics.md`.

use std::sync::atomic::{AtomicU64, Ordering};

use openraft::async_runtime::WatchReceiver;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::SporeSystem;
use crate::error::Error;
use crate::net::gossip::GossipStats;
use crate::store::ledger::LedgerLock;

/// Counters kept between scrapes (everything else is read when scraped).
#[derive(Debug, Default)]
pub(super) struct NodeMetrics {
    /// Terms this node saw begin (an election each), counted at each scrape from how far the
    /// term grew since the one before.
    pub(super) elections: AtomicU64,
    /// The last term seen, to count elections.
    pub(super) last_term: AtomicU64,
    /// Health transitions this node committed (or held as provisional).
    pub(super) health_transitions: AtomicU64,
    /// Seed exports this node wrote.
    pub(super) seed_exports: AtomicU64,
}

impl NodeMetrics {
    /// Notes the current term: one election per term seen to grow.
    pub(super) fn observe_term(&self, term: u64) {
        let last = self.last_term.swap(term, Ordering::Relaxed);
        if last != 0 && term > last {
            self.elections.fetch_add(term - last, Ordering::Relaxed);
        }
    }
}

type Labels = Vec<(&'static str, String)>;

/// On a leader, the highest index a majority of voters holds (the leader's own log counts):
/// what it may commit. `None` on a follower.
fn committed_index(m: &crate::raft::RaftMetrics) -> Option<u64> {
    let replication = m.replication.as_ref()?;
    let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
    let mut held: Vec<u64> = voters
        .iter()
        .map(|v| if *v == m.id { m.last_log_index } else { replication.get(v).and_then(|l| l.map(|l| l.index)) })
        .map(|i| i.unwrap_or(0))
        .collect();
    held.sort_unstable_by(|a, b| b.cmp(a));
    held.get(voters.len() / 2).copied()
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g: Gauge = Gauge::default();
    g.set(value);
    registry.register(name, help, g);
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c: Counter = Counter::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

fn family(registry: &mut Registry, name: &str, help: &str, values: impl IntoIterator<Item = (Labels, i64)>) {
    let f = Family::<Labels, Gauge>::default();
    for (labels, v) in values {
        f.get_or_create(&labels).set(v);
    }
    registry.register(name, help, f);
}

fn seconds_family(
    registry: &mut Registry,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (Labels, std::time::Duration)>,
) {
    let f = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    for (labels, v) in values {
        f.get_or_create(&labels).set(v.as_secs_f64());
    }
    registry.register(name, help, f);
}

fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl SporeSystem {
    /// This node's metrics in the Prometheus text format (OpenMetrics), as `/metrics` serves
    /// them. Reading them takes the locks a status read takes, then the checks' and the
    /// ledger's read lock, one at a time.
    pub fn metrics_text(&self) -> Result<String, Error> {
        let st = self.status()?;
        let m = &self.shared.metrics;
        m.observe_term(st.term);
        let mut r = Registry::with_prefix("spores");
        gauge(&mut r, "raft_term", "The Raft term this node is in", as_i64(st.term));
        gauge(&mut r, "raft_is_leader", "1 while this node leads", i64::from(st.leader == Some(st.node)));
        gauge(
            &mut r,
            "raft_member",
            "1 while this node is a Raft member (voter or learner)",
            i64::from(st.raft_member),
        );
        gauge(&mut r, "raft_voters", "Voters in the membership", st.voters.len() as i64);
        gauge(&mut r, "raft_last_log_index", "The last index in this node's Raft log", st.last_log.map_or(-1, as_i64));
        gauge(
            &mut r,
            "raft_applied_index",
            "The last Raft index applied to the ledger",
            st.last_applied.map_or(-1, as_i64),
        );
        let (committed, quorum_ack_ms) = {
            let raft = self.raft()?;
            let rm = raft.metrics();
            let rm = rm.borrow_watched();
            (committed_index(&rm), crate::raft::millis_since_quorum_ack(&rm))
        };
        gauge(
            &mut r,
            "raft_committed_index",
            "The last Raft index a quorum holds, as the leader computes it (-1 on a follower: see applied)",
            committed.map_or(-1, as_i64),
        );
        gauge(
            &mut r,
            "raft_quorum_ack_age_seconds",
            "Seconds since a quorum last acknowledged this leader (-1 on a follower)",
            quorum_ack_ms.map_or(-1, |ms| as_i64(ms / 1000)),
        );
        counter(
            &mut r,
            "raft_elections",
            "Terms this node saw begin since its metrics were first read",
            m.elections.load(Ordering::Relaxed),
        );
        family(
            &mut r,
            "raft_replication_lag_entries",
            "How many entries a peer is behind the leader (reported by the leader)",
            st.peers.iter().filter_map(|p| Some((vec![("peer", p.node.short())], as_i64(p.lag?)))),
        );
        // What the transport measured of each member (on QUIC; none in process): the round
        // trips it sets its deadlines by (`net::rtt`).
        let measured: Vec<(Labels, crate::net::rtt::RoundTrip)> = st
            .peers
            .iter()
            .filter_map(|p| Some((vec![("peer", p.node.short())], self.round_trip(&p.node).ok()??)))
            .collect();
        seconds_family(
            &mut r,
            "peer_round_trip_seconds",
            "Smoothed round trip of the calls to a member (RFC 6298 SRTT; its answer time included)",
            measured.iter().map(|(l, rt)| (l.clone(), rt.srtt)),
        );
        seconds_family(
            &mut r,
            "peer_call_deadline_seconds",
            "The deadline a call to a member gets now, from its round trips (before the caller's floor)",
            measured.iter().map(|(l, rt)| (l.clone(), rt.deadline)),
        );
        let timeouts = Family::<Labels, Counter>::default();
        for (labels, rt) in &measured {
            timeouts.get_or_create(labels).inc_by(rt.timeouts);
        }
        r.register("peer_call_timeouts", "Calls to a member that timed out since it was first measured", timeouts);
        gauge(
            &mut r,
            "ledger_head_seq",
            "The sequence number of the newest event held",
            st.head.map_or(-1, |h| as_i64(h.seq)),
        );
        gauge(&mut r, "ledger_history_from", "The first sequence number whose event is held", as_i64(st.history_from));
        gauge(&mut r, "ledger_halted", "1 when a storage error halted this node", i64::from(st.halted.is_some()));
        gauge(
            &mut r,
            "ledger_state_divergence",
            "1 when the chain attests a state this node's records do not lead to",
            i64::from(st.state_divergence.is_some()),
        );
        counter(&mut r, "scrub_passes", "Completed scrub passes over the ledger", st.scrub.passes);
        counter(&mut r, "scrub_repaired_records", "Damaged records the scrub repaired", st.scrub.repaired);
        gauge(&mut r, "provisional_events_held", "Provisional events this node holds", st.provisional as i64);
        gauge(&mut r, "fork_evidence", "Fork evidence records kept", st.forks as i64);
        family(
            &mut r,
            "mode",
            "The operational mode (1 for the current one)",
            [(vec![("mode", st.mode.to_string())], 1)],
        );
        gauge(
            &mut r,
            "gossip_last_session_age_seconds",
            "Seconds since the last gossip session that reached a peer (-1: none yet)",
            st.last_gossip_ms.map_or(-1, |ms| as_i64(ms / 1000)),
        );
        let states = self.liveness()?;
        let up = states.values().filter(|s| s.up).count() as i64;
        family(
            &mut r,
            "liveness_members",
            "Peers as failure detection sees them",
            [(vec![("state", "up".to_string())], up), (vec![("state", "down".to_string())], states.len() as i64 - up)],
        );
        let (passing, critical) = self.shared.checks.counts();
        family(
            &mut r,
            "health_checks",
            "Health checks this node runs, by the health they give",
            [(vec![("health", "passing".to_string())], passing), (vec![("health", "critical".to_string())], critical)],
        );
        counter(
            &mut r,
            "health_transitions",
            "Health transitions this node committed or held",
            m.health_transitions.load(Ordering::Relaxed),
        );
        counter(&mut r, "seed_exports", "Seed files this node exported", m.seed_exports.load(Ordering::Relaxed));
        if let Some(b) = &st.backup {
            counter(&mut r, "backups_succeeded", "Backups written and verified since the node started", b.succeeded);
            counter(&mut r, "backups_failed", "Backups that failed since the node started", b.failed);
            let seconds = |t: crate::core::types::Timestamp| t.0.div_euclid(1_000_000);
            gauge(
                &mut r,
                "backup_last_success_timestamp_seconds",
                "Unix time of the newest verified backup (-1: none)",
                b.last_success.as_ref().map_or(-1, |s| seconds(s.at)),
            );
            gauge(
                &mut r,
                "backup_last_failure_timestamp_seconds",
                "Unix time of the newest failed backup (-1: none)",
                b.last_failure.as_ref().map_or(-1, |f| seconds(f.at)),
            );
        }
        let running = self.running()?;
        running.ledger.read_ledger()?.write_metrics().register(&mut r);
        if let Some(g) = &running.gossip {
            let s = g.stats();
            let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
            let sessions = Family::<Labels, Counter>::default();
            for (i, outcome) in GossipStats::OUTCOMES.iter().enumerate() {
                sessions.get_or_create(&vec![("outcome", (*outcome).to_string())]).inc_by(load(&s.sessions[i]));
            }
            r.register("gossip_sessions", "Gossip sessions that ended, by outcome", sessions);
            counter(&mut r, "gossip_events_stored", "Events stored from gossip peers", load(&s.stored));
            counter(&mut r, "gossip_events_served", "Events served to gossip peers", load(&s.served));
            counter(&mut r, "gossip_sent_bytes", "Gossip frame bytes sent", load(&s.bytes_written));
            counter(&mut r, "gossip_received_bytes", "Gossip frame bytes received", load(&s.bytes_read));
            counter(&mut r, "gossip_bans", "Gossip peers banned for bad data or a broken protocol", load(&s.bans));
        }
        let mut out = String::new();
        encode(&mut out, &r).map_err(|e| Error::Metrics(e.to_string()))?;
        Ok(out)
    }
}
