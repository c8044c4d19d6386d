//! The RPCs a node serves: status and queries answered here, the Raft traffic of a yielded
//! split-brain refused, writes forwarded to Raft or held as provisional events.

use std::sync::Arc;

use super::provisional::{is_member, ProvisionalWriter};
use super::reads::answer_tiered;
use super::{compute_status, SharedModes};
use crate::core::keys::NodeKey;
use crate::core::projection::{FoundService, Page, Paged};
use crate::core::sync;
use crate::core::types::NodeId;
use crate::error::Error;
use crate::net::gossip::GossipService;
use crate::net::liveness::LivenessService;
use crate::net::raft_rpc::RaftService;
use crate::raft::state_machine::SharedLedger;
use crate::raft::{ChainPoint, Raft, RpcRequest, RpcResponse, SporeResponse};
use crate::store::ledger::{LedgerHealth, LedgerLock};
use crate::wire::query::fit_page;
use crate::wire::rpc::{PeerNode, RemoteFailure};

/// Serves a node's RPCs: read-only status and queries here, everything else by Raft.
pub(super) struct NodeService {
    pub(super) raft_service: RaftService,
    pub(super) raft: Raft,
    pub(super) ledger: SharedLedger,
    pub(super) me: PeerNode,
    pub(super) key: NodeKey,
    pub(super) gossip: Option<Arc<GossipService>>,
    pub(super) liveness: Option<Arc<LivenessService>>,
    pub(super) modes: SharedModes,
    pub(super) tier_views: Arc<crate::node::tiers::TierViews>,
    pub(super) fence: Arc<crate::node::resolve::YieldFence>,
    /// On a latent node: takes writes forwarded to it (`spore service register --addr` of a
    /// Rhizomorph) the way it takes its own, delivered to the voters or held.
    pub(super) provisional: Option<ProvisionalWriter>,
    /// What the background scrub found.
    pub(super) scrub: crate::node::scrubber::SharedScrub,
    /// The ledger's health, read without its lock on every forwarded write.
    pub(super) health: Arc<LedgerHealth>,
    /// The applied head, which watches wait on.
    pub(super) head_rx: tokio::sync::watch::Receiver<Option<u64>>,
    /// How the scheduled backups went (`status().backup`).
    pub(super) backups: crate::node::backup::SharedBackups,
}

impl crate::net::RpcHandler for NodeService {
    fn gossip(&self) -> Option<Arc<dyn crate::net::gossip::GossipAcceptor>> {
        self.gossip.clone().map(|g| g as Arc<dyn crate::net::gossip::GossipAcceptor>)
    }

    fn liveness(&self) -> Option<Arc<dyn crate::net::liveness::DatagramSink>> {
        self.liveness.clone().map(|l| l as Arc<dyn crate::net::liveness::DatagramSink>)
    }

