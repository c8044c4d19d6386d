//! The anchor tier: a synced chain's checkpoints set what each tier's view reaches.

use mycnet_spores::store::synth::{Synth, SynthConfig};
use mycnet_spores::ChainPoint;

use super::open_ledger;

#[test]
fn synth_with_checkpoints_sets_the_anchor_tier() {
    use mycnet_spores::core::gossip::Anchors;
    use mycnet_spores::SporeType;
    let mut synth = Synth::new(SynthConfig { seed: 3, nodes: 6, ..Default::default() });
    let tmp = tempfile::tempdir().unwrap();
    let mut l = open_ledger(tmp.path());
    l.append(synth.next_chunk(50)).unwrap();
    l.append(synth.next_chunk(50)).unwrap();
    let anchor = l.anchor().expect("the second chunk starts with a checkpoint");
    let head = l.head().map(|h| ChainPoint { seq: h.seq, hash: h.hash });
    let a = Anchors { checkpoint: Some(anchor), ..Default::default() };
    assert_eq!(a.tier_of(anchor.seq, head), Some(SporeType::Primary));
    assert_eq!(a.tier_of(anchor.seq + 1, head), Some(SporeType::Latent));
    assert_eq!(a.head_tier(head), Some(SporeType::Latent));
    let seeded = Anchors { seed: head, ..a };
    assert_eq!(seeded.tier_of(anchor.seq + 1, head), Some(SporeType::Seed));
    let member = Anchors { raft_member: true, ..a };
    assert_eq!(member.head_tier(head), Some(SporeType::Primary));
    // How far each tier's view reaches: Primary to the checkpoint, Seed to the seed's head
    // (and never below Primary), Latent to the head; a member's Primary reaches its head.
    let h = head.map(|h| h.seq);
    assert_eq!(a.reach(SporeType::Primary, head), Some(anchor.seq));
    assert_eq!(a.reach(SporeType::Seed, head), Some(anchor.seq), "a checkpoint outranks a seed");
    assert_eq!(a.reach(SporeType::Latent, head), h);
    assert_eq!(seeded.reach(SporeType::Seed, head), h);
    assert_eq!(member.reach(SporeType::Primary, head), h);
    assert_eq!(Anchors::default().reach(SporeType::Primary, head), None);
    assert_eq!(Anchors::default().reach(SporeType::Seed, head), None);
    assert_eq!(a.reach(SporeType::Latent, None), None);
    // The Primary view replayed from the stored history equals the chain up to the anchor,
    // and continues to the head from there.
    let history = l.history();
    let mut view = mycnet_spores::core::projection::Projection::new();
    history.replay_to(&mut view, anchor.seq).unwrap();
    assert_eq!(view.head().map(|v| (v.seq, v.hash)), Some((anchor.seq, anchor.hash)));
    history.replay_to(&mut view, h.unwrap()).unwrap();
    assert_eq!(view.state(), l.projection().state());
}
