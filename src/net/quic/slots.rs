//! The places an endpoint keeps for incoming connections: [`QuicConfig::connections_max`] for
//! anyone, and [`QuicConfig::peer_connections_reserved`] more for the nodes it replicates and
//! gossips with, so that a flood of clients (a load test's 256 connections, a misbehaving tool)
//! never locks the Raft members out of each other.
//!
//! A place is taken before the handshake (a refused connection costs no handshake), when only
//! the remote address is known. Nodes dial from the socket they listen on, so a peer's
//! connections come from the address this endpoint dials it at: [`Places`] remembers the peers
//! this endpoint has dialed, by address. A connection from one of those addresses takes a
//! reserved place, and after its handshake keeps it only if it proves the key dialed there;
//! otherwise it moves to an open place, or is closed if none is left. A peer that connected
//! before this endpoint first dialed it (a joiner reaches its leader first) sits in an open
//! place until that dial, which moves it into the reserve.
//!
//! A place taken before the handshake could be held by a sender that forges its source address
//! (a peer's, or many made up) and never answers: each for up to the handshake deadline. Once
//! half of the places a connection would draw from are in use, it must first prove its address
//! with a QUIC Retry ([`Places::crowded`]): a forged sender never sees the Retry, so it holds no
//! place, and a real client pays one round trip more.
//!
//! [`QuicConfig::connections_max`]: super::QuicConfig::connections_max
//! [`QuicConfig::peer_connections_reserved`]: super::QuicConfig::peer_connections_reserved

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::core::sync;
use crate::core::types::NodeId;

/// The open and the reserved places for incoming connections, and the peers dialed.
pub(super) struct Places {
    open: Arc<Semaphore>,
    reserved: Arc<Semaphore>,
    /// How many places each pool has in all.
    open_total: usize,
    reserved_total: usize,
    /// The peers this endpoint has dialed, by the address it reached them at.
    book: Mutex<HashMap<SocketAddr, NodeId>>,
    /// Connections in open places, by remote address, with the key each proved: a later dial
    /// of that key at that address moves them into the reserve.
    unreserved: Mutex<Unreserved>,
}

/// Connections in open places, by remote address. A client's address is seldom seen again,
/// so entries of ended connections are swept whenever the map has doubled since the last
/// sweep (it stays within about twice the connections open).
#[derive(Default)]
struct Unreserved {
    by_addr: HashMap<SocketAddr, Vec<(NodeId, Weak<Held>)>>,
    sweep_at: usize,
}

impl Unreserved {
    /// The fewest entries worth a sweep.
    const SWEEP_MIN: usize = 1024;

    fn add(&mut self, remote: SocketAddr, peer: NodeId, held: &Arc<Held>) {
        let here = self.by_addr.entry(remote).or_default();
        here.retain(|(_, w)| w.strong_count() > 0);
        here.push((peer, Arc::downgrade(held)));
        if self.by_addr.len() >= self.sweep_at.max(Self::SWEEP_MIN) {
            self.by_addr.retain(|_, v| {
                v.retain(|(_, w)| w.strong_count() > 0);
                !v.is_empty()
            });
            self.sweep_at = 2 * self.by_addr.len();
        }
    }
}

/// A place held by one incoming connection, given back when it is dropped.
pub(super) struct Place {
    held: Arc<Held>,
    /// The key a connection in a reserved place must prove (`None` in an open place).
    expect: Option<NodeId>,
}

/// The permit behind a place; a promotion swaps an open permit for a reserved one.
struct Held {
    permit: Mutex<OwnedSemaphorePermit>,
}

impl Place {
    fn new(permit: OwnedSemaphorePermit, expect: Option<NodeId>) -> Self {
        Place { held: Arc::new(Held { permit: Mutex::new(permit) }), expect }
    }
}

impl Places {
    /// Most addresses remembered; past it the book starts over (a peer dialed again is
    /// remembered again).
    const BOOK_MAX: usize = 4096;

    /// `open` places for anyone and `reserved` more for known peers.
    pub(super) fn new(open: usize, reserved: usize) -> Self {
        Places {
            open: Arc::new(Semaphore::new(open)),
            reserved: Arc::new(Semaphore::new(reserved)),
            open_total: open,
            reserved_total: reserved,
            book: Mutex::default(),
            unreserved: Mutex::default(),
        }
    }

    /// Remembers that `node` answered at `addr`, and moves its connections to us from open
    /// places into reserved ones while any is free.
    pub(super) fn dialed(&self, addr: SocketAddr, node: NodeId) {
        {
            let mut book = sync::lock(&self.book);
            if book.len() >= Self::BOOK_MAX && !book.contains_key(&addr) {
                book.clear();
            }
            book.insert(addr, node);
        }
        self.promote(addr, node);
    }

