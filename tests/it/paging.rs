//! Paged, filtered answers as users read them: a walk over the admin protocol
//! (`Query::FindPage`, `Query::NodesPage`) of a follower in a 3-voter cluster while services
//! come and go between pages, the library's `find_services_page`, and `/v1/services` and
//! `/v1/nodes` followed through their `Link` headers; every page within its limit, every
//! lasting item exactly once, filters composed with paging, and any cursor that is not one a
//! 400, never a panic.

use std::collections::BTreeSet;
use std::time::Duration;

use mycnet_spores::http::{self, json, HttpOptions};
use mycnet_spores::net::Transport;
use mycnet_spores::raft::{RpcRequest, RpcResponse};
use mycnet_spores::wire::query::{Query, QueryAnswer};
use mycnet_spores::{
    EventBody, NodeFilter, NodeStatus, Page, ServiceAnnouncement, ServiceFilter, SignedEvent, SporeSystem, Timestamp,
};
use proptest::prelude::*;
use serde_json::Value;
use uuid::Uuid;

use crate::cluster::Cluster;

const RPC: Duration = Duration::from_secs(2);

/// Asserts a walk returned every lasting item once, nothing twice, in key order.
fn check_walk(seen: &[Uuid], lasting: &BTreeSet<Uuid>) {
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in service id order, nothing twice: {seen:?}");
    let missing: Vec<_> = lasting.iter().filter(|id| !seen.contains(id)).collect();
    assert!(missing.is_empty(), "services present for the whole walk were skipped: {missing:?}");
}

/// Registers a service of node `i` with the id its caller chose, signed by the node's key.
async fn register_with_id(c: &Cluster, i: usize, id: Uuid) -> Uuid {
    let fingerprint = c.sys(i).status().expect("status").fingerprint.expect("fingerprint");
    let key = &c.members[i].key;
    let body = EventBody::ServiceRegistered(ServiceAnnouncement {
        service_id: id,
        name: "web".into(),
        node: key.node_id(),
        capabilities: vec![].into(),
        endpoints: vec![].into(),
        metadata: vec![].into(),
    });
    c.sys(i).submit(SignedEvent::sign(key, fingerprint, Timestamp::now(), body)).await.expect("register");
    id
}

