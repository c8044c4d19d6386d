//! Watches: the committed events that pass an [`EventFilter`], from a sequence number on,
//! locally ([`SporeSystem::watch`]) or from another process over the read-only admin protocol
//! ([`RemoteWatch`], `spore watch`).
//!
//! A remote watch is a chain of blocking queries ([`Query::Watch`]), as Consul's blocking
//! queries and etcd's watch-from-revision are: each asks from the sequence number the last
//! answer gave, and the node answers as soon as a matching event is held, or after a bounded
//! wait with none. The node keeps nothing for a watcher between two queries, so a slow or
//! vanished watcher costs it nothing and can stall nothing; a watcher resumes from its own
//! cursor after a restart of the node (or of itself) without gaps or duplicates. A watch from
//! below the history a node holds is refused with where that history starts
//! ([`RemoteFailure::HistoryNotHeld`], [`Error::HistoryNotHeld`]).

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::watch;

use super::{SporeSystem, Subscription};
use crate::core::event::{ChainedEvent, EventFilter, FilterState};
use crate::core::types::NodeId;
use crate::error::Error;
use crate::raft::{RpcRequest, RpcResponse};
use crate::store::ledger::{LedgerLock, SharedLedger};
use crate::wire::query::{Query, QueryAnswer, EVENTS_PER_QUERY_MAX, WATCH_WAIT_MS_MAX};
use crate::wire::rpc::RemoteFailure;

/// Most events one watch query reads before it answers (with what passed, possibly nothing),
/// so a filter that passes little never holds a query for long.
const WATCH_SCAN_MAX: u64 = 4096;
/// Events read from the ledger at a time.
const WATCH_PAGE: u64 = 256;

/// Where a watch of `filter` from `from` starts: the ids registered under its service name
/// now, or the refusal of a start below the history held.
fn start(ledger: &SharedLedger, from: u64, filter: &EventFilter) -> Result<Vec<uuid::Uuid>, RemoteFailure> {
    let l = ledger.read_ledger().map_err(|e| RemoteFailure::Other(e.to_string()))?;
    let first_held = l.history_from();
    if from < first_held {
        return Err(RemoteFailure::HistoryNotHeld { from, first_held });
    }
    Ok(match &filter.service_name {
        Some(name) => l.projection().services_by_name(name).map(|s| s.service.service_id).collect(),
        None => Vec::new(),
    })
}

/// Events `from..=to` of the ledger. A few (what a watcher waiting at the head asks for) are
/// read in place, checked record by record as any read is (framing, place, chain hash; their
/// signatures were verified when they were appended, and the scrub verifies them again); a
/// page of history is read and verified on the blocking pool.
async fn read(ledger: &SharedLedger, from: u64, to: u64) -> Result<Vec<ChainedEvent>, RemoteFailure> {
    let failed = |e: crate::error::LedgerError| RemoteFailure::Other(e.to_string());
    if to - from < WATCH_INLINE_MAX {
        let l = ledger.read_ledger().map_err(failed)?;
        let mut out = Vec::new();
        for seq in from..=to {
            match l.get(seq).map_err(failed)? {
                Some(ev) => out.push(ev),
                None => break,
            }
        }
        return Ok(out);
    }
    let l = ledger.clone();
    tokio::task::spawn_blocking(move || l.read_ledger()?.read_range(from, to))
        .await
        .map_err(|e| RemoteFailure::Other(format!("watch read: {e}")))?
        .map_err(failed)
}

/// Most events read in place rather than on the blocking pool.
const WATCH_INLINE_MAX: u64 = 16;

/// Answers one [`Query::Watch`] on the node whose ledger is `ledger` and whose applied head
/// `head_rx` follows.
#[tracing::instrument(skip(ledger, head_rx, filter), fields(from, max, wait_ms))]
pub(super) async fn answer(
    ledger: &SharedLedger,
    mut head_rx: watch::Receiver<Option<u64>>,
    from: u64,
    filter: EventFilter,
    max: u32,
    wait_ms: u32,
) -> Result<QueryAnswer, RemoteFailure> {
    let max = max.clamp(1, EVENTS_PER_QUERY_MAX) as usize;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(u64::from(wait_ms.min(WATCH_WAIT_MS_MAX)));
    let named = start(ledger, from, &filter)?;
    // Lenient: a deregistration of a service registered before this query's window names only
    // its id; the watcher, which saw the registration, decides.
    let mut state = FilterState::lenient(filter, named.iter().copied());
    let mut next = from;
    loop {
        let head = *head_rx.borrow_and_update();
        if let Some(h) = head.filter(|h| *h >= next) {
            let mut events = Vec::new();
            let mut scanned = 0;
            while next <= h && events.len() < max && scanned < WATCH_SCAN_MAX {
                let to = h.min(next + WATCH_PAGE - 1);
                let page = read(ledger, next, to).await?;
                if page.is_empty() {
                    break;
                }
                for ev in page {
                    next = ev.seq + 1;
                    scanned += 1;
                    if state.matches(&ev) {
                        events.push(ev);
                        if events.len() == max {
                            break;
                        }
                    }
                }
            }
            // Events, or a full scan's progress to report, or the wait is over.
            if !events.is_empty() || scanned >= WATCH_SCAN_MAX || tokio::time::Instant::now() >= deadline {
                return Ok(QueryAnswer::Watched { events, named, next, head: Some(h) });
            }
            continue;
        }
        match tokio::time::timeout_at(deadline, head_rx.changed()).await {
            Ok(Ok(())) => {}
            // The node stops, or the wait is over: nothing passed.
            Ok(Err(_)) | Err(_) => return Ok(QueryAnswer::Watched { events: Vec::new(), named, next, head }),
        }
    }
}

