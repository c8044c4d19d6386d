//! Health checks, run by the node that offers the services: the I/O around the sans-IO
//! [`Checks`] (`core::health`). The task follows the registry for this node's services that
//! carry a check (`spores.check`), probes them (a TCP connect, an HTTP GET), takes TTL
//! refreshes from [`SporeSystem::pass_ttl`], and commits each **transition** as a signed
//! `service_health_changed` event through [`SporeSystem::submit`] — on a latent node cut off
//! from the voters, a provisional event like any of its writes. Never a heartbeat per check.
//!
//! The chain is the record and the checks are the wish: whenever the two disagree on a
//! service (a transition, a write that failed, a restart) the task submits the transition
//! again, at most every [`RESUBMIT_AFTER`] (every [`RESUBMIT_HELD_AFTER`] while one is held as
//! a provisional event). A node that restarts takes each service's health
//! from the chain and goes on from there.
//!
//! Like the upkeep, the task belongs to the [`SporeSystem`] (it outlives a yield's restart),
//! holds it weakly and ends with its last handle.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use http_body_util::Empty;
use tokio::sync::{mpsc, Notify};
use uuid::Uuid;

use super::{Shared, SporeSystem};
use crate::core::event::EventBody;
use crate::core::health::{CheckKind, CheckLimits, CheckRefusal, CheckSpec, Checks, Health, Millis, Probe};
use crate::core::projection::Projection;
use crate::core::sync::lock;
use crate::core::types::NodeId;
use crate::error::Error;

/// How often the task looks for probes due and for disagreements with the chain.
const TICK: Duration = Duration::from_millis(250);
/// How long a transition whose write failed waits before it is submitted again.
const RESUBMIT_AFTER: Duration = Duration::from_secs(5);
/// How long a transition held as a provisional event (a latent node cut off from the voters)
/// is given to reach the chain before it is submitted again: its delivery is retried by
/// itself, so a second copy is only for one dropped as too old.
const RESUBMIT_HELD_AFTER: Duration = Duration::from_secs(120);

/// The checks of one system, shared by its task and [`SporeSystem::pass_ttl`].
pub(super) struct CheckRunner {
    checks: Mutex<Checks>,
    /// Wakes the task (a TTL refreshed).
    wake: Notify,
    /// Time zero of the checks' clock.
    epoch: Instant,
}

impl Default for CheckRunner {
    fn default() -> Self {
        CheckRunner {
            checks: Mutex::new(Checks::new(CheckLimits::default())),
            wake: Notify::new(),
            epoch: Instant::now(),
        }
    }
}

impl CheckRunner {
    /// How many checks give passing and how many critical (for the metrics).
    pub(super) fn counts(&self) -> (i64, i64) {
        let checks = lock(&self.checks);
        let passing =
            checks.services().filter(|id| checks.state(id).is_some_and(|(h, _)| h == Health::Passing)).count();
        (passing as i64, (checks.len() - passing) as i64)
    }