/// A paging walk meets the services registered during it at its end, and the registry's
/// maps grow at their ends: the library's ids are UUIDv7, each later than the one before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_s_service_ids_are_time_ordered() {
    let c = Cluster::form(1, 25).await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(c.sys(0).register_service("web", vec![], vec![], vec![]).await.expect("register"));
    }
    assert!(ids.iter().all(|id| id.get_version_num() == 7), "UUIDv7: {ids:?}");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "each later than the one before: {ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_walk_over_the_admin_protocol_returns_every_lasting_service_once_while_others_come_and_go() {
    let c = Cluster::form(3, 24).await;
    let mut lasting = BTreeSet::new();
    for i in 0..30u32 {
        let name = if i.is_multiple_of(3) { "web" } else { "db" };
        lasting.insert(c.sys(0).register_service(name, vec![], vec![], vec![]).await.expect("register"));
    }
    c.converged_head(Duration::from_secs(10)).await.expect("converged");
    let t = c.net.transport("n0");
    let follower = c.sys(2).peer().expect("peer");
    let (mut seen, mut after, mut added) = (Vec::new(), None, Vec::new());
    for _ in 0..100 {
        let q = Query::FindPage { filter: ServiceFilter::default(), limit: 4, after };
        let (items, next) = match t.call(&follower, RpcRequest::Query(q), RPC).await.expect("call") {
            RpcResponse::Query(Ok(QueryAnswer::FoundPage { items, next })) => (items, next),
            other => panic!("unexpected {other:?}"),
        };
        assert!(items.len() <= 4, "the limit bounds every page");
        seen.extend(items.iter().map(|f| f.record.service.service_id));
        // Between pages: a new service, and every other time one of the new ones leaves
        // again. The library's ids are time-ordered (they fall after the cursor); one signed
        // by its node with a random id falls anywhere, before or after it.
        let id = if added.len().is_multiple_of(2) {
            c.sys(1).register_service("web", vec![], vec![], vec![]).await.expect("register")
        } else {
            register_with_id(&c, 1, Uuid::new_v4()).await
        };
        added.push(id);
        if added.len().is_multiple_of(2) {
            let gone = added.remove(0);
            c.sys(1).deregister_service(gone, "paging test").await.expect("deregister");
        }
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    check_walk(&seen, &lasting);
    c.converged_head(Duration::from_secs(10)).await.expect("converged");

    // The library pages the same way, filters composed: the `web` services, one at a time.
    let web = ServiceFilter::name("web");
    let all: Vec<Uuid> =
        c.sys(1).find_services(&web).expect("find").iter().map(|f| f.record.service.service_id).collect();
    let mut walked = Vec::new();
    let mut page = Page::first(1);
    loop {
        let got = c.sys(1).find_services_page(&web, &page).expect("page");
        assert!(got.items.len() <= 1);
        walked.extend(got.items.iter().map(|f| f.record.service.service_id));
        match got.next {
            Some(n) => page = Page::after(1, n),
            None => break,
        }
    }
    assert_eq!(walked, all, "a quiet walk is exactly find_services");

    // Nodes, one a page, over the admin protocol: the three voters, then no next.
    let (mut nodes, mut after) = (Vec::new(), None);
    loop {
        let q = Query::NodesPage { filter: NodeFilter::status(NodeStatus::Active), limit: 1, after };
        match t.call(&follower, RpcRequest::Query(q), RPC).await.expect("call") {
            RpcResponse::Query(Ok(QueryAnswer::NodesPage { items, next })) => {
                assert!(items.len() <= 1);
                nodes.extend(items.iter().map(|n| n.node));
                match next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let want: Vec<_> = c.sys(2).nodes().expect("nodes").iter().map(|n| n.node).collect();
    assert_eq!(nodes, want, "every active node once, in node id order");
    // The unpaged queries still answer, within the bound.
    match t.call(&follower, RpcRequest::Query(Query::Find(ServiceFilter::name("db"))), RPC).await.expect("call") {
        RpcResponse::Query(Ok(QueryAnswer::Found(found))) => assert_eq!(found.len(), 20),
        other => panic!("unexpected {other:?}"),
    }
}

/// A one-voter node on the in-process network, formed.
async fn private_node(dir: &std::path::Path) -> SporeSystem {
    let n = SporeSystem::builder().data_dir(dir).private_network().build();
    n.initialize(crate::cluster::identity("paging")).await.expect("initialize");
    n
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("an HTTP client")
}

/// `GET url`: status, the next cursor and `Link` headers, the body as JSON.
async fn get(c: &reqwest::Client, url: &str) -> (u16, Option<String>, Option<String>, Value) {
    let resp = c.get(url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let header = |name: &str| resp.headers().get(name).map(|v| v.to_str().expect("ASCII").to_string());
    let (next, link) = (header("spores-next-cursor"), header("link"));
    let body = resp.bytes().await.expect("body");
    (status, next, link, serde_json::from_slice(&body).unwrap_or_else(|e| panic!("GET {url}: not JSON ({e})")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_pages_follow_the_link_header_and_compose_with_filters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = private_node(&dir.path().join("n")).await;
    let mut lasting = BTreeSet::new();
    for i in 0..23u32 {
        let name = if i.is_multiple_of(2) { "web" } else { "db" };
        let caps = if i.is_multiple_of(3) { vec!["tls".to_string()] } else { vec![] };
        lasting.insert(n.register_service(name, vec![], caps, vec![]).await.expect("register"));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let server = http::serve(n.clone(), listener, HttpOptions::default()).expect("serve");
    let base = format!("http://{}", server.local_addr());
    let c = client();

    // Follow the Link header from the first page; services come and go between pages.
    let (mut url, mut seen, mut added) = (format!("{base}/v1/services?limit=5"), Vec::new(), Vec::new());
    for _ in 0..100 {
        let (status, next, link, body) = get(&c, &url).await;
        assert_eq!(status, 200, "{url}: {body}");
        let items = body.as_array().expect("the body stays an array");
        assert!(items.len() <= 5, "the limit bounds every page");
        seen.extend(
            items.iter().map(|s| s["service"]["service_id"].as_str().expect("id").parse::<Uuid>().expect("uuid")),
        );
        added.push(n.register_service("web", vec![], vec![], vec![]).await.expect("register"));
        if added.len().is_multiple_of(2) {
            n.deregister_service(added.remove(0), "paging test").await.expect("deregister");
        }
        match (next, link) {
            (Some(next), Some(link)) => {
                assert_eq!(link, format!("</v1/services?limit=5&cursor={next}>; rel=\"next\""));
                url = format!("{base}{}", link.trim_start_matches('<').split('>').next().expect("a link"));
            }
            (None, None) => break,
            other => panic!("the cursor and the link come together: {other:?}"),
        }
    }
    check_walk(&seen, &lasting);

    // Filters compose with paging: the `web` services with `tls`, two a page, are the filter's.
    let want = serde_json::to_value(json::services(
        &n.find_services(&ServiceFilter { capability: Some("tls".into()), ..ServiceFilter::name("web") })
            .expect("find"),
    ))
    .expect("json");
    let (mut got, mut url) = (Vec::new(), format!("{base}/v1/services?name=web&capability=tls&limit=2"));
    loop {
        let (_, next, _, body) = get(&c, &url).await;
        got.extend(body.as_array().expect("array").iter().cloned());
        match next {
            Some(next) => url = format!("{base}/v1/services?name=web&capability=tls&limit=2&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(Value::Array(got), want);

    // A kept page answers again with its cursor; the page after it is another answer.
    let first = get(&c, &format!("{base}/v1/services?limit=3")).await;
    let again = get(&c, &format!("{base}/v1/services?limit=3")).await;
    assert_eq!(first, again, "the same page, the same cursor");
    let second = get(&c, &format!("{base}/v1/services?limit=3&cursor={}", first.1.clone().expect("a next"))).await;
    assert_ne!(first.3, second.3, "the cursor is part of the kept answer's key");

    // Nodes: one node, so one page and no cursor; filters select it or not.
    let (_, next, _, nodes) = get(&c, &format!("{base}/v1/nodes?limit=1")).await;
    assert_eq!((nodes.as_array().map(Vec::len), next), (Some(1), None));
    let (_, _, _, offline) = get(&c, &format!("{base}/v1/nodes?status=offline")).await;
    assert_eq!(offline, Value::Array(vec![]));

    // Out of range, or not a cursor: a 400 naming the parameter.
    for (path, names) in [
        ("/v1/services?limit=0", "limit"),
        ("/v1/services?limit=10001", "limit"),
        ("/v1/services?cursor=zz", "cursor"),
        ("/v1/nodes?cursor=00000000-0000-0000-0000-000000000000", "cursor"),
        ("/v1/nodes?status=asleep", "status"),
    ] {
        let (status, _, _, body) = get(&c, &format!("{base}{path}")).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body["error"].as_str().is_some_and(|e| e.contains(names)), "{path}: {body}");
    }
    server.shutdown().await.expect("shutdown");
}

/// `value` as a query-string component: every byte but the unreserved ones as `%XX`.
fn url_encoded(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn any_cursor_that_is_not_one_is_a_400_never_a_panic() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let (n, server) = rt.block_on(async {
        let n = private_node(&dir.path().join("n")).await;
        n.register_service("web", vec![], vec![], vec![]).await.expect("register");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let server = http::serve(n.clone(), listener, HttpOptions::default()).expect("serve");
        (n, server)
    });
    let base = format!("http://{}", server.local_addr());
    let c = client();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let cursors = prop_oneof![
        any::<String>(),
        "[0-9a-f-]{0,80}",
        prop::collection::vec(any::<u8>(), 0..100)
            .prop_map(|b| b.iter().map(|x| format!("{x:02x}")).collect::<String>())
    ];
    runner
        .run(&cursors, |cursor| {
            for route in ["services", "nodes"] {
                let (status, body) = rt.block_on(async {
                    let url = format!("{base}/v1/{route}?cursor={}", url_encoded(&cursor));
                    let resp = c.get(url).send().await.expect("an answer");
                    (resp.status().as_u16(), resp.text().await.expect("body"))
                });
                let parses = match route {
                    "services" => Uuid::try_parse(&cursor).is_ok(),
                    _ => mycnet_spores::NodeId::from_hex(&cursor).is_ok(),
                };
                // A query string too long for the endpoint is a 414, before any parameter.
                let expected: &[u16] = if parses { &[200] } else { &[400, 414] };
                prop_assert!(expected.contains(&status), "{route} cursor={cursor:?}: {status} {body}");
            }
            Ok(())
        })
        .expect("every cursor answered");
    rt.block_on(async {
        server.shutdown().await.expect("shutdown");
        drop(n);
    });
}