    /// Moves the connections `node` made from `addr` from open places into reserved ones
    /// while any is free.
    fn promote(&self, addr: SocketAddr, node: NodeId) {
        let mut unreserved = sync::lock(&self.unreserved);
        let Some(held) = unreserved.by_addr.get_mut(&addr) else { return };
        held.retain(|(peer, weak)| {
            let Some(h) = weak.upgrade() else { return false };
            if *peer != node {
                return true;
            }
            let Ok(reserved) = self.reserved.clone().try_acquire_owned() else { return true };
            // The open permit is dropped here: its place is free for anyone again.
            *sync::lock(&h.permit) = reserved;
            false
        });
        if held.is_empty() {
            unreserved.by_addr.remove(&addr);
        }
    }

    /// The peer last dialed at `addr`, if any.
    pub(super) fn known_at(&self, addr: &SocketAddr) -> Option<NodeId> {
        sync::lock(&self.book).get(addr).copied()
    }

    /// The pool a connection from `remote` takes its place from: the reserve, while it has
    /// room, for a known peer's address (with the key the connection must prove there), else
    /// the open places. With each pool's size.
    fn pool_for(&self, remote: &SocketAddr) -> (&Arc<Semaphore>, usize, Option<NodeId>) {
        match self.known_at(remote) {
            Some(node) if self.reserved.available_permits() > 0 => (&self.reserved, self.reserved_total, Some(node)),
            _ => (&self.open, self.open_total, None),
        }
    }

    /// Whether a connection from `remote` whose address is not proven must prove it (a QUIC
    /// Retry) before it takes a place: once at least half of the pool it would draw from
    /// ([`Places::pool_for`]) is in use.
    pub(super) fn crowded(&self, remote: &SocketAddr) -> bool {
        let (pool, total, _) = self.pool_for(remote);
        2 * pool.available_permits() <= total
    }

    /// A place for a connection from `remote`: a reserved one first for a known peer's
    /// address, else an open one; `None` if all are taken.
    pub(super) fn take(&self, remote: &SocketAddr) -> Option<Place> {
        let (pool, _, expect) = self.pool_for(remote);
        match pool.clone().try_acquire_owned() {
            Ok(p) => Some(Place::new(p, expect)),
            // The reserve filled since it was looked at (a promotion): an open place instead.
            Err(_) if expect.is_some() => self.open.clone().try_acquire_owned().ok().map(|p| Place::new(p, None)),
            Err(_) => None,
        }
    }

