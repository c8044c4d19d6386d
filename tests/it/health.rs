//! Service health checks as an embedder relies on them: the node that offers a service probes
//! it (TCP connect, HTTP GET, TTL refreshed through the API), commits only transitions, and
//! discovery leaves critical services out. The targets are real sockets on loopback that
//! refuse, hang, fail or come back.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mycnet_spores::core::event::EventFilter;
use mycnet_spores::core::health::{CheckRefusal, CheckSpec};
use mycnet_spores::core::projection::{FoundService, ServiceFilter};
use mycnet_spores::{EventBody, SporeSystem};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::wait;

const T: Duration = Duration::from_secs(30);

async fn one_node(dir: &std::path::Path) -> SporeSystem {
    let n = SporeSystem::builder().data_dir(dir).private_network().build();
    n.initialize(crate::cluster::identity("health")).await.expect("initialize");
    n
}

fn found(n: &SporeSystem, name: &str) -> Vec<FoundService> {
    n.find_services(&ServiceFilter::name(name).include_critical()).expect("query")
}

/// Waits until the service is listed as critical (`true`) or passing, and returns it.
async fn health_becomes(n: &SporeSystem, name: &str, critical: bool) -> FoundService {
    let seen = wait::until(
        &format!("{name} critical = {critical}"),
        T,
        || found(n, name),
        |f| f.len() == 1 && f[0].critical.is_some() == critical,
    )
    .await;
    seen.into_iter().next().expect("one")
}

