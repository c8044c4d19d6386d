//! Backfill under any answer: a property test of what a backfilling session hands out.

use std::sync::OnceLock;
use std::time::Instant;

use mycnet_spores::core::event::ChainedEvent;
use mycnet_spores::core::gossip::{Digest, GossipMessage, LocalView, SessionEvent, SyncConfig, SyncSession};
use mycnet_spores::ChainPoint;
use proptest::prelude::*;

use crate::fixture::synth_events;

/// A genuine chain of 200 events and the state-only view of it at seq 150.
fn chain() -> &'static (Vec<ChainedEvent>, LocalView, ChainPoint) {
    static C: OnceLock<(Vec<ChainedEvent>, LocalView, ChainPoint)> = OnceLock::new();
    C.get_or_init(|| {
        let (events, _) = synth_events(0xb4c4, 200);
        let mut p = mycnet_spores::Projection::new();
        let chained: Vec<ChainedEvent> = events.iter().map(|e| p.append(e.clone()).expect("valid")).collect();
        let point = ChainPoint { seq: 150, hash: chained[150].hash };
        let view = LocalView {
            fingerprint: Some(chained[0].event.fingerprint),
            head: None,
            head_point: Some(point),
            backfill: Some(point),
            pull: true,
            ..Default::default()
        };
        (chained, view, point)
    })
}

/// What a peer might answer: a genuine slice, or one with an event altered, dropped or
/// swapped, or one from somewhere else in the chain.
fn answer() -> impl Strategy<Value = (u64, usize, u8, usize)> {
    (0u64..200, 0usize..80, 0u8..5, 0usize..80)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// Whatever a peer answers, the session never panics and hands out to store only
    /// ranges of the genuine history that end exactly at the point it was asked for.
    #[test]
    fn a_backfilling_session_hands_out_only_the_genuine_history(answers in prop::collection::vec(answer(), 1..12), batch in 1u32..64) {
        let (chained, view, point) = chain();
        let now = Instant::now();
        let mut s = SyncSession::new(SyncConfig { batch_events: batch, max_unstored: 64, ..Default::default() }, view.clone(), now);
        let _ = s.poll_transmit();
        s.handle(GossipMessage::Hello(Digest { fingerprint: view.fingerprint, head: Some(*point), anchor: None, peers: vec![], primary: true }), now);
        let mut expected_end = Some(*point);
        for (start, len, damage, at) in answers {
            // Answer the outstanding request honestly half the time, else with `start..`.
            let asked = std::iter::from_fn(|| s.poll_transmit()).find_map(|m| match m {
                GossipMessage::Request { from, max_events } => Some((from, max_events)),
                _ => None,
            });
            let (from, n) = match asked {
                Some((f, n)) if damage % 2 == 0 => (f, n as usize),
                _ => (start, len),
            };
            let from = from.min(199) as usize;
            let mut range: Vec<ChainedEvent> = chained[from..(from + n).min(200)].to_vec();
            if !range.is_empty() {
                let i = at % range.len();
                match damage {
                    1 => range[i].event.timestamp = mycnet_spores::Timestamp(range[i].event.timestamp.0 ^ 1),
                    3 => { range.remove(i); }
                    4 if range.len() > 1 => range.swap(0, i.max(1)),
                    _ => {}
                }
            }
            s.handle(GossipMessage::Range(range), now);
            while let Some(ev) = s.poll_event() {
                if let SessionEvent::Backfill(r) = ev {
                    let end = expected_end.expect("nothing is handed out below genesis");
                    prop_assert_eq!(r.known(), end);
                    let first = r.events()[0].seq as usize;
                    prop_assert_eq!(r.events(), &chained[first..=end.seq as usize]);
                    expected_end = r.next_point();
                    s.stored();
                }
            }
            if s.is_finished() {
                break;
            }
        }
    }
}