    /// Raft's, unless `from` is on the split-brain chain this node yielded away from: each
    /// request is checked as it arrives, as a call would be, and the stream answers "stopped"
    /// from the first refused one.
    fn append_stream(&self, from: NodeId, requests: crate::net::AppendRequests) -> crate::net::AppendAnswers {
        use futures_util::StreamExt;
        let (fence, raft) = (self.fence.clone(), self.raft.clone());
        let refused = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = refused.clone();
        let admitted = requests.take_while(move |_| {
            let refuse = fence.refuses(&from, || is_member(&raft, &from));
            if refuse {
                tracing::debug!(peer = %from.short(), "refused an append stream from the split-brain chain this node yielded away from");
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            std::future::ready(!refuse)
        });
        let answers = self.raft_service.append_stream(from, Box::pin(admitted));
        let stopped = futures_util::stream::once(async move { refused.load(std::sync::atomic::Ordering::SeqCst) })
            .filter_map(|refused| std::future::ready(refused.then_some(Err(openraft::error::Fatal::Stopped))));
        Box::pin(answers.chain(stopped))
    }

    fn handle(&self, from: NodeId, req: RpcRequest) -> crate::net::BoxFuture<'_, RpcResponse> {
        use crate::wire::query::{Query, QueryAnswer};
        match req {
            RpcRequest::Status => {
                let r = compute_status(&self.raft, &self.ledger, &self.me, self.gossip.as_deref(), &self.modes)
                    .map(|mut st| {
                        st.scrub = sync::lock(&self.scrub).clone();
                        st.backup = self.backups.report();
                        st
                    })
                    .map_err(|e| RemoteFailure::Other(e.to_string()));
                Box::pin(async move { RpcResponse::Status(r) })
            }
            RpcRequest::Query(Query::Watch { from, filter, max, wait_ms }) => {
                let (ledger, head_rx) = (self.ledger.clone(), self.head_rx.clone());
                Box::pin(async move {
                    RpcResponse::Query(super::watch::answer(&ledger, head_rx, from, filter, max, wait_ms).await)
                })
            }
            RpcRequest::Query(Query::Tiered(q)) => {
                let answer = answer_tiered(&self.raft, &self.me, &self.ledger, &self.tier_views, |p| {
                    Some(q.answer(p)).filter(|a| !a.is_empty())
                })
                .map(QueryAnswer::Tiered)
                .map_err(|e| RemoteFailure::Other(e.to_string()));
                Box::pin(async move { RpcResponse::Query(answer) })
            }
            RpcRequest::Query(q) => {
                let answer = match self.ledger.read_ledger() {
                    Err(e) => Err(RemoteFailure::Other(e.to_string())),
                    Ok(l) => {
                        let p = l.projection();
                        Ok(match q {
                            Query::ChainAt(seq) => {
                                let at = match l.get(seq) {
                                    Ok(e) => e.map(|e| ChainPoint { seq: e.seq, hash: e.hash }),
                                    Err(e) => {
                                        return Box::pin(async move {
                                            RpcResponse::Query(Err(RemoteFailure::Other(e.to_string())))
                                        })
                                    }
                                };
                                let head = p.head().map(|h| ChainPoint { seq: h.seq, hash: h.hash });
                                QueryAnswer::Chain { at, head, fingerprint: p.fingerprint() }
                            }
                            Query::Events { from, max } => {
                                let max = max.clamp(1, crate::wire::query::EVENTS_PER_QUERY_MAX) as u64;
                                let events = match p.head() {
                                    Some(h) if from <= h.seq => l.read_range(from, h.seq.min(from + max - 1)),
                                    _ => Ok(Vec::new()),
                                };
                                match events {
                                    Ok(ev) => QueryAnswer::Events(ev),
                                    Err(e) => {
                                        return Box::pin(async move {
                                            RpcResponse::Query(Err(RemoteFailure::Other(e.to_string())))
                                        })
                                    }
                                }
                            }
                            Query::Find(filter) => {
                                // No cursor: the first page of the largest size (`FindPage` reads on).
                                let page = Page::first(crate::core::limits::PAGE_LIMIT_MAX);
                                QueryAnswer::Found(fit_page(p.find_services_page(&filter, &page), service_id).items)
                            }
                            Query::FindPage { filter, limit, after } => {
                                let page = p.find_services_page(&filter, &Page { limit, after });
                                let Paged { items, next } = fit_page(page, service_id);
                                QueryAnswer::FoundPage { items, next }
                            }
                            Query::NodesPage { filter, limit, after } => {
                                let page = p.nodes_page(&filter, &Page { limit, after });
                                let Paged { items, next } = fit_page(page, |n| n.node);
                                QueryAnswer::NodesPage { items, next }
                            }
                            registry => match registry.as_registry() {
                                Some(q) => q.answer(p).into(),
                                None => {
                                    let e = RemoteFailure::Other("not a registry query".into());
                                    return Box::pin(async move { RpcResponse::Query(Err(e)) });
                                }
                            },
                        })
                    }
                };
                Box::pin(async move { RpcResponse::Query(answer) })
            }
            RpcRequest::ExportSeed { path, include_events } => {
                if from != self.me.node {
                    tracing::warn!(peer = %from.short(), "refused a seed export asked by another key");
                    let e = RemoteFailure::Other("only this node's own key may ask it to export a seed".into());
                    return Box::pin(async move { RpcResponse::ExportSeed(Err(e)) });
                }
                let (ledger, key) = (self.ledger.clone(), self.key.clone());
                Box::pin(async move {
                    let r = tokio::task::spawn_blocking(move || {
                        crate::seed::export(&ledger, &key, std::path::Path::new(&path), include_events)
                    })
                    .await
                    .map_err(|e| RemoteFailure::Other(format!("seed export task: {e}")))
                    .and_then(|r| r.map_err(|e| RemoteFailure::Other(e.to_string())))
                    .map(|e| ChainPoint { seq: e.head.seq, hash: e.head.hash });
                    RpcResponse::ExportSeed(r)
                })
            }
            RpcRequest::AppendEntries(_) | RpcRequest::Vote(_) | RpcRequest::InstallSnapshot(_)
                if self.fence.refuses(&from, || is_member(&self.raft, &from)) =>
            {
                tracing::debug!(peer = %from.short(), kind = req.kind(), "refused Raft traffic from the split-brain chain this node yielded away from");
                use openraft::error::{Fatal, RaftError};
                let resp = match req {
                    RpcRequest::AppendEntries(_) => RpcResponse::AppendEntries(Err(RaftError::Fatal(Fatal::Stopped))),
                    RpcRequest::Vote(_) => RpcResponse::Vote(Err(RaftError::Fatal(Fatal::Stopped))),
                    _ => RpcResponse::InstallSnapshot(Err(RaftError::Fatal(Fatal::Stopped))),
                };
                Box::pin(async move { resp })
            }
            RpcRequest::Forward(ev) if self.provisional.is_some() && !is_member(&self.raft, &self.me.node) => {
                let writer = self.provisional.clone();
                Box::pin(async move {
                    let Some(writer) = writer else {
                        return RpcResponse::Forward(Err(RemoteFailure::Other("not a latent node".into())));
                    };
                    RpcResponse::Forward(match writer.submit(ev).await {
                        Ok(point) => Ok(SporeResponse::Applied(point)),
                        Err(Error::Rejected(r)) => Ok(SporeResponse::Rejected(r)),
                        Err(Error::Provisional { id }) => Err(RemoteFailure::Provisional { id }),
                        Err(e) => Err(RemoteFailure::Other(e.to_string())),
                    })
                })
            }
            RpcRequest::Forward(_) if self.health.divergence().is_some() => {
                // A node in state divergence proposes nothing, for itself or for others.
                let d = self.health.divergence();
                Box::pin(async move {
                    let why =
                        d.map_or_else(|| "state divergence".to_string(), |d| Error::StateDivergence(d).to_string());
                    RpcResponse::Forward(Err(RemoteFailure::Other(why)))
                })
            }
            other => self.raft_service.handle(from, other),
        }
    }
}

/// The key a page of services is walked by.
fn service_id(f: &FoundService) -> uuid::Uuid {
    f.record.service.service_id
}