/// The health events committed so far, as (service, passing): a local watch from genesis,
/// read until nothing more comes.
async fn transitions(n: &SporeSystem) -> Vec<(Uuid, bool)> {
    let filter = EventFilter { kinds: vec!["service_health_changed".into()], ..Default::default() };
    let mut watch = n.watch(filter, 0).expect("watch");
    let mut out = Vec::new();
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(500), watch.next()).await {
        if let EventBody::ServiceHealthChanged { service_id, passing, .. } = ev.expect("event").event.body {
            out.push((service_id, passing));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_check_flips_a_service_critical_and_back_and_answers_follow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = one_node(&dir.path().join("n")).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let check = CheckSpec::parse(&format!("tcp {addr} interval=1s timeout=500ms flips=2")).expect("spec");
    let id = n.register_service_with_check("db", vec![], vec![], vec![], check).await.expect("register");
    assert_eq!(n.services_by_name("db").expect("query").len(), 1, "a new service passes");

    drop(listener); // the target now refuses connections
    let critical = health_becomes(&n, "db", true).await;
    let why = &critical.critical.as_ref().expect("critical").reason;
    assert!(why.contains("refused"), "the reason names the failure: {why}");
    assert!(n.services_by_name("db").expect("query").is_empty(), "left out by default");
    assert!(n.find_services(&ServiceFilter::name("db")).expect("query").is_empty());

    let back = TcpListener::bind(addr).await.expect("bind the same port again");
    health_becomes(&n, "db", false).await;
    assert_eq!(transitions(&n).await, vec![(id, false), (id, true)], "only the two transitions are events");
    drop(back);
    n.shutdown().await.expect("shutdown");
}

/// A tiny HTTP server on loopback that answers every GET with the status in `status` (0: it
/// reads the request and never answers).
async fn http_server(status: Arc<AtomicU16>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let status = status.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf).await;
                match status.load(Ordering::SeqCst) {
                    0 => tokio::time::sleep(Duration::from_secs(3600)).await,
                    code => {
                        let answer = format!("HTTP/1.1 {code} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                        let _ = conn.write_all(answer.as_bytes()).await;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_check_fails_on_an_error_status_and_on_a_target_that_hangs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = one_node(&dir.path().join("n")).await;
    let status = Arc::new(AtomicU16::new(200));
    let addr = http_server(status.clone()).await;
    let check =
        CheckSpec::parse(&format!("http http://{addr}/health interval=1s timeout=300ms flips=1")).expect("spec");
    n.register_service_with_check("web", vec![], vec![], vec![], check).await.expect("register");

    status.store(503, Ordering::SeqCst);
    let critical = health_becomes(&n, "web", true).await;
    assert!(critical.critical.as_ref().expect("critical").reason.contains("503"));
    status.store(204, Ordering::SeqCst);
    health_becomes(&n, "web", false).await;

    // A target that accepts and never answers: each probe gives up at its timeout.
    status.store(0, Ordering::SeqCst);
    let hung = health_becomes(&n, "web", true).await;
    assert!(hung.critical.as_ref().expect("critical").reason.contains("no answer within 300 ms"));
    n.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_never_refreshed_goes_critical_and_pass_ttl_brings_it_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = one_node(&dir.path().join("n")).await;
    let id = n.register_service_with_check("job", vec![], vec![], vec![], CheckSpec::ttl(1_000)).await.expect("reg");
    n.pass_ttl(id).expect("a TTL check is refreshed at once after registering");
    let critical = health_becomes(&n, "job", true).await;
    assert_eq!(critical.critical.as_ref().expect("critical").reason, "TTL expired without a refresh");
    n.pass_ttl(id).expect("refresh");
    health_becomes(&n, "job", false).await;

    // A TTL refresh of a service without one, and a check out of the bounds: typed refusals,
    // nothing signed.
    let plain = n.register_service("plain", vec![], vec![], vec![]).await.expect("plain");
    assert!(matches!(n.pass_ttl(plain), Err(mycnet_spores::Error::Check(CheckRefusal::NoTtlCheck(_)))));
    let head = n.head().expect("head");
    let too_fast = CheckSpec { interval: 10, ..CheckSpec::tcp("127.0.0.1:1") };
    let refused = n.register_service_with_check("fast", vec![], vec![], vec![], too_fast).await;
    assert!(matches!(refused, Err(mycnet_spores::Error::Check(CheckRefusal::OutOfBounds(_)))), "{refused:?}");
    assert_eq!(n.head().expect("head"), head, "nothing was committed");
    n.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_restarts_goes_on_from_the_health_the_chain_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("n");
    let n = one_node(&data).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let check = CheckSpec::parse(&format!("tcp {addr} interval=1s timeout=500ms flips=1")).expect("spec");
    let id = n.register_service_with_check("db", vec![], vec![], vec![], check).await.expect("register");
    health_becomes(&n, "db", true).await;
    n.shutdown().await.expect("shutdown");

    let n = SporeSystem::builder().data_dir(&data).private_network().build();
    n.start().await.expect("restart");
    assert!(n.services_by_name("db").expect("query").is_empty(), "still critical after the restart");
    let back = TcpListener::bind(addr).await.expect("bind");
    health_becomes(&n, "db", false).await;
    assert_eq!(transitions(&n).await, vec![(id, false), (id, true)], "no repeated transition after the restart");
    drop(back);
    n.shutdown().await.expect("shutdown");
}

/// A latent node cut off from the voters still runs its checks: the transition is held as a
/// provisional event, travels when the partition heals, and commits once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latent_node_cut_off_holds_its_transition_and_commits_it_after_the_heal() {
    use mycnet_spores::NodeKey;

    use crate::cluster::{fast_timeouts, Cluster};

    let mut t = fast_timeouts();
    t.write = Duration::from_millis(1500);
    t.rpc = Duration::from_millis(300);
    let c = Cluster::form_with_gossip(3, 0x4ea1, t.clone()).await;
    let leader = c.leader(Duration::from_secs(5)).await.expect("leader");
    let root = tempfile::tempdir().expect("tempdir");
    let l = c.latent(root.path(), NodeKey::from_seed([0x4e; 32]), "l0", 0, leader, t.clone()).await;
    let head = c.converged_head(Duration::from_secs(5)).await.expect("voters converged");
    wait::head_reaches("the latent node", &l, head.seq, T).await;
    let target = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let check = CheckSpec::parse(&format!("tcp {} interval=1s timeout=500ms flips=1", target.local_addr().expect("a")))
        .expect("spec");
    let id = l.register_service_with_check("edge", vec![], vec![], vec![], check).await.expect("register");
    // The latent node learns of its own service by gossip, and checks it from then on.
    health_becomes(&l, "edge", false).await;

    c.net.partition(&["n0", "n1", "n2"], &["l0"]);
    drop(target);
    wait::until("the transition held", T, || l.status().map(|s| s.provisional).ok(), |n| *n == Some(1)).await;
    assert_eq!(found(c.sys(leader), "edge")[0].critical, None, "the voters have not heard of it yet");

    c.net.heal();
    health_becomes(c.sys(leader), "edge", true).await;
    health_becomes(&l, "edge", true).await;
    assert_eq!(transitions(c.sys(leader)).await, vec![(id, false)], "committed once");
    // The latent node kept its chain by gossip, and its metrics say so.
    let text = l.metrics_text().expect("metrics");
    let stored = text.lines().find_map(|l| l.strip_prefix("spores_gossip_events_stored_total ")?.parse::<f64>().ok());
    assert!(stored.is_some_and(|n| n > 0.0), "{text}");
    assert!(text.contains("spores_gossip_sessions_total{outcome=\"completed\"}"), "{text}");
}
