//! The places an endpoint keeps for incoming connections: [`QuicConfig::connections_max`] for
//! anyone, and [`QuicConfig::peer_connections_reserved`] more for the nodes it replicates and
//! gossips with, so that a flood of clients (a load test's 256 connections, a misbehaving tool)
//! never locks the Raft members out of each other.
//!
//! A place is taken before the handshake (a refused connection costs no handshake), when only
//! the remote address is known. Nodes dial from the socket they listen on, so a peer's
//! connections come from the address this endpoint dials it at: [`PeerBook`] remembers the
//! peers this endpoint has dialed, by address. A connection from one of those addresses takes
//! a reserved place, and after its handshake keeps it only if it proves the key dialed there;
//! otherwise it moves to an open place, or is closed if none is left.
//!
//! [`QuicConfig::connections_max`]: super::QuicConfig::connections_max
//! [`QuicConfig::peer_connections_reserved`]: super::QuicConfig::peer_connections_reserved

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::core::sync;
use crate::core::types::NodeId;

/// The peers this endpoint has dialed, by the address it reached them at.
#[derive(Default)]
pub(super) struct PeerBook {
    by_addr: Mutex<HashMap<SocketAddr, NodeId>>,
}

impl PeerBook {
    /// Most addresses remembered; past it the book starts over (a peer dialed again is
    /// remembered again).
    const MAX: usize = 4096;

    /// Remembers that `node` answered at `addr`.
    pub(super) fn dialed(&self, addr: SocketAddr, node: NodeId) {
        let mut g = sync::lock(&self.by_addr);
        if g.len() >= Self::MAX && !g.contains_key(&addr) {
            g.clear();
        }
        g.insert(addr, node);
    }

    /// The peer last dialed at `addr`, if any.
    pub(super) fn at(&self, addr: &SocketAddr) -> Option<NodeId> {
        sync::lock(&self.by_addr).get(addr).copied()
    }
}

/// The open and the reserved places for incoming connections.
pub(super) struct Slots {
    open: Arc<Semaphore>,
    reserved: Arc<Semaphore>,
}

/// A place held by one incoming connection, given back when it is dropped.
pub(super) struct Slot {
    _permit: OwnedSemaphorePermit,
    /// The key a connection in a reserved place must prove (`None` in an open place).
    pub(super) expect: Option<NodeId>,
}

impl Slots {
    /// `open` places for anyone and `reserved` more for known peers.
    pub(super) fn new(open: usize, reserved: usize) -> Self {
        Slots { open: Arc::new(Semaphore::new(open)), reserved: Arc::new(Semaphore::new(reserved)) }
    }

    /// A place for a connection from an address where `known` was dialed (`None`: not a known
    /// peer's): a reserved one first for a known peer, else an open one; `None` if all taken.
    pub(super) fn take(&self, known: Option<NodeId>) -> Option<Slot> {
        if let Some(node) = known {
            if let Ok(p) = self.reserved.clone().try_acquire_owned() {
                return Some(Slot { _permit: p, expect: Some(node) });
            }
        }
        self.open.clone().try_acquire_owned().ok().map(|p| Slot { _permit: p, expect: None })
    }

    /// After the handshake proved `peer`: the place the connection keeps. A reserved place
    /// whose connection proved another key than the one dialed at its address is given back
    /// for an open one; `None` if none is left (the caller closes the connection).
    pub(super) fn settle(&self, slot: Slot, peer: &NodeId) -> Option<Slot> {
        match slot.expect {
            Some(expected) if expected != *peer => {
                drop(slot);
                self.take(None)
            }
            _ => Some(slot),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        ([127, 0, 0, 1], port).into()
    }

    #[test]
    fn known_peers_get_reserved_places_and_strangers_only_open_ones() {
        let book = PeerBook::default();
        let (peer, stranger) = (NodeId([1; 32]), NodeId([2; 32]));
        book.dialed(addr(7401), peer);
        assert_eq!(book.at(&addr(7401)), Some(peer));
        assert_eq!(book.at(&addr(50000)), None);

        let slots = Slots::new(1, 1);
        let client = slots.take(book.at(&addr(50000))).expect("an open place");
        assert_eq!(client.expect, None);
        assert!(slots.take(None).is_none(), "the open places are taken");
        // The peer still gets in, in the reserve, and keeps its place once its key checks out.
        let from_peer = slots.take(book.at(&addr(7401))).expect("a reserved place");
        assert_eq!(from_peer.expect, Some(peer));
        let kept = slots.settle(from_peer, &peer).expect("kept");
        assert_eq!(kept.expect, Some(peer));
        assert!(slots.take(Some(peer)).is_none(), "the reserve is taken too");
        drop(kept);

        // Another key at the peer's address keeps no reserved place: none open, so it is out.
        let spoof = slots.take(book.at(&addr(7401))).expect("a reserved place before the handshake");
        assert!(slots.settle(spoof, &stranger).is_none());
        // With an open place free it moves there.
        drop(client);
        let spoof = slots.take(book.at(&addr(7401))).expect("reserved");
        let moved = slots.settle(spoof, &stranger).expect("moved to the open place");
        assert_eq!(moved.expect, None);
        assert!(slots.take(Some(peer)).is_some(), "the reserved place it left is free again");
    }

    #[test]
    fn the_book_is_bounded_and_follows_a_peer_that_moved() {
        let book = PeerBook::default();
        for i in 0..PeerBook::MAX {
            book.dialed(addr(1), NodeId([0; 32]));
            book.dialed(([10, 0, (i / 256) as u8, (i % 256) as u8], 7400).into(), NodeId([3; 32]));
        }
        assert!(sync::lock(&book.by_addr).len() <= PeerBook::MAX);
        book.dialed(addr(7401), NodeId([4; 32]));
        book.dialed(addr(7401), NodeId([5; 32]));
        assert_eq!(book.at(&addr(7401)), Some(NodeId([5; 32])), "the last key dialed at an address counts");
    }
}
