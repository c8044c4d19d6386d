//! The endpoint's UDP socket, released when the endpoint closes rather than when quinn has
//! drained every connection.
//!
//! quinn keeps an endpoint's socket open until each of its connections has drained, three
//! probe timeouts after it closed. A handshake that never got an answer (a dial to a peer
//! that is down, abandoned by its caller's timeout) has no RTT sample, so with the 333 ms
//! initial RTT it drains for about 3 s; a connection whose RTT was sampled while a peer was
//! slow drains longer still. A node that restarts in the same process on its address — a
//! split-brain loser yielding to the winner, an operator restart — would find the port in
//! use for that long and fail to bind.
//!
//! [`ReleasableSocket`] wraps quinn's socket so that [`ReleasableSocket::release`] closes the
//! OS socket at once: it drops the socket and every writability poller that holds it (a
//! poller keeps its socket alive). Afterwards the wrapper receives nothing and sends into the
//! void, like a link that went down, while quinn finishes its bookkeeping.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::task::{Context, Poll};

use crate::core::sync;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// A poller slot: the inner socket's poller, dropped on release.
type PollerSlot = Mutex<Option<Pin<Box<dyn UdpPoller>>>>;

/// A quinn socket whose OS socket can be closed while quinn still holds the wrapper.
pub(crate) struct ReleasableSocket {
    inner: RwLock<Option<Arc<dyn AsyncUdpSocket>>>,
    pollers: Mutex<Vec<Weak<PollerSlot>>>,
    local: SocketAddr,
    max_transmit_segments: usize,
    max_receive_segments: usize,
    may_fragment: bool,
}

impl fmt::Debug for ReleasableSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReleasableSocket").field("local", &self.local).field("released", &self.is_released()).finish()
    }
}

impl ReleasableSocket {
    /// Wraps `inner` (a socket from quinn's runtime).
    pub(crate) fn new(inner: Arc<dyn AsyncUdpSocket>) -> io::Result<Self> {
        Ok(ReleasableSocket {
            local: inner.local_addr()?,
            max_transmit_segments: inner.max_transmit_segments(),
            max_receive_segments: inner.max_receive_segments(),
            may_fragment: inner.may_fragment(),
            inner: RwLock::new(Some(inner)),
            pollers: Mutex::new(Vec::new()),
        })
    }

    fn inner(&self) -> Option<Arc<dyn AsyncUdpSocket>> {
        sync::read(&self.inner).clone()
    }

    /// Whether the OS socket is closed.
    pub(crate) fn is_released(&self) -> bool {
        sync::read(&self.inner).is_none()
    }

    /// Closes the OS socket now: its port is free once this returns (unless a send or receive
    /// on another thread still holds the socket for that call).
    pub(crate) fn release(&self) {
        let taken = sync::write(&self.inner).take();
        // Pollers hold the socket too. One that is being created right now either saw the
        // socket before it was taken (then its slot is filled before this clears it, both
        // under the slot's lock) or sees none.
        let slots: Vec<Arc<PollerSlot>> = sync::lock(&self.pollers).drain(..).filter_map(|w| w.upgrade()).collect();
        for slot in slots {
            *sync::lock(&slot) = None;
        }
        drop(taken);
    }
}

impl AsyncUdpSocket for ReleasableSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        let slot: Arc<PollerSlot> = Arc::new(Mutex::new(None));
        {
            let mut pollers = sync::lock(&self.pollers);
            pollers.retain(|w| w.strong_count() > 0);
            pollers.push(Arc::downgrade(&slot));
        }
        Box::pin(ReleasablePoller { socket: self, slot })
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        match self.inner() {
            Some(s) => s.try_send(transmit),
            // Released: the datagram is lost, as on a link that went down.
            None => Ok(()),
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        match self.inner() {
            Some(s) => s.poll_recv(cx, bufs, meta),
            // Released: nothing arrives any more (quinn's driver still wakes for its timers).
            None => Poll::Pending,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn max_transmit_segments(&self) -> usize {
        self.max_transmit_segments
    }

    fn max_receive_segments(&self) -> usize {
        self.max_receive_segments
    }

    fn may_fragment(&self) -> bool {
        self.may_fragment
    }
}

/// Asks the inner socket's poller while the socket is open; writable (into the void) after.
struct ReleasablePoller {
    socket: Arc<ReleasableSocket>,
    slot: Arc<PollerSlot>,
}

impl fmt::Debug for ReleasablePoller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReleasablePoller").finish_non_exhaustive()
    }
}

impl UdpPoller for ReleasablePoller {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        let mut slot = sync::lock(&self.slot);
        if slot.is_none() {
            match self.socket.inner() {
                Some(inner) => *slot = Some(inner.create_io_poller()),
                None => return Poll::Ready(Ok(())),
            }
        }
        match slot.as_mut() {
            Some(p) => p.as_mut().poll_writable(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}
