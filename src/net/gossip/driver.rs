//! The gossip driver: every interval, sessions with a few random candidates at once.

use std::sync::Arc;

use rand::seq::SliceRandom;
use tracing::Instrument;

use super::{GossipDialer, GossipService, SessionReport};
use crate::core::gossip::SessionOutcome;
use crate::core::types::NodeId;

impl GossipService {
    /// One gossip round: sessions with up to `fanout` random candidates, concurrently.
    pub async fn round(
        self: &Arc<Self>,
        dialer: &Arc<dyn GossipDialer>,
    ) -> Vec<(NodeId, SessionOutcome, SessionReport)> {
        let mut peers = self.candidates();
        peers.shuffle(&mut rand::rng());
        peers.truncate(self.cfg.fanout);
        let mut tasks = tokio::task::JoinSet::new();
        for p in peers {
            let svc = self.clone();
            let dialer = dialer.clone();
            let timeout = self.cfg.connect_timeout;
            tasks.spawn(async move {
                match tokio::time::timeout(timeout, dialer.open_gossip(&p)).await {
                    Ok(Ok(stream)) => {
                        let (o, r) = svc.run_session(stream, true).await;
                        Some((p.node, o, r))
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %p.node.short(), error = %e, "gossip peer unreachable");
                        None
                    }
                    Err(_) => None,
                }
            });
        }
        let mut out = Vec::new();
        while let Some(r) = tasks.join_next().await {
            if let Ok(Some(x)) = r {
                out.push(x);
            }
        }
        out
    }

    /// Runs rounds every interval until the returned handle is aborted.
    pub fn spawn_driver(self: &Arc<Self>, dialer: Arc<dyn GossipDialer>) -> tokio::task::JoinHandle<()> {
        let svc = self.clone();
        let span = tracing::info_span!("gossip_driver", node = %self.me.node.short());
        tokio::spawn(
            async move {
                let mut tick = tokio::time::interval(svc.cfg.interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    svc.round(&dialer).await;
                }
            }
            .instrument(span),
        )
    }
}
