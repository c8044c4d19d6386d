//! Groundwork of provisional writes: the author's statement, the scan window and the
//! duplicate check against a real chain.

use mycnet_spores::core::event::SignedEvent;
use mycnet_spores::core::provisional::{check_absent, ProvisionalError, ProvisionalEvent, PROVISIONAL_WINDOW_EVENTS};

use super::ledger_with;
use crate::fixture::synth_events;

#[test]
fn a_committed_event_is_found_and_a_new_one_is_not() {
    let (events, synth) = synth_events(0x9a0, 300);
    let tmp = tempfile::tempdir().unwrap();
    let l = ledger_with(tmp.path(), &events[..200]);
    let key_of = |e: &SignedEvent| synth.keys().iter().find(|k| k.node_id() == e.author).unwrap().clone();
    // Event 150 is committed; its author wrongly (or after a lost answer) queues it again
    // with the head it knew before it was committed.
    let committed = events[150].clone();
    let p = ProvisionalEvent::new(&key_of(&committed), committed.clone(), Some(120));
    assert_eq!(p.verify_statement(), Ok(()));
    let (from, to) = p.scan_range(l.head().map(|h| h.seq)).unwrap().expect("a range to scan");
    assert_eq!((from, to), (121, 199));
    let scanned = l.read_range(from, to).unwrap();
    assert_eq!(check_absent(&p, &scanned), Err(ProvisionalError::Duplicate(150)));
    // A replay of the same wrapper later still scans from 121: still found.
    // An event that is not in the chain passes.
    let fresh = events[250].clone();
    let p2 = ProvisionalEvent::new(&key_of(&fresh), fresh, Some(199));
    assert_eq!(p2.scan_range(Some(199)), Ok(None), "nothing after the author's head to scan");
    let p3 = ProvisionalEvent::new(&key_of(&events[250]), events[250].clone(), Some(150));
    assert_eq!(check_absent(&p3, &l.read_range(151, 199).unwrap()), Ok(()));
}

#[test]
fn the_statement_is_the_authors_and_bounded() {
    let (events, synth) = synth_events(0x9a1, 20);
    let ev = events[10].clone();
    let author = synth.keys().iter().find(|k| k.node_id() == ev.author).unwrap().clone();
    let other = synth.keys().iter().find(|k| k.node_id() != ev.author).unwrap().clone();
    // Signed by someone else, or altered after signing: refused.
    assert_eq!(
        ProvisionalEvent::new(&other, ev.clone(), Some(5)).verify_statement(),
        Err(ProvisionalError::BadSignature)
    );
    let mut moved = ProvisionalEvent::new(&author, ev.clone(), Some(5));
    moved.absent_through = Some(9);
    assert_eq!(moved.verify_statement(), Err(ProvisionalError::BadSignature), "the point is signed");
    // Beyond the head, or older than the window: refused.
    let p = ProvisionalEvent::new(&author, ev.clone(), Some(50));
    assert_eq!(p.scan_range(Some(40)), Err(ProvisionalError::FromTheFuture(50)));
    let old = ProvisionalEvent::new(&author, ev, Some(0));
    assert!(matches!(old.scan_range(Some(PROVISIONAL_WINDOW_EVENTS + 1)), Err(ProvisionalError::TooOld { .. })));
    assert_eq!(old.scan_range(Some(PROVISIONAL_WINDOW_EVENTS)), Ok(Some((1, PROVISIONAL_WINDOW_EVENTS))));
}
