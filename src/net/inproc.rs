//! An in-process network with seeded fault injection — a test tool for partitions and
//! crashes. It never replaces QUIC in the product.
//!
//! Nodes register an [`RpcHandler`] under their address. Faults: partitions (groups that
//! cannot reach each other), one-way blocks, random loss and delay drawn from a seeded RNG so a
//! failing schedule reproduces, and crashes (a node's handler is removed; "restart" registers
//! a new one from the node's data dir).
//!
//! Replication runs on append streams ([`Transport::append_stream`]), as over QUIC: each
//! request and each answer meets the fault schedule as a call's would, and a lost one breaks
//! the stream, as a dropped connection does.
//!
//! With [`InProcNetwork::enable_gossip`] it also carries the latent tier's gossip sessions,
//! over in-memory byte streams, so that partitions of the latent tier can be injected. A
//! session is refused across a partition or one-way block when it opens; a session already
//! open when a partition starts runs to its end (sessions are short).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::append_stream::{lane, NoRoundTrips, IN_FLIGHT_MAX};
use super::gossip::{GossipDialer, GossipStream};
use super::{AppendReplies, AppendRequests, BoxFuture, RpcHandler, Transport, TransportError};
use crate::core::sync;
use crate::core::types::NodeId;
use crate::raft::{AppendRequest, RpcRequest, RpcResponse};
use crate::wire::rpc::PeerNode;

#[derive(Default)]
struct Faults {
    /// Directed pairs `(from, to)` whose messages are dropped.
    blocked: HashSet<(String, String)>,
    /// Probability that a message is lost.
    loss: f64,
    /// Extra delay per message, uniformly in this range (milliseconds).
    delay_ms: (u64, u64),
}

struct Inner {
    handlers: HashMap<String, (NodeId, Arc<dyn RpcHandler>)>,
    faults: Faults,
    rng: ChaCha8Rng,
    gossip: bool,
}

impl Inner {
    /// Whether a message from `from` to `to` is lost: a block, or a draw of the loss rate
    /// (drawn only when not blocked).
    fn lost(&mut self, from: &str, to: &str) -> bool {
        self.faults.blocked.contains(&(from.to_string(), to.to_string()))
            || (self.faults.loss > 0.0 && self.rng.random_bool(self.faults.loss))
    }

    /// A message's delay, drawn from the delay range (none drawn without one).
    fn delay(&mut self) -> Duration {
        let (lo, hi) = self.faults.delay_ms;
        if hi > 0 {
            Duration::from_millis(self.rng.random_range(lo..=hi))
        } else {
            Duration::ZERO
        }
    }
}

/// The network: a registry of handlers plus the fault schedule. Cheap to clone.
#[derive(Clone)]
pub struct InProcNetwork {
    inner: Arc<Mutex<Inner>>,
}

impl InProcNetwork {
    /// A network with no faults, whose random choices come from `seed`.
    pub fn new(seed: u64) -> Self {
        InProcNetwork {
            inner: Arc::new(Mutex::new(Inner {
                handlers: HashMap::new(),
                faults: Faults::default(),
                rng: ChaCha8Rng::seed_from_u64(seed),
                gossip: false,
            })),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut sync::lock(&self.inner))
    }

    /// Registers (or replaces) the handler of the node at `addr`.
    pub fn register(&self, addr: &str, node: NodeId, handler: Arc<dyn RpcHandler>) {
        self.with(|i| i.handlers.insert(addr.to_string(), (node, handler)));
    }

    /// Removes the node at `addr`: it crashed. Calls to it fail as unreachable.
    pub fn crash(&self, addr: &str) {
        self.with(|i| i.handlers.remove(addr));
    }

    /// Cuts every link between `a` and `b` in both directions.
    pub fn partition(&self, a: &[&str], b: &[&str]) {
        self.with(|i| {
            for x in a {
                for y in b {
                    i.faults.blocked.insert((x.to_string(), y.to_string()));
                    i.faults.blocked.insert((y.to_string(), x.to_string()));
                }
            }
        });
    }

    /// Drops messages from `from` to `to` only (one-way loss).
    pub fn block_one_way(&self, from: &str, to: &str) {
        self.with(|i| i.faults.blocked.insert((from.to_string(), to.to_string())));
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.with(|i| i.faults.blocked.clear());
    }

