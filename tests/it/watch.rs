//! Watches over QUIC as another process runs them: a remote, filtered, resumable stream of
//! committed events through the read-only admin protocol.

use std::time::Duration;

use mycnet_spores::core::event::EventFilter;
use mycnet_spores::node::RemoteWatch;
use mycnet_spores::{EventBody, SporeSystem};

const T: Duration = Duration::from_secs(60);

fn node(dir: &std::path::Path, addr: &str) -> SporeSystem {
    SporeSystem::builder().data_dir(dir).addr(addr).build()
}

async fn next(w: &mut RemoteWatch) -> mycnet_spores::ChainedEvent {
    // A watch is retried on a failed call (the node restarting): it resumes where it was.
    tokio::time::timeout(T, async {
        loop {
            match w.next().await {
                Ok(ev) => return ev,
                Err(mycnet_spores::Error::HistoryNotHeld { .. }) => panic!("history not held"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await
    .expect("an event within the timeout")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_watch_follows_one_service_name_and_resumes_across_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("n");
    let n = node(&data, "127.0.0.1:0");
    n.initialize(crate::cluster::identity("watch")).await.expect("initialize");
    let addr = n.local_addr().expect("addr");
    let me = n.node_id().expect("id");
    let web1 = n.register_service("web", vec![], vec![], vec![]).await.expect("web");
    n.register_service("db", vec![], vec![], vec![]).await.expect("db");

    let filter = EventFilter { service_name: Some("web".into()), ..Default::default() };
    let mut w = RemoteWatch::new(addr.clone(), Some(me), filter.clone(), 0);
    let first = next(&mut w).await;
    assert!(matches!(&first.event.body, EventBody::ServiceRegistered(s) if s.service_id == web1), "{first:?}");

    // A watcher waiting when the write commits gets it; a filter that matches nothing stays
    // silent (its next call waits).
    let nothing = EventFilter { service_name: Some("no-such-service".into()), ..Default::default() };
    let mut silent = RemoteWatch::new(addr.clone(), Some(me), nothing, 0);
    let waiting = tokio::spawn(async move {
        let seq = next(&mut w).await.seq;
        (w, seq)
    });
    let web2 = n.register_service("web", vec![], vec![], vec![]).await.expect("web 2");
    let (mut w, seq2) = waiting.await.expect("watcher");
    assert!(seq2 > first.seq);
    assert!(tokio::time::timeout(Duration::from_millis(700), silent.next()).await.is_err(), "nothing passes");

    // The node restarts on the same address; the watcher goes on from its cursor: the
    // deregistrations of the services it saw registered, and nothing twice.
    assert!(w.next_seq() > seq2, "the cursor is past what it returned");
    n.shutdown().await.expect("shutdown");
    drop(n);
    let resume = tokio::spawn(async move {
        let a = next(&mut w).await;
        let b = next(&mut w).await;
        (a, b)
    });
    let n = node(&data, &addr);
    n.start().await.expect("restart");
    n.deregister_service(web2, "done").await.expect("deregister web 2");
    n.deregister_service(web1, "done").await.expect("deregister web 1");
    let (a, b) = resume.await.expect("watcher");
    assert!(matches!(a.event.body, EventBody::ServiceDeregistered { service_id, .. } if service_id == web2));
    assert!(matches!(b.event.body, EventBody::ServiceDeregistered { service_id, .. } if service_id == web1));
    assert!(seq2 < a.seq && a.seq < b.seq, "in order, no duplicates");

    // The local watch sees the same events.
    let mut local =
        n.watch(EventFilter { kinds: vec!["service_deregistered".into()], ..Default::default() }, 0).expect("watch");
    let l1 = local.next().await.expect("event").expect("ok");
    let l2 = local.next().await.expect("event").expect("ok");
    assert_eq!((l1.seq, l2.seq), (a.seq, b.seq));
    n.shutdown().await.expect("shutdown");
}

/// A watch from below the history a node holds (it started from a state-only seed and has
/// not backfilled) is refused, locally and remotely, saying where the history starts; from
/// there on it is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_below_the_held_history_says_where_it_starts() {
    let root = tempfile::tempdir().expect("tempdir");
    let (b, first_held) = crate::seed_export::latent_from_state_only_seed(root.path(), "watch-seed").await;
    let err = b.watch(EventFilter::default(), 0).err().expect("below the held history");
    assert!(matches!(err, mycnet_spores::Error::HistoryNotHeld { from: 0, first_held: f } if f == first_held), "{err}");
    let mut remote = RemoteWatch::new(b.local_addr().expect("addr"), None, EventFilter::default(), 0);
    let err = remote.next().await.expect_err("below the held history");
    assert!(matches!(err, mycnet_spores::Error::HistoryNotHeld { first_held: f, .. } if f == first_held), "{err}");
    let mut held = RemoteWatch::new(b.local_addr().expect("addr"), None, EventFilter::default(), first_held);
    assert_eq!(next(&mut held).await.seq, first_held, "from the first event held on, it is served");
    b.shutdown().await.expect("shutdown");
}