    fn now(&self) -> Millis {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// The checked services of `me` in `p`: each check, and the health the chain gives it.
fn wanted(p: &Projection, me: &NodeId) -> Vec<(Uuid, CheckSpec, Health)> {
    p.checked_services_by_node(me)
        .filter_map(|r| {
            let id = r.service.service_id;
            let spec = CheckSpec::from_metadata(&r.service.metadata)?.ok()?;
            let health = if p.service_health(&id).is_some() { Health::Critical } else { Health::Passing };
            Some((id, spec, health))
        })
        .collect()
}

/// Brings `checks` in step with `wanted`: new checks added (from the chain's health), checks
/// of services gone dropped. A service's check never changes (it is part of its registration).
fn sync(checks: &mut Checks, wanted: Vec<(Uuid, CheckSpec, Health)>, now: Millis) {
    let ids: std::collections::BTreeSet<Uuid> = wanted.iter().map(|w| w.0).collect();
    let gone: Vec<Uuid> = checks.services().filter(|id| !ids.contains(id)).copied().collect();
    for id in gone {
        checks.remove(&id);
    }
    for (id, spec, health) in wanted {
        if checks.spec(&id).is_some() {
            continue;
        }
        if let Err(e) = checks.add(id, spec, health, now) {
            // The rules bound what the chain holds; this node's own bound can only be lower.
            tracing::warn!(service = %id, error = %e, "health check not run");
        }
    }
}

impl SporeSystem {
    /// Says that the TTL check of `service` (a service of this node) passes now: it stays
    /// passing, or flips back, until its TTL runs out without another call. A service
    /// without a TTL check is refused ([`Error::Check`]).
    pub fn pass_ttl(&self, service: Uuid) -> Result<(), Error> {
        let runner = self.shared.checks.clone();
        if lock(&runner.checks).spec(&service).is_none() {
            // Registered a moment ago: the task has not seen it yet. The registry is read
            // before the checks are locked: the task takes the ledger's lock, then the checks'
            // (never the other way round).
            let me = self.node_id()?;
            let want = self.with_projection(|p| wanted(p, &me))?;
            sync(&mut lock(&runner.checks), want, runner.now());
        }
        lock(&runner.checks).pass_ttl(service, runner.now())?;
        runner.wake.notify_one();
        Ok(())
    }

    /// Registers a service of this node with a health check it runs itself
    /// ([`SporeSystem::register_service`] with the check in the service's metadata). A check
    /// outside the bounds is refused before anything is signed ([`Error::Check`]).
    pub async fn register_service_with_check(
        &self,
        name: &str,
        endpoints: Vec<crate::core::types::Endpoint>,
        capabilities: Vec<String>,
        mut metadata: Vec<(String, String)>,
        check: CheckSpec,
    ) -> Result<Uuid, Error> {
        check.check().map_err(CheckRefusal::OutOfBounds)?;
        metadata.retain(|(k, _)| k != crate::core::health::CHECK_METADATA_KEY);
        metadata.push(check.metadata_entry());
        self.register_service(name, endpoints, capabilities, metadata).await
    }
}

/// Spawns the check task of the system behind `shared`.
pub(super) fn spawn(shared: Weak<Shared>, runner: Arc<CheckRunner>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(shared, runner))
}

/// A probe's outcome: the service, whether it passed, why.
type Outcome = (Uuid, bool, String);

async fn run(shared: Weak<Shared>, runner: Arc<CheckRunner>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Outcome>();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut synced: Option<(NodeId, u64)> = None;
    // Transitions on their way to the chain: the health asked for, and when to ask again.
    let submitted: Arc<Mutex<HashMap<Uuid, (Health, Instant)>>> = Arc::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = runner.wake.notified() => {}
            Some((id, passed, why)) = rx.recv() => {
                lock(&runner.checks).result(id, passed, runner.now(), &why);
                // Drain what else arrived, then act once.
                while let Ok((id, passed, why)) = rx.try_recv() {
                    lock(&runner.checks).result(id, passed, runner.now(), &why);
                }
            }
        }
        let Some(shared) = shared.upgrade() else { return };
        let system = SporeSystem { shared };
        let Ok(me) = system.node_id() else { continue };
        // The registry's view of this node's checked services, read again when the head moved:
        // under the ledger's read lock, not from a snapshot, so this tick never makes the ledger
        // publish one for it.
        let Ok(view) = system.with_ledger_projection(|p| {
            let head = p.head().map_or(0, |h| h.seq);
            let fresh = synced != Some((me, head));
            let want = fresh.then(|| wanted(p, &me));
            let chain: Vec<(Uuid, bool)> = {
                let checks = lock(&runner.checks);
                checks.services().map(|id| (*id, p.service_health(id).is_none())).collect()
            };
            (head, want, chain)
        }) else {
            continue;
        };
        let (head, want, chain) = view;
        let probes = {
            let mut checks = lock(&runner.checks);
            if let Some(want) = want {
                sync(&mut checks, want, runner.now());
                synced = Some((me, head));
            }
            checks.due(runner.now()).0
        };
        for probe in probes {
            let tx = tx.clone();
            tokio::spawn(async move {
                let (passed, why) = run_probe(&probe).await;
                let _ = tx.send((probe.service, passed, why));
            });
        }
        // Where the checks and the chain disagree, the chain is told.
        let disagree: Vec<(Uuid, Health, String)> = {
            let checks = lock(&runner.checks);
            chain
                .into_iter()
                .filter_map(|(id, chain_passing)| {
                    let (health, why) = checks.state(&id)?;
                    ((health == Health::Passing) != chain_passing).then(|| (id, health, why.to_string()))
                })
                .collect()
        };
        let mut pending = lock(&submitted);
        pending.retain(|id, _| disagree.iter().any(|d| d.0 == *id));
        for (id, health, reason) in disagree {
            if pending.get(&id).is_some_and(|(h, again)| *h == health && Instant::now() < *again) {
                continue;
            }
            // Not asked again while this attempt runs (a write waits up to its timeout).
            pending.insert(id, (health, Instant::now() + RESUBMIT_HELD_AFTER));
            let (system, submitted) = (system.clone(), submitted.clone());
            tokio::spawn(async move {
                let held = commit_transition(&system, id, health, reason).await;
                let again = Instant::now() + if held { RESUBMIT_HELD_AFTER } else { RESUBMIT_AFTER };
                if let Some(entry) = lock(&submitted).get_mut(&id) {
                    entry.1 = again;
                }
            });
        }
    }
}

