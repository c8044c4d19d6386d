//! A userspace UDP relay that makes a loopback link look like a WAN: it sits in front of one
//! node's QUIC socket and delays every datagram by a random one-way delay and drops some, in
//! both directions (this kernel has no netem). A test tool only.
//!
//! Peers send to the proxy's address (the node advertises it); the proxy relays each client's
//! datagrams to the node from a socket of its own per client, so the node's answers come back
//! through the proxy to the right client. Every datagram crossing the proxy, either way, is
//! dropped with probability `loss`, else delivered after `delay ± jitter` (uniform, drawn per
//! datagram, so datagrams may overtake each other). A round trip between two nodes therefore
//! crosses one proxy twice: the request's and the answer's one-way delay.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio::task::JoinSet;

/// What the proxy does to each datagram.
#[derive(Clone, Copy, Debug)]
pub struct LinkFaults {
    /// Mean one-way delay.
    pub delay: Duration,
    /// The delay is uniform in `delay ± jitter`.
    pub jitter: Duration,
    /// Probability that a datagram is dropped.
    pub loss: f64,
}

/// Datagrams the proxy relayed and dropped.
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// Delivered (after their delay).
    pub relayed: AtomicU64,
    /// Dropped.
    pub dropped: AtomicU64,
}

struct Shaper {
    faults: LinkFaults,
    rng: Mutex<rand::rngs::StdRng>,
    stats: Arc<ProxyStats>,
}

impl Shaper {
    /// `None`: drop it; otherwise deliver after this long.
    fn fate(&self) -> Option<Duration> {
        let mut rng = self.rng.lock().expect("proxy rng");
        if rng.random::<f64>() < self.faults.loss {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let lo = self.faults.delay.saturating_sub(self.faults.jitter);
        let hi = self.faults.delay + self.faults.jitter;
        self.stats.relayed.fetch_add(1, Ordering::Relaxed);
        Some(if hi > lo { rng.random_range(lo..=hi) } else { lo })
    }

    /// Sends `data` to `to` from `via` after its delay, unless it is dropped.
    fn send_later(self: &Arc<Self>, tasks: &Mutex<JoinSet<()>>, via: Arc<UdpSocket>, data: Vec<u8>, to: SocketAddr) {
        let Some(delay) = self.fate() else { return };
        let mut tasks = tasks.lock().expect("proxy tasks");
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            // The link's delay line, not a wait for a condition.
            tokio::time::sleep(delay).await;
            let _ = via.send_to(&data, to).await;
        });
    }
}

/// A running proxy. Dropping it stops it.
pub struct UdpProxy {
    /// Where peers send to (what the node advertises).
    pub addr: SocketAddr,
    /// What it did.
    pub stats: Arc<ProxyStats>,
    front: Arc<UdpSocket>,
    shaper: Arc<Shaper>,
    tasks: Arc<Mutex<JoinSet<()>>>,
}

const DATAGRAM_MAX: usize = 64 * 1024;

impl UdpProxy {
    /// Binds the proxy's address on 127.0.0.1; nothing is relayed until [`UdpProxy::forward_to`].
    pub async fn bind(faults: LinkFaults, seed: u64) -> UdpProxy {
        Self::bind_on(IpAddr::V4(Ipv4Addr::LOCALHOST), faults, seed).await
    }

    /// [`UdpProxy::bind`] on `ip`, which its sockets towards the node use too (so a firewall
    /// can tell proxied traffic by that address).
    pub async fn bind_on(ip: IpAddr, faults: LinkFaults, seed: u64) -> UdpProxy {
        let front = Arc::new(UdpSocket::bind(SocketAddr::new(ip, 0)).await.expect("bind the proxy"));
        let addr = front.local_addr().expect("proxy address");
        let stats = Arc::new(ProxyStats::default());
        let shaper =
            Arc::new(Shaper { faults, rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)), stats: stats.clone() });
        UdpProxy { addr, stats, front, shaper, tasks: Arc::new(Mutex::new(JoinSet::new())) }
    }

    /// Starts relaying between the proxy's clients and `target` (the node's bound socket).
    pub fn forward_to(&self, target: SocketAddr) {
        let (front, shaper, tasks) = (self.front.clone(), self.shaper.clone(), self.tasks.clone());
        let front_ip = self.addr.ip();
        let relay = async move {
            // One upstream socket per client, so the node's answers find their way back.
            let mut upstream: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
            let mut buf = vec![0u8; DATAGRAM_MAX];
            loop {
                let Ok((n, client)) = front.recv_from(&mut buf).await else { return };
                let up = match upstream.get(&client) {
                    Some(u) => u.clone(),
                    None => {
                        let Ok(u) = UdpSocket::bind(SocketAddr::new(front_ip, 0)).await else { continue };
                        let u = Arc::new(u);
                        upstream.insert(client, u.clone());
                        let (front, shaper, tasks2, u2) = (front.clone(), shaper.clone(), tasks.clone(), u.clone());
                        tasks.lock().expect("proxy tasks").spawn(async move {
                            let mut buf = vec![0u8; DATAGRAM_MAX];
                            while let Ok((n, _)) = u2.recv_from(&mut buf).await {
                                shaper.send_later(&tasks2, front.clone(), buf[..n].to_vec(), client);
                            }
                        });
                        u
                    }
                };
                shaper.send_later(&tasks, up, buf[..n].to_vec(), target);
            }
        };
        self.tasks.lock().expect("proxy tasks").spawn(relay);
    }
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner()).abort_all();
    }
}

/// Round trips through a proxy with `faults`: `n` pings, 5 ms apart, from a client to an echo
/// server behind a fresh proxy; a ping without an answer 500 ms after the last was sent is lost
/// and not counted. Sorted, fastest first.
pub async fn ping_through(faults: LinkFaults, seed: u64, n: usize) -> Vec<Duration> {
    let echo = UdpSocket::bind("127.0.0.1:0").await.expect("echo socket");
    let proxy = UdpProxy::bind(faults, seed).await;
    proxy.forward_to(echo.local_addr().expect("echo address"));
    let server = tokio::spawn(async move {
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = echo.recv_from(&mut buf).await {
            let _ = echo.send_to(&buf[..n], from).await;
        }
    });
    let client = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("client socket"));
    let sent: Arc<Mutex<Vec<std::time::Instant>>> = Arc::default();
    let sender = {
        let (client, sent, to) = (client.clone(), sent.clone(), proxy.addr);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            for i in 0..n as u64 {
                tick.tick().await;
                sent.lock().expect("sent").push(std::time::Instant::now());
                client.send_to(&i.to_be_bytes(), to).await.expect("ping");
            }
        })
    };
    let mut rtts = Vec::new();
    let mut buf = [0u8; 64];
    let mut last_sent: Option<tokio::time::Instant> = None;
    loop {
        if last_sent.is_none() && sender.is_finished() {
            last_sent = Some(tokio::time::Instant::now());
        }
        let wait = last_sent.map_or(Duration::from_millis(50), |t| {
            (t + Duration::from_millis(500)).saturating_duration_since(tokio::time::Instant::now())
        });
        match tokio::time::timeout(wait, client.recv_from(&mut buf)).await {
            Ok(Ok((8, _))) => {
                let i = u64::from_be_bytes(buf[..8].try_into().expect("8 bytes")) as usize;
                let at = sent.lock().expect("sent")[i];
                rtts.push(at.elapsed());
            }
            Ok(_) => {}
            Err(_) if last_sent.is_some() => break,
            Err(_) => {}
        }
    }
    server.abort();
    rtts.sort();
    rtts
}