    /// Loses each message with probability `p`.
    pub fn set_loss(&self, p: f64) {
        self.with(|i| i.faults.loss = p.clamp(0.0, 1.0));
    }

    /// Delays each message by a uniform random time in `min_ms..=max_ms`.
    pub fn set_delay(&self, min_ms: u64, max_ms: u64) {
        self.with(|i| i.faults.delay_ms = (min_ms, max_ms.max(min_ms)));
    }

    /// Carries gossip between the nodes started after this call (off by default, so the
    /// Raft fault schedules stay as they were).
    pub fn enable_gossip(&self) {
        self.with(|i| i.gossip = true);
    }

    /// A transport for the node at `addr` (its outgoing side).
    pub fn transport(&self, addr: &str) -> InProcTransport {
        InProcTransport { net: self.clone(), from: addr.to_string() }
    }
}

/// One node's view of an [`InProcNetwork`].
#[derive(Clone)]
pub struct InProcTransport {
    net: InProcNetwork,
    from: String,
}

impl Transport for InProcTransport {
    fn gossip_dialer(&self) -> Option<Arc<dyn GossipDialer>> {
        let on = self.net.with(|i| i.gossip);
        on.then(|| Arc::new(InProcGossip { net: self.net.clone(), from: self.from.clone() }) as Arc<dyn GossipDialer>)
    }

    fn streams_appends(&self) -> bool {
        true
    }

    fn append_stream(
        &self,
        to: &PeerNode,
        requests: AppendRequests,
        floor: Duration,
    ) -> BoxFuture<'_, Result<AppendReplies, TransportError>> {
        Box::pin(self.open_append_stream(to.clone(), requests, floor))
    }

    fn call(
        &self,
        to: &PeerNode,
        req: RpcRequest,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<RpcResponse, TransportError>> {
        let to_addr = to.addr.clone();
        Box::pin(async move {
            // Decide the fate of the request and of its response now, from the seeded RNG.
            let decision = self.net.with(|i| {
                let sender = i.handlers.get(&self.from).map(|(id, _)| *id);
                let target = i.handlers.get(&to_addr).map(|(_, h)| h.clone());
                let req_lost = i.lost(&self.from, &to_addr);
                let resp_lost = i.lost(&to_addr, &self.from);
                let delay = i.delay();
                (sender, target, req_lost, resp_lost, delay)
            });
            let (sender, target, req_lost, resp_lost, delay) = decision;
            let (Some(sender), Some(handler)) = (sender, target) else {
                return Err(TransportError::Unreachable(to_addr));
            };
            if req_lost {
                // A lost message looks like silence: the caller waits out its deadline (capped, so
                // tests stay fast) and sees unreachable.
                tokio::time::sleep(timeout.min(Duration::from_millis(50))).await;
                return Err(TransportError::Unreachable(to_addr));
            }
            let work = async {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                handler.handle(sender, req).await
            };
            let resp = tokio::time::timeout(timeout, work)
                .await
                .map_err(|_| TransportError::Timeout { peer: to_addr.clone(), after: timeout })?;
            if resp_lost {
                return Err(TransportError::Unreachable(to_addr));
            }
            Ok(resp)
        })
    }
}

impl InProcTransport {
    /// Whether a message from `from` to `to` gets through now, drawn like a call's: `None` if
    /// it is lost (a block, a crash, the loss rate), else its delay. `handler`, if given, must
    /// still be the one registered at `to` (a restarted node is another).
    fn passes(&self, from: &str, to: &str, handler: Option<&Weak<dyn RpcHandler>>) -> Option<Duration> {
        self.net.with(|i| {
            let registered = match (i.handlers.get(to), handler) {
                (Some((_, h)), Some(ours)) => std::ptr::addr_eq(Arc::as_ptr(h), ours.as_ptr()),
                (Some(_), None) => true,
                (None, _) => false,
            };
            let lost = !registered || !i.handlers.contains_key(from) || i.lost(from, to);
            let delay = i.delay();
            (!lost).then_some(delay)
        })
    }