    /// After the handshake from `remote` proved `peer`: the place the connection keeps. A
    /// reserved place whose connection proved another key than the one dialed at its address
    /// is given back for an open one; `None` if none is left (the caller closes the
    /// connection). A connection in an open place is remembered, to be moved into the reserve
    /// if `peer` is dialed at `remote` later.
    pub(super) fn settle(&self, place: Place, remote: SocketAddr, peer: NodeId) -> Option<Place> {
        let place = match place.expect {
            Some(expected) if expected == peer => return Some(place),
            Some(_) => {
                drop(place);
                Place::new(self.open.clone().try_acquire_owned().ok()?, None)
            }
            None => place,
        };
        sync::lock(&self.unreserved).add(remote, peer, &place.held);
        // Dialed while its handshake ran: move it now.
        if self.known_at(&remote) == Some(peer) {
            self.promote(remote, peer);
        }
        Some(place)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Places {
        /// Whether `place` holds a reserved permit.
        fn is_reserved(&self, place: &Place) -> bool {
            Arc::ptr_eq(sync::lock(&place.held.permit).semaphore(), &self.reserved)
        }
    }

    #[test]
    fn addresses_must_be_proven_once_half_the_pool_is_in_use() {
        let places = Places::new(4, 2);
        let peer = NodeId([1; 32]);
        places.dialed(addr(7401), peer);
        let mut held = Vec::new();
        // Open places: free while fewer than half are taken.
        assert!(!places.crowded(&addr(50000)));
        held.push(places.take(&addr(50000)).expect("open"));
        assert!(!places.crowded(&addr(50001)), "1 of 4 in use");
        held.push(places.take(&addr(50001)).expect("open"));
        assert!(places.crowded(&addr(50002)), "2 of 4 in use");
        // The reserve is judged on its own.
        assert!(!places.crowded(&addr(7401)), "the reserve is empty");
        held.push(places.take(&addr(7401)).expect("reserved"));
        assert!(places.crowded(&addr(7401)), "1 of 2 reserved places in use");
        held.push(places.take(&addr(7401)).expect("reserved"));
        // A full reserve sends a peer to the open places, which are crowded.
        assert!(places.crowded(&addr(7401)));
        held.truncate(1);
        assert!(!places.crowded(&addr(7401)), "3 open places and the reserve free again");
        // A single place is never crowded while free.
        let one = Places::new(1, 0);
        assert!(!one.crowded(&addr(50000)));
        let _taken = one.take(&addr(50000)).expect("open");
        assert!(one.crowded(&addr(50001)));
    }

    fn addr(port: u16) -> SocketAddr {
        ([127, 0, 0, 1], port).into()
    }

    #[test]
    fn known_peers_get_reserved_places_and_strangers_only_open_ones() {
        let places = Places::new(1, 1);
        let (peer, stranger) = (NodeId([1; 32]), NodeId([2; 32]));
        places.dialed(addr(7401), peer);
        assert_eq!(places.known_at(&addr(7401)), Some(peer));
        assert_eq!(places.known_at(&addr(50000)), None);

        let client = places.take(&addr(50000)).expect("an open place");
        let client = places.settle(client, addr(50000), stranger).expect("kept");
        assert!(!places.is_reserved(&client));
        assert!(places.take(&addr(50001)).is_none(), "the open places are taken");
        // The peer still gets in, in the reserve, and keeps its place once its key checks out.
        let from_peer = places.take(&addr(7401)).expect("a reserved place");
        let kept = places.settle(from_peer, addr(7401), peer).expect("kept");
        assert!(places.is_reserved(&kept));
        assert!(places.take(&addr(7401)).is_none(), "the reserve is taken too");
        drop(kept);

        // Another key at the peer's address keeps no reserved place: none open, so it is out.
        let spoof = places.take(&addr(7401)).expect("a reserved place before the handshake");
        assert!(places.settle(spoof, addr(7401), stranger).is_none());
        // With an open place free it moves there.
        drop(client);
        let spoof = places.take(&addr(7401)).expect("reserved");
        let moved = places.settle(spoof, addr(7401), stranger).expect("moved to the open place");
        assert!(!places.is_reserved(&moved));
        assert!(places.take(&addr(7401)).is_some(), "the reserved place it left is free again");
    }

    #[test]
    fn a_peer_that_connected_before_it_was_dialed_moves_into_the_reserve() {
        let places = Places::new(1, 1);
        let peer = NodeId([1; 32]);
        // The joiner reaches us first: an open place.
        let early = places.take(&addr(7401)).expect("open");
        let early = places.settle(early, addr(7401), peer).expect("kept");
        assert!(!places.is_reserved(&early));
        assert!(places.take(&addr(50000)).is_none(), "it holds the one open place");
        // We dial it: its connection moves to the reserve and frees the open place.
        places.dialed(addr(7401), peer);
        assert!(places.is_reserved(&early));
        let client = places.take(&addr(50000)).expect("the open place is free again");
        assert!(!places.is_reserved(&client));
        // Another key's connection from that address is not moved.
        drop(client);
        let other = places.take(&addr(7402)).expect("open");
        let other = places.settle(other, addr(7402), NodeId([3; 32])).expect("kept");
        places.dialed(addr(7402), NodeId([4; 32]));
        assert!(!places.is_reserved(&other));
    }

    #[test]
    fn ended_client_connections_are_swept() {
        let places = Places::new(8, 0);
        let client = NodeId([9; 32]);
        let live: Vec<Place> = (0..4)
            .map(|p| places.settle(places.take(&addr(p)).expect("open"), addr(p), client).expect("kept"))
            .collect();
        for port in 100..(100 + 3 * Unreserved::SWEEP_MIN as u16) {
            let place = places.take(&addr(port)).expect("open");
            drop(places.settle(place, addr(port), client));
        }
        let kept = sync::lock(&places.unreserved).by_addr.len();
        assert!(kept <= 2 * Unreserved::SWEEP_MIN, "{kept} addresses kept for 4 open connections");
        drop(live);
    }

    #[test]
    fn the_book_is_bounded_and_follows_a_peer_that_moved() {
        let places = Places::new(1, 1);
        for i in 0..Places::BOOK_MAX {
            places.dialed(([10, 0, (i / 256) as u8, (i % 256) as u8], 7400).into(), NodeId([3; 32]));
        }
        assert!(sync::lock(&places.book).len() <= Places::BOOK_MAX);
        places.dialed(addr(7401), NodeId([4; 32]));
        places.dialed(addr(7401), NodeId([5; 32]));
        assert_eq!(places.known_at(&addr(7401)), Some(NodeId([5; 32])), "the last key dialed at an address counts");
    }
}