/// Signs and submits one transition; whether it committed or is held as a provisional event.
#[tracing::instrument(skip(system, reason), fields(service = %service, to = ?health))]
async fn commit_transition(system: &SporeSystem, service: Uuid, health: Health, reason: String) -> bool {
    let passing = health == Health::Passing;
    let reason: String = reason.chars().take(200).collect();
    let event = match system.sign(EventBody::ServiceHealthChanged { service_id: service, passing, reason }) {
        Ok(e) => e,
        Err(e) => {
            tracing::debug!(error = %e, "health transition not signed");
            return false;
        }
    };
    let counted = || system.shared.metrics.health_transitions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    match system.submit(event).await {
        Ok(point) => {
            tracing::info!(seq = point.seq, "service health committed");
            counted();
            true
        }
        Err(Error::Provisional { .. }) => {
            tracing::info!("service health held as a provisional event");
            counted();
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "service health not committed; retried");
            false
        }
    }
}

/// Runs one probe within its timeout: whether it passed, and why.
#[tracing::instrument(skip(probe), fields(service = %probe.service))]
async fn run_probe(probe: &Probe) -> (bool, String) {
    let limit = Duration::from_millis(probe.timeout);
    let outcome = match &probe.kind {
        CheckKind::Tcp(addr) => tokio::time::timeout(limit, tcp(addr)).await,
        CheckKind::Http(url) => tokio::time::timeout(limit, http(url)).await,
        CheckKind::Ttl(_) => return (true, "TTL checks are not probed".into()),
    };
    match outcome {
        Ok(Ok(why)) => (true, why),
        Ok(Err(why)) => (false, why),
        Err(_) => (false, format!("no answer within {} ms", probe.timeout)),
    }
}

async fn tcp(addr: &str) -> Result<String, String> {
    match tokio::net::TcpStream::connect(addr).await {
        Ok(_) => Ok(format!("tcp {addr}: connected")),
        Err(e) => Err(format!("tcp {addr}: {e}")),
    }
}

async fn http(url: &str) -> Result<String, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("http {url}: {e}"))?;
    let host = uri.host().ok_or_else(|| format!("http {url}: no host"))?;
    let authority = format!("{host}:{}", uri.port_u16().unwrap_or(80));
    let stream = tokio::net::TcpStream::connect(&authority).await.map_err(|e| format!("http {url}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| format!("http {url}: {e}"))?;
    let conn = tokio::spawn(conn);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, uri.authority().map_or(host, |a| a.as_str()))
        .header(hyper::header::USER_AGENT, "mycnet-spores-health-check")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| format!("http {url}: {e}"))?;
    let answer = sender.send_request(request).await;
    conn.abort();
    let status = answer.map_err(|e| format!("http {url}: {e}"))?.status();
    if status.is_success() {
        Ok(format!("http {url}: {status}"))
    } else {
        Err(format!("http {url}: {status}"))
    }
}