    /// Opens an append stream: requests go to the peer's handler in order, each through the
    /// fault schedule as a call's request would; answers come back the same way. A lost
    /// message breaks the stream, as a dropped connection does, after the pause a lost call
    /// waits.
    async fn open_append_stream(
        &self,
        to: PeerNode,
        mut requests: AppendRequests,
        deadline: Duration,
    ) -> Result<AppendReplies, TransportError> {
        use futures_util::StreamExt;
        let found = self.net.with(|i| {
            let sender = i.handlers.get(&self.from).map(|(id, _)| *id);
            (sender, i.handlers.get(&to.addr).map(|(_, h)| h.clone()))
        });
        let (Some(sender), Some(handler)) = found else {
            return Err(TransportError::Unreachable(to.addr));
        };
        let pause = deadline.min(Duration::from_millis(50));
        // Held weakly: a crashed node's handler (its ledger) is released while streams to it
        // are open; they break at their next request.
        let handler_ref = Arc::downgrade(&handler);
        if self.passes(&self.from, &to.addr, Some(&handler_ref)).is_none() {
            tokio::time::sleep(pause).await;
            return Err(TransportError::Unreachable(to.addr));
        }
        let (lane_tx, answers) = lane(&to.addr, deadline, Arc::new(NoRoundTrips));
        let (to_peer, at_peer) = tokio::sync::mpsc::channel::<AppendRequest>(IN_FLIGHT_MAX);
        let delivered = futures_util::stream::unfold(at_peer, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
        let mut peer_answers = handler.append_stream(sender, Box::pin(delivered));
        drop(handler);
        let (me, peer, lane_rx) = (self.clone(), to.addr.clone(), lane_tx.clone());
        let forward = tokio::spawn(async move {
            while lane_tx.slot().await {
                let Some(req) = requests.next().await else { return };
                lane_tx.sending(&req);
                let Some(delay) = me.passes(&me.from, &peer, Some(&handler_ref)) else {
                    tokio::time::sleep(pause).await;
                    lane_tx.answer(Err(TransportError::Unreachable(peer))).await;
                    return;
                };
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                if to_peer.send(req).await.is_err() {
                    return;
                }
            }
        });
        let (me, peer) = (self.clone(), to.addr.clone());
        let answer = tokio::spawn(async move {
            while let Some(a) = peer_answers.next().await {
                let Some(delay) = me.passes(&peer, &me.from, None) else {
                    lane_rx.answer(Err(TransportError::Unreachable(peer))).await;
                    return;
                };
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                if !lane_rx.answer(Ok(a)).await {
                    return;
                }
            }
        });
        Ok(answers.into_stream(vec![forward.abort_handle(), answer.abort_handle()]))
    }
}

/// Opens gossip sessions over in-memory byte streams (see the module doc).
struct InProcGossip {
    net: InProcNetwork,
    from: String,
}

/// Bytes buffered each way in a session's stream.
const GOSSIP_PIPE_BYTES: usize = 256 * 1024;

impl GossipDialer for InProcGossip {
    fn open_gossip(&self, to: &PeerNode) -> BoxFuture<'_, Result<GossipStream, TransportError>> {
        let to = to.clone();
        Box::pin(async move {
            let found = self.net.with(|i| {
                let cut = i.faults.blocked.contains(&(self.from.clone(), to.addr.clone()))
                    || i.faults.blocked.contains(&(to.addr.clone(), self.from.clone()));
                let sender = i.handlers.get(&self.from).map(|(id, _)| *id);
                let target = i.handlers.get(&to.addr).and_then(|(id, h)| h.gossip().map(|g| (*id, g)));
                (!cut).then_some((sender, target))
            });
            let Some((Some(sender), Some((target, acceptor)))) = found else {
                return Err(TransportError::Unreachable(to.addr.clone()));
            };
            // The key is the peer's identity, as QUIC's certificate check makes it.
            if target != to.node {
                return Err(TransportError::Unreachable(to.addr.clone()));
            }
            let (ours, theirs) = tokio::io::duplex(GOSSIP_PIPE_BYTES);
            let (our_recv, our_send) = tokio::io::split(ours);
            let (their_recv, their_send) = tokio::io::split(theirs);
            tokio::spawn(async move {
                acceptor
                    .accept_gossip(GossipStream {
                        peer: sender,
                        send: Box::new(their_send),
                        recv: Box::new(their_recv),
                    })
                    .await;
            });
            Ok(GossipStream { peer: target, send: Box::new(our_send), recv: Box::new(our_recv) })
        })
    }
}