/// A local watch: the committed events that pass a filter, in order, without gaps.
pub struct Watch {
    sub: Subscription,
    state: FilterState,
}

impl Watch {
    /// The next event that passes, waiting for it to commit; `None` once the system stops.
    pub async fn next(&mut self) -> Option<Result<ChainedEvent, Error>> {
        loop {
            match self.sub.next().await? {
                Ok(ev) if !self.state.matches(&ev) => continue,
                other => return Some(other),
            }
        }
    }
}

impl SporeSystem {
    /// The committed events from `from_seq` on that pass `filter`, in order, as they commit
    /// (see the module doc). A start below the history this node holds is
    /// [`Error::HistoryNotHeld`].
    pub fn watch(&self, filter: EventFilter, from_seq: u64) -> Result<Watch, Error> {
        let r = self.running()?;
        let named = start(&r.ledger, from_seq, &filter).map_err(|f| match f {
            RemoteFailure::HistoryNotHeld { from, first_held } => Error::HistoryNotHeld { from, first_held },
            failure => Error::Remote { peer: r.me.to_string(), failure },
        })?;
        drop(r);
        Ok(Watch { sub: self.subscribe(from_seq)?, state: FilterState::new(filter, named) })
    }
}

/// A watch of another node over the read-only admin protocol (any key may read): the
/// committed events that pass a filter, resumable from its cursor ([`RemoteWatch::next_seq`]).
pub struct RemoteWatch {
    addr: String,
    expected: Option<NodeId>,
    /// The kept connection (made on the first call).
    client: Option<crate::net::quic::AdminClient>,
    filter: EventFilter,
    /// The exact filter, fed the ids the node reports registered under the watched name.
    state: FilterState,
    next: u64,
    buffered: VecDeque<ChainedEvent>,
    wait: Duration,
    /// The last call failed: the next one does not wait for events, and gives up soon, so a
    /// node that is back is found within a few seconds rather than a whole wait later.
    failing: bool,
}

/// How long a call to a node that just failed may take (connecting included).
const RETRY_CALL: Duration = Duration::from_secs(3);

impl RemoteWatch {
    /// Watches the node at `addr` (`HOST:PORT`; refused unless it proves `expected`, if
    /// given) from `from_seq` on.
    pub fn new(addr: impl Into<String>, expected: Option<NodeId>, filter: EventFilter, from_seq: u64) -> Self {
        RemoteWatch {
            addr: addr.into(),
            expected,
            client: None,
            state: FilterState::new(filter.clone(), []),
            filter,
            next: from_seq,
            buffered: VecDeque::new(),
            wait: Duration::from_millis(u64::from(WATCH_WAIT_MS_MAX)),
            failing: false,
        }
    }

    /// The same watch, reading as `key` (for a node whose admin reads admit only some keys,
    /// [`crate::net::quic::AdminReads`]).
    pub fn with_key(mut self, key: crate::core::keys::NodeKey) -> Self {
        self.client = Some(crate::net::quic::AdminClient::with_key(self.addr.clone(), self.expected, key));
        self
    }

    /// The sequence number the watch asks from next: where to resume it.
    pub fn next_seq(&self) -> u64 {
        self.buffered.front().map_or(self.next, |e| e.seq)
    }

    /// The next event that passes, waiting for it. A failed call (the node restarting, the
    /// link down) is an error the caller may retry on: the watch resumes where it was. A
    /// start below the node's history is [`Error::HistoryNotHeld`], which retrying does not
    /// change.
    pub async fn next(&mut self) -> Result<ChainedEvent, Error> {
        loop {
            if let Some(ev) = self.buffered.pop_front() {
                return Ok(ev);
            }
            let (wait, timeout) = if self.failing {
                (Duration::ZERO, RETRY_CALL)
            } else {
                (self.wait, self.wait + Duration::from_secs(5))
            };
            let req = RpcRequest::Query(Query::Watch {
                from: self.next,
                filter: self.filter.clone(),
                max: EVENTS_PER_QUERY_MAX,
                wait_ms: wait.as_millis() as u32,
            });
            let span = tracing::debug_span!("remote_watch", addr = %self.addr, from = self.next);
            let client = match &mut self.client {
                Some(c) => c,
                None => self.client.insert(crate::net::quic::AdminClient::new(self.addr.clone(), self.expected)?),
            };
            let resp = tracing::Instrument::instrument(client.call(req, timeout), span).await;
            self.failing = resp.is_err();
            let (_, resp) = resp?;
            match resp {
                RpcResponse::Query(Ok(QueryAnswer::Watched { events, named, next, .. })) => {
                    self.next = next.max(self.next);
                    self.state.learn(named);
                    let state = &mut self.state;
                    self.buffered.extend(events.into_iter().filter(|ev| state.matches(ev)));
                }
                RpcResponse::Query(Err(RemoteFailure::HistoryNotHeld { from, first_held })) => {
                    return Err(Error::HistoryNotHeld { from, first_held })
                }
                RpcResponse::Query(Err(failure)) => return Err(Error::Remote { peer: self.addr.clone(), failure }),
                other => {
                    return Err(Error::UnexpectedResponse { to: "a watch", got: format!("a {} answer", other.kind()) })
                }
            }
        }
    }
}
