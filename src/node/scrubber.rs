//! The node's background scrub: re-verifies its stored chain at a bounded rate, and repairs a
//! damaged record with the copy a peer holds, which the intact chain around it must vouch for
//! ([`crate::store::scrub`]). What it found is in `status` (`scrub`) and the logs.

use openraft::async_runtime::WatchReceiver;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::Instrument;

use crate::core::sync;
use crate::net::SharedTransport;
use crate::raft::state_machine::SharedLedger;
use crate::raft::{Raft, RpcRequest, RpcResponse};
use crate::store::ledger::LedgerLock;
use crate::store::scrub::{repair, scrub_read, scrub_verify, ScrubCursor, ScrubRead, ScrubStep};
use crate::store::verify_pool::{self, Urgency};
use crate::wire::query::{Query, QueryAnswer};
use crate::wire::rpc::PeerNode;
use crate::wire::status::ScrubStatus;

/// How fast the scrub reads. The default, 1,000 events a second in pages of 32 (a step every
/// 32 ms), costs about 1.4 % of one core here (mostly signature checks), so a million events
/// are re-verified about every 17 minutes. Small pages keep each step's burst of checks short,
/// so a write that arrives during one waits for less: in 11 runs each, the 1-client write's
/// p99 was 1.5-2.4 ms (median 1.7) in pages of 32 against 1.9-2.3 ms (median 2.0) in pages of
/// 256, which cost a tenth less CPU (12.5 against 14.0 µs per event; `benches/README.md`,
/// session 27).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScrubConfig {
    /// Events checked per second (0 turns the scrub off).
    pub events_per_sec: u64,
    /// Events per step.
    pub page: u64,
    /// After damage no peer could repair, wait this long before asking again.
    pub retry: Duration,
}

impl Default for ScrubConfig {
    fn default() -> Self {
        ScrubConfig { events_per_sec: 1_000, page: 32, retry: Duration::from_secs(5) }
    }
}

/// Shared between the task and `status`.
pub(crate) type SharedScrub = Arc<Mutex<ScrubStatus>>;

/// Spawns the scrub (it runs until aborted). `rpc_timeout` bounds each peer request.
pub(crate) fn spawn(
    ledger: SharedLedger,
    raft: Raft,
    me: PeerNode,
    transport: SharedTransport,
    cfg: ScrubConfig,
    status: SharedScrub,
    rpc_timeout: Duration,
) -> tokio::task::JoinHandle<()> {
    let span = tracing::info_span!("scrub", me = %me.node.short());
    tokio::spawn(
        async move {
            if cfg.events_per_sec == 0 {
                return;
            }
            let period = Duration::from_secs_f64(cfg.page.max(1) as f64 / cfg.events_per_sec as f64);
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut cursor = ScrubCursor::default();
            loop {
                tick.tick().await;
                let l = ledger.clone();
                let step = tokio::task::spawn_blocking(move || {
                    // Read under the ledger's lock (fast); verify the signatures after releasing
                    // it, so the scrub never holds up an apply for a page of verifications.
                    let read = {
                        let guard = l.read_ledger().map_err(|e| e.to_string())?;
                        scrub_read(&guard, &mut cursor, cfg.page).map_err(|e| e.to_string())?
                    };
                    let step = match read {
                        // At the background pool's priority: writes come first.
                        ScrubRead::Page(page) => {
                            verify_pool::install(Urgency::Background, || scrub_verify(&page, &mut cursor))
                        }
                        ScrubRead::Damaged(step) => step,
                    };
                    Ok::<_, String>((step, cursor))
                })
                .await;
                let (found, moved) = match step {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "scrub step failed");
                        continue;
                    }
                    Err(_) => return,
                };
                cursor = moved;
                match found {
                    ScrubStep::Clean(n) => {
                        let mut st = sync::lock(&status);
                        st.checked += n;
                        st.passes = cursor.passes;
                        st.cursor = cursor.next;
                    }
                    ScrubStep::Damaged { seq, corruption } => {
                        tracing::error!(seq, %corruption, "scrub found a damaged record; asking peers for the chain's copy");
                        sync::lock(&status).damage = Some(format!("seq {seq}: {corruption}"));
                        let peers = peers_of(&raft, &me);
                        match repair_from_peers(&ledger, &transport, &peers, seq, rpc_timeout).await {
                            Ok(()) => {
                                let mut st = sync::lock(&status);
                                st.repaired += 1;
                                st.damage = None;
                            }
                            Err(why) => {
                                tracing::error!(seq, %why, "damaged record not repaired; retrying later");
                                tokio::time::sleep(cfg.retry).await;
                            }
                        }
                    }
                }
            }
        }
        .instrument(span),
    )
}

/// The Raft members other than `me`.
fn peers_of(raft: &Raft, me: &PeerNode) -> Vec<PeerNode> {
    let m = raft.metrics().borrow_watched().clone();
    m.membership_config.membership().nodes().map(|(_, n)| n.clone()).filter(|n| n.node != me.node).collect()
}

/// Asks each peer for the record at `seq` and repairs with the first copy the chain vouches
/// for.
async fn repair_from_peers(
    ledger: &SharedLedger,
    transport: &SharedTransport,
    peers: &[PeerNode],
    seq: u64,
    timeout: Duration,
) -> Result<(), String> {
    let mut last = "no peer to ask".to_string();
    for peer in peers {
        let answer = transport.call(peer, RpcRequest::Query(Query::Events { from: seq, max: 1 }), timeout).await;
        let events = match answer {
            Ok(RpcResponse::Query(Ok(QueryAnswer::Events(e)))) if !e.is_empty() => e,
            Ok(RpcResponse::Query(Err(e))) => {
                last = format!("{} refused: {e:?}", peer.addr);
                continue;
            }
            Ok(_) => {
                last = format!("{} answered without the record", peer.addr);
                continue;
            }
            Err(e) => {
                last = format!("{}: {e}", peer.addr);
                continue;
            }
        };
        let l = ledger.clone();
        let done = tokio::task::spawn_blocking(move || {
            let mut guard = l.write_ledger().map_err(|e| e.to_string())?;
            repair(&mut guard, &events[..1]).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?;
        match done {
            Ok(_) => return Ok(()),
            Err(e) => last = format!("{}: {e}", peer.addr),
        }
    }
    Err(last)
}
